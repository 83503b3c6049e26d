"""Benchmark: what ``dvc repro`` costs with nothing changed and after a head-only change, against a full run.

In a throw-away copy of the project (its own git + DVC repository and MLflow store, in a temporary folder),
on the flower photos (``shared/datasets/flowers`` through the ``folder`` source, ``data.max_per_class``
photos per class), with params.yaml's values otherwise:

- ``full_s``: the first ``dvc repro`` (every stage runs);
- ``noop_s``: ``dvc repro`` again with nothing changed (DVC compares hashes; no stage runs);
- ``head_change_s``: ``dvc repro`` after raising ``tune.max_trials``, a parameter only train_head reads;
  ``head_change_stages``: the stages that ran. The stages after train_head run only if the search picked
  another head: the same head is saved as the same bytes (``files.save_model``), and DVC skips the rest.

Writes ``benchmarks/results/repro.json``::

    python -m benchmarks.repro [--per-class 100] [--extra-trials 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from pathlib import Path

import yaml

from benchmarks import machine
from benchmarks.extract import FLOWERS, RESULTS
from benchmarks.workspace import create_workspace, run_in, scratch_folder, write_params
from pipeline.core import files

REPO = Path(__file__).resolve().parents[1]
_RUNNING = re.compile(r"Running stage '([^']+)'")


def flower_params(per_class: int) -> dict:
    """params.yaml with the flower photos as the folder source, ``per_class`` photos per class."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    params["data"].update(source="folder", folder=str(FLOWERS), max_per_class=per_class)
    params["split"]["use_existing"] = False
    return params


def timed_repro(root: Path) -> tuple[float, list[str]]:
    """Run ``dvc repro`` in ``root``; its wall seconds and the stages it ran, in order."""
    started = time.perf_counter()
    output = run_in(root, ("dvc", "repro"))
    return round(time.perf_counter() - started, 2), _RUNNING.findall(output)


def measure(root: Path, params: dict, extra_trials: int) -> dict:
    """The three ``dvc repro`` timings in the workspace at ``root``."""
    full_s, full_stages = timed_repro(root)
    print(f"full: {full_s} s ({', '.join(full_stages)})", flush=True)
    noop_s, noop_stages = timed_repro(root)
    print(f"nothing changed: {noop_s} s ({', '.join(noop_stages) or 'no stage ran'})", flush=True)
    trials = params["tune"]["max_trials"]
    params["tune"]["max_trials"] = trials + extra_trials
    write_params(root, params)
    head_change_s, head_change_stages = timed_repro(root)
    print(
        f"tune.max_trials {trials} → {trials + extra_trials}: {head_change_s} s ({', '.join(head_change_stages)})",
        flush=True,
    )
    return {
        "full_s": full_s,
        "full_stages": full_stages,
        "noop_s": noop_s,
        "noop_stages": noop_stages,
        "head_change": f"tune.max_trials: {trials} → {trials + extra_trials}",
        "head_change_s": head_change_s,
        "head_change_stages": head_change_stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="flower photos per class (data.max_per_class)")
    parser.add_argument("--extra-trials", type=int, default=2, help="added to tune.max_trials for the head change")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    started = time.perf_counter()
    with scratch_folder(args.keep, "headstart-repro-") as scratch:
        params = flower_params(args.per_class)
        root = scratch / "workspace"
        create_workspace(root, params)
        result = {
            "benchmark": "repro",
            "machine": machine.describe(),
            "data": f"shared/datasets/flowers, {args.per_class} photos per class (5 classes)",
            "params": "params.yaml otherwise (backbone, image size, search, fine-tuning, export)",
            **measure(root, params, args.extra_trials),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    files.write_json(RESULTS / "repro.json", result)


if __name__ == "__main__":
    main()
