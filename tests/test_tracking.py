"""The MLflow stage-run core: one run per stage execution, tagged, mirrored into metrics JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

import mlflow
import pytest

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.tracking import runs, store
from processes import free_port


@pytest.fixture
def committed_params(project) -> config.Params:
    """The params of a committed git + DVC repository, for what a stage run reads from one: the commit, whether the
    work tree differs from it, dvc.yaml's params and params.yaml's hash. Other tests take conftest's ``params``."""
    return config.load(project.root / "params.yaml")


def finished_run(params: config.Params, run_id: str) -> mlflow.entities.Run:
    return mlflow.MlflowClient(store.tracking_uri(params)).get_run(run_id)


def test_stage_run_logs_params_tags_metrics_and_writes_metrics_json(committed_params, monkeypatch) -> None:
    params = committed_params
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-42")
    with runs.stage_run("split", params) as run:
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
    experiment = mlflow.MlflowClient(store.tracking_uri(params)).get_experiment(logged.info.experiment_id)
    assert experiment.artifact_location == params.path("mlflow_artifacts").resolve().as_uri()


def test_failed_stage_marks_the_run_failed_and_writes_no_metrics(params, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with pytest.raises(RuntimeError), runs.stage_run("download", params) as run:
        run_id = run.run_id
        raise RuntimeError("boom")
    assert finished_run(params, run_id).info.status == "FAILED"
    assert not (params.path("metrics") / "download.json").exists()


def test_unreachable_tracking_server_is_a_user_error_naming_the_uri(params, monkeypatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with (
        pytest.raises(UserError, match=f"MLflow tracking server {uri} is unreachable"),
        runs.stage_run("split", params),
    ):
        pytest.fail("the stage body must not run")


def test_stage_stops_before_work_when_tracking_server_is_down(project, image_tree) -> None:
    image_tree(project.params["data"]["folder"], {"a": 4, "b": 4})
    uri = f"http://127.0.0.1:{free_port()}"
    result = project.run(sys.executable, "-m", "stages.download", check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2
    assert f"MLflow tracking server {uri} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "data" / "raw").exists()


def test_the_experiment_opens_on_its_training_runs_new_or_existing(params, monkeypatch) -> None:
    """MLflow 3's UI shows an experiment without ``mlflow.experimentKind`` as a GenAI one."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = mlflow.MlflowClient(store.tracking_uri(params))
    with runs.stage_run("split", params) as run:
        experiment_id = run.experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    old = client.create_experiment("made before the tag", (params.root / "old-artifacts").as_uri())
    client.set_experiment_tag(old, "mlflow.experimentKind", "genai_development_inferred")
    kept = client.create_experiment(
        "a user's own choice", (params.root / "kept-artifacts").as_uri(), tags={"mlflow.experimentKind": "finetuning"}
    )
    for name, expected in (("made before the tag", "custom_model_development"), ("a user's own choice", "finetuning")):
        renamed = dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, experiment=name))
        with runs.stage_run("split", renamed):
            pass
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == expected, name
    assert {old, kept} == {
        client.get_experiment_by_name(n).experiment_id for n in ("made before the tag", "a user's own choice")
    }


def test_make_ui_prints_the_address_of_the_training_runs(params, monkeypatch) -> None:
    from pipeline.tracking import ui

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = store.tracking_uri(params)
    assert ui.find_experiment(uri, params.tracking.experiment) is None  # nothing has run yet
    assert (
        ui.experiment_url("http://127.0.0.1:5000/", None)
        == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
    with runs.stage_run("split", params) as run:
        experiment_id = run.experiment_id
    assert ui.find_experiment(uri, params.tracking.experiment) == experiment_id
    assert ui.experiment_url("http://127.0.0.1:5000", experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )


def test_git_dirty_counts_code_and_params_not_the_outputs_dvc_rewrites(committed_params) -> None:
    """DVC deletes a stage's outputs before running it and rewrites dvc.lock after: those are no uncommitted work."""
    params = committed_params
    assert runs.run_tags("split", params)["git.dirty"] == "false"  # the project fixture commits everything
    (params.path("metrics") / "split.json").parent.mkdir(parents=True, exist_ok=True)
    (params.path("metrics") / "split.json").write_text("{}", encoding="utf-8")
    (params.path("plots") / "split").mkdir(parents=True, exist_ok=True)
    (params.path("plots") / "split" / "class_counts.csv").write_text("class,n\n", encoding="utf-8")
    (params.root / "dvc.lock").write_text("schema: '2.0'\n", encoding="utf-8")
    assert runs.run_tags("split", params)["git.dirty"] == "false"
    (params.root / "params.yaml").write_text(
        (params.root / "params.yaml").read_text(encoding="utf-8") + "\n", encoding="utf-8"
    )
    assert runs.run_tags("split", params)["git.dirty"] == "true"
