"""The head on cached features and its Keras Tuner search: space from params, MLflow child runs, determinism."""

from __future__ import annotations

import dataclasses
import json
import re

import keras
import keras_tuner as kt
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from keras_samples import tiny_features
from pipeline.core import config
from pipeline.features import extraction
from pipeline.features.extraction import FeatureSet
from pipeline.tracking import runs, store
from pipeline.training import fitting, head
from pipeline.training.tuning import oracles, search, selection, space, trial_log

# the hyperparameters the search space declares (train_head.* that tune.space covers)
SEARCHED = {"hidden_layers", "units", "activation", "dropout", "optimizer", "learning_rate", "batch_size", "l2"}


@pytest.fixture
def small_params(project) -> config.Params:
    project.params["tune"].update(algorithm="random", max_trials=3)
    project.params["train_head"].update(epochs=8, patience=3)
    project.params["tune"]["space"].update(units=[8, 16], batch_size=[16, 32], hidden_layers=[0, 1])
    project.params["tune"]["space"]["learning_rate"].update(min=0.01, max=0.1)
    project.write_params()
    return config.load(project.root / "params.yaml")


def test_search_space_comes_from_params(small_params):
    hp = kt.HyperParameters()
    settings = space.sample_settings(
        hp, small_params.tune.space, head.HeadSettings.from_params(small_params.train_head)
    )
    assert set(hp.values) == SEARCHED
    by_name = {h.name: h for h in hp.space}
    assert list(by_name["units"].values) == [8, 16]
    assert by_name["learning_rate"].sampling == "log"
    assert (by_name["dropout"].min_value, by_name["dropout"].max_value, by_name["dropout"].step) == (0.0, 0.5, 0.1)
    assert settings.units in (8, 16) and settings.batch_size in (16, 32)


def test_defaults_are_train_heads_values_where_the_space_holds_them(small_params):
    first = dataclasses.replace(
        head.HeadSettings.from_params(small_params.train_head),
        units=16,
        hidden_layers=0,
        l2=1e-3,
        learning_rate=0.05,
        dropout=0.3,
    )
    hp = kt.HyperParameters()
    space.sample_settings(hp, small_params.tune.space, first)
    assert {name: hp.values[name] for name in ("units", "hidden_layers", "l2", "learning_rate", "dropout")} == {
        "units": 16,
        "hidden_layers": 0,
        "l2": 1e-3,
        "learning_rate": 0.05,
        "dropout": 0.3,
    }
    outside = dataclasses.replace(first, units=256, learning_rate=0.5)  # not in [8, 16], above max 0.1
    hp = kt.HyperParameters()
    space.sample_settings(hp, small_params.tune.space, outside)
    assert hp.values["units"] == 8 and hp.values["learning_rate"] == 0.01  # Keras Tuner's own defaults


def test_the_search_sample_keeps_class_shares_order_and_the_seed():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 3)
    rng = np.random.default_rng(1)
    train = FeatureSet(
        rng.normal(size=(len(labels), 4)).astype(np.float32),
        labels,
        np.array([f"p{i}" for i in range(len(labels))]),
        np.array([f"s{i}" for i in range(len(labels))]),
        ("a", "b", "c"),
    )
    sample = search.search_sample(train, 90, seed=7)
    assert np.bincount(sample.labels).tolist() == [59, 29, 1]  # in proportion, and the rare class kept
    rows = [int(p[1:]) for p in sample.paths]
    assert rows == sorted(rows) and np.array_equal(sample.features, train.features[rows])
    assert list(sample.sha256) == [f"s{i}" for i in rows]
    assert list(search.search_sample(train, 90, seed=7).paths) == list(sample.paths)
    assert list(search.search_sample(train, 90, seed=8).paths) != list(sample.paths)
    assert search.search_sample(train, None, seed=7) is train and search.search_sample(train, 5000, 7) is train


def test_the_first_trials_are_the_defaults_then_their_linear_twin():
    defaults = {"hidden_layers": 2, "units": 64, "l2": 1e-4}
    assert oracles.first_trials(defaults, (0, 1, 2)) == [defaults, {**defaults, "hidden_layers": 0}]
    assert oracles.first_trials(defaults, (1, 2)) == [defaults]  # no linear head in the space
    assert oracles.first_trials({**defaults, "hidden_layers": 0}, (0, 1)) == [{**defaults, "hidden_layers": 0}]


def test_head_penalises_and_standardises():
    settings = head.HeadSettings(
        hidden_layers=1,
        units=4,
        activation="relu",
        dropout=0.0,
        optimizer="adam",
        learning_rate=0.01,
        batch_size=8,
        l2=0.01,
    )
    features = np.random.default_rng(0).normal(5.0, 3.0, (64, 6)).astype(np.float32)
    model = head.build_head(6, 2, settings, head.feature_scale(features))
    standardized = keras.Model(model.input, model.get_layer("standardize").output)(features).numpy()
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(axis=0), 1.0, atol=1e-4)
    kernels = [layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    expected = sum(0.01 * float(np.sum(np.square(kernel.numpy()))) for kernel in kernels)
    assert len(model.losses) == 2 and float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    assert not head.build_head(6, 2, dataclasses.replace(settings, l2=0.0)).losses


def test_head_layers_follow_the_settings():
    settings = head.HeadSettings(
        hidden_layers=2, units=7, activation="gelu", dropout=0.3, optimizer="sgd", learning_rate=0.01, batch_size=8
    )
    model = head.build_head(12, 3, settings)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == [7, 7, 3]
    assert all(layer.get_config()["activation"] == "gelu" for layer in dense[:2])
    assert dense[-1].get_config()["activation"] == "linear"  # logits: the loss applies the softmax
    assert [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"] == [0.3] * 3
    assert model.loss.get_config()["from_logits"] is True


def test_balanced_class_weights():
    weights = fitting.class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights == {0: pytest.approx(4 / (2 * 3)), 1: pytest.approx(4 / (2 * 1)), 2: 0.0}
    assert fitting.class_weights(np.array([0, 1]), 2, "none") is None


def _with_tune(params: config.Params, **changes) -> config.Params:
    return dataclasses.replace(params, tune=dataclasses.replace(params.tune, **changes))


def _search(params: config.Params, seed_data: int = 0) -> tuple[selection.HeadResult, str]:
    train, val = tiny_features(30, seed_data), tiny_features(10, seed_data + 1)
    with runs.stage_run("train_head", params) as run:
        result = selection.select_head(train, val, params, run)
        run.log_metrics(result.summary())
    return result, run.run_id


def test_a_three_trial_search_logs_three_child_runs_under_the_stage_run(small_params, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result, parent = _search(small_params)
    assert len(result.trials) == 3 and set(result.trials["status"]) == {"COMPLETED"}
    assert (small_params.path("tuner") / "oracle.json").is_file()
    # The first trial is the known-good configuration (train_head's values wherever the space holds them),
    # the second its linear twin; the third is the search's own.
    first, second = (row for _, row in result.trials.sort_values("trial").head(2).iterrows())
    fixed = head.HeadSettings.from_params(small_params.train_head)
    for name in ("hidden_layers", "activation", "dropout", "optimizer", "l2"):
        assert first[name] == getattr(fixed, name), name
    assert second["hidden_layers"] == 0 and fixed.hidden_layers == 1
    assert second.drop(["trial", "hidden_layers", "objective", "best_epoch"]).equals(
        first.drop(["trial", "hidden_layers", "objective", "best_epoch"])
    )
    assert len({tuple(row) for row in result.trials.drop(columns=["trial", "objective", "best_epoch"]).values}) == 3

    client = mlflow.MlflowClient(store.tracking_uri(small_params))
    experiment = client.get_experiment_by_name(small_params.tracking.experiment)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 3
    assert sorted(r.data.tags["tuner.trial_id"] for r in children) == sorted(result.trials["trial"])
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["stage"] == "train_head"
        trial = result.trials.set_index("trial").loc[child.data.tags["tuner.trial_id"]]
        assert int(child.data.params["units"]) == trial["units"]
        assert child.data.metrics["objective"] == pytest.approx(trial["objective"])
        epochs = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in epochs] == list(range(1, len(epochs) + 1)) and len(epochs) >= 1
        assert client.get_metric_history(child.info.run_id, "learning_rate")
    # The final head is the best trial trained again from the same seed: the same best score.
    assert result.best_epoch()["val_accuracy"] == pytest.approx(result.trials["objective"].max())
    assert result.settings == head.HeadSettings.from_values(
        result.trials.sort_values("objective", ascending=False, kind="stable").iloc[0].to_dict()
    )
    parent_run = client.get_run(parent)
    assert parent_run.data.metrics["trials"] == 3
    assert len(client.get_metric_history(parent, "val_loss")) == len(result.history)
    # What differs on every run (run ids, seconds, memory) is in MLflow, not in the trials table for DVC.
    assert not {"seconds", "rss_mb", "mlflow_run_id"} & set(result.trials.columns)
    runs = client.load_table(experiment.experiment_id, "trial_runs.json", run_ids=[parent])
    assert list(runs.columns) == ["trial", "mlflow_run_id", "seconds", "rss_mb"]
    assert dict(zip(runs["trial"].astype(str), runs["mlflow_run_id"], strict=True)) == {
        r.data.tags["tuner.trial_id"]: r.info.run_id for r in children
    }
    assert (runs["seconds"] > 0).all() and (runs["rss_mb"] > 0).all()
    assert parent_run.data.metrics["search_seconds"] == pytest.approx(runs["seconds"].sum())


def test_the_tuner_folder_is_repeatable_and_reloads(small_params, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result, _ = _search(small_params)
    folder = small_params.path("tuner")
    for path in folder.rglob("*.json"):
        assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", path.read_text()), path  # no ISO date-time
    oracle = json.loads((folder / "oracle.json").read_text())
    assert oracle["display"] == {"search_start": None, "trial_start": {}, "trial_number": {}}
    assert oracle["tried_so_far"] == sorted(oracle["id_to_hash"].values())  # a set: in a fixed order
    # Keras Tuner reads the rewritten file back: the same finished search, the same best trial.
    reloaded = search.make_search(tiny_features(30, 0), small_params, None, overwrite=False)
    assert sorted(reloaded.oracle.trials) == sorted(result.trials["trial"])
    assert search.best_settings(reloaded) == result.settings
    assert reloaded.oracle.remaining_trials() == 0


def test_a_finished_trial_is_one_line_naming_what_differs_from_the_best():
    values = {"units": 256, "dropout": 0.2, "learning_rate": 0.00123456}
    first = trial_log.describe_trial("00", 6, values, 0.9015, 31.4, "val_accuracy", None)
    assert first == "train_head: trial 1/6: val_accuracy 0.9015, 31 s; units 256, dropout 0.2, learning_rate 0.00123"
    later = trial_log.describe_trial(
        "03", None, {**values, "units": 512}, 0.8712, 29.6, "val_accuracy", ("00", 0.9015, values)
    )
    assert later == "train_head: trial 4: val_accuracy 0.8712 (best 0.9015, trial 1), 30 s; units 512 (best 256)"
    failed = trial_log.describe_trial("04", 6, values, None, 1.0, "val_loss", ("00", 0.3, values))
    assert failed == "train_head: trial 5/6: no score (failed) (best 0.3000, trial 1), 1 s; same settings"


def test_a_trial_that_beats_the_best_so_far_says_new_best():
    values = {"units": 256, "dropout": 0.2}
    better = trial_log.describe_trial(
        "02", 6, {**values, "units": 512}, 0.9120, 30.2, "val_accuracy", ("00", 0.9015, values)
    )
    assert (
        better
        == "train_head: trial 3/6: val_accuracy 0.9120 (new best; was 0.9015, trial 1), 30 s; units 512 (was 256)"
    )
    lower_loss = trial_log.describe_trial("05", 6, values, 0.2, 1.0, "val_loss", ("00", 0.3, values))
    assert lower_loss == "train_head: trial 6/6: val_loss 0.2000 (new best; was 0.3000, trial 1), 1 s; same settings"
    tie = trial_log.describe_trial("01", 6, values, 0.9015, 1.0, "val_accuracy", ("00", 0.9015, values))
    assert tie == "train_head: trial 2/6: val_accuracy 0.9015 (best 0.9015, trial 1), 1 s; same settings"


def test_the_search_prints_a_line_per_trial_and_verbose_brings_the_tables_back(small_params, monkeypatch, capfd):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEADSTART_VERBOSE", raising=False)
    quiet, _ = _search(small_params)
    printed = capfd.readouterr().out
    assert [line.split(":")[1] for line in printed.splitlines() if line.startswith("train_head: trial")] == [
        " trial 1/3",
        " trial 2/3",
        " trial 3/3",
    ]
    assert "Search: Running Trial" not in printed and "Best Value So Far" not in printed
    # "new best" on exactly the lines whose objective beats every earlier trial's
    objectives = quiet.trials.sort_values("trial")["objective"].tolist()
    lines = [line for line in printed.splitlines() if line.startswith("train_head: trial")]
    for number, line in enumerate(lines[1:], start=1):
        assert ("(new best;" in line) == (objectives[number] > max(objectives[:number])), line
    oracle = (small_params.path("tuner") / "oracle.json").read_bytes()

    monkeypatch.setenv("HEADSTART_VERBOSE", "1")
    loud, _ = _search(small_params)
    printed = capfd.readouterr().out
    assert "Search: Running Trial #1" in printed and "Best Value So Far" in printed
    assert "train_head: trial" not in printed
    assert loud.settings == quiet.settings
    assert (small_params.path("tuner") / "oracle.json").read_bytes() == oracle  # the switch changes no output


def test_the_same_seed_picks_the_same_best_hyperparameters(small_params, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, _ = _search(small_params)
    second, _ = _search(small_params)
    assert first.settings == second.settings
    pd.testing.assert_series_equal(first.trials["objective"], second.trials["objective"])
    np.testing.assert_array_equal(first.model.get_weights()[0], second.model.get_weights()[0])


@pytest.mark.parametrize("algorithm", ["bayesian", "hyperband"])
def test_every_algorithm_runs_and_logs_its_trials(small_params, monkeypatch, algorithm):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _with_tune(small_params, algorithm=algorithm, max_trials=2)
    result, parent = _search(params)
    client = mlflow.MlflowClient(store.tracking_uri(params))
    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == len(result.trials) >= 2
    assert {c.data.tags["tuner.algorithm"] for c in children} == {algorithm}


def test_tuning_off_trains_the_fixed_head(small_params, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _with_tune(small_params, enabled=False)
    result, parent = _search(params)
    assert result.trials.empty and result.settings == head.HeadSettings.from_params(params.train_head)
    assert params.path("tuner").is_dir() and not any(params.path("tuner").iterdir())  # dvc.yaml's out exists


@pytest.mark.slow
def test_train_head_stage_through_dvc(tiny_run, tmp_path):
    project = tiny_run.copy(tmp_path)  # after a whole `dvc repro`, two trials
    trials_run = project.params["tune"]["max_trials"]
    assert trials_run == 2
    root = project.root
    best = yaml.safe_load((root / "models/best_hparams.yaml").read_text())
    assert set(best) == SEARCHED | {"epochs"}
    assert (root / "models/head.keras").is_file()
    trials = pd.read_csv(root / "plots/train_head/trials.csv")
    history = pd.read_csv(root / "plots/train_head/history.csv")
    assert len(trials) == trials_run and list(history["epoch"]) == list(range(1, len(history) + 1))
    metrics = json.loads((root / "metrics/train_head.json").read_text())
    assert metrics["trials"] == trials_run and 0 <= metrics["best_val_accuracy"] <= 1
    assert metrics["seconds_per_trial"] > 0
    # A head parameter re-runs train_head only; nothing upstream.
    project.params["train_head"]["patience"] = 2
    project.write_params()
    out = project.run("dvc", "repro", "train_head").stdout
    assert "Running stage 'train_head'" in out
    assert not any(f"Running stage '{s}'" in out for s in ("download", "split", "extract"))
    restored = extraction.read_feature_set(root / "data/features/val.npz")
    assert restored.features.shape[0] == len(pd.read_csv(root / "data/splits/val.csv"))
