"""``headstart``: the installed console script (``make setup``), run as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEADSTART = BIN / "headstart"
# An option (or sub-subcommand) each tool has and no other one does: its own help is shown, not headstart's.
OWN_OPTION = {"predict": "--runtime", "lineage": "--code", "registry": "promote", "ui": "--port"}


def headstart(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``headstart`` script, without a tracking URI from the test's environment."""
    assert HEADSTART.is_file(), f"{HEADSTART} is missing: `make setup` installs the project (pip install -e .)"
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment["PATH"] = f"{BIN}:{os.environ['PATH']}"
    return subprocess.run(
        [str(HEADSTART), *args],
        cwd=cwd,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_tool() -> None:
    result = headstart("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: headstart ")
    for name in OWN_OPTION:
        assert f"\n    {name} " in result.stdout, f"{name} missing from:\n{result.stdout}"


def test_no_command_prints_the_help_and_exits_2() -> None:
    result = headstart()
    assert result.returncode == 2
    assert "predict" in result.stderr and "registry" in result.stderr
    assert result.stdout == ""


def test_an_unknown_command_exits_2_with_one_message() -> None:
    result = headstart("trian")
    assert result.returncode == 2
    assert "invalid choice: 'trian'" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_is_the_project_version() -> None:
    result = headstart("--version")
    assert result.returncode == 0, result.stderr
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert result.stdout.strip() == f"headstart {project['version']}"


def test_help_imports_none_of_the_tools() -> None:
    """``headstart --help`` stays fast: no tool's module, no TensorFlow, MLflow or pandas."""
    probe = (
        "import sys\n"
        "from pipeline import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('tensorflow', 'keras', 'mlflow', 'pandas', 'dvc', 'pipeline.serving', 'pipeline.tracking')\n"
        "print('loaded:', sorted(m for m in sys.modules if m.startswith(heavy)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "loaded: []"


@pytest.mark.parametrize("tool", list(OWN_OPTION))
def test_each_tool_shows_its_own_help(tool: str) -> None:
    result = headstart(tool, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: headstart {tool} ")
    assert OWN_OPTION[tool] in result.stdout
    others = {option for name, option in OWN_OPTION.items() if name != tool}
    assert not [option for option in others if option in result.stdout], result.stdout


def test_a_tools_arguments_pass_through_unchanged() -> None:
    """``--`` and what follows reach the tool as typed: argparse's usage error of the tool, status 2."""
    result = headstart("predict", "--batch-size", "0", "--", "-x.png")
    assert result.returncode == 2
    assert "headstart predict: error: --batch-size must be at least 1" in result.stderr


def test_registry_list_on_a_fresh_embedded_store(tmp_path: Path) -> None:
    """No MLFLOW_TRACKING_URI: the embedded sqlite store of params.yaml's ``paths.mlflow_db``, created empty."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    result = headstart("registry", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "headstart-classifier: no versions registered yet\n"
    assert (tmp_path / "mlflow.db").is_file()


def test_a_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Outside a checkout (no params.yaml), the tool's UserError is one message, not a traceback."""
    result = headstart("registry", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: not found (run from the repository root, where params.yaml lives)"
    ]


def test_an_unreachable_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    missing = tmp_path / "gone" / "mlflow.db"
    result = headstart("registry", "list", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{missing}"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: MLflow tracking store sqlite:///{missing}: folder ")


def test_python_dash_m_still_runs_each_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.serving.predict", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pipeline.serving.predict ")
    assert "--runtime" in result.stdout
