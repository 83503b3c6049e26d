"""Benchmark: the default run, ``dvc repro`` of params.yaml as shipped (Fashion-MNIST), timed per stage.

Runs ``dvc repro`` in this repository (``--force``: every stage, as on a fresh clone; it re-locks dvc.lock),
timestamps each ``Running stage '<name>'`` line DVC prints, and writes ``benchmarks/results/default_run.json``:
the machine (CPU model and instruction set), seconds per stage (from one stage's start line to the next's, so
a stage's process start-up counts), the total, and what the run reached (test accuracy of the fine-tuned model
and the head alone, the input size ``auto`` chose, fine-tuning's paired verdict)::

    python -m benchmarks.default_run [--no-force]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, describe_machine, write_result

_STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def stage_seconds(events: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds per stage from ``(time, line)`` pairs: each stage from its start line to the next's (or ``end``)."""
    starts = [(moment, match.group(1)) for moment, line in events if (match := _STAGE_LINE.search(line))]
    bounds = [moment for moment, _ in starts[1:]] + [end]
    return {name: round(stop - start, 1) for (start, name), stop in zip(starts, bounds, strict=True)}


def run_timed(command: list[str]) -> tuple[list[tuple[float, str]], float]:
    """Run ``command`` in the repository, echoing its output; every line with the time it arrived."""
    started = time.perf_counter()
    events = []
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            events.append((time.perf_counter() - started, line.rstrip("\n")))
            print(line, end="", flush=True)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return events, time.perf_counter() - started


def summarize(events: list[tuple[float, str]], total: float) -> dict[str, Any]:
    """The result: machine, seconds per stage and in all, and what the run reached (from metrics/)."""
    metrics = {
        name: json.loads((REPO / "metrics" / f"{name}.json").read_text())
        for name in ("extract", "train_head", "finetune", "evaluate")
    }
    evaluate = metrics["evaluate"]
    meta = json.loads((REPO / "data" / "features" / "meta.json").read_text())
    return {
        "machine": describe_machine(),
        "command": "dvc repro --force (params.yaml as shipped: Fashion-MNIST)",
        "seconds": {"total": round(total, 1), **stage_seconds(events, total)},
        "image_size": meta["image_size"],
        "image_size_rule": meta.get("image_size_rule"),
        "test_accuracy": evaluate["finetuned"]["accuracy"],
        "head_only_test_accuracy": evaluate["head_only"]["accuracy"],
        "finetuned_vs_head": evaluate.get("finetuned_vs_head"),
        "test_images": evaluate["finetuned"]["n"],
        "trials": metrics["train_head"].get("trials"),
        "finetune_epochs_trained": metrics["finetune"].get("epochs_trained"),
        "finetune_kept_epoch": metrics["finetune"].get("kept_epoch"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-force", action="store_true", help="plain `dvc repro` (cached stages are skipped)")
    args = parser.parse_args()
    command = [str(Path(sys.executable).with_name("dvc")), "repro", *([] if args.no_force else ["--force"])]
    events, total = run_timed(command)
    result = summarize(events, total)
    path = write_result("default_run", result)
    print(
        f"default run: {result['seconds']['total'] / 60:.1f} min on {result['machine']['cpu']}, "
        f"test accuracy {result['test_accuracy']:.4f} → {path.relative_to(REPO)}"
    )


if __name__ == "__main__":
    main()
