"""The shape of the code: dvc.yaml's code deps cover what each stage imports, layers only import downwards.

Both checks read the source (``ast``), not ``sys.modules``: an import inside a function counts as
much as one at the top, and nothing is executed.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
# Modules that do not change a stage's results, so editing them must not invalidate DVC's cache:
# tracking records runs, errors words failures, progress and console draw the terminal, and the two
# package inits hold a docstring (and the console set-up). dvc.yaml's header comment names the same list;
# the walk does not descend through them (what they import serves them only).
EXEMPT = (
    "pipeline/__init__.py",
    "pipeline/core/__init__.py",
    "pipeline/tracking/",
    "pipeline/core/errors.py",
    "pipeline/core/progress.py",
    "pipeline/core/console.py",
)
# Which other sub-packages each one may import: lower layers never import higher ones.
LAYERS = {
    "core": set(),
    "data": {"core"},
    "features": {"core", "data"},
    "tracking": {"core"},
    "serving": {"core", "data", "features", "tracking"},
    "training": {"core", "data", "features", "tracking", "serving"},  # the head is loaded as serving loads models
    "audit": {"core", "data", "features"},
    "evaluation": {"core", "data", "features", "serving", "audit"},
}
# Modules directly under pipeline/, above every sub-package: each may import any of them, none imports it.
TOP_MODULES = {"cli"}


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The file of a dotted module name under ``root`` (a package's ``__init__.py``), None when it is not there."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every ``pipeline`` module a file imports, anywhere in it, with the packages Python runs on the way."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pipeline.data import split` imports the module pipeline.data.split; `from x import name` imports x
            names = [
                f"{node.module}.{alias.name}" if module_path(f"{node.module}.{alias.name}", root) else node.module
                for alias in node.names
            ]
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE:
                found.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return {name for name in found if module_path(name, root)}


def relative(module: str, root: Path = ROOT) -> str:
    path = module_path(module, root)
    assert path is not None, module
    return path.relative_to(root).as_posix()


def is_covered(path: str, deps: list[str] | tuple[str, ...]) -> bool:
    """Whether a file is one of the deps or lies under a folder among them."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def import_closure(entry: Path, root: Path = ROOT, exempt: tuple[str, ...] = EXEMPT) -> set[str]:
    """The files of every ``pipeline`` module ``entry`` reaches, transitively, not descending through exempt ones."""
    reached: set[str] = set()
    pending = list(imported_modules(entry, root))
    while pending:
        file = relative(pending.pop(), root)
        if file in reached:
            continue
        reached.add(file)
        if not is_covered(file, exempt):
            pending.extend(imported_modules(root / file, root))
    return reached


def uncovered_imports(stage: str, dvc: dict, root: Path = ROOT, exempt: tuple[str, ...] = EXEMPT) -> list[str]:
    """The modules ``stages/<stage>.py`` reaches that are neither in the stage's deps nor exempt."""
    deps = dvc["stages"][stage]["deps"]
    return sorted(
        file
        for file in import_closure(root / "stages" / f"{stage}.py", root, exempt)
        if not is_covered(file, exempt) and not is_covered(file, deps)
    )


def code_deps(stage: str, dvc: dict) -> list[str]:
    return [dep for dep in dvc["stages"][stage]["deps"] if dep.startswith((f"{PACKAGE}/", "stages/"))]


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def _stages() -> list[str]:
    return list(_dvc()["stages"])


@pytest.mark.parametrize("stage", _stages())
def test_every_module_a_stage_imports_is_a_dep(stage: str) -> None:
    dvc = _dvc()
    assert f"stages/{stage}.py" in dvc["stages"][stage]["deps"]
    missing = uncovered_imports(stage, dvc)
    assert not missing, f"stages/{stage}.py imports {missing}, which dvc.yaml's {stage} deps do not cover"


@pytest.mark.parametrize("stage", _stages())
def test_every_code_dep_of_a_stage_is_imported(stage: str) -> None:
    """The deps stay tight: a folder or file the stage no longer imports would re-run it for nothing."""
    dvc = _dvc()
    reached = import_closure(ROOT / "stages" / f"{stage}.py") | {f"stages/{stage}.py"}
    unused = [dep for dep in code_deps(stage, dvc) if not any(is_covered(file, [dep]) for file in reached)]
    assert not unused, f"dvc.yaml's {stage} deps list {unused}, which stages/{stage}.py never imports"
    exempt_listed = [dep for dep in code_deps(stage, dvc) if is_covered(dep, EXEMPT)]
    assert not exempt_listed, f"{stage} lists exempt modules {exempt_listed} as deps"


def test_the_exemption_is_the_one_dvc_yaml_documents() -> None:
    header = (ROOT / "dvc.yaml").read_text(encoding="utf-8").split("stages:", 1)[0]
    for path in EXEMPT:
        assert (ROOT / path).exists(), path
        assert path in header, f"dvc.yaml's header comment does not name the exempt {path}"


def test_an_import_the_deps_do_not_cover_is_found(tmp_path: Path) -> None:
    """The walk on a made-up project: a lazy import inside a function, reached through another module."""
    for name, text in {
        "pipeline/__init__.py": "",
        "pipeline/core/__init__.py": "",
        "pipeline/core/errors.py": "import os\n",
        "pipeline/data/__init__.py": "",
        "pipeline/data/load.py": "from pipeline.core import errors\n\ndef f():\n    from pipeline.model import net\n",
        "pipeline/model/__init__.py": "",
        "pipeline/model/net.py": "",
        "stages/fit.py": "from pipeline.data.load import f\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    exempt = ("pipeline/__init__.py", "pipeline/core/__init__.py", "pipeline/core/errors.py")
    dvc = {"stages": {"fit": {"deps": ["stages/fit.py", "pipeline/data"]}}}
    assert uncovered_imports("fit", dvc, tmp_path, exempt) == ["pipeline/model/__init__.py", "pipeline/model/net.py"]
    dvc["stages"]["fit"]["deps"].append("pipeline/model/")
    assert uncovered_imports("fit", dvc, tmp_path, exempt) == []


def _module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        parents = {".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 1)}
        graph[module] = imported_modules(path) - parents - {module}  # a module's own packages run before it
    return graph


def test_no_module_imports_itself_in_a_circle() -> None:
    try:
        tuple(graphlib.TopologicalSorter(_module_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_sub_packages_import_only_lower_layers() -> None:
    graphlib.TopologicalSorter(LAYERS).prepare()  # the layering itself has no circle
    packages = {path.name for path in (ROOT / PACKAGE).iterdir() if (path / "__init__.py").is_file()}
    assert packages == set(LAYERS), "every sub-package has a place in LAYERS"
    wrong = []
    for module, imported in _module_graph().items():
        if module.count(".") < 1 or module.split(".")[1] in TOP_MODULES:
            continue
        layer = module.split(".")[1]
        wrong += [
            f"{module} imports {name}"
            for name in imported
            if name.count(".") >= 1 and name.split(".")[1] not in LAYERS[layer] | {layer}
        ]
    assert not wrong, "\n".join(sorted(wrong))


def test_top_modules_sit_above_every_sub_package() -> None:
    """pipeline/cli.py may import any sub-package (see above); nothing in the package imports it."""
    tops = {path.stem for path in (ROOT / PACKAGE).glob("*.py")} - {"__init__"}
    assert tops == TOP_MODULES, "a module directly under pipeline/ sits above the sub-packages: name it in TOP_MODULES"
    top = {f"{PACKAGE}.{name}" for name in TOP_MODULES}
    wrong = [
        f"{module} imports {name}"
        for module, imported in _module_graph().items()
        if module not in top
        for name in imported & top
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_every_sub_package_says_what_lives_there() -> None:
    for init in sorted((ROOT / PACKAGE).glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and len(docstring.splitlines()) >= 2, f"{init} needs a docstring of two lines or more"


def _functions(path: Path) -> list[tuple[str, int]]:
    """Every function in a file (methods and nested ones included) with its length in lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree) if isinstance(node, kinds)]


def test_no_function_in_the_pipeline_or_the_stages_is_over_60_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {name} has {lines} lines"
        for folder in (PACKAGE, "stages")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name, lines in _functions(path)
        if lines > 60
    ]
    assert not long, "split these (docs/layout.md, 'How the code reads'):\n" + "\n".join(long)


@pytest.mark.parametrize("stage", _stages())
def test_a_stage_is_one_main_of_at_most_40_lines(stage: str) -> None:
    """A stage reads params, calls pipeline functions that return values, and writes and logs what they return."""
    functions = dict(_functions(ROOT / "stages" / f"{stage}.py"))
    assert list(functions) == ["main"], f"stages/{stage}.py defines {list(functions)}: logic belongs in pipeline/"
    assert functions["main"] <= 40, f"stages/{stage}.py's main has {functions['main']} lines"


# Module docstrings say what the module is for and why in at most this many lines; details go to the
# functions they describe or to docs/.
MODULE_DOCSTRING_LINES = 15
# Module docstrings allowed over the limit (none: a long account belongs in docs/ or in a function's docstring).
LONG_MODULE_DOCSTRINGS_PENDING: tuple[str, ...] = ()
# A date or a CPU's name in the code marks a measurement, which belongs in docs/benchmarks.md, cited by section.
MEASUREMENT_MARKS = r"\b\d{4}-\d{2}-\d{2}\b|\b(?:EPYC|Xeon|Ryzen)\b|\bCore i[0-9]\b"


def _docstrings_and_comments(source: str) -> list[tuple[int, str]]:
    """Every docstring (module, class, function) and every comment of a file, with the line it is on."""
    import io
    import tokenize

    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = [
        (getattr(node, "lineno", 1), ast.get_docstring(node, clean=False) or "")
        for node in ast.walk(ast.parse(source))
        if isinstance(node, kinds)
    ]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return found + [(token.start[0], token.string) for token in tokens if token.type == tokenize.COMMENT]


def test_docstrings_are_short_and_carry_no_measurements() -> None:
    """Module docstrings of at most MODULE_DOCSTRING_LINES lines; no date or CPU name in a docstring or comment."""
    import re

    long, marked = [], []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name, source = path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
        lines = len((ast.get_docstring(ast.parse(source), clean=False) or "").splitlines())
        if (lines > MODULE_DOCSTRING_LINES) != (name in LONG_MODULE_DOCSTRINGS_PENDING):
            long.append(f"{name}: a module docstring of {lines} lines")
        for line, text in _docstrings_and_comments(source):
            marked += [f"{name}:{line}: {match.group()}" for match in re.finditer(MEASUREMENT_MARKS, text)]
    assert not long, (
        f"module docstrings of at most {MODULE_DOCSTRING_LINES} lines; a pending one that fits leaves "
        "LONG_MODULE_DOCSTRINGS_PENDING:\n" + "\n".join(long)
    )
    assert not marked, "measurements go to docs/benchmarks.md, and the code cites the section:\n" + "\n".join(marked)
