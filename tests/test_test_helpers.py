"""The tests' own shape: the in-memory params stay what a shrunk project loads; no module in tests/ imports a test
module or ``conftest``, and helper modules are imported by their own name.

A test module that imports another runs that module's import-time code and ties the two together; shared code goes
into a helper module (``projects.py``, ``samples.py``, ...) or a conftest fixture. pytest puts tests/ first on
``sys.path`` (there is no ``tests/__init__.py``), so ``import processes`` is the one name of a helper: importing it,
or conftest, as ``tests.processes`` as well loads a second copy, with its own classes and module state.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core import config
from projects import Project, project_changes

TESTS = Path(__file__).resolve().parent


def test_the_params_fixture_is_what_a_shrunk_project_loads(
    params: config.Params, base_params: dict[str, Any], tmp_path: Path
) -> None:
    project = Project(params.root, copy.deepcopy(base_params))  # the same root, no git or DVC needed to compare
    project.change(project_changes(tmp_path))
    project.shrink()
    assert config.load(project.root / "params.yaml") == params
    assert list(params.root.iterdir()) == [project.root / "params.yaml"]  # the fixture itself wrote nothing


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Each module an ``import`` or ``from ... import`` names, with its line (``from tests import x``: ``tests.x``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            if node.module == "tests":
                yield from ((node.lineno, f"tests.{alias.name}") for alias in node.names)


def is_test_module(name: str, folder: Path) -> bool:
    """Whether ``name`` (without ``tests.``) is conftest or one of the ``test_*`` modules in ``folder``."""
    return name == "conftest" or (name.startswith("test_") and (folder / f"{name}.py").is_file())


def import_problems(path: Path, folder: Path = TESTS) -> list[str]:
    """What is wrong with ``path``'s imports, a line each naming the file, the line and the fix."""
    found = []
    for line, module in sorted(imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))):
        first, _, rest = module.partition(".")
        where = f"{path.name}:{line}: imports {module}"
        if first == "tests" and rest:
            found.append(f"{where}; import tests/ modules by their own name ({rest.partition('.')[0]})")
            first = rest.partition(".")[0]
        if is_test_module(first, folder):
            found.append(f"{where}, a test module; move what it shares into a helper module or a conftest fixture")
    return found


def test_no_test_module_imports_another_or_conftest() -> None:
    problems = [problem for path in sorted(TESTS.glob("*.py")) for problem in import_problems(path)]
    assert problems == [], "\n".join(problems)


def test_the_check_finds_each_kind_of_import(tmp_path: Path) -> None:
    """The check above would pass on nothing if it missed these."""
    for name in ("test_other.py", "conftest.py", "processes.py"):
        (tmp_path / name).write_text('"""A module."""\n', encoding="utf-8")
    module = tmp_path / "test_mine.py"
    module.write_text(
        "import os\n"
        "import processes\n"
        "from pipeline.core import config\n"
        "from test_other import helper\n"
        "import conftest\n"
        "from tests.conftest import create_project\n"
        "from tests import test_other\n"
        "from tests.processes import free_port\n"
        "def later():\n"
        "    import test_other\n"
        "from test_missing import x\n",  # not a file in the folder: an installed package of that name, not ours
        encoding="utf-8",
    )
    problems = import_problems(module, tmp_path)
    assert [problem.split(":")[1] for problem in problems] == ["4", "5", "6", "6", "7", "7", "8", "10"]
    assert "test_mine.py:8: imports tests.processes; import tests/ modules by their own name (processes)" in problems
    assert problems[0].endswith("a test module; move what it shares into a helper module or a conftest fixture")
