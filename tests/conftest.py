"""Shared fixtures: tiny images made on the fly and throw-away project repositories."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("pipeline", "stages", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore")


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
