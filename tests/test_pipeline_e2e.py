"""End to end: real git, real `dvc repro`, real MLflow (embedded sqlite store)."""

from __future__ import annotations

import json
import re

import mlflow
import pytest

from pipeline.evaluation import scoring

pytestmark = pytest.mark.slow


def test_repro_download_and_split_then_nothing_to_do(project, image_tree) -> None:
    image_tree(project.params["data"]["folder"], {"cat": 8, "dog": 8, "ノウサギ": 8})
    first = project.run("dvc", "repro", "split")
    assert "Running stage 'download'" in first.stdout and "Running stage 'split'" in first.stdout

    second = project.run("dvc", "repro", "split")
    assert "Running stage" not in second.stdout
    assert "Stage 'download' didn't change" in second.stdout
    assert "Stage 'split' didn't change" in second.stdout
    assert project.run("dvc", "status", "split").stdout.strip() == "Data and pipelines are up to date."

    run_ids = {
        stage: json.loads((project.root / "metrics" / f"{stage}.json").read_text())["mlflow"]["run_id"]
        for stage in ("download", "split")
    }
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["headstart"], output_format="list")
    assert {r.data.tags["stage"]: r.info.run_id for r in runs} == run_ids
    commit = project.run("git", "rev-parse", "HEAD").stdout.strip()
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["git.commit"] == commit
        assert len(run.data.tags["params.sha256"]) == 64
    split_run = next(r for r in runs if r.data.tags["stage"] == "split")
    assert split_run.data.metrics["classes"] == 3
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(split_run.info.run_id)}
    assert {"class_counts.png", "class_counts.json", "class_counts.csv", "split_report.json"} <= artifacts


def test_the_whole_pipeline_runs_then_nothing_is_left_to_do(tiny_run, tmp_path) -> None:
    stages = (
        "download",
        "split",
        "extract",
        "train_head",
        "audit",
        "finetune",
        "evaluate",
        "analyze",
        "export",
        "record",
    )
    assert all(f"Running stage '{stage}'" in tiny_run.stdout for stage in stages)
    # The console: each stage's own lines, none of the libraries' chatter (pipeline/core/console.py).
    console = tiny_run.stdout + tiny_run.stderr
    chatter = (
        "absl::InitializeLog",
        "oneDNN custom operations",
        "cpu_feature_guard",
        "Search: Running Trial",
        "Successfully registered model",
        "already exists. Creating a new version",
        "Ignored output_format",
        "XNNPACK delegate",
        "Creating initial MLflow database tables",
    )
    assert [line for line in console.splitlines() if any(noise in line for noise in chatter)] == []
    assert "train_head: trial 1/2: val_accuracy" in console and "train_head: trial 2/2: val_accuracy" in console
    assert "finetune: val_accuracy" in console
    # evaluate says whether fine-tuning paid, in scoring.describe_paired's words, true to what finetune did:
    # on random pixels an epoch may or may not beat the head's starting point on val.
    verdict = re.search(r"^evaluate: test accuracy \d\.\d{4} \(head alone \d\.\d{4}\): (.+)$", console, re.MULTILINE)
    assert verdict, console
    outcome = scoring.fine_tuning_outcome(json.loads((tiny_run.root / "metrics/finetune.json").read_text()))
    assert outcome in ("trained", "kept_start")
    expected = (
        r"fine-tuning [+-]\d\.\d{4}, \d+ vs \d+ images only one got right, McNemar p \S+ — "
        r"(it paid|no clear difference|the head alone was better)"
        if outcome == "trained"
        else r"fine-tuning kept its starting weights \(no epoch beat them on val\), so the model is the head on "
        r"the frozen backbone and there is nothing to compare"
    )
    assert re.fullmatch(expected, verdict.group(1)), verdict.group(1)
    project = tiny_run.copy(tmp_path)
    for output in ("models/model.keras", "reports/predictions.csv", "reports/report.html"):
        assert (project.root / output).is_file()
    assert project.run("dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    metrics = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)
    shown = next(iter(metrics.values()))["data"]
    assert {f"metrics/{stage}.json" for stage in stages} <= set(shown)


# headstart's own progress bars (pipeline.core.progress.bar), by the description each starts with.
OWN_BARS = ("check files", "copy images", "verify images", "decode check", "extract ", "evaluate", "export parity")
# A tqdm-style bar: "<description>: 42%|████      | 5/12 [...]".
BAR = re.compile(r"^\s*(?P<desc>[^:|]*):\s+\d+%\|")
# A Python warning as the warnings module prints it: "<file>.py:<line>: <Category>Warning: <message>".
PYTHON_WARNING = re.compile(r"\.py:\d+: \w*Warning\b")


def test_the_console_of_a_run_has_no_python_warning_nor_a_third_party_progress_bar(tiny_run) -> None:
    console = (tiny_run.stdout + tiny_run.stderr).splitlines()
    warnings = [line for line in console if PYTHON_WARNING.search(line)]
    assert not warnings, "\n".join(warnings)
    bars = [match.group("desc") for line in console if (match := BAR.match(line))]
    assert bars, "the run shows headstart's own progress bars"
    foreign = sorted({desc for desc in bars if not desc.startswith(OWN_BARS)})
    assert not foreign, f"progress bars that are not headstart's: {foreign}"


@pytest.mark.parametrize(
    ("line", "caught"),
    [
        ("/x/keras/src/trainers/data_adapters/__init__.py:71: UserWarning: `shuffle=True` was passed", "warning"),
        ("Downloading artifacts: 100%|██████████| 7/7 [00:00<00:00, 1.2kit/s]", "bar"),
        ("extract train: 100%|██████████| 12.0/12.0 [00:00<00:00, 329img/s]", None),
        ("train_head: trial 2/2: val_accuracy 0.5000 (new best; was 0.3333, trial 1), 2 s", None),
    ],
)
def test_the_console_check_tells_noise_from_headstart_lines(line: str, caught: str | None) -> None:
    bar = BAR.match(line)
    found = (
        "warning" if PYTHON_WARNING.search(line) else "bar" if bar and not bar["desc"].startswith(OWN_BARS) else None
    )
    assert found == caught
