"""Comparing experiments in the MLflow UI, in a real browser: ``make ui`` on the shared two-experiment sweep opens on
one row per experiment with the swept setting and the test accuracy as columns, and MLflow's compare page of the
two pipeline runs shows both settings."""

from __future__ import annotations

import json
import urllib.parse

import mlflow
import pytest

import browser
import processes

pytestmark = pytest.mark.slow

LOAD_TIMEOUT_MS = 120_000  # the first page of a cold UI on a busy 2-core machine
# Every cell of the runs table, by row and column id (ag-grid draws the pinned and scrolling parts of a row apart).
TABLE_CELLS = """() => {
  const rows = {};
  for (const cell of document.querySelectorAll('[role=gridcell][col-id]')) {
    const row = cell.closest('[row-index]');
    if (row) (rows[row.getAttribute('row-index')] ??= {})[cell.getAttribute('col-id')] = cell.innerText.trim();
  }
  return Object.values(rows);
}"""
RUN_NAME, ACCURACY = "attributes.`Run Name`", "metrics.`finetuned.accuracy`"


def pipeline_runs(root, param: str) -> tuple[str, dict[str, tuple[str, str, float]]]:
    """The experiment's id and, per pipeline run's name: its id, the swept setting as the extract run logged it,
    and the test accuracy the evaluate run logged."""
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("headstart").experiment_id
    expected = {}
    for run in client.search_runs([experiment], "tags.stage = 'pipeline'"):
        extract = client.get_run(run.data.tags["stages.extract.run_id"])
        evaluate = client.get_run(run.data.tags["stages.evaluate.run_id"])
        expected[run.info.run_name] = (
            run.info.run_id,
            extract.data.params[param],
            evaluate.data.metrics["finetuned.accuracy"],
        )
    return experiment, expected


def test_make_ui_opens_on_one_row_per_experiment_and_the_compare_page_shows_both(sweep, tmp_path) -> None:
    project = sweep.copy(tmp_path)
    experiment, expected = pipeline_runs(project.root, sweep.param)
    assert len(expected) == len(sweep.values)
    with processes.mlflow_ui(project.root, tmp_path / "ui.log") as ui, browser.open_page(tmp_path, width=3200) as page:
        view = ui.addresses[0]
        assert "viewStateShareKey=" in view, ui.addresses
        page.goto(view)
        page.get_by_text(f"{len(expected)} matching runs").wait_for(timeout=LOAD_TIMEOUT_MS)
        for name in expected:
            page.get_by_role("link", name=name, exact=True).wait_for(timeout=LOAD_TIMEOUT_MS)
        # The run-name cell starts with its colour's hex code (a hidden label); the name is its last line.
        rows = {row[RUN_NAME].splitlines()[-1]: row for row in page.evaluate(TABLE_CELLS) if row.get(RUN_NAME)}
        assert set(rows) == set(expected), rows  # the pipeline runs only: no stage run, no trial
        swept = f"params.`{sweep.param}`"
        for name, (_, value, accuracy) in expected.items():
            assert rows[name][swept] == value, rows[name]
            assert float(rows[name][ACCURACY]) == pytest.approx(accuracy, abs=1e-9), rows[name]

        names = sorted(expected)
        runs = json.dumps([expected[name][0] for name in names])
        page.goto(
            f"{ui.url}/#/compare-runs?{urllib.parse.urlencode({'runs': runs, 'experiments': json.dumps([experiment])})}"
        )
        page.get_by_text("Run details").wait_for(timeout=LOAD_TIMEOUT_MS)
        text = page.inner_text("body")
        shown = [line.split("\t") for line in text.splitlines() if line.startswith(f"{sweep.param}\t")]
        assert shown == [[sweep.param, *(expected[name][1] for name in names)]], text
