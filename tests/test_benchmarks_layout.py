"""The benchmarks stand alone: none imports another, the one list of them (``benchmarks/report.py``) names
every benchmark module, and ``make bench`` takes that list from there instead of typing it again.

The import check reads the source (``ast``): an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# The modules that are not benchmarks, and what of ``benchmarks`` each kind may import.
HELPERS = {"__init__": set(), "common": set(), "workspace": {"common"}, "report": {"common"}, "baselines": {"common"}}
A_BENCHMARK_MAY_IMPORT = {"common", "workspace", "baselines"}


def imported_from_benchmarks(source: str, package: str = "benchmarks") -> set[str]:
    """The modules of ``benchmarks`` a file imports, by their name under it (``extract`` for
    ``benchmarks.extract.RESULTS``, ``from benchmarks import extract`` or ``import benchmarks.extract``).

    Args:
        source: the file's text.
        package: the package the file is in (for relative imports).
    """
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("benchmarks.")}
    return found


def benchmark_modules() -> set[str]:
    """Every ``benchmarks/<name>.py`` that is not a helper."""
    return {path.stem for path in BENCHMARKS.glob("*.py")} - set(HELPERS)


def test_the_import_reader_finds_every_form(tmp_path: Path) -> None:
    source = (
        "from benchmarks import memory, common\n"
        "import benchmarks.tuning\n"
        "def f():\n    from benchmarks.extract import RESULTS\n"
        "from . import repro\n"
        "import numpy\n"
    )
    assert imported_from_benchmarks(source) == {"memory", "common", "tuning", "extract", "repro"}
    assert imported_from_benchmarks("from .. import accuracy\n", "benchmarks.baselines") == {"accuracy"}


def test_no_benchmark_imports_another_benchmark() -> None:
    benchmarks = benchmark_modules()
    files = [*BENCHMARKS.glob("*.py"), *(BENCHMARKS / "baselines").glob("*.py")]
    assert len(benchmarks) > 10 and (BENCHMARKS / "baselines" / "__init__.py").is_file()
    wrong = []
    for path in sorted(files):
        kind = "baselines" if path.parent.name == "baselines" else path.stem
        package = "benchmarks.baselines" if kind == "baselines" else "benchmarks"
        allowed = HELPERS.get(kind, A_BENCHMARK_MAY_IMPORT)
        imported = imported_from_benchmarks(path.read_text(encoding="utf-8"), package)
        wrong += [f"{path.relative_to(ROOT)} imports benchmarks.{name}" for name in sorted(imported - allowed)]
    assert not wrong, "a benchmark imports only benchmarks.common, .workspace and .baselines:\n" + "\n".join(wrong)


def test_the_one_list_names_every_benchmark_once_with_its_row() -> None:
    listed = [*report.BENCHMARKS, *report.OPTIONAL, *report.BY_HAND]
    assert len(listed) == len(set(listed)), "a benchmark listed twice"
    assert set(listed) == benchmark_modules(), "BENCHMARKS, OPTIONAL or BY_HAND in benchmarks/report.py"
    assert set(report.ROWS) == {*report.BENCHMARKS, *report.OPTIONAL}, "each tabled benchmark has its rows"


def test_make_bench_runs_the_list_from_report(capsys: pytest.CaptureFixture[str]) -> None:
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bench:"))
    recipe = lines[start + 1 : start + 3]
    assert recipe[0] == "\tpython -m benchmarks.report --run-all" and not recipe[1].startswith("\t"), recipe
    report.main(["--list"])
    assert capsys.readouterr().out.split() == list(report.BENCHMARKS)


@pytest.mark.parametrize("name", sorted(benchmark_modules()))
def test_a_benchmark_says_what_and_why_briefly(name: str) -> None:
    docstring = ast.get_docstring(ast.parse((BENCHMARKS / f"{name}.py").read_text(encoding="utf-8"))) or ""
    assert docstring.startswith("Benchmark: "), f"benchmarks/{name}.py: a docstring saying what it measures"
    assert len(docstring.splitlines()) <= 15, f"benchmarks/{name}.py: numbers and details go to docs/benchmarks.md"
    assert f"python -m benchmarks.{name}" in docstring, f"benchmarks/{name}.py: how to run it"
