"""Distributed tuning: Keras Tuner's chief and workers as real processes on 127.0.0.1, trials in MLflow."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from keras_samples import tiny_features
from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.features import extraction
from pipeline.tracking import store
from pipeline.training import distributed
from pipeline.training.tuning import trial_log
from processes import free_port

REPO = Path(__file__).resolve().parent.parent
WORKERS = ("tuner0", "tuner1")
TRIALS = 6
TIMEOUT_S = 600


# --- roles from params and environment --------------------------------------------------------------


@pytest.fixture
def params() -> config.Params:
    return config.load(REPO / "params.yaml")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No KERASTUNER_* variables; what ``configure_distributed`` exports is removed again afterwards."""
    for name in (distributed.TUNER_ID_ENV, distributed.ORACLE_IP_ENV, distributed.ORACLE_PORT_ENV):
        monkeypatch.setenv(name, "")  # recorded: delenv alone records nothing for an unset variable
        monkeypatch.delenv(name)
    return monkeypatch


def with_distributed(params: config.Params, enabled: bool = True, **changes) -> config.Params:
    distributed = dataclasses.replace(params.tune.distributed, **changes)
    return dataclasses.replace(params, tune=dataclasses.replace(params.tune, enabled=enabled, distributed=distributed))


def test_nothing_set_searches_in_one_process(params, clean_env):
    assert distributed.configure(params) == distributed.SINGLE
    assert distributed.ORACLE_IP_ENV not in os.environ and distributed.ORACLE_PORT_ENV not in os.environ


def test_params_fill_in_the_address_and_the_environment_wins(params, clean_env):
    clean_env.setenv(distributed.TUNER_ID_ENV, "tuner1")
    role = distributed.configure(with_distributed(params, oracle_ip="10.1.2.3", oracle_port=8123))
    assert role == distributed.Role("worker", "tuner1", "10.1.2.3:8123")
    assert (os.environ[distributed.ORACLE_IP_ENV], os.environ[distributed.ORACLE_PORT_ENV]) == ("10.1.2.3", "8123")

    clean_env.setenv(distributed.ORACLE_IP_ENV, "10.9.9.9")
    clean_env.setenv(distributed.ORACLE_PORT_ENV, "9000")
    role = distributed.configure(with_distributed(params, oracle_ip="10.1.2.3", oracle_port=8123))
    assert role.oracle == "10.9.9.9:9000" and os.environ[distributed.ORACLE_IP_ENV] == "10.9.9.9"


def test_an_address_without_a_tuner_id_explains_how_to_start_chief_and_workers(params, clean_env):
    with pytest.raises(UserError, match=distributed.TUNER_ID_ENV) as raised:
        distributed.configure(with_distributed(params, oracle_ip="127.0.0.1"))
    assert "=chief" in str(raised.value) and "=tuner0" in str(raised.value)


@pytest.mark.parametrize(
    "env, enabled, message",
    [
        ({"KERASTUNER_TUNER_ID": "tuner0"}, True, "chief's address"),
        ({"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1"}, False, "tune.enabled is false"),
        (
            {"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "http"},
            True,
            "port number",
        ),
        ({"KERASTUNER_TUNER_ID": "oracle", "KERASTUNER_ORACLE_IP": "127.0.0.1"}, True, "letters, digits"),
        ({"KERASTUNER_TUNER_ID": "tuner 0", "KERASTUNER_ORACLE_IP": "127.0.0.1"}, True, "letters, digits"),
    ],
)
def test_a_wrong_setup_is_a_user_error(params, clean_env, env, enabled, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(UserError, match=message):
        distributed.configure(with_distributed(params, enabled=enabled))


def test_a_chief_whose_port_is_taken_fails_before_the_search(params, clean_env):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        clean_env.setenv(distributed.TUNER_ID_ENV, "chief")
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            distributed.configure(with_distributed(params, oracle_ip="127.0.0.1", oracle_port=port))
    clean_env.setenv(distributed.ORACLE_PORT_ENV, str(port))  # free again now
    assert distributed.configure(with_distributed(params, oracle_ip="127.0.0.1")).kind == "chief"


# --- one chief and two workers -----------------------------------------------------------------------


def start(project, tuner_id: str, port: int, logs: Path) -> tuple[subprocess.Popen, Path]:
    """``python -m stages.train_head`` in the project with its own KERASTUNER_TUNER_ID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERASTUNER_", "MLFLOW_TRACKING_URI"))}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
            "PYTHONUNBUFFERED": "1",
            distributed.TUNER_ID_ENV: tuner_id,
            distributed.ORACLE_IP_ENV: "127.0.0.1",
            distributed.ORACLE_PORT_ENV: str(port),
        }
    )
    log = logs / f"{tuner_id}.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.train_head"],
            cwd=project.root,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    return process, log


def wait_for(condition, what: str, processes: dict[str, tuple[subprocess.Popen, Path]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        exited = {name: p.returncode for name, (p, _) in processes.items() if p.poll() not in (None, 0)}
        if exited or time.monotonic() > deadline:
            raise AssertionError(f"{what}: failed {exited} or timed out\n{tails(processes)}")
        time.sleep(0.5)


def tails(processes: dict[str, tuple[subprocess.Popen, Path]]) -> str:
    return "\n".join(f"--- {name} (exit {p.poll()})\n{log.read_text()[-3000:]}" for name, (p, log) in processes.items())


@pytest.fixture
def distributed_project(project):
    """A project with tiny cached features and a 6-trial, 2-epoch random search on val_loss."""
    project.params["compute"]["threads"] = 1
    # val_loss, not val_accuracy: on separable clusters many trials reach accuracy 1, and ties hide which is best.
    project.params["tune"].update(algorithm="random", max_trials=TRIALS, objective="val_loss")
    project.params["train_head"].update(epochs=2, patience=2)
    project.params["tune"]["space"].update(units=[8, 16], batch_size=[16, 32], hidden_layers=[0, 1])
    project.params["tune"]["space"]["learning_rate"].update(min=0.01, max=0.1)
    project.write_params()
    folder = project.root / project.params["paths"]["features"]
    extraction.write_feature_set(folder / "train.npz", tiny_features(30, 0))
    extraction.write_feature_set(folder / "val.npz", tiny_features(10, 1))
    return project


@pytest.mark.slow
def test_a_chief_and_two_workers_complete_and_log_every_trial_once(distributed_project, tmp_path):
    project, port = distributed_project, free_port()
    processes: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        # Workers first, so both are waiting when the chief opens the search and both get trials.
        for worker in WORKERS:
            processes[worker] = start(project, worker, port, tmp_path)
        wait_for(
            lambda: all("waiting for the chief" in processes[w][1].read_text() for w in WORKERS),
            "workers waiting",
            processes,
            TIMEOUT_S,
        )
        processes["chief"] = start(project, "chief", port, tmp_path)
        wait_for(lambda: all(p.poll() is not None for p, _ in processes.values()), "search", processes, TIMEOUT_S)
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert all(p.returncode == 0 for p, _ in processes.values()), tails(processes)

    params = config.load(project.root / "params.yaml")
    tuner_dir = params.path("tuner")
    # The oracle: every trial ran to completion, and ended exactly once.
    trials = {path.parent.name: json.loads(path.read_text()) for path in tuner_dir.glob("trial_*/trial.json")}
    assert len(trials) == TRIALS
    assert sorted(f"trial_{t['trial_id']}" for t in trials.values()) == sorted(trials)
    assert {t["status"] for t in trials.values()} == {"COMPLETED"}
    end_order = json.loads((tuner_dir / "oracle.json").read_text())["end_order"]
    assert sorted(end_order) == sorted(t["trial_id"] for t in trials.values())
    workers = {
        t["trial_id"]: json.loads((tuner_dir / f"trial_{t['trial_id']}" / trial_log.WORKER_FILE).read_text())
        for t in trials.values()
    }
    assert {w["tuner_id"] for w in workers.values()} == set(WORKERS)
    assert not (tuner_dir / distributed.CHIEF_FILE).exists()

    # MLflow: the chief's stage run, and under it one finished run per trial, tagged with its worker.
    metrics = json.loads((params.path("metrics") / "train_head.json").read_text())
    chief_run_id = metrics["mlflow"]["run_id"]
    client = mlflow.MlflowClient(store.tracking_uri(params))
    chief = client.get_run(chief_run_id)
    assert chief.info.status == "FINISHED" and chief.data.tags["tuner.role"] == "chief"
    every_run = client.search_runs([chief.info.experiment_id], max_results=1000)
    children = [r for r in every_run if r.data.tags.get("mlflow.parentRunId") == chief_run_id]
    assert len(every_run) == 1 + len(children)  # workers open no run of their own
    logged = collections.Counter(r.data.tags["tuner.trial_id"] for r in children)
    assert logged == collections.Counter(workers.keys())  # every trial once: none missing, none twice
    for child in children:
        trial_id = child.data.tags["tuner.trial_id"]
        assert child.info.status == "FINISHED" and child.data.tags["stage"] == "train_head"
        assert child.data.tags["tuner.id"] == workers[trial_id]["tuner_id"]
        assert child.info.run_id == workers[trial_id]["mlflow_run_id"]
        assert child.data.metrics["objective"] == pytest.approx(trials[f"trial_{trial_id}"]["score"])
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) >= 1

    # The chief's outputs: the best trial's hyperparameters, trained again in the chief.
    best = min(trials.values(), key=lambda t: t["score"])
    chosen = yaml.safe_load(params.path("best_hparams").read_text())
    assert {k: v for k, v in chosen.items() if k != "epochs"} == {
        k: best["hyperparameters"]["values"][k] for k in chosen if k != "epochs"
    }
    assert params.path("head_model").is_file()
    assert metrics["best_val_loss"] == pytest.approx(best["score"])
    assert (metrics["trials"], metrics["trials_completed"], metrics["tuners"]) == (TRIALS, TRIALS, len(WORKERS))
    table = pd.read_csv(params.path("plots") / "train_head" / "trials.csv", dtype={"trial": str})
    assert dict(zip(table["trial"], table["tuner_id"], strict=True)) == {k: w["tuner_id"] for k, w in workers.items()}
    for worker in WORKERS:
        ran = sorted(k for k, w in workers.items() if w["tuner_id"] == worker)
        assert f"train_head worker {worker}: ran trials {', '.join(ran)}" in processes[worker][1].read_text()
