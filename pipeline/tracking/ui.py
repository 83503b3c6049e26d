"""``headstart ui`` (``make ui``): the MLflow UI on the embedded store, opened on the pipeline runs.

MLflow 3's UI starts in its GenAI view (traces, token usage, an assistant) in a browser that has not
chosen otherwise, whatever the experiment; the ``workflowType=machine_learning`` query of a page's
address switches it to the model-training view. This command writes the saved view of the pipeline runs
(``pipeline.tracking.views``: one row per result, its scores and settings as columns), prints its address and
that of every run, stage runs nested under their pipeline run, then becomes ``mlflow ui`` on
``paths.mlflow_db`` (``python -m pipeline.tracking.ui`` runs the same)::

    MLflow UI: http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=headstart-pipeline-runs&workflowTyp…
    MLflow UI: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning (every run of …

Checked in headless Chromium against MLflow 3.17: the plain address of the experiment opens on its
GenAI overview even with the experiment's ``mlflow.experimentKind`` tag set (``pipeline.tracking.runs``
sets it anyway: it is how MLflow records the kind); the address above opens on its runs table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pipeline.core import config
from pipeline.core.errors import run_cli
from pipeline.tracking import store, views

PROG = "python -m pipeline.tracking.ui"
TRAINING_VIEW = views.TRAINING_VIEW


def experiment_url(base: str, experiment_id: str | None) -> str:
    """The UI page of an experiment's runs in the model-training view (the experiment list without an id)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{TRAINING_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def find_experiment(tracking_uri: str, name: str) -> str | None:
    """The id of the experiment ``name`` in a store, or None before any stage has run."""
    import mlflow  # slow to import: only once the arguments are good

    found = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(name)
    return None if found is None else found.experiment_id


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> None:
    """Print the address of the pipeline runs (else of the training runs), then run ``mlflow ui`` on the
    embedded store."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The MLflow UI on the embedded store (paths.mlflow_db): prints the address of the pipeline "
        "runs, then runs `mlflow ui`. Run it from the repository root (it reads params.yaml).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="the port to listen on (default: %(default)s)")
    args = parser.parse_args(argv)
    params = config.load()
    uri = f"sqlite:///{store.store_path(params, 'mlflow_db')}"
    base = f"http://{args.host}:{args.port}"
    for line in describe_addresses(params, uri, base):
        print(line, flush=True)
    command = [
        sys.executable,  # this environment's MLflow, whatever PATH says
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        str(store.store_path(params, "mlflow_artifacts")),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    os.execvp(command[0], command)


def describe_addresses(params: config.Params, uri: str, base: str) -> list[str]:
    """The lines ``make ui`` prints: the pipeline runs' view when there are pipeline runs, and the experiment's
    whole runs table."""
    experiment = find_experiment(uri, params.tracking.experiment)
    if experiment is None:
        return [f"MLflow UI: {experiment_url(base, None)} (no runs yet)"]
    name = params.tracking.experiment
    everything = f"MLflow UI: {experiment_url(base, experiment)} (every run of experiment '{name}'"
    found = views.publish_pipeline_view(uri, experiment)  # rewritten, so its columns follow the latest runs
    if not found:
        return [everything + ": the training runs)"]
    return [
        f"MLflow UI: {views.view_address(base, experiment)} ({found} pipeline runs: one row per result, "
        "its scores and settings)",
        everything + ", the stage runs nested under their pipeline run)",
    ]


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
