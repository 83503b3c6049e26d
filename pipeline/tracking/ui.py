"""``python -m pipeline.tracking.ui`` (``make ui``): the MLflow UI on the embedded store, opened on the training runs.

MLflow 3's UI starts in its GenAI view (traces, token usage, an assistant) in a browser that has not
chosen otherwise, whatever the experiment; the ``workflowType=machine_learning`` query of a page's
address switches it to the model-training view. This command prints the address of the headstart
experiment's runs in that view, then becomes ``mlflow ui`` on ``paths.mlflow_db``::

    MLflow UI: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning

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
from pipeline.tracking import store

TRAINING_VIEW = "workflowType=machine_learning"


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


def main(argv: Sequence[str] | None = None) -> None:
    """Print the address of the training runs, then run ``mlflow ui`` on the embedded store."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    params = config.load()
    uri = f"sqlite:///{store.store_path(params, 'mlflow_db')}"
    experiment = find_experiment(uri, params.tracking.experiment)
    url = experiment_url(f"http://{args.host}:{args.port}", experiment)
    what = f"the training runs of experiment '{params.tracking.experiment}'" if experiment else "no runs yet"
    print(f"MLflow UI: {url} ({what})", flush=True)
    command = [
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


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
