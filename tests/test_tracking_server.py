"""A shared MLflow tracking server: the pipeline logs through ``MLFLOW_TRACKING_URI`` (runs, tuner
trials, artifacts through the server's proxy, the registered model), checked through the REST API only."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import processes
from pipeline.tracking import store

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    """A running ``mlflow server`` seen through its REST API: its URL and its artifacts folder."""

    url: str
    artifacts: Path

    def get(self, endpoint: str, **query: str) -> dict[str, Any]:
        """GET ``/api/2.0/mlflow/<endpoint>`` with a query string; the JSON reply."""
        return self._call(f"{endpoint}?{urllib.parse.urlencode(query)}", None)

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body to ``/api/2.0/mlflow/<endpoint>``; the JSON reply."""
        return self._call(endpoint, json.dumps(body).encode("utf-8"))

    def download(self, artifact_uri: str, path: str) -> bytes:
        """An artifact's bytes through the server's artifact proxy."""
        root = artifact_uri.removeprefix("mlflow-artifacts:").lstrip("/")
        address = f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}"
        with urllib.request.urlopen(address, timeout=30) as reply:
            return reply.read()

    def _call(self, endpoint: str, body: bytes | None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{endpoint}", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{endpoint}: HTTP {error.code}: {error.read().decode('utf-8', 'replace')}") from None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[Server]:
    """A real ``mlflow server`` (see ``processes.mlflow_server``), stopped with its workers afterwards."""
    with processes.mlflow_server(tmp_path / "server") as server:
        yield Server(server.url, server.artifacts)


def tag(run: dict[str, Any], key: str) -> str | None:
    """A tag's value in a REST run, or None."""
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def values(run: dict[str, Any], kind: str) -> dict[str, Any]:
    """A REST run's ``params`` or latest ``metrics`` as a dict."""
    return {item["key"]: item["value"] for item in run["data"].get(kind, [])}


def artifact_paths(server: Server, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, listed folder by folder through ``artifacts/list``."""
    listed = server.get("artifacts/list", run_id=run_id, **({"path": path} if path else {}))
    found = set()
    for entry in listed.get("files", []):
        found |= artifact_paths(server, run_id, entry["path"]) if entry["is_dir"] else {entry["path"]}
    return found


def test_pipeline_logs_runs_trials_artifacts_and_model_to_a_tracking_server(project, image_tree, mlflow_server) -> None:
    image_tree(project.params["data"]["folder"], {"cat": 6, "dog": 6})
    trials = 2
    project.shrink(trials=trials, head_epochs=1)
    result = project.run("dvc", "repro", env={"MLFLOW_TRACKING_URI": mlflow_server.url})

    for local in ("mlflow.db", "mlartifacts", "mlruns"):
        assert not (project.root / local).exists(), f"{local}: the embedded store was used, not the server"
    experiment = mlflow_server.get("experiments/get-by-name", experiment_name=project.params["tracking"]["experiment"])[
        "experiment"
    ]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")  # uploads go through the proxy
    runs = mlflow_server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})[
        "runs"
    ]

    # One pipeline run at the top, the run record.json names, printed with its page on the server; one run per
    # stage nested under it, each the run its metrics JSON points at.
    (pipeline,) = [run for run in runs if tag(run, "mlflow.parentRunId") is None]
    pipeline_id = pipeline["info"]["run_id"]
    assert tag(pipeline, "stage") == "pipeline" and pipeline["info"]["status"] == "FINISHED"
    recorded = json.loads((project.root / "metrics" / "record.json").read_text(encoding="utf-8"))
    assert recorded["mlflow"]["run_id"] == pipeline_id
    assert store.run_url(mlflow_server.url, experiment["experiment_id"], pipeline_id) in result.stdout
    stages = list(yaml.safe_load((project.root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    stages.remove("record")
    stage_runs = [run for run in runs if tag(run, "mlflow.parentRunId") == pipeline_id]
    assert sorted(tag(run, "stage") for run in stage_runs) == sorted(stages)
    by_stage = {tag(run, "stage"): run for run in stage_runs}
    for stage, run in by_stage.items():  # each stage names its run's page on the server
        page = store.run_url(mlflow_server.url, experiment["experiment_id"], run["info"]["run_id"])
        assert f"{stage}: MLflow run {page}" in result.stdout
    for stage in stages:
        recorded = json.loads((project.root / "metrics" / f"{stage}.json").read_text(encoding="utf-8"))
        assert by_stage[stage]["info"]["run_id"] == recorded["mlflow"]["run_id"]
        assert by_stage[stage]["info"]["status"] == "FINISHED"
        assert tag(pipeline, f"stages.{stage}.run_id") == recorded["mlflow"]["run_id"]
    # The pipeline run carries the settings and the scores (tests/test_pipeline_run.py checks them in full).
    settings, scores = values(pipeline, "params"), values(pipeline, "metrics")
    assert settings["tune.max_trials"] == str(trials) and settings["backbone.image_size.resolved"] == "32"
    evaluated = json.loads((project.root / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
    assert scores["finetuned.accuracy"] == evaluated["finetuned"]["accuracy"]
    assert {"report.html", "params.yaml", "plots/evaluate/confusion_matrix.png"} <= artifact_paths(
        mlflow_server, pipeline_id
    )

    # The tuner's trials are nested under train_head, one per trial, with hyperparameters and scores.
    head_run_id = by_stage["train_head"]["info"]["run_id"]
    children = [run for run in runs if tag(run, "mlflow.parentRunId") == head_run_id]
    assert len(children) == trials == project.params["tune"]["max_trials"]
    assert len(children) == len(runs) - len(stage_runs) - 1  # all but the stage runs and the pipeline run
    assert len({tag(run, "tuner.trial_id") for run in children}) == trials
    objective = project.params["tune"]["objective"]
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        assert set(project.params["tune"]["space"]) <= set(values(child, "params"))
        assert {"objective", objective} <= set(values(child, "metrics"))
        history = mlflow_server.get("metrics/get-history", run_id=child["info"]["run_id"], metric_key=objective)
        assert len(history["metrics"]) >= 1

    # Artifacts are listed by the server and stored in its --artifacts-destination.
    split_run = by_stage["split"]["info"]
    assert {"class_counts.png", "class_counts.csv"} <= artifact_paths(mlflow_server, split_run["run_id"])
    png = mlflow_server.download(split_run["artifact_uri"], "class_counts.png")
    assert png.startswith(b"\x89PNG")
    assert [p.read_bytes() for p in mlflow_server.artifacts.rglob("class_counts.png")] == [png]
    evaluated = artifact_paths(mlflow_server, by_stage["evaluate"]["info"]["run_id"])
    assert {"confusion_matrix.png", "predictions.csv"} <= evaluated

    # evaluate registers the model under registry.model_name: the first version is the newest
    # (candidate) and, with no champion before it, the champion.
    name = project.params["registry"]["model_name"]
    registered = mlflow_server.get("registered-models/get", name=name)["registered_model"]
    versions = mlflow_server.get("model-versions/search", filter=f"name='{name}'")["model_versions"]
    assert len(versions) == 1
    number = versions[0]["version"]
    aliases = {alias["alias"]: alias["version"] for alias in registered["aliases"]}
    assert aliases == {"candidate": number, "champion": number}
    champion = mlflow_server.get("registered-models/alias", name=name, alias="champion")["model_version"]
    evaluate_run_id = by_stage["evaluate"]["info"]["run_id"]
    assert champion["status"] == "READY" and champion["run_id"] == evaluate_run_id
    recorded = json.loads((project.root / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
    assert str(recorded["registry"]["version"]) == number
    linked = mlflow_server.get("model-versions/get", name=name, version=number)["model_version"]
    assert {"key": "pipeline.run_id", "value": pipeline_id} in linked["tags"] and pipeline_id in linked["description"]
    assert list(mlflow_server.artifacts.rglob("MLmodel")), "the registered model's files went elsewhere"
