"""``headstart``: one command for the tools around the pipeline, as ``dvc`` and ``mlflow`` are for theirs.

Each subcommand is the command line of one module, which still runs on its own as ``python -m <module>``::

    headstart predict photos/ --output predictions.csv    # pipeline.serving.predict
    headstart lineage --stage train_head                  # pipeline.tracking.lineage
    headstart registry list                               # pipeline.serving.registry
    headstart ui                                          # pipeline.tracking.ui (make ui)

The first word names the tool and everything after it is that tool's own command line, passed on
unchanged (``headstart predict --help`` is the predict module's help). A tool's module is imported
only when it runs: TensorFlow and MLflow take seconds to load, and ``headstart --help`` needs neither.
The pipeline itself runs through ``dvc repro``, not through this command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.errors import USER_ERROR_EXIT, run_cli

PROG = "headstart"
DISTRIBUTION = "headstart"  # the name in pyproject.toml, where the version is


@dataclass(frozen=True)
class Tool:
    """A subcommand: the module whose ``main(argv, prog=...)`` runs it, and its line in ``headstart --help``."""

    module: str
    summary: str


TOOLS = {
    "predict": Tool("pipeline.serving.predict", "the trained classifier, or a registered model, on image files"),
    "lineage": Tool("pipeline.tracking.lineage", "the stage runs behind a result, with DVC's hashes of their data"),
    "registry": Tool("pipeline.serving.registry", "the registered classifier's versions; promote one to champion"),
    "ui": Tool("pipeline.tracking.ui", "the MLflow UI on the embedded store, opened on the pipeline runs"),
}


def main(argv: Sequence[str] | None = None) -> None:
    """The ``headstart`` console script: run a tool, or print the help (exit 2 when no tool is named).

    Args:
        argv: the arguments after ``headstart`` (default: the process's).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    run_cli(lambda: dispatch(arguments))


def dispatch(argv: list[str]) -> None:
    """Hand ``argv[1:]`` to the tool ``argv[0]`` names; otherwise parse ``argv`` as headstart's own options."""
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]].module)
        module.main(argv[1:], prog=f"{PROG} {argv[0]}")
        return
    parser = build_parser()
    parser.parse_args(argv)  # --help and --version exit here, an unknown tool or option with status 2
    parser.print_help(sys.stderr)  # no tool named
    parser.exit(USER_ERROR_EXIT)


def build_parser() -> argparse.ArgumentParser:
    """headstart's own options and the list of tools (each tool's options are its module's)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reproducible transfer learning for image classifiers: the tools around the pipeline "
        "(`dvc repro` runs the pipeline itself). Run them from the repository root: they read params.yaml.",
        epilog=f"`{PROG} <command> --help` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    tools = parser.add_subparsers(title="commands", metavar="<command>")
    for name, tool in TOOLS.items():
        tools.add_parser(name, help=tool.summary, add_help=False)
    return parser


def version() -> str:
    """The installed version (``make setup`` installs the checkout); ``unknown`` when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run `make setup`)"


if __name__ == "__main__":
    main()
