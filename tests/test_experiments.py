"""DVC experiments: a queued sweep runs each experiment in a temporary copy of the repository; every stage run
lands in the one MLflow store at the original repository root, tagged with its experiment's name, and each
experiment's result is one pipeline run that carries its settings and scores, its stage runs nested under it."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from pipeline.tracking import views

pytestmark = pytest.mark.slow

# Downstream of backbone.image_size: these stages must run again in every experiment of the sweep.
REDONE = ("extract", "train_head", "audit", "finetune", "evaluate", "analyze", "export")
REUSED = ("download", "split")  # the second experiment takes them from DVC's cache
PIPELINE_FILTER = "tags.stage = 'pipeline'"


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


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """params.yaml's values by dotted name, as ``dvc exp show`` names its columns."""
    if not isinstance(value, dict):
        return {prefix: value}
    return {k: v for key, inner in value.items() for k, v in flat(inner, f"{prefix}.{key}".lstrip(".")).items()}


def recorded_runs(data: dict[str, Any], stages: list[str]) -> dict[str, str]:
    """The run id each stage's metrics JSON names in one experiment."""
    return {stage: data["metrics"][f"metrics/{stage}.json"]["data"]["mlflow"]["run_id"] for stage in stages}


def test_a_queued_sweep_runs_each_experiment_into_the_repository_mlflow_store(sweep, tmp_path) -> None:
    project = sweep.copy(tmp_path)
    assert sweep.output.count("Queued experiment") == len(sweep.values), sweep.output
    assert "Failed to reproduce" not in sweep.output, sweep.output

    experiments = shown_experiments(project)
    assert len(experiments) == len(sweep.values), experiments.keys()
    by_size = {
        data["params"]["params.yaml"]["data"]["backbone"]["image_size"]: name for name, data in experiments.items()
    }
    assert set(by_size) == set(sweep.values)

    stages = [stage for stage in pipeline_stages(project.root) if stage != "record"]
    store = project.root / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(project.params["tracking"]["experiment"])
    assert experiment.artifact_location == (project.root / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_id = {run.info.run_id: run for run in runs}
    for size, name in by_size.items():
        metrics = experiments[name]["metrics"]
        recorded = recorded_runs(experiments[name], stages)
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


def test_each_experiment_is_one_pipeline_run_with_its_settings_scores_and_stage_runs(sweep, tmp_path) -> None:
    project = sweep.copy(tmp_path)
    experiments = shown_experiments(project)
    stages = [stage for stage in pipeline_stages(project.root) if stage != "record"]
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(project.params["tracking"]["experiment"]).experiment_id
    pipeline_runs = client.search_runs([experiment_id], PIPELINE_FILTER)
    # Exactly one per experiment, named after it, the run its metrics/record.json names.
    assert sorted(run.info.run_name for run in pipeline_runs) == sorted(experiments)
    by_name = {run.info.run_name: run for run in pipeline_runs}
    swept = {name: by_name[name].data.params[sweep.param] for name in experiments}
    assert sorted(swept.values()) == sorted(str(value) for value in sweep.values)

    holders: dict[str, set[str]] = {stage: set() for stage in stages}
    reused: dict[str, set[str]] = {}
    for name, data in experiments.items():
        run = by_name[name]
        assert run.info.status == "FINISHED" and run.data.tags["dvc.exp_name"] == name
        assert data["metrics"]["metrics/record.json"]["data"]["mlflow"]["run_id"] == run.info.run_id
        # Every value of the experiment's params.yaml (as `dvc exp show` reads it), under the same name.
        settings = flat(data["params"]["params.yaml"]["data"])
        assert {key: run.data.params.get(key) for key in settings} == {
            key: "null" if value is None else str(value) for key, value in settings.items()
        }
        assert run.data.params[f"{sweep.param}.resolved"] == run.data.params[sweep.param]
        evaluated = data["metrics"]["metrics/evaluate.json"]["data"]
        assert run.data.metrics["finetuned.accuracy"] == evaluated["finetuned"]["accuracy"]
        assert run.data.metrics["head_only.accuracy"] == evaluated["head_only"]["accuracy"]
        # Each stage's run is listed; it is nested under this pipeline run or, reused, under the one that made it.
        for stage, stage_run_id in recorded_runs(data, stages).items():
            assert run.data.tags[f"stages.{stage}.run_id"] == stage_run_id
            parent = client.get_run(stage_run_id).data.tags["mlflow.parentRunId"]
            assert run.data.tags.get(f"stages.{stage}.made_by", run.info.run_id) == parent
            holders[stage].add(parent)
        reused[run.info.run_id] = {stage for stage in stages if run.data.tags.get(f"stages.{stage}.made_by")}
    # The experiment that ran first made download and split; the other lists them, reused, and logs them not again.
    (maker,) = holders["download"]
    assert {run_id: stages for run_id, stages in reused.items()} == {
        run.info.run_id: set() if run.info.run_id == maker else set(REUSED) for run in pipeline_runs
    }
    # The saved view the second experiment's record wrote shows the swept setting (make ui not run yet).
    state = views.read_view_state(client.get_experiment(experiment_id).tags[views.VIEW_TAG + views.VIEW_KEY])
    assert f"params.`{sweep.param}`" in state["selectedColumns"], state["selectedColumns"]
    assert all(len(holders[stage]) == 1 for stage in REUSED)
    assert all(len(holders[stage]) == len(experiments) for stage in REDONE)
    assert len(client.search_runs([experiment_id], "tags.stage = 'download'")) == 1
