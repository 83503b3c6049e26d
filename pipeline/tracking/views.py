"""The MLflow UI's saved view of the pipeline runs: one row per result, its scores and settings as columns.

MLflow 3's runs page keeps a view (search filter, sort, visible columns, charts) in an experiment tag
``mlflow.sharedViewState.<key>``: its *Views* menu lists every such tag that has a name, and the address
``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens one. The value is the UI's own format: the name,
two times in milliseconds, and the state as ``deflate;`` + base64 of the zlib-compressed JSON (read back from
a view saved in MLflow 3.17's UI, and opened by tests/test_compare_in_ui.py in a real browser).

headstart keeps one view, ``VIEW_KEY``, rewritten by every pipeline run and by ``make ui``:

- the rows: the pipeline runs only (``tags.stage = 'pipeline'``), newest first;
- the columns: the test scores, every setting whose value differs between the pipeline runs (a sweep's swept
  settings), then the main settings (their resolved values beside the ``auto`` ones) and the commit;
- the charts: what differs between the runs (params and metrics side by side), test accuracy against each
  differing setting, and test accuracy per run.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.tracking import summary

TRAINING_VIEW = "workflowType=machine_learning"  # the UI's model-training pages, not its GenAI ones
VIEW_KEY = "headstart-pipeline-runs"
VIEW_NAME = "headstart: pipeline runs"
VIEW_TAG = "mlflow.sharedViewState."
PIPELINE_FILTER = "tags.stage = 'pipeline'"
ACCURACY = "finetuned.accuracy"
SCORE_COLUMNS = (ACCURACY, "head_only.accuracy", "finetuned_vs_head.p_value", "finetuned.ece", "seconds.total")
SETTING_COLUMNS = (
    "backbone.name",
    "backbone.image_size" + summary.RESOLVED_SUFFIX,
    "finetune.learning_rate",
    "finetune.learning_rate" + summary.RESOLVED_SUFFIX,
    "finetune.epochs" + summary.RESOLVED_SUFFIX,
)
VARYING_KEY = "headstartVaryingSettings"
RECENT_RUNS = 200  # the pipeline runs whose settings are compared for the columns
MAX_VARYING = 12  # differing settings shown as columns, at most
COLUMN_WIDTH = (110, 270)  # pixels, the least and the most: a column fits its dotted name in between
MAX_SCATTERS = 4  # accuracy-against-setting charts, at most
_SECTION, _MODEL_METRICS, _SYSTEM_METRICS = "headstart", "Model metrics", "System metrics"


def view_address(base: str, experiment_id: str) -> str:
    """The UI address that opens the saved view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{TRAINING_VIEW}"


def varying_settings(run_params: Iterable[Mapping[str, str]]) -> list[str]:
    """The settings whose values differ between runs (missing counts as a value), sorted."""
    runs = list(run_params)
    names = sorted({name for params in runs for name in params})
    return [name for name in names if len({params.get(name) for params in runs}) > 1]


def view_state(varying: list[str]) -> dict[str, Any]:
    """The runs page's state: the pipeline runs, newest first; scores, settings and the differing ones as
    columns; charts of what differs and of test accuracy against each differing setting."""
    shown = [name for name in varying if name not in SETTING_COLUMNS][:MAX_VARYING]
    columns = [
        *(_column("metrics", name) for name in SCORE_COLUMNS),
        *(_column("params", name) for name in (*shown, *SETTING_COLUMNS)),
        _column("tags", "git.commit"),
    ]
    return {
        "searchFilter": PIPELINE_FILTER,
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {column: _width(column) for column in columns},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": _charts(varying),
        "compareRunSections": [_section(name) for name in (_SECTION, _MODEL_METRICS, _SYSTEM_METRICS)],
        "isAccordionReordered": False,
        VARYING_KEY: varying,  # headstart's own: what the next pipeline run adds to (the UI ignores it)
    }


def saved_view(state: Mapping[str, Any], now_ms: int) -> str:
    """The tag value of a saved view, in the format MLflow's UI writes."""
    packed = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode("utf-8"))).decode()
    return json.dumps({"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": f"deflate;{packed}"})


def read_view_state(value: str) -> dict[str, Any]:
    """The state inside a saved view's tag value (``saved_view``'s inverse); empty when it is not one."""
    try:
        kind, packed = json.loads(value)["state"].split(";", 1)
        state = json.loads(zlib.decompress(base64.b64decode(packed))) if kind == "deflate" else None
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error):
        return {}
    return state if isinstance(state, dict) else {}


def publish_pipeline_view(
    tracking_uri: str, experiment_id: str, newest: tuple[str, Mapping[str, str]] | None = None
) -> int | None:
    """Write (or rewrite) the saved view on an experiment.

    Args:
        tracking_uri: the store.
        experiment_id: the experiment.
        newest: the id and params of a pipeline run just made: the settings that differ are then those the view
            already shows plus those in which it differs from the pipeline run before it, so the cost does not
            grow with the runs. None (``make ui``): compare the ``RECENT_RUNS`` newest pipeline runs afresh.

    Returns:
        How many pipeline runs were compared (up to ``RECENT_RUNS``, or 2 with ``newest``), or None when the store
        refused (a warning says why: the runs are logged, only the view is not; the next pipeline run or
        ``make ui`` writes it).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return _write_view(mlflow.MlflowClient(tracking_uri), experiment_id, newest)
    except MlflowException as error:  # e.g. a server that lets this user log runs but not tag experiments
        print(f"warning: the UI's view of the pipeline runs was not written: {error}", file=sys.stderr)
        return None


def _write_view(client: Any, experiment_id: str, newest: tuple[str, Mapping[str, str]] | None) -> int:
    tag = VIEW_TAG + VIEW_KEY
    found = client.search_runs(
        [experiment_id],
        PIPELINE_FILTER,
        max_results=2 if newest else RECENT_RUNS,
        order_by=["attributes.start_time DESC"],
    )
    compared = [run.data.params for run in found if newest is None or run.info.run_id != newest[0]]
    varying = set(varying_settings([newest[1], *compared[:1]] if newest else compared))
    if newest:
        shown = client.get_experiment(experiment_id).tags.get(tag, "")
        varying |= set(read_view_state(shown).get(VARYING_KEY, []))
    state = view_state(sorted(varying))
    client.set_experiment_tag(experiment_id, tag, saved_view(state, int(time.time() * 1000)))
    return len(found)


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def _width(column: str) -> int:
    name = column.split("`")[1]
    return max(COLUMN_WIDTH[0], min(COLUMN_WIDTH[1], 7 * len(name) + 24))


def _section(name: str) -> dict[str, Any]:
    return {"uuid": _uuid(name), "name": name, "display": True, "isReordered": False, "deleted": False}


def _charts(varying: list[str]) -> list[dict[str, Any]]:
    section = _uuid(_SECTION)
    base = {"runsCountToCompare": 100, "metricSectionId": section, "deleted": False, "isGenerated": False}
    differences = {
        **base,
        "uuid": _uuid("differences"),
        "type": "DIFFERENCE",
        "chartName": "What differs between the pipeline runs",
        "compareGroups": ["Parameters", "Model metrics"],
        "showChangeFromBaseline": False,
        "showDifferencesOnly": True,
        "baselineColumnUuid": "",
    }
    scatters = [
        {
            **base,
            "uuid": _uuid(f"scatter {name}"),
            "type": "SCATTER",
            "xaxis": {"key": name, "type": "PARAM"},
            "yaxis": {"key": ACCURACY, "type": "METRIC"},
        }
        for name in _plotted(varying)[:MAX_SCATTERS]
    ]
    bar = {**base, "uuid": _uuid("accuracy"), "type": "BAR", "metricKey": ACCURACY}
    return [differences, *scatters, bar]


def _plotted(varying: list[str]) -> list[str]:
    """The settings to plot accuracy against: first those whose values in params.yaml differ (by the value they
    resolved to, when they have one), then the resolved values that differ only as a consequence."""
    suffix = summary.RESOLVED_SUFFIX
    chosen = [name + suffix if name + suffix in varying else name for name in varying if not name.endswith(suffix)]
    return [*chosen, *(name for name in varying if name.endswith(suffix) and name not in chosen)]


def _uuid(name: str) -> str:
    """A stable id per chart or section, so that rewriting the view keeps the UI's references."""
    return "headstart-" + zlib.crc32(name.encode("utf-8")).to_bytes(4, "big").hex()
