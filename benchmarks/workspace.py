"""Throw-away benchmark workspaces: the project's code and params in a fresh git + DVC repository, and the
commands run in them (with a child process's own peak memory where that is what is measured).

Not a benchmark: the benchmarks that run the real pipeline build their projects with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import FLOWERS, REPO
from pipeline.core import files

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


def repository_params() -> dict[str, Any]:
    """This repository's params.yaml, read afresh: a dict to change for a workspace."""
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def flower_params(per_class: int) -> dict[str, Any]:
    """params.yaml with the flower photos as the folder source, ``per_class`` photos per class."""
    params = repository_params()
    params["data"].update(source="folder", folder=str(FLOWERS), max_per_class=per_class)
    params["split"]["use_existing"] = False
    return params


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


# Runs a module as ``python -m`` does and, as the interpreter exits, writes the peak resident memory of
# this process's own address space (``VmHWM``, KiB) to the file named first. ``wait4``'s ``ru_maxrss``
# would not do: Linux carries the high-water mark of the address space replaced at ``exec`` into it, so
# a child forked from a large parent (a benchmark holding arrays, a pytest worker holding TensorFlow)
# reports at least the parent's size.
_LAUNCHER = """
import atexit, runpy, sys
out, module = sys.argv.pop(1), sys.argv.pop(1)
def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as answer:
        answer.write(peak)
atexit.register(report)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_measured(root: Path, module: str, *args: str, log: Path | None = None) -> tuple[float, float]:
    """Run ``python -m <module> <args>`` in ``root``; its own peak resident memory in MiB and its wall seconds.

    Args:
        root: the working directory (a project workspace).
        module: what ``python -m`` would run.
        args: its command-line arguments.
        log: where its output goes (default ``root/<module>.log``).

    Raises:
        SystemExit: the command failed (its output is shown).
    """
    log = log or root / f"{module}.log"
    peak_file = log.with_suffix(".peak")
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    with open(log, "w") as stream:
        command = [sys.executable, "-c", _LAUNCHER, str(peak_file.resolve()), module, *args]
        status = subprocess.run(command, cwd=root, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if status != 0 or not peak_file.is_file():
        raise SystemExit(f"{module} failed in {root} (exit {status}):\n{log.read_text()[-4000:]}")
    return round(int(peak_file.read_text()) / 1024, 1), round(seconds, 1)
