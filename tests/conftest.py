"""Shared fixtures: params in memory, throw-away project repositories, tiny images made on the fly, a local HTTP
server, and the two runs the end-to-end tests share (``tiny_run``, ``sweep``), each made once per ``make test``.

What the fixtures build lives in helper modules (``projects.py``, ``samples.py``, ``file_server.py``), which test
modules import by name; no test module imports this one or another test module (``test_test_helpers.py``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import pytest

from file_server import LocalServer
from pipeline.core import config
from projects import (
    Project,
    Sweep,
    TinyRun,
    create_project,
    make_sweep,
    make_tiny_run,
    read_repo_params,
    shrunken_params,
)
from samples import write_image


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
    return read_repo_params()


@pytest.fixture
def params(tmp_path: Path) -> config.Params:
    """The repository's params, shrunk as in a shrunk ``project`` and rooted at ``tmp_path/repo`` (an empty
    folder), built in memory: no params file, git or DVC (``projects.shrunken_params``). Change a section with
    ``dataclasses.replace``."""
    return shrunken_params(tmp_path)


@pytest.fixture
def project(tmp_path: Path, base_params: dict[str, Any]) -> Project:
    """A git + DVC repository holding the project's code, with params reading a folder source."""
    return create_project(tmp_path, base_params)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A local HTTP server, shut down when the test ends."""
    local = LocalServer()
    try:
        yield local
    finally:
        local.stop()


# ------------------------------------------------------------------------------------------------
# The runs the end-to-end tests share, each made once per `make test`
# ------------------------------------------------------------------------------------------------


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
    """The whole pipeline, run once per ``make test`` (``made_once``; ``projects.make_tiny_run``)."""

    def make(base: Path) -> dict[str, str]:
        run = make_tiny_run(base)
        return {"stdout": run.stdout, "stderr": run.stderr}

    made = made_once(tmp_path_factory, "tiny_run", make)
    base = Path(made["base"])
    return TinyRun(base / "repo", base / "pristine", made["stdout"], made["stderr"])


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The two-experiment sweep, run once per ``make test`` (``made_once``; ``projects.make_sweep``)."""
    made = made_once(tmp_path_factory, "sweep", make_sweep)
    return Sweep(Path(made["base"]) / "repo", made["output"])
