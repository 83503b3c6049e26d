"""Where runs are recorded: the tracking URI, the embedded store's files, a fast reachability check.

The lowest tracking module: ``runs``, ``lineage``, ``ui`` and the model registry ask it where the store
is; nothing here imports MLflow, so the check runs before the slow import.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.core.config import Params
from pipeline.core.errors import UserError

ROOT_ENV = "DVC_ROOT"
_PROBE_TIMEOUT_S = 5.0


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """A run's page on a tracking server's UI."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def metrics_file(params: Params, stage: str) -> Path:
    """``metrics/<stage>.json``: the stage's metrics and its MLflow run id, for DVC and for lineage."""
    return params.path("metrics") / f"{stage}.json"


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded sqlite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_path(params, 'mlflow_db')}"


def store_path(params: Params, name: str) -> Path:
    """``paths.mlflow_db`` or ``paths.mlflow_artifacts`` of the embedded store.

    Under ``dvc exp run --queue`` or ``--temp`` a stage runs in a temporary copy of the repository;
    DVC then sets ``DVC_ROOT`` to the original, so every experiment's runs land in one store.
    """
    root = Path(os.environ.get(ROOT_ENV) or params.root)
    return root / getattr(params.paths, name)


def check_reachable(uri: str, params: Params) -> None:
    """Fail fast, naming the URI, when runs could not be recorded.

    Raises:
        UserError: an http(s) server does not answer, or a sqlite file's folder is missing.
    """
    parsed = urllib.parse.urlparse(uri)
    embedded = store_path(params, "mlflow_db")
    hint = f"start the server, correct MLFLOW_TRACKING_URI, or unset it to use the embedded store {embedded}"
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=_PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # the server answered (perhaps behind authentication): reachable
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(f"MLflow tracking server {uri} is unreachable ({reason}); {hint}") from None
    elif parsed.scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"MLflow tracking store {uri}: folder {folder} is missing or not writable; {hint}")
