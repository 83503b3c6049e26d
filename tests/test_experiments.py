"""DVC experiments: a queued sweep runs each experiment in a temporary copy of the repository, and
every stage run lands in the one MLflow store at the original repository root, tagged with its
experiment's name."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

pytestmark = pytest.mark.slow

SIZES = (32, 40)
# Downstream of backbone.image_size: these stages must run again in every experiment of the sweep.
REDONE = ("extract", "train_head", "finetune", "evaluate", "analyze")


def pipeline_stages(root: Path) -> list[str]:
    """The stage names in the project's dvc.yaml."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def shown_experiments(project) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``: each experiment's name → its ``data`` (params, metrics)."""
    rows = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    found = {}
    for row in rows:
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def wait_for_queue_workers(root: Path, timeout_s: float = 120.0) -> None:
    """Wait for DVC's queue workers to exit: each stops itself once the queue has stayed empty a while,
    and a test leaves no process behind."""
    pid_files = root.glob(".dvc/tmp/exps/celery/dvc-exp-worker-*.json")
    pids = [json.loads(file.read_text(encoding="utf-8"))["pid"] for file in pid_files]
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while process_exists(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGTERM)
                pytest.fail(f"the DVC queue worker {pid} did not stop by itself")
            time.sleep(1)


def process_exists(pid: int) -> bool:
    """Whether a process with this id is still running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_queued_sweep_runs_each_experiment_into_the_repository_mlflow_store(project, image_tree) -> None:
    image_tree(project.params["data"]["folder"], {"cat": 6, "dog": 6})
    project.shrink(head_epochs=1)
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "tiny pipeline")

    # One Hydra choice override queues one experiment per value.
    sizes = ",".join(str(size) for size in SIZES)
    project.run("dvc", "exp", "run", "--queue", "-S", f"backbone.image_size={sizes}")
    queued = project.run("dvc", "queue", "status").stdout
    assert queued.count("Queued") == len(SIZES), queued
    try:
        ran = project.run("dvc", "exp", "run", "--run-all", "-j", "1")
    finally:
        wait_for_queue_workers(project.root)
    assert "Failed to reproduce" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr

    experiments = shown_experiments(project)
    assert len(experiments) == len(SIZES), experiments.keys()
    by_size = {
        data["params"]["params.yaml"]["data"]["backbone"]["image_size"]: name for name, data in experiments.items()
    }
    assert set(by_size) == set(SIZES)

    stages = pipeline_stages(project.root)
    store = project.root / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(project.params["tracking"]["experiment"])
    assert experiment.artifact_location == (project.root / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_id = {run.info.run_id: run for run in runs}
    for size, name in by_size.items():
        metrics = experiments[name]["metrics"]
        recorded = {stage: metrics[f"metrics/{stage}.json"]["data"]["mlflow"]["run_id"] for stage in stages}
        assert set(recorded.values()) <= set(by_id), f"{name}: runs missing from {store}"
        # Stages the run-cache restored point at the run that made their outputs: some experiment's.
        assert {by_id[run_id].data.tags.get("dvc.exp_name") for run_id in recorded.values()} <= set(by_size.values())
        # The filter docs/experiments.md shows for one experiment's runs (the tuner's trials included).
        tagged = client.search_runs([experiment.experiment_id], f"tags.\"dvc.exp_name\" = '{name}'")
        assert {run.data.tags["stage"] for run in tagged} >= set(REDONE)
        trials = [run for run in tagged if run.data.tags.get("mlflow.parentRunId") == recorded["train_head"]]
        assert len(trials) == project.params["tune"]["max_trials"]
        for stage in REDONE:
            run = by_id[recorded[stage]]
            assert run.data.tags["dvc.exp_name"] == name and run.data.tags["stage"] == stage
            assert run.info.run_name == f"{stage} ({name})"
            assert run.info.status == "FINISHED"
        assert by_id[recorded["extract"]].data.params["backbone.image_size"] == str(size)
        evaluate = by_id[recorded["evaluate"]]
        scores = metrics["metrics/evaluate.json"]["data"]["finetuned"]
        assert evaluate.data.metrics["finetuned.accuracy"] == scores["accuracy"]
        assert evaluate.info.artifact_uri.startswith(f"{experiment.artifact_location}/")
        assert (Path(urllib.parse.urlparse(evaluate.info.artifact_uri).path) / "confusion_matrix.png").is_file()
    # evaluate registered one model version per experiment in the same store, tagged with its name.
    versions = client.search_model_versions(f"name = '{project.params['registry']['model_name']}'")
    assert sorted(version.tags.get("dvc.exp_name") for version in versions) == sorted(by_size.values())
    # The experiments ran in temporary copies under .dvc/tmp/exps; none kept a store of its own.
    assert sorted(project.root.rglob("mlflow.db")) == [store]

    diff = project.run("dvc", "exp", "diff", *by_size.values()).stdout
    assert "backbone.image_size" in diff
