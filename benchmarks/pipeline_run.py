"""Benchmark: what the record stage (one MLflow pipeline run per result) adds to a ``dvc repro``.

In a throw-away copy of the project on ``--per-class`` Fashion-MNIST images per class (Debian's
``dataset-fashion-mnist``), params.yaml's values otherwise (export: float32 only), the whole pipeline runs once. Then, ``--repeat`` times
each, interleaved:

- ``record_s``: ``dvc repro --force --single-item record``: DVC checks the stage, runs ``python -m stages.record``
  (a new pipeline run: MLflow's import, its settings, numbers, artifacts, nesting, the model version's link, the
  UI's saved view) and locks it;
- ``check_s``: ``dvc repro --single-item record`` with nothing to do: DVC's start and its check of the stage;
- ``added_s``: the median of ``record_s`` minus the median of ``check_s``: what the stage adds to a run that
  made a new result (the goal: at most 3 s on a 2-core CPU);
- ``command_s``: ``python -m stages.record`` alone, and ``import_mlflow_s``: ``python -c "import mlflow"``, the
  floor every stage that logs to MLflow pays (medians).

The stage's check on a no-op ``dvc repro`` is part of ``check_s``. Writes ``benchmarks/results/pipeline_run.json``::

    python -m benchmarks.pipeline_run [--per-class 30] [--repeat 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import yaml

from benchmarks import machine
from benchmarks.workspace import create_workspace, run_in, scratch_folder
from pipeline.core import files

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RECORD = "record"


def small_params(per_class: int) -> dict:
    """params.yaml with ``per_class`` Fashion-MNIST images per class, exported as float32 only: on a few dozen
    test images one float16 disagreement already fails export's 0.99 agreement, which is not measured here."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    params["data"]["max_per_class"] = per_class
    params["export"]["formats"] = ["float32"]
    return params


def timed(root: Path, command: tuple[str, ...]) -> float:
    """Run ``command`` in ``root``; its wall seconds."""
    started = time.perf_counter()
    run_in(root, command)
    return time.perf_counter() - started


def measure(root: Path, repeat: int) -> dict:
    """The interleaved timings in a finished workspace (see the module's docstring)."""
    runs: dict[str, list[float]] = {"record_s": [], "check_s": [], "command_s": [], "import_mlflow_s": []}
    commands = {
        "record_s": ("dvc", "repro", "--force", "--single-item", RECORD),
        "check_s": ("dvc", "repro", "--single-item", RECORD),
        "command_s": (sys.executable, "-m", f"stages.{RECORD}"),
        "import_mlflow_s": (sys.executable, "-c", "import mlflow"),
    }
    for round_ in range(repeat):
        for name, command in commands.items():
            runs[name].append(round(timed(root, command), 2))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in runs.items()), flush=True)
    medians = {name: round(statistics.median(values), 2) for name, values in runs.items()}
    return {
        **medians,
        "added_s": round(medians["record_s"] - medians["check_s"], 2),
        "runs_s": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30, help="Fashion-MNIST images per class")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds of each timing")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    started = time.perf_counter()
    with scratch_folder(args.keep, "headstart-pipeline-run-") as scratch:
        root = scratch / "workspace"
        create_workspace(root, small_params(args.per_class))
        full = timed(root, ("dvc", "repro"))
        print(f"the whole pipeline: {full:.0f} s", flush=True)
        result = {
            "benchmark": "pipeline_run",
            "machine": machine.describe(),
            "data": f"Fashion-MNIST, {args.per_class} images per class, params.yaml otherwise (export: float32)",
            "full_s": round(full, 1),
            **measure(root, args.repeat),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    files.write_json(RESULTS / "pipeline_run.json", result)
    print(f"record adds {result['added_s']} s (median of {args.repeat}; the command alone {result['command_s']} s)")


if __name__ == "__main__":
    main()
