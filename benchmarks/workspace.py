"""Throw-away benchmark workspaces: the project's code and params in a fresh git + DVC repository."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import files

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pipeline", "stages", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "data/review.yaml")


@contextlib.contextmanager
def scratch_folder(keep: Path | None, prefix: str) -> Iterator[Path]:
    """Where a benchmark builds its workspaces: ``keep`` (left in place afterwards) when given, else a temporary
    folder removed afterwards, also when the benchmark fails."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        yield Path(temporary)


def create_workspace(root: Path, params: dict[str, Any]) -> None:
    """A copy of the project's code with ``params`` in a fresh git + DVC repository at ``root``.

    The converted backbone weights are linked in from this repository's cache when present.
    """
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    write_params(root, params)
    weights = REPO / params["paths"]["weights"]
    for path in weights.iterdir() if weights.is_dir() else ():
        files.link_or_copy(path, root / params["paths"]["weights"] / path.name)
    for command in (
        ("git", "init", "-q"),
        ("git", "config", "user.email", "bench@example.com"),
        ("git", "config", "user.name", "bench"),
        ("dvc", "init", "-q"),
        ("dvc", "config", "core.analytics", "false"),
        ("git", "add", "-A"),
        ("git", "commit", "-qm", "benchmark workspace"),
    ):
        run_in(root, command)


def write_params(root: Path, params: dict[str, Any]) -> None:
    """Write the workspace's params.yaml."""
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def run_in(root: Path, command: tuple[str, ...]) -> str:
    """Run a command in the workspace (this interpreter's bin folder first on PATH, the workspace's own
    MLflow store); its standard output.

    Raises:
        SystemExit: the command failed (the end of its output is shown).
    """
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed in {root} ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout
