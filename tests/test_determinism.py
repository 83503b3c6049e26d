"""Determinism: the same images and params, at the same ``compute.threads``, give the same bytes.

The whole pipeline runs twice, in two fresh workspaces (the shared tiny run and a copy of its commit never run),
through real ``dvc repro``: the features, the models, the chosen hyperparameters, every metric and every output
DVC hashes must come out equal. What may differ is listed here, with its reason; nothing else is left out:

- ``VOLATILE_METRICS``: the MLflow run id (a new run every time; for record, the pipeline run's) and wall-clock
  timings.

Every other output DVC hashes, the tuner folder and the trials table included, is byte-equal: Keras
Tuner's start times are taken out of ``oracle.json``, and each trial's seconds, memory and MLflow run
id are kept in MLflow only.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.core import files

VOLATILE_METRICS = {
    "download": ("mlflow",),
    "split": ("mlflow",),
    "extract": ("mlflow", "seconds", "images_per_s"),
    "train_head": ("mlflow", "search_seconds", "seconds_per_trial"),
    "audit": ("mlflow", "seconds", "seconds_by_phase"),
    "finetune": ("mlflow", "seconds"),
    "evaluate": ("mlflow",),
    "analyze": ("mlflow",),
    "export": (
        "mlflow",
        "keras.images_per_s",
        "float32.images_per_s",
        "float32.speedup",
        "float16.images_per_s",
        "float16.speedup",
    ),
    "record": ("mlflow",),
}


def _without(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``metrics`` without the listed (dotted) keys; each listed key must be there."""
    kept = json.loads(json.dumps(metrics))
    for key in keys:
        *parents, last = key.split(".")
        node = kept
        for parent in parents:
            node = node[parent]
        del node[last]
    return kept


def _out_hashes(root: Path) -> dict[str, str]:
    """Every stage output's md5 as dvc.lock records it."""
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_pipeline_twice_in_fresh_workspaces_gives_identical_results(tiny_run, tmp_path) -> None:
    # The shared run (real ImageNet weights, two trials, compute.threads 2) and a second run of the same commit.
    twin = tiny_run.copy_pristine(tmp_path)
    twin.run("dvc", "repro")
    first, second = tiny_run.root, twin.root

    for name in ("train", "val", "test"):
        for kind in ("npz", "npy"):  # the rows, the features
            path = f"data/features/{name}.{kind}"
            assert (first / path).read_bytes() == (second / path).read_bytes(), path
    assert (first / "data/features/meta.json").read_bytes() == (second / "data/features/meta.json").read_bytes()
    assert files.read_yaml(first / "models/best_hparams.yaml") == files.read_yaml(second / "models/best_hparams.yaml")
    for model in ("models/head.keras", "models/model.keras"):
        assert _md5(first / model) == _md5(second / model), model

    stages = sorted(p.stem for p in (first / "metrics").glob("*.json"))
    assert stages == sorted(p.stem for p in (second / "metrics").glob("*.json"))
    assert {"extract", "train_head", "finetune", "evaluate"} <= set(stages)
    for stage in stages:
        one, two = (files.read_json(root / "metrics" / f"{stage}.json") for root in (first, second))
        assert one["mlflow"]["run_id"] != two["mlflow"]["run_id"]  # two real runs, not one result copied
        assert _without(one, VOLATILE_METRICS[stage]) == _without(two, VOLATILE_METRICS[stage]), stage

    hashes = _out_hashes(first)
    assert set(hashes) == set(_out_hashes(second))
    assert {"models/tuner", "plots/train_head"} <= set(hashes)
    differing = {path for path, md5 in hashes.items() if _out_hashes(second)[path] != md5}
    assert differing == {f"metrics/{stage}.json" for stage in stages}

    # The same, file by file, to name the one that differs: the search and its trials table.
    for folder in ("models/tuner", "plots/train_head"):
        found = sorted(p.relative_to(first) for p in (first / folder).rglob("*") if p.is_file())
        assert found == sorted(p.relative_to(second) for p in (second / folder).rglob("*") if p.is_file())
        for relative in found:
            assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    assert len(pd.read_csv(first / "plots/train_head/trials.csv")) == 2


def _tiny_model() -> keras.Model:
    keras.backend.clear_session()  # layer names start again from "dense", as in a fresh stage process
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5, activation="relu")(inputs)))


def test_equal_models_saved_apart_give_equal_bytes_that_load_back(tmp_path, monkeypatch) -> None:
    one, two = _tiny_model(), _tiny_model()  # equal weights, other objects (Keras ids them by memory address)
    files.save_model(one, tmp_path / "one.keras")
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # 2033: a member stamped "now" would differ
    files.save_model(two, tmp_path / "two.keras")
    assert (tmp_path / "one.keras").read_bytes() == (tmp_path / "two.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "two.keras")
    inputs = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), one.predict(inputs, verbose=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.keras", "two.keras"]  # no temporaries left
