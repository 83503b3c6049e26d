"""Lineage: DVC hashes and upstream run ids on every stage run, checked against a real `dvc repro`."""

from __future__ import annotations

import json
import sys
from typing import Any

import mlflow
import pytest
import yaml

from pipeline.tracking import lineage

CODE_SUFFIX = ".py"


def locked(project) -> dict[str, Any]:
    """dvc.lock's stages, read as plain YAML (not through the code under test)."""
    return yaml.safe_load((project.root / "dvc.lock").read_text(encoding="utf-8"))["stages"]


def run_ids(project, stages) -> dict[str, str]:
    return {
        stage: json.loads((project.root / "metrics" / f"{stage}.json").read_text())["mlflow"]["run_id"]
        for stage in stages
    }


def client_for(project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")


def entry_hashes(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {entry["path"]: entry["md5"] for entry in entries}


def expected_upstream(lock: dict[str, Any]) -> dict[str, set[str]]:
    """Per stage, the stages one of whose outs it lists as a dep, or holds one of its deps (dvc.lock's paths:
    finetune's ``data/features/meta.json`` lies in extract's ``data/features``)."""
    outs = {stage: set(entry_hashes(spec.get("outs", []))) for stage, spec in lock.items()}

    def made_by(other: str, dep: str) -> bool:
        return any(dep == out or dep.startswith(out.rstrip("/") + "/") for out in outs[other])

    return {
        stage: {
            other for other in lock if other != stage and any(made_by(other, dep) for dep in entry_hashes(spec["deps"]))
        }
        for stage, spec in lock.items()
    }


def follow(client: mlflow.MlflowClient, run_id: str) -> dict[str, set[str]]:
    """Every stage run reachable through upstream.<stage> tags: {stage: {run ids}}."""
    reached: dict[str, set[str]] = {}
    queue = [run_id]
    while queue:
        run = client.get_run(queue.pop())
        if run.info.run_id in reached.get(run.data.tags["stage"], set()):
            continue
        reached.setdefault(run.data.tags["stage"], set()).add(run.info.run_id)
        queue += [value for key, value in run.data.tags.items() if key.startswith("upstream.")]
    return reached


def check_run_matches_lock(client: mlflow.MlflowClient, run_id: str, spec: dict[str, Any]) -> None:
    tags = client.get_run(run_id).data.tags
    for kind, entries in (("dep", spec["deps"]), ("out", spec.get("outs", []))):
        for path, md5 in entry_hashes(entries).items():
            assert tags.get(f"dvc.{kind}.{path}") == md5, (run_id, kind, path)


@pytest.mark.slow
def test_every_run_links_to_the_runs_that_made_its_inputs_also_when_dvc_skips_them(tiny_run, tmp_path) -> None:
    project = tiny_run.copy(tmp_path)  # after a whole `dvc repro`
    # Every stage but record: its run is the pipeline run, which lists the stage runs (tests/test_pipeline_run.py).
    lock = {stage: spec for stage, spec in locked(project).items() if stage != "record"}
    first = run_ids(project, lock)
    client = client_for(project)

    # Every run's deps and outs carry exactly the hashes DVC wrote to dvc.lock after the run,
    # and every upstream tag names the run in the upstream stage's metrics JSON.
    upstream = expected_upstream(lock)
    # Direct upstreams only: evaluate reads the images through data/splits, so download is split's upstream.
    assert {"split", "extract", "train_head", "finetune"} <= upstream["evaluate"]
    assert upstream["split"] == {"download"}
    for stage, spec in lock.items():
        check_run_matches_lock(client, first[stage], spec)
        tags = client.get_run(first[stage]).data.tags
        assert {k.removeprefix("upstream."): v for k, v in tags.items() if k.startswith("upstream.")} == {
            name: first[name] for name in upstream[stage]
        }

    # The evaluate run's data deps are dataset inputs whose digests are dvc.lock's dep hashes.
    evaluate = client.get_run(first["evaluate"])
    inputs = {i.dataset.name: i for i in evaluate.inputs.dataset_inputs}
    data_deps = {
        path: md5 for path, md5 in entry_hashes(lock["evaluate"]["deps"]).items() if not path.endswith(CODE_SUFFIX)
    }
    assert {name: i.dataset.digest for name, i in inputs.items()} == data_deps
    features = {tag.key: tag.value for tag in inputs["data/features"].tags}
    assert features["mlflow.data.context"] == "evaluate"
    assert features["upstream.stage"] == "extract" and features["upstream.run_id"] == first["extract"]

    # A head-only param change that yields a different head (8 units is outside the search space, so
    # no byte-identical model can come back): DVC skips download, split and extract; the new chain
    # reaches the new train_head run and the original runs of the skipped stages.
    project.params["tune"]["enabled"] = False
    project.params["train_head"]["units"] = 8
    project.write_params()
    second = project.run("dvc", "repro", "evaluate")
    assert "Running stage 'train_head'" in second.stdout and "Running stage 'evaluate'" in second.stdout
    assert not any(f"Running stage '{stage}'" in second.stdout for stage in ("download", "split", "extract"))
    now = run_ids(project, ("download", "split", "extract", "train_head", "finetune", "evaluate"))
    assert now["evaluate"] != first["evaluate"] and now["train_head"] != first["train_head"]
    assert follow(client, now["evaluate"]) == {
        "evaluate": {now["evaluate"]},
        "finetune": {now["finetune"]},
        "train_head": {now["train_head"]},
        "extract": {first["extract"]},
        "split": {first["split"]},
        "download": {first["download"]},
    }
    relocked = locked(project)
    for stage in now:
        check_run_matches_lock(client, now[stage], relocked[stage])

    shown = project.run(sys.executable, "-m", "pipeline.tracking.lineage")
    assert shown.stdout.startswith(f"lineage of evaluate run {now['evaluate']}")
    blocks = {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines()[1:] if not line.startswith(" ")}
    assert blocks == now
    assert (
        "data/features" in shown.stdout and entry_hashes(relocked["extract"]["outs"])["data/features"] in shown.stdout
    )
    assert "!" not in shown.stdout  # nothing stale, no mismatch

    old = project.run(sys.executable, "-m", "pipeline.tracking.lineage", "--run", first["evaluate"])
    stale = [line for line in old.stdout.splitlines() if "! stale" in line]
    assert any("metrics/evaluate.json" in line for line in stale)
    assert first["train_head"] in old.stdout and now["train_head"] not in old.stdout


def test_lineage_command_reports_what_is_missing(project) -> None:
    result = project.run(sys.executable, "-m", "pipeline.tracking.lineage", check=False)
    assert result.returncode == 2 and "run `dvc repro` first" in result.stderr and "Traceback" not in result.stderr
    result = project.run(sys.executable, "-m", "pipeline.tracking.lineage", "--stage", "split", check=False)
    assert result.returncode == 2 and "stage 'split' has not run" in result.stderr


def test_unknown_run_is_a_user_error(project, monkeypatch) -> None:
    from pipeline.core import config
    from pipeline.tracking import runs

    params = config.load(project.root / "params.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with runs.stage_run("split", params):
        pass  # creates the store; no data, so no hashes
    result = project.run(sys.executable, "-m", "pipeline.tracking.lineage", "--run", "0" * 32, check=False)
    assert result.returncode == 2
    assert f"run {'0' * 32} is not in the tracking store" in result.stderr
    assert "Traceback" not in result.stderr


def test_tag_keys_are_valid_mlflow_keys_for_any_path(tmp_path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("keys"))
    for path in ("data/raw", "data/ünï cödé/x:y*?.csv", "data//raw/", "../outside"):
        key = lineage.tag_key(lineage.DEP_PREFIX, path)
        client.set_tag(run.info.run_id, key, "0" * 32)
        assert key.startswith("dvc.dep.")
    assert lineage.tag_key(lineage.DEP_PREFIX, "data/raw") == "dvc.dep.data/raw"
