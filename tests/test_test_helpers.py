"""The tests' own helpers: the in-memory params stay what a shrunk project loads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.core import config
from projects import Project, project_changes


def test_the_params_fixture_is_what_a_shrunk_project_loads(
    params: config.Params, base_params: dict[str, Any], tmp_path: Path
) -> None:
    project = Project(params.root, copy.deepcopy(base_params))  # the same root, no git or DVC needed to compare
    project.change(project_changes(tmp_path))
    project.shrink()
    assert config.load(project.root / "params.yaml") == params
    assert list(params.root.iterdir()) == [project.root / "params.yaml"]  # the fixture itself wrote nothing
