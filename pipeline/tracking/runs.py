"""One MLflow run per stage execution, mirrored into ``metrics/<stage>.json`` for DVC.

Stages never call MLflow directly::

    with tracking.stage_run("split", params) as run:
        ...
        run.log_metrics({"images_train": 900})

opens the run (after checking the tracking store is reachable, before any heavy work), logs the
stage's params as declared in dvc.yaml, tags it (stage, git commit and dirty flag, DVC experiment
name, params.yaml hash), and on success writes the logged metrics plus the run id to the stage's
metrics JSON, so every DVC-tracked result points at its MLflow run. ``pipeline.tracking.lineage`` adds the
DVC hashes of the stage's deps and outs and the ids of the upstream runs that made its inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.core import files, runtime
from pipeline.core.config import PARAMS_FILE, Params
from pipeline.tracking import store, summary

if TYPE_CHECKING:  # only a type here: log_table calls the frame's own to_csv
    import pandas as pd

EXPERIMENT_ENV = "DVC_EXP_NAME"
DVC_LOCK = "dvc.lock"
# MLflow 3 records an experiment's kind (GenAI development or model training) in this tag; headstart's
# experiments are model training. One already marked as a training kind keeps its mark. (Which page the
# UI opens on is another matter: see pipeline.tracking.ui.)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TRAINING_KINDS = (EXPERIMENT_KIND, "finetuning", "classification", "regression", "forecasting", "automl")


class StageRun:
    """The handle a stage logs through; collects the metrics that go to the metrics JSON."""

    def __init__(self, mlflow_module: Any, run_id: str, experiment_id: str, tags: dict[str, str]) -> None:
        self._mlflow = mlflow_module
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tags = tags
        self.metrics: dict[str, Any] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, to_json: bool = True) -> None:
        """Log numbers to MLflow; without a step, their last values also go to the metrics JSON
        (unless ``to_json`` is false: numbers the JSON holds in another shape, see ``record``)."""
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        if step is None and to_json:
            self.metrics.update(metrics)

    def record(self, key: str, value: Any) -> None:
        """Put a (nested) JSON value into the metrics JSON only, e.g. per-class numbers that are no
        MLflow metric names (class names may be any Unicode)."""
        self.metrics[key] = value

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run."""
        self._mlflow.set_tags(tags)

    def log_figure(self, figure: Any, name: str) -> None:
        """Log a matplotlib figure as an image artifact."""
        self._mlflow.log_figure(figure, name)

    def log_table(self, frame: pd.DataFrame, name: str) -> None:
        """Log a table: viewable in the MLflow UI (JSON) and downloadable as CSV."""
        self._mlflow.log_table(data=frame, artifact_file=f"{name}.json")
        self._mlflow.log_text(frame.to_csv(index=False), f"{name}.csv")

    def log_dict(self, data: Any, name: str) -> None:
        """Log a JSON or YAML artifact (by the name's suffix)."""
        self._mlflow.log_dict(data, name)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Log a file as an artifact."""
        self._mlflow.log_artifact(str(path), folder)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log more parameters (values chosen while the stage runs, such as the tuner's best)."""
        self._mlflow.log_params(params)

    def log_keras_model(self, model: Any, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> str:
        """Log a Keras model as an MLflow model with a tensor signature; returns its model URI.

        Args:
            model: the Keras model.
            inputs: the input shape without the batch dimension (float32).
            outputs: the output shape without the batch dimension (float32).
        """
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *inputs), "images")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *outputs), "probabilities")]),
        )
        # A signature, not an input example: MLflow 3 crashes on Keras 3 models given an input example.
        info = self._mlflow.keras.log_model(model, name="model", signature=signature)
        return info.model_uri

    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> ChildRun:
        """Open a run nested under this one (a tuner trial, say); it must be ended with ``end``.

        The child is created through the client, not made the active run, so whatever the stage
        logs meanwhile still goes to the stage's run; it works the same in another process (a
        distributed tuning worker) given only this run's id.

        Args:
            name: the run name shown in the MLflow UI.
            params: logged at once.
            tags: added to the stage and experiment tags of this run.
        """
        return start_child_run(
            self.run_id,
            self.experiment_id,
            name,
            params,
            {**{k: v for k, v in self.tags.items() if not k.startswith("mlflow.")}, **tags},
        )


def start_child_run(
    parent_run_id: str, experiment_id: str, name: str, params: dict[str, Any], tags: dict[str, str]
) -> ChildRun:
    """Create a run nested under ``parent_run_id`` and log its params (see ``StageRun.start_child``)."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id, run_name=name, tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name}
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return ChildRun(client, run.info.run_id)


class ChildRun:
    """A run nested under a stage's run, logged to through the client."""

    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numbers to this run."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag this run."""
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def end(self, status: str) -> None:
        """Close the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._client.set_terminated(self.run_id, status)


@contextlib.contextmanager
def stage_run(stage: str, params: Params) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution.

    Args:
        stage: the stage name, as in dvc.yaml.
        params: the loaded params; the stage's params (from dvc.yaml) are logged.

    Yields:
        The run handle. On success the run ends FINISHED and ``metrics/<stage>.json`` is written;
        on an exception the run ends FAILED (KILLED on Ctrl-C) and no metrics file is written.

    Raises:
        UserError: the tracking store is unreachable (raised before any work).
    """
    _, uri, experiment = open_store(params)
    import mlflow

    from pipeline.tracking import lineage  # imported here: lineage's command line uses this module

    mlflow.set_tracking_uri(uri)  # the stage logs through the active run
    tags = run_tags(stage, params)
    active = mlflow.start_run(experiment_id=experiment, run_name=_run_name(stage), tags=tags)
    handle = StageRun(mlflow, active.info.run_id, experiment, tags)
    try:
        mlflow.log_params(stage_params(stage, params))
        lineage.log_inputs(mlflow, stage, params)
        yield handle
        record = {**handle.metrics, "mlflow": {"run_id": handle.run_id, "experiment_id": experiment}}
        files.write_json(store.metrics_file(params, stage), record)
        lineage.log_outputs(mlflow, stage, params)  # after the metrics JSON: it is an out too
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
    if urllib.parse.urlparse(uri).scheme in (
        "http",
        "https",
    ):  # MLflow's own link is an INFO line (pipeline.core.console)
        print(f"{stage}: MLflow run {store.run_url(uri, experiment, handle.run_id)}", flush=True)


def open_store(params: Params) -> tuple[Any, str, str]:
    """Check the tracking store answers, then import MLflow and open a client on it.

    Returns:
        An ``mlflow.MlflowClient`` of the store, its URI and the id of ``tracking.experiment`` (created on
        first use).

    Raises:
        UserError: the tracking store is unreachable (raised before MLflow's slow import).
    """
    uri = store.tracking_uri(params)
    store.check_reachable(uri, params)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow  # imported here: it is slow, and only needed once a stage really runs

    client = mlflow.MlflowClient(uri)
    return client, uri, experiment_id(client, params, uri)


def stage_params(stage: str, params: Params) -> dict[str, Any]:
    """The flattened params a stage depends on, as declared under its ``params:`` in dvc.yaml."""
    flat: dict[str, Any] = {}
    for key in _declared_params(params.root, stage):
        value: Any = params
        for part in key.split("."):
            value = getattr(value, part)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a params section
            value = dataclasses.asdict(value)
        flat.update({name: summary.param_text(inner) for name, inner in summary.flatten(value, key).items()})
    return flat


def run_tags(stage: str, params: Params) -> dict[str, str]:
    """Tags that tie a run to its code, params, DVC experiment and CPU."""
    commit, dirty = _git_state(params.root, (DVC_LOCK, params.paths.metrics, params.paths.plots))
    params_file = params.root / PARAMS_FILE
    cpu = runtime.describe_cpu()  # results repeat bit for bit on the same CPU model only (pipeline.core.runtime)
    tags = {
        "stage": stage,
        "mlflow.source.name": f"stages/{stage}.py",
        "params.sha256": files.sha256_file(params_file) if params_file.exists() else "",
        "cpu.model": cpu["model"],
        "cpu.isa": cpu["isa"],
    }
    if commit:
        tags.update({"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit})
    if os.environ.get(EXPERIMENT_ENV):
        tags["dvc.exp_name"] = os.environ[EXPERIMENT_ENV]
    return tags


def _run_name(stage: str) -> str:
    experiment = os.environ.get(EXPERIMENT_ENV)
    return f"{stage} ({experiment})" if experiment else stage


def experiment_id(client: Any, params: Params, uri: str) -> str:
    """The experiment's id; created on first use with artifacts under the repository for local stores,
    and marked as a model-training experiment (``EXPERIMENT_KIND``), existing ones too."""
    from mlflow.exceptions import MlflowException

    name = params.tracking.experiment
    found = client.get_experiment_by_name(name)
    if found is None:
        local = urllib.parse.urlparse(uri).scheme not in ("http", "https", "databricks")
        location = store.store_path(params, "mlflow_artifacts").resolve().as_uri() if local else None
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            found = client.get_experiment_by_name(name)  # created concurrently by another stage
    if found.tags.get(EXPERIMENT_KIND_TAG) not in TRAINING_KINDS:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def dvc_stages(root: Path) -> list[str]:
    """The stage names of the repository's dvc.yaml, in its order (none when it is missing or unreadable)."""
    try:
        return list(_read_dvc_yaml(root)["stages"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []


def _read_dvc_yaml(root: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C loader when PyYAML was built with it
    return yaml.load((root / "dvc.yaml").read_text(encoding="utf-8"), Loader=loader)


def _declared_params(root: Path, stage: str) -> list[str]:
    try:
        declared = _read_dvc_yaml(root)["stages"][stage].get("params", [])
    except (OSError, KeyError, TypeError, AttributeError):
        return [stage] if stage in Params.__dataclass_fields__ else []
    return [p for p in declared if isinstance(p, str)]


def _git_state(root: Path, outputs: tuple[str, ...]) -> tuple[str | None, bool]:
    """The commit and whether anything differs from it, ``outputs`` left out: DVC rewrites dvc.lock, the metrics
    JSONs and the plots as the stages run (and deletes a stage's outputs before running it), so counting them would
    call every run dirty."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--", ".", *(f":(exclude){path}" for path in outputs))
        return git("rev-parse", "HEAD"), bool(changed)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None, False
