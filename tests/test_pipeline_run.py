"""The pipeline run: one MLflow run per result with every setting, the resolved ``auto`` values, each stage's headline
numbers and its stage runs nested under it; none for a no-op, none FINISHED when a stage fails; the UI's saved view."""

from __future__ import annotations

import base64
import json
import subprocess
import zlib
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from pipeline.tracking import pipeline_run, summary, views

PIPELINE_FILTER = "tags.stage = 'pipeline'"


# --------------------------------------------------------------------------------------------
# What a pipeline run records, from values (no MLflow)
# --------------------------------------------------------------------------------------------


def test_settings_are_params_yaml_by_dotted_name_with_the_resolved_values_beside_them() -> None:
    settings = {
        "seed": 42,
        "backbone": {"name": "efficientnet_lite0", "image_size": "auto"},
        "finetune": {"learning_rate": "auto", "epochs": 3, "enabled": True},
        "tune": {"space": {"units": [128, 256], "dropout": {"min": 0.0, "step": None}}},
    }
    outputs = {"extract": {"image_size": 64, "runtime": "tflite"}, "finetune": {"learning_rate_peak": 0.0005}}
    assert summary.setting_params(settings, outputs) == {
        "seed": "42",
        "backbone.name": "efficientnet_lite0",
        "backbone.image_size": "auto",
        "finetune.learning_rate": "auto",
        "finetune.epochs": "3",
        "finetune.enabled": "True",
        "tune.space.units": "[128, 256]",
        "tune.space.dropout.min": "0.0",
        "tune.space.dropout.step": "null",
        "backbone.image_size.resolved": "64",
        "compute.runtime.resolved": "tflite",
        "finetune.learning_rate.resolved": "0.0005",
    }  # no finetune.epochs.resolved or audit.duplicate_threshold.resolved: their stages did not record one


def test_headline_numbers_are_each_stages_by_name_without_tables_or_words() -> None:
    outputs = {
        "split": {"images_train": 900, "images_val": 100, "classes": 3, "mlflow": {"run_id": "r"}},
        "train_head": {"best_val_accuracy": 0.9, "search_seconds": 12.0},
        "evaluate": {
            "finetuned": {"accuracy": 0.93, "top_5_accuracy": 0.99, "n": 10, "per_class": {"a": {"accuracy": 1}}},
            "head_only": {"accuracy": 0.88, "ece": 0.03},
            "finetuned_vs_head": {"p_value": 0.001, "only_finetuned": 60},
            "registry": {"version": 2, "promoted": True},
            "runtime": "onnx",
        },
        "export": {"float16": {"size_mb": 7.4, "agreement": 0.999, "images_per_s": 2000.0}, "enabled": True},
        "audit": {"label_issues": 12, "near_duplicates_train_test": 3, "label_issues_by_class": {"train": {"a": 2}}},
    }
    assert summary.headline_metrics(outputs) == {
        "split.images_train": 900.0,
        "split.images_val": 100.0,
        "split.classes": 3.0,
        "train_head.best_val_accuracy": 0.9,
        "audit.label_issues": 12.0,
        "audit.near_duplicates_train_test": 3.0,
        "finetuned.accuracy": 0.93,
        "finetuned.top_5_accuracy": 0.99,
        "head_only.accuracy": 0.88,
        "head_only.ece": 0.03,
        "finetuned_vs_head.p_value": 0.001,
        "finetuned_vs_head.only_finetuned": 60.0,
        "export.float16.size_mb": 7.4,
        "export.float16.agreement": 0.999,
    }


def test_a_stage_run_held_by_a_live_pipeline_run_is_reused_the_others_belong_to_the_new_one() -> None:
    outputs = {stage: {"mlflow": {"run_id": f"{stage}-run"}} for stage in ("download", "split", "extract")}
    outputs["train_head"] = {}  # its metrics JSON is missing
    found = {
        "download": {"started": 1, "seconds": 2.0, "holder": "earlier"},
        "split": {"started": 5, "seconds": 3.0, "holder": None},
        "extract": None,  # not in this tracking store
    }
    links = pipeline_run.link_stages(outputs, found, "new")
    assert [(link.stage, link.found, link.made_by, link.reused("new")) for link in links] == [
        ("download", True, "earlier", True),
        ("split", True, "new", False),
        ("extract", False, None, False),
        ("train_head", False, None, False),
    ]
    assert pipeline_run.stage_metrics(links, "new") == {
        "seconds.download": 2.0,
        "seconds.split": 3.0,
        "seconds.total": 5.0,
        "seconds.run": 3.0,
    }
    tags = pipeline_run.stage_tags(links, "new")
    assert tags["stages.download.made_by"] == "earlier" and "stages.split.made_by" not in tags
    assert tags["stages.extract.made_by"].startswith("missing") and tags["stages.train_head.run_id"] == "none"
    record = pipeline_run.result_record("1", "new", links)
    assert (record["stages_run"], record["stages_reused"]) == (1, 1)


def test_a_pipeline_run_is_named_after_its_dvc_experiment_else_its_commit() -> None:
    assert pipeline_run.run_name({"dvc.exp_name": "boozy-byte", "git.commit": "a" * 40}) == "boozy-byte"
    assert pipeline_run.run_name({"git.commit": "0123456789abcdef", "git.dirty": "true"}) == "pipeline @ 01234567+"
    assert pipeline_run.run_name({"git.commit": "0123456789abcdef", "git.dirty": "false"}) == "pipeline @ 01234567"
    assert pipeline_run.run_name({}) == "pipeline"


def test_the_saved_view_shows_the_pipeline_runs_with_the_settings_that_differ() -> None:
    runs = [
        {"backbone.image_size": "32", "backbone.image_size.resolved": "32", "seed": "42", "tune.max_trials": "6"},
        {"backbone.image_size": "40", "backbone.image_size.resolved": "40", "seed": "42"},
    ]
    runs[0]["audit.duplicate_threshold.resolved"], runs[1]["audit.duplicate_threshold.resolved"] = "0.04", "0.06"
    varying = views.varying_settings(runs)
    assert varying == [
        "audit.duplicate_threshold.resolved",
        "backbone.image_size",
        "backbone.image_size.resolved",
        "tune.max_trials",
    ]
    value = json.loads(views.saved_view(views.view_state(varying), now_ms=1_000))
    assert value["name"] == views.VIEW_NAME and value["createdAt"] == value["updatedAt"] == 1_000
    kind, packed = value["state"].split(";", 1)
    state = json.loads(zlib.decompress(base64.b64decode(packed)))  # what MLflow's UI inflates
    assert kind == "deflate" and state["searchFilter"] == "tags.stage = 'pipeline'"
    assert views.read_view_state(json.dumps(value)) == state and views.read_view_state("not a view") == {}
    columns = state["selectedColumns"]
    assert columns[0] == "metrics.`finetuned.accuracy`"
    assert {"params.`backbone.name`", "params.`backbone.image_size`", "params.`tune.max_trials`"} <= set(columns)
    assert "params.`seed`" not in columns and state["columnOrder"] == columns
    scatter = [chart for chart in state["compareRunCharts"] if chart["type"] == "SCATTER"]
    # accuracy against the swept settings first (the size as resolved, not both spellings of it), then against
    # what differs only as a consequence
    assert [chart["xaxis"]["key"] for chart in scatter] == [
        "backbone.image_size.resolved",
        "tune.max_trials",
        "audit.duplicate_threshold.resolved",
    ]
    assert {chart["metricSectionId"] for chart in state["compareRunCharts"]} <= {
        section["uuid"] for section in state["compareRunSections"]
    }


# --------------------------------------------------------------------------------------------
# The shared tiny run: one `dvc repro` of the whole pipeline
# --------------------------------------------------------------------------------------------


def client_for(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def metrics_json(root: Path, stage: str) -> dict[str, Any]:
    return json.loads((root / "metrics" / f"{stage}.json").read_text(encoding="utf-8"))


def pipeline_runs(root: Path) -> list[Any]:
    client = client_for(root)
    experiment = client.get_experiment_by_name("headstart").experiment_id
    return client.search_runs([experiment], PIPELINE_FILTER, order_by=["attributes.start_time ASC"])


def stages_of(root: Path) -> list[str]:
    """dvc.yaml's stages before record."""
    return [name for name in yaml.safe_load((root / "dvc.yaml").read_text())["stages"] if name != "record"]


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {k: v for key, inner in value.items() for k, v in flat(inner, f"{prefix}.{key}".lstrip(".")).items()}


@pytest.mark.slow
def test_the_shared_run_is_one_pipeline_run_with_its_settings_scores_artifacts_and_stage_runs(tiny_run) -> None:
    root = tiny_run.root
    client = client_for(root)
    (run,) = pipeline_runs(root)
    assert run.info.run_id == metrics_json(root, "record")["mlflow"]["run_id"] and run.info.status == "FINISHED"
    assert f"record: pipeline run '{run.info.run_name}' ({run.info.run_id})" in tiny_run.stdout
    # Every value of params.yaml, under the name `dvc exp show` gives it.
    settings = flat(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")))
    assert {key: run.data.params[key] for key in settings} == {
        key: "null" if value is None else str(value) for key, value in settings.items()
    }
    extract, finetune, audit = (metrics_json(root, stage) for stage in ("extract", "finetune", "audit"))
    assert run.data.params["backbone.image_size"] == "32"
    assert run.data.params["backbone.image_size.resolved"] == str(extract["image_size"]) == "32"
    assert run.data.params["finetune.learning_rate.resolved"] == str(finetune["learning_rate_peak"])
    assert run.data.params["finetune.epochs.resolved"] == str(finetune["epochs_planned"]) == "2"
    assert run.data.params["compute.runtime.resolved"] == extract["runtime"]
    assert run.data.params["audit.duplicate_threshold.resolved"] == str(audit["duplicate_threshold"])
    # The headline numbers, as the stages wrote them.
    evaluate, export = metrics_json(root, "evaluate"), metrics_json(root, "export")
    for name in ("accuracy", "f1_macro", "log_loss", "ece"):
        assert run.data.metrics[f"finetuned.{name}"] == evaluate["finetuned"][name]
        assert run.data.metrics[f"head_only.{name}"] == evaluate["head_only"][name]
    assert run.data.metrics["finetuned_vs_head.p_value"] == evaluate["finetuned_vs_head"]["p_value"]
    assert run.data.metrics["train_head.best_val_accuracy"] == metrics_json(root, "train_head")["best_val_accuracy"]
    assert run.data.metrics["finetune.best_val_accuracy"] == finetune["best_val_accuracy"]
    assert run.data.metrics["audit.label_issues"] == audit["label_issues"]
    assert run.data.metrics["audit.outliers"] == audit["outliers"]
    assert run.data.metrics["export.float16.size_mb"] == export["float16"]["size_mb"]
    assert run.data.metrics["split.images_test"] == metrics_json(root, "split")["images_test"]
    # Tags: code, params, CPU, runtime and the model version it made.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    tags = run.data.tags
    assert tags["git.commit"] == head.stdout.strip() and tags["git.dirty"] in ("true", "false")
    assert tags["cpu.model"] and tags["cpu.isa"] and tags["runtime"] == evaluate["runtime"]
    assert tags["registry.version"] == str(evaluate["registry"]["version"])
    version = client.get_model_version(evaluate["registry"]["name"], str(evaluate["registry"]["version"]))
    assert version.tags["pipeline.run_id"] == run.info.run_id and run.info.run_id in version.description
    # Every stage run of this first result is nested under it; the tuner's trials stay under train_head.
    stage_runs = {stage: metrics_json(root, stage)["mlflow"]["run_id"] for stage in stages_of(root)}
    for stage, stage_run_id in stage_runs.items():
        assert client.get_run(stage_run_id).data.tags["mlflow.parentRunId"] == run.info.run_id, stage
        assert tags[f"stages.{stage}.run_id"] == stage_run_id and f"stages.{stage}.made_by" not in tags
        assert run.data.metrics[f"seconds.{stage}"] > 0
    assert run.data.metrics["seconds.total"] == pytest.approx(sum(run.data.metrics[f"seconds.{s}"] for s in stage_runs))
    trials = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{stage_runs['train_head']}'")
    assert len(trials) == 2
    # The report and the tables people open first, beside the settings.
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    artifacts |= {
        item.path
        for folder in ("plots/evaluate", "plots/analyze")
        for item in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"params.yaml", "report.html", "plots/evaluate/confusion_matrix.png"} <= artifacts
    assert {"plots/analyze/per_class_accuracy.csv", "metrics.json"} <= artifacts
    logged = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="metrics.json", tracking_uri=client.tracking_uri
            )
        ).read_text()
    )
    assert logged == {stage: metrics_json(root, stage) for stage in stages_of(root)}
    # The UI's view of the pipeline runs is on the experiment.
    experiment = client.get_experiment(run.info.experiment_id)
    assert json.loads(experiment.tags[views.VIEW_TAG + views.VIEW_KEY])["name"] == views.VIEW_NAME


@pytest.mark.slow
def test_a_no_op_adds_no_run_a_failed_stage_no_pipeline_run_and_the_next_result_nests_what_ran(
    tiny_run, tmp_path
) -> None:
    project = tiny_run.copy(tmp_path)
    (first,) = pipeline_runs(project.root)
    noop = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in noop.stdout
    assert len(pipeline_runs(project.root)) == 1

    # evaluate runs again and finishes; analyze fails inside its run; DVC stops there.
    project.params["evaluate"]["calibration_bins"] = 10
    project.write_params()
    analyze = project.root / "stages" / "analyze.py"
    source = analyze.read_text(encoding="utf-8")
    analyze.write_text(
        source.replace(
            '    with runs.stage_run("analyze", params) as run:\n',
            '    with runs.stage_run("analyze", params) as run:\n        raise RuntimeError("planted failure")\n',
        ),
        encoding="utf-8",
    )
    failed = project.run("dvc", "repro", check=False)
    assert failed.returncode != 0 and "planted failure" in failed.stderr
    assert [run.info.run_id for run in pipeline_runs(project.root)] == [first.info.run_id]
    client = client_for(project.root)
    evaluated = client.get_run(metrics_json(project.root, "evaluate")["mlflow"]["run_id"])
    assert evaluated.info.status == "FINISHED" and "mlflow.parentRunId" not in evaluated.data.tags
    broken = client.search_runs([first.info.experiment_id], "tags.stage = 'analyze' and attributes.status = 'FAILED'")
    assert len(broken) == 1

    analyze.write_text(source, encoding="utf-8")
    project.run("dvc", "repro")
    _, second = pipeline_runs(project.root)
    assert second.info.status == "FINISHED"
    assert (
        second.data.params["evaluate.calibration_bins"] == "10"
        and first.data.params["evaluate.calibration_bins"] == "15"
    )
    nested = {
        run.data.tags["stage"]
        for run in client.search_runs([first.info.experiment_id], f"tags.mlflow.parentRunId = '{second.info.run_id}'")
    }
    assert nested == {"evaluate", "analyze"}  # the run that finished before the failure, and the retry
    reused = {stage for stage in stages_of(project.root) if second.data.tags.get(f"stages.{stage}.made_by")}
    assert reused == set(stages_of(project.root)) - nested
    assert {second.data.tags[f"stages.{stage}.made_by"] for stage in reused} == {first.info.run_id}
    assert second.data.metrics["seconds.run"] < second.data.metrics["seconds.total"]

    # A deleted pipeline run holds nothing: the next one nests its stage runs, and leaves the first one's.
    client.delete_run(second.info.run_id)
    project.run("dvc", "repro", "--force", "--single-item", "record")
    third = client.get_run(metrics_json(project.root, "record")["mlflow"]["run_id"])
    assert {stage for stage in stages_of(project.root) if f"stages.{stage}.made_by" not in third.data.tags} == nested
    assert client.get_run(evaluated.info.run_id).data.tags["mlflow.parentRunId"] == third.info.run_id


@pytest.mark.slow
def test_dvc_exp_run_temp_logs_its_pipeline_run_into_the_repository_store(tiny_run, tmp_path) -> None:
    project = tiny_run.copy(tmp_path)
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "the tiny result")
    ran = project.run("dvc", "exp", "run", "--temp", "-S", "analyze.worst_errors=2")
    (name,) = [line.split()[-1] for line in ran.stdout.splitlines() if line.startswith("Ran experiment(s):")]
    first, second = pipeline_runs(project.root)
    assert second.info.run_name == name and second.data.tags["dvc.exp_name"] == name
    assert second.data.params["analyze.worst_errors"] == "2" and first.data.params["analyze.worst_errors"] == "4"
    assert second.data.tags["stages.analyze.run_id"] != first.data.tags["stages.analyze.run_id"]
    assert second.data.tags["stages.evaluate.made_by"] == first.info.run_id
    assert sorted(project.root.rglob("mlflow.db")) == [project.root / "mlflow.db"]


def test_the_record_stage_depends_on_every_stage_result_and_every_setting() -> None:
    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert list(spec)[-1] == "record"
    deps = spec["record"]["deps"]
    assert [f"${{paths.metrics}}/{stage}.json" for stage in list(spec)[:-1]] == deps[: len(spec) - 1]
    assert spec["record"]["params"] == [{"params.yaml": None}]
