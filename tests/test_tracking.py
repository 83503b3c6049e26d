"""The MLflow stage-run core: one run per stage execution, tagged, mirrored into metrics JSON."""

from __future__ import annotations

import hashlib
import json
import sys

import mlflow
import pytest

from pipeline import config, tracking
from pipeline.errors import UserError
from processes import free_port


@pytest.fixture
def params(project) -> config.Params:
    return config.load(project.root / "params.yaml")


def finished_run(params: config.Params, run_id: str) -> mlflow.entities.Run:
    return mlflow.MlflowClient(tracking.tracking_uri(params)).get_run(run_id)


def test_stage_run_logs_params_tags_metrics_and_writes_metrics_json(params, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-42")
    with tracking.stage_run("split", params) as run:
        run.log_metrics({"images_train": 12, "classes": 3})
    record = json.loads((params.path("metrics") / "split.json").read_text(encoding="utf-8"))
    assert record["images_train"] == 12 and record["classes"] == 3
    logged = finished_run(params, record["mlflow"]["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["split.val"] == "0.25"
    assert logged.data.params["seed"] == str(params.seed)
    assert "data.source" not in logged.data.params  # only what dvc.yaml declares for the stage
    tags = logged.data.tags
    assert tags["stage"] == "split"
    assert tags["dvc.exp_name"] == "sweep-42"
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["params.sha256"] == hashlib.sha256((params.root / "params.yaml").read_bytes()).hexdigest()
    assert logged.data.metrics["images_train"] == 12
    experiment = mlflow.MlflowClient(tracking.tracking_uri(params)).get_experiment(logged.info.experiment_id)
    assert experiment.artifact_location == params.path("mlflow_artifacts").resolve().as_uri()


def test_failed_stage_marks_the_run_failed_and_writes_no_metrics(params, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with pytest.raises(RuntimeError):
        with tracking.stage_run("download", params) as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    assert finished_run(params, run_id).info.status == "FAILED"
    assert not (params.path("metrics") / "download.json").exists()


def test_unreachable_tracking_server_is_a_user_error_naming_the_uri(params, monkeypatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError, match=f"MLflow tracking server {uri} is unreachable"):
        with tracking.stage_run("split", params):
            pytest.fail("the stage body must not run")


def test_stage_stops_before_work_when_tracking_server_is_down(project, image_tree) -> None:
    image_tree(project.params["data"]["folder"], {"a": 4, "b": 4})
    uri = f"http://127.0.0.1:{free_port()}"
    result = project.run(sys.executable, "-m", "stages.download", check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2
    assert f"MLflow tracking server {uri} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "data" / "raw").exists()
