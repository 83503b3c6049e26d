"""The model registry: versions, tags, the candidate and champion aliases, serving the champion.

Real MLflow throughout: a sqlite store, a real ``mlflow server`` over HTTP, ``mlflow models serve``,
and the shared tiny pipeline run (``dvc repro``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml

import processes
from keras_samples import build_model
from pipeline.core import config, files
from pipeline.serving import classifier, registry
from projects import shrunken_params
from samples import write_image

HOST = processes.HOST
NAME = "test-classifier"
CLASSES = ["cat", "dog", "ノウサギ"]


# ------------------------------------------------------------------------------------------------
# decide: the promotion rule on its own
# ------------------------------------------------------------------------------------------------


def _champion(accuracy: float | None, split_md5: str = "aaa", number: int = 3) -> registry.Version:
    tags = {registry.TEST_SPLIT_TAG: split_md5}
    if accuracy is not None:
        tags[registry.metric_tag("accuracy")] = repr(accuracy)
    return registry.Version(number, tags)


def test_the_first_version_becomes_champion() -> None:
    decision = registry.decide("accuracy", 0.5, "aaa", 1, None)
    assert decision.promote and decision.reason.startswith("promoted")


def test_a_strictly_better_score_on_the_same_split_is_promoted() -> None:
    decision = registry.decide("accuracy", 0.85, "aaa", 4, _champion(0.83))
    assert decision.promote
    assert decision.reason == "promoted: accuracy 0.8500 > champion v3's 0.8300"


@pytest.mark.parametrize("value", [0.81, 0.83])
def test_a_worse_or_equal_score_is_not_promoted_and_says_why(value: float) -> None:
    decision = registry.decide("accuracy", value, "aaa", 4, _champion(0.83))
    assert not decision.promote
    assert decision.reason == f"not promoted: accuracy {value:.4f} ≤ champion v3's 0.8300"


def test_scores_differing_beyond_four_decimals_are_shown_in_full() -> None:
    decision = registry.decide("accuracy", 0.83331, "aaa", 4, _champion(0.83334))
    assert not decision.promote and "0.83331 ≤ champion v3's 0.83334" in decision.reason


def test_a_champion_from_another_test_split_is_not_compared() -> None:
    decision = registry.decide("accuracy", 0.99, "bbb", 4, _champion(0.10, split_md5="aaa"))
    assert not decision.promote
    assert "different test split" in decision.reason and "aaa" in decision.reason and "bbb" in decision.reason
    assert decision.reason.endswith("headstart registry promote 4")


def test_a_champion_without_the_metric_is_not_compared() -> None:
    decision = registry.decide("accuracy", 0.99, "aaa", 4, _champion(None))
    assert not decision.promote and "has no accuracy tag" in decision.reason


# ------------------------------------------------------------------------------------------------
# register_classifier against real stores, with crafted scores
# ------------------------------------------------------------------------------------------------


def make_repository(base: Path, **registry_params: Any) -> config.Params:
    """Split CSVs, classes.json and a model under ``base/repo``: what register_classifier reads (params in memory)."""
    params = shrunken_params(base, registry={"model_name": NAME, **registry_params})
    splits = params.path("splits")
    for name in ("train", "val", "test"):
        write_split(splits / f"{name}.csv", name)
    files.write_json(splits / "classes.json", CLASSES)
    build_model(params.path("model"), len(CLASSES))
    return params


def write_split(path: Path, content: str) -> None:
    files.write_text(path, f"path,label,sha256\ndata/raw/cat/{content}.png,cat,{'0' * 64}\n")


def scores(accuracy: float, f1_macro: float = 0.5) -> dict[str, Any]:
    """An evaluation summary with crafted numbers (only the headline keys matter here)."""
    return {
        "n": 10,
        "accuracy": accuracy,
        "f1_macro": f1_macro,
        "precision_macro": 0.5,
        "recall_macro": 0.5,
        "f1_weighted": 0.5,
        "log_loss": 0.7,
        "ece": 0.1,
        "roc_auc": 0.6,
        "per_class": {},
    }


def register(params: config.Params, summary: dict[str, Any]) -> dict[str, Any]:
    """What evaluate does: register the model inside a run."""
    with mlflow.start_run(experiment_id=_experiment(params)) as run:
        return registry.register_classifier(params, summary, run.info.run_id, {"git.commit": "c0ffee" * 6 + "abcd"})


def _experiment(params: config.Params) -> str:
    local = mlflow.get_tracking_uri().startswith("sqlite")
    found = mlflow.get_experiment_by_name("registry-test")
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment("registry-test", (params.root / "artifacts").as_uri() if local else None)


def aliases(client: mlflow.MlflowClient) -> dict[str, int]:
    return {alias: int(version) for alias, version in client.get_registered_model(NAME).aliases.items()}


@pytest.fixture
def tracking_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point MLflow (this process and its children) at ``uri``; restored afterwards."""
    previous = mlflow.get_tracking_uri()

    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield use
    mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def store(kind: str, folder: Path) -> Iterator[str]:
    """A tracking store: the embedded sqlite file, or a real ``mlflow server`` on a free port."""
    if kind == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{folder / 'mlflow.db'}"
        return
    with processes.mlflow_server(folder) as server:
        yield server.url


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "http"])
def test_versions_aliases_and_promotion(tmp_path: Path, tracking_uri: Any, kind: str) -> None:
    params = make_repository(tmp_path)
    with store(kind, tmp_path / "store") as uri:
        tracking_uri(uri)
        client = mlflow.MlflowClient()

        first = register(params, scores(0.5))
        assert first == {"name": NAME, "version": 1, "promoted": True, "reason": first["reason"]}
        assert aliases(client) == {"candidate": 1, "champion": 1}
        tags = client.get_model_version(NAME, "1").tags
        test_md5 = hashlib.md5((params.path("splits") / "test.csv").read_bytes()).hexdigest()
        assert tags[registry.TEST_SPLIT_TAG] == test_md5
        assert tags["model.md5"] == hashlib.md5(params.path("model").read_bytes()).hexdigest()
        assert tags["git.commit"] == "c0ffee" * 6 + "abcd"
        assert float(tags["metric.accuracy"]) == 0.5 and float(tags["metric.log_loss"]) == 0.7
        assert tags["primary_metric"] == "accuracy" and tags["promotion"] == first["reason"]
        assert client.get_run(tags["evaluate.run_id"]).info.status == "FINISHED"

        worse = register(params, scores(0.4))
        assert (worse["version"], worse["promoted"]) == (2, False)
        assert worse["reason"] == "not promoted: accuracy 0.4000 ≤ champion v1's 0.5000"
        assert aliases(client) == {"candidate": 2, "champion": 1}

        better = register(params, scores(0.7))
        assert (better["version"], better["promoted"]) == (3, True)
        assert aliases(client) == {"candidate": 3, "champion": 3}

        write_split(params.path("splits") / "test.csv", "another")
        elsewhere = register(params, scores(0.99))
        assert (elsewhere["version"], elsewhere["promoted"]) == (4, False)
        assert "different test split" in elsewhere["reason"] and test_md5 in elsewhere["reason"]
        assert aliases(client) == {"candidate": 4, "champion": 3}

        registry.promote(client, NAME, 4)  # what `headstart registry promote 4` does
        assert aliases(client) == {"candidate": 4, "champion": 4}
        promotion = client.get_model_version(NAME, "4").tags["promotion"]
        assert promotion == f"promoted by hand (at registration: {elsewhere['reason']})"
        listing = registry.list_versions(client, NAME, "accuracy")
        assert [line.split("\t")[:3] for line in listing] == [
            ["v4", "candidate,champion", "accuracy 0.9900"],
            ["v3", "-", "accuracy 0.7000"],
            ["v2", "-", "accuracy 0.4000"],
            ["v1", "-", "accuracy 0.5000"],
        ]


@pytest.mark.slow
def test_the_primary_metric_decides(tmp_path: Path, tracking_uri: Any) -> None:
    params = make_repository(tmp_path, primary_metric="f1_macro")
    with store("sqlite", tmp_path / "store") as uri:
        tracking_uri(uri)
        register(params, scores(accuracy=0.5, f1_macro=0.6))
        second = register(params, scores(accuracy=0.9, f1_macro=0.55))
    assert not second["promoted"]
    assert second["reason"] == "not promoted: f1_macro 0.5500 ≤ champion v1's 0.6000"


@pytest.mark.slow
def test_the_served_champion_answers_with_labels_and_probabilities(tmp_path: Path, tracking_uri: Any) -> None:
    params = make_repository(tmp_path)
    images = [
        write_image(tmp_path / "cat.png", "serve-a", size=(48, 40)),
        write_image(tmp_path / "dog.jpg", "serve-b", size=(32, 32), fmt="JPEG"),
        write_image(tmp_path / "bird.webp", "serve-c", size=(40, 32), fmt="WEBP"),
        write_image(tmp_path / "scan.tif", "serve-d", size=(32, 32), fmt="TIFF"),
    ]
    with store("sqlite", tmp_path / "store") as uri:
        tracking_uri(uri)
        register(params, scores(0.5))
        port = processes.free_port()
        command = [
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "-h",
            HOST,
            "-p",
            str(port),
        ]
        with processes.serving(
            command,
            tmp_path / "serve.log",
            f"http://{HOST}:{port}/ping",
            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        ):
            body = {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(p.read_bytes()).decode("ascii")] for p in images],
                }
            }
            answer = post_json(f"http://{HOST}:{port}/invocations", body)
            refused = post_json(
                f"http://{HOST}:{port}/invocations",
                {"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]},
            )
    rows = answer["predictions"]
    expected = classifier.predict_probabilities(classifier.load_model(params.path("model")), images, "center", 8)
    assert len(rows) == len(images)
    for row, probabilities in zip(rows, expected, strict=True):
        served = np.array([row[f"p:{name}"] for name in CLASSES])
        assert row["predicted"] in CLASSES
        assert served.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(served, probabilities, atol=1e-5)
        assert row["predicted"] == CLASSES[int(np.argmax(probabilities))]
        assert row["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert not np.allclose(expected[0], expected[1], atol=1e-3)  # the two images really are told apart
    assert refused["status"] == 400 and "row 0: not an image" in refused["message"]


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON; the answer's JSON, with ``status`` added for an HTTP error."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return {"status": error.code, **json.loads(error.read())}


# ------------------------------------------------------------------------------------------------
# The evaluate stage registers the pipeline's model
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_registers_the_model_with_its_lineage(tiny_run, tmp_path) -> None:
    project = tiny_run.copy(tmp_path)  # after a whole `dvc repro`: evaluate registered its model
    evaluated = json.loads((project.root / "metrics/evaluate.json").read_text())
    name = project.params["registry"]["model_name"]
    assert evaluated["registry"] == {
        "name": name,
        "version": 1,
        "promoted": True,
        "reason": evaluated["registry"]["reason"],
    }

    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    version = client.get_model_version(name, "1")
    assert {a: int(v) for a, v in client.get_registered_model(name).aliases.items()} == {"candidate": 1, "champion": 1}
    assert version.tags["git.commit"] == project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert version.tags["evaluate.run_id"] == evaluated["mlflow"]["run_id"] == version.run_id
    assert float(version.tags["metric.accuracy"]) == evaluated["finetuned"]["accuracy"]
    assert float(version.tags["metric.f1_macro"]) == evaluated["finetuned"]["f1_macro"]
    recorded = dvc_recorded_md5s(project.root)
    assert version.tags[registry.TEST_SPLIT_TAG] == recorded["data/splits/test.csv"]
    assert version.tags["model.md5"] == recorded["models/model.keras"]
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion").metadata.get_input_schema()
    assert served.input_names() == ["image"]

    # The same model evaluated again on the same split: registered, a candidate, not a better champion.
    second = project.stage("evaluate")
    assert "not promoted: accuracy" in second.stdout
    again = json.loads((project.root / "metrics/evaluate.json").read_text())["registry"]
    assert (again["version"], again["promoted"]) == (2, False)
    assert {a: int(v) for a, v in client.get_registered_model(name).aliases.items()} == {"candidate": 2, "champion": 1}

    project.run(sys.executable, "-m", "pipeline.serving.registry", "promote", "2")
    listing = project.run(sys.executable, "-m", "pipeline.serving.registry", "list").stdout.splitlines()
    assert listing[0].startswith("v2\tcandidate,champion\taccuracy ")
    assert listing[1].startswith("v1\t-\t")


def dvc_recorded_md5s(root: Path) -> dict[str, str]:
    """The md5 DVC recorded for each file of the outputs in dvc.lock (a folder's ``.dir`` listing opened)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    found = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["md5"].endswith(".dir"):
                digest = out["md5"].removesuffix(".dir")
                listing = json.loads((root / ".dvc/cache/files/md5" / digest[:2] / f"{digest[2:]}.dir").read_text())
                found.update({f"{out['path']}/{entry['relpath']}": entry["md5"] for entry in listing})
            else:
                found[out["path"]] = out["md5"]
    return found
