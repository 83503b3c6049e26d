"""One MLflow run per pipeline result, the stage runs that made it nested under it (the ``record`` stage).

A result is what a ``dvc repro`` or ``dvc exp run`` leaves in the workspace: every ``metrics/<stage>.json``
names the run that made that stage's outputs, also when DVC reused them from its cache. ``record`` is the
last stage of dvc.yaml and depends on params.yaml and on all those files, so it runs once per new result:
never on a no-op ``dvc repro``, and not at all when a stage before it fails (DVC stops there; the stages that
finished keep their runs, and the next result nests them).

The pipeline run is tagged ``stage = pipeline`` and named after the DVC experiment (else after the commit);
it carries the result's settings, headline numbers, stage seconds and artifacts (``record_result``). A stage
run that no live pipeline run holds yet is nested under it; one that an earlier pipeline run holds (its
outputs came from DVC's cache) is named, not logged again (``link_stages``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.core import config, files
from pipeline.core.config import Params
from pipeline.tracking import runs, store, summary

PIPELINE = "pipeline"  # the stage tag of a pipeline run
RECORD_STAGE = "record"  # the dvc.yaml stage that makes it
STAGE_TAG = "stages.{stage}.{field}"
MODEL_VERSION_TAG = "pipeline.run_id"  # on the registered model version this result made
ENDED = ("FAILED", "KILLED")  # a pipeline run in these states, or deleted, holds no stage runs: the next one nests them


@dataclasses.dataclass(frozen=True)
class StageLink:
    """The run that made one stage's outputs, and which pipeline run holds it."""

    stage: str
    run_id: str | None  # from metrics/<stage>.json; None when the file or its id is missing
    found: bool  # the run is in this tracking store
    made_by: str | None  # the pipeline run it is nested under: this one (new) or an earlier one (reused)
    seconds: float | None

    def reused(self, pipeline_run_id: str) -> bool:
        """Whether an earlier pipeline run holds this stage's run."""
        return self.made_by is not None and self.made_by != pipeline_run_id


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """What ``record_result`` logged."""

    run_id: str
    experiment_id: str
    name: str
    links: list[StageLink]
    params: dict[str, str]
    metrics: dict[str, float]
    tracking_uri: str
    url: str | None  # the run's page when the store is a server


def record_result(params: Params) -> PipelineRun:
    """Log the workspace's result as one pipeline run, nest its new stage runs, link the model version.

    The run carries every value of params.yaml and the values ``auto`` resolved to (``summary.setting_params``),
    each stage's headline numbers (``summary.headline_metrics``), the seconds of every stage run, the stage-run
    tags (git, params hash, CPU, experiment), the runtime and the registered model version, and as artifacts
    params.yaml, the stages' metrics JSONs (one ``metrics.json``), the report, evaluate's charts and analyze's
    tables.

    Raises:
        UserError: the tracking store is unreachable.
    """
    outputs = read_outputs(params)
    client, uri, experiment = runs.open_store(params)
    found = _find_stage_runs(client, _run_ids(outputs), experiment)
    tags = pipeline_tags(params, outputs)
    name = run_name(tags)
    # The run spans the stages that ran for it: the UI's Created and Duration are those of the `dvc repro`.
    started = min((facts["started"] for facts in found.values() if facts and not facts["holder"]), default=None)
    run_id = client.create_run(experiment, start_time=started, run_name=name, tags=tags).info.run_id
    with _ending(client, run_id):
        links = link_stages(outputs, found, run_id)
        settings = config.read_params_yaml((params.root / config.PARAMS_FILE).read_text(encoding="utf-8"))
        logged_params = summary.setting_params(settings, outputs)
        metrics = {**summary.headline_metrics(outputs), **stage_metrics(links, run_id)}
        tags = {**stage_tags(links, run_id), "mlflow.note.content": describe_stages(links, run_id, experiment)}
        _log_batch(client, run_id, logged_params, metrics, tags)
        _log_artifacts(client, run_id, params, outputs)
        _nest(client, links, run_id)
        if any(link.stage == "evaluate" and link.made_by == run_id for link in links):  # else an earlier run's
            _link_model_version(client, outputs["evaluate"].get("registry"), experiment, run_id)
        files.write_json(store.metrics_file(params, RECORD_STAGE), result_record(experiment, run_id, links))
    url = store.run_url(uri, experiment, run_id) if urllib.parse.urlparse(uri).scheme in ("http", "https") else None
    return PipelineRun(run_id, experiment, name, links, logged_params, metrics, uri, url)


def describe_result(result: PipelineRun) -> str:
    """One console line: the run, its test accuracy, the stages run and reused."""
    reused = sum(1 for link in result.links if link.reused(result.run_id))
    missing = sum(1 for link in result.links if not link.found)
    accuracy = result.metrics.get("finetuned.accuracy")
    parts = [
        f"pipeline run '{result.name}' ({result.run_id})",
        f"test accuracy {accuracy:.4f}" if accuracy is not None else "no test accuracy",
        f"{len(result.links) - reused - missing} stage runs nested, {reused} reused from earlier pipeline runs"
        + (f", {missing} not in this tracking store" if missing else ""),
        f"{len(result.params)} settings, {len(result.metrics)} numbers",
    ]
    return "; ".join(parts) + (f" → {result.url}" if result.url else "")


def read_outputs(params: Params) -> dict[str, dict[str, Any]]:
    """``{stage: its metrics JSON}`` for every stage of dvc.yaml before ``record``, in pipeline order."""
    outputs: dict[str, dict[str, Any]] = {}
    for stage in runs.dvc_stages(params.root):
        path = store.metrics_file(params, stage)
        if stage != RECORD_STAGE:
            outputs[stage] = files.read_json(path) if path.is_file() else {}
    return outputs


def link_stages(
    outputs: Mapping[str, Mapping[str, Any]], found: Mapping[str, dict[str, Any] | None], run_id: str
) -> list[StageLink]:
    """Which pipeline run holds each stage's run: the one its ``mlflow.parentRunId`` names while that run is a
    pipeline run that did not fail and was not deleted, else ``run_id`` (the stage ran for this result).

    A stage run no live pipeline run holds gets ``mlflow.parentRunId`` set to ``run_id`` (``_nest``), so the
    runs table nests it (with the tuner's trials under train_head). One an earlier pipeline run holds is not
    logged again: ``stages.<stage>.run_id`` and ``stages.<stage>.made_by`` name it and the pipeline run it
    belongs to (``stage_tags``).

    Args:
        outputs: ``{stage: metrics JSON}``.
        found: ``{stage: facts}`` from ``_find_stage_runs``; None for a run the store does not hold.
        run_id: the new pipeline run.
    """
    links = []
    for stage, output in outputs.items():
        stage_run = output.get("mlflow", {}).get("run_id")
        facts = found.get(stage)
        if facts is None:
            links.append(StageLink(stage, stage_run, False, None, None))
            continue
        holder = facts["holder"] if facts["holder"] not in (None, run_id) else run_id
        links.append(StageLink(stage, stage_run, True, holder, facts["seconds"]))
    return links


def result_record(experiment_id: str, run_id: str, links: list[StageLink]) -> dict[str, Any]:
    """``metrics/record.json``: the pipeline run's id, and how many stages ran for it."""
    return {
        "mlflow": {"run_id": run_id, "experiment_id": experiment_id},
        "stages_run": sum(1 for link in links if link.found and not link.reused(run_id)),
        "stages_reused": sum(1 for link in links if link.reused(run_id)),
    }


def pipeline_tags(params: Params, outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The stage-run tags (git, params hash, CPU, DVC experiment) with ``stage = pipeline``, the runtime and
    the registered model version."""
    tags = {**runs.run_tags(RECORD_STAGE, params), "stage": PIPELINE}
    runtime = outputs.get("evaluate", {}).get("runtime") or outputs.get("extract", {}).get("runtime")
    if runtime:
        tags["runtime"] = str(runtime)
    registry = outputs.get("evaluate", {}).get("registry") or {}
    if "name" in registry and "version" in registry:
        tags.update({"registry.model_name": str(registry["name"]), "registry.version": str(registry["version"])})
    return tags


def run_name(tags: Mapping[str, str]) -> str:
    """The DVC experiment's name; outside one, ``pipeline @ <commit>`` (``+`` when the workspace was dirty)."""
    if tags.get("dvc.exp_name"):
        return tags["dvc.exp_name"]
    commit = tags.get("git.commit", "")[:8]
    dirty = "+" if tags.get("git.dirty") == "true" else ""
    return f"{PIPELINE} @ {commit}{dirty}" if commit else PIPELINE


def stage_metrics(links: list[StageLink], run_id: str) -> dict[str, float]:
    """``seconds.<stage>`` of every stage run, ``seconds.total`` of all, ``seconds.run`` of those this result ran."""
    seconds = {f"seconds.{link.stage}": link.seconds for link in links if link.seconds is not None}
    ran = [link.seconds for link in links if link.seconds is not None and not link.reused(run_id)]
    # to the millisecond the runs' times have: sums of floats would show 655.1179999 in the UI
    return {**seconds, "seconds.total": round(sum(seconds.values()), 3), "seconds.run": round(sum(ran), 3)}


def stage_tags(links: list[StageLink], run_id: str) -> dict[str, str]:
    """``stages.<stage>.run_id`` per stage; ``stages.<stage>.made_by`` for a reused one, ``missing`` for a run
    this store does not hold."""
    tags: dict[str, str] = {}
    for link in links:
        tags[STAGE_TAG.format(stage=link.stage, field="run_id")] = link.run_id or "none"
        if not link.found:
            tags[STAGE_TAG.format(stage=link.stage, field="made_by")] = "missing: not in this tracking store"
        elif link.reused(run_id) and link.made_by:
            tags[STAGE_TAG.format(stage=link.stage, field="made_by")] = link.made_by
    return tags


def describe_stages(links: list[StageLink], run_id: str, experiment_id: str) -> str:
    """The run's description (Markdown, shown on its page): one table row per stage, linked to its run."""

    def link(target: str | None) -> str:
        return f"[{target[:8]}](#/experiments/{experiment_id}/runs/{target})" if target else "none"

    rows = ["| stage | run | seconds | |", "|---|---|---|---|"]
    for item in links:
        how = "not in this tracking store" if not item.found else "ran for this result"
        if item.reused(run_id):
            how = f"reused: made for pipeline run {link(item.made_by)}"
        seconds = f"{item.seconds:.1f}" if item.seconds is not None else ""
        rows.append(f"| {item.stage} | {link(item.run_id)} | {seconds} | {how} |")
    return "The stage runs that made this result:\n\n" + "\n".join(rows)


def _run_ids(outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    return {stage: out["mlflow"]["run_id"] for stage, out in outputs.items() if out.get("mlflow", {}).get("run_id")}


def _find_stage_runs(client: Any, run_ids: Mapping[str, str], experiment_id: str) -> dict[str, dict[str, Any] | None]:
    """Per stage, its run's start (ms), seconds and the live pipeline run holding it (None: not in this store).

    Two searches in the experiment, whatever the number of stages: the stage runs by id, then the pipeline runs
    they name (runs it does not hold are looked for in the other experiments).
    """
    stage_runs = _runs_by_id(client, set(run_ids.values()), experiment_id)
    parents = {run.data.tags.get("mlflow.parentRunId") for run in stage_runs.values()} - {None}
    live = {
        run_id
        for run_id, run in _runs_by_id(client, parents, experiment_id).items()
        if run.data.tags.get("stage") == PIPELINE
        and run.info.status not in ENDED
        and run.info.lifecycle_stage != "deleted"
    }
    found: dict[str, dict[str, Any] | None] = {}
    for stage, run_id in run_ids.items():
        run = stage_runs.get(run_id)
        if run is None:
            found[stage] = None
            continue
        ended = run.info.end_time or run.info.start_time
        parent = run.data.tags.get("mlflow.parentRunId")
        found[stage] = {
            "started": run.info.start_time,
            "seconds": (ended - run.info.start_time) / 1000.0,
            "holder": parent if parent in live else None,
        }
    return found


def _runs_by_id(client: Any, run_ids: set[str], experiment_id: str) -> dict[str, Any]:
    """The runs with these ids (deleted ones too), by id: looked for in the experiment, then in every other."""
    from mlflow.entities import ViewType

    found: dict[str, Any] = {}
    for where in ([experiment_id], None):
        missing = sorted(run_ids - set(found))
        if not missing:
            break
        experiments = where or [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        quoted = ", ".join(f"'{run_id}'" for run_id in missing)
        runs = client.search_runs(
            experiments, f"attributes.run_id IN ({quoted})", run_view_type=ViewType.ALL, max_results=len(missing)
        )
        found.update({run.info.run_id: run for run in runs})
    return found


def _log_batch(
    client: Any, run_id: str, params: Mapping[str, str], metrics: Mapping[str, float], tags: Mapping[str, str]
) -> None:
    """Log everything in as few requests as MLflow allows (it splits a batch at its own limits)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
        params=[Param(key, value) for key, value in params.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )


def _log_artifacts(client: Any, run_id: str, params: Params, outputs: Mapping[str, Any]) -> None:
    """params.yaml, every stage's metrics JSON in one ``metrics.json``, the report, evaluate's charts and analyze's
    tables (those that exist), staged in one folder and logged in one call."""
    with tempfile.TemporaryDirectory(prefix="pipeline-run-") as folder:
        staged = Path(folder)
        shutil.copy2(params.root / config.PARAMS_FILE, staged / config.PARAMS_FILE)
        files.write_json(staged / "metrics.json", dict(outputs))
        if params.path("report").is_file():
            shutil.copy2(params.path("report"), staged / params.path("report").name)
        for stage, pattern in (("evaluate", "*.png"), ("analyze", "*.csv")):
            for path in sorted((params.path("plots") / stage).glob(pattern)):
                (staged / "plots" / stage).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staged / "plots" / stage / path.name)
        client.log_artifacts(run_id, folder)


def _nest(client: Any, links: list[StageLink], run_id: str) -> None:
    """Put every stage run this result ran under the pipeline run."""
    for link in links:
        if link.found and link.run_id and link.made_by == run_id:
            client.set_tag(link.run_id, "mlflow.parentRunId", run_id)


def _link_model_version(client: Any, registry: Any, experiment_id: str, run_id: str) -> None:
    """Tag the model version evaluate registered with this run and name the run in its description."""
    if not isinstance(registry, Mapping) or "name" not in registry or "version" not in registry:
        return
    from mlflow.exceptions import MlflowException

    name, version = str(registry["name"]), str(registry["version"])
    line = f"Pipeline run: [{run_id}](#/experiments/{experiment_id}/runs/{run_id}) (its settings, scores and report)"
    try:
        client.set_model_version_tag(name, version, MODEL_VERSION_TAG, run_id)
        client.update_model_version(name, version, description=line)  # evaluate registers it without one
    except MlflowException as error:  # the version was deleted, or registered in another store
        print(f"record: model version {name} v{version} not linked to the pipeline run: {error}", file=sys.stderr)


@contextlib.contextmanager
def _ending(client: Any, run_id: str) -> Iterator[None]:
    """End the run FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
