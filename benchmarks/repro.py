"""Benchmark: what ``dvc repro`` costs with nothing changed and after a head-only change, against a full run.

In a throw-away copy of the project on the flower photos (``data.max_per_class`` per class, params.yaml
otherwise): the first ``dvc repro`` (``full_s``), again with nothing changed (``noop_s``), and after raising
``tune.max_trials``, a parameter only train_head reads (``head_change_s``, with the stages that ran). Then, at
the default project's size, in a finished run of it (``--workspace``, by default this repository, where
``benchmarks.default_run`` leaves one): ``dvc status`` and ``dvc repro`` with nothing changed, ``--repeat``
times each, interleaved, and ``dvc status <stage>`` per stage (the ``*_70k`` keys). A workspace that is not up
to date is not timed (``noop_70k_skipped`` says why). ``--skip-flowers`` measures only the default project;
``--dry`` times ``dvc repro --dry``, which can never run a stage. Results: docs/benchmarks.md, docs/scale.md.

Writes ``benchmarks/results/repro.json``::

    python -m benchmarks.repro [--per-class 100] [--extra-trials 2] [--keep DIR] [--skip-flowers] [--dry]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, RESULTS, describe_machine, write_result
from benchmarks.workspace import create_workspace, flower_params, run_in, scratch_folder, write_params
from pipeline.core import files

_RUNNING = re.compile(r"Running stage '([^']+)'")
UP_TO_DATE = "Data and pipelines are up to date."
DEFAULT_DATA = "Fashion-MNIST, params.yaml as shipped (a finished default run)"


class NotUpToDate(Exception):
    """The workspace has something for ``dvc repro`` to do, so its no-op cannot be timed."""


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


def timed_command(root: Path, command: tuple[str, ...]) -> tuple[float, float, str]:
    """Run ``command`` in ``root``: its wall seconds, its CPU seconds (user + system, its children included) and
    its standard output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = run_in(root, command)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return round(wall, 2), round(cpu, 2), output


def count_files(folder: Path) -> int:
    """The files under ``folder``, at any depth."""
    return sum(len(names) for _, _, names in os.walk(folder))


def measure_noop_at_scale(workspace: Path, repeat: int, dry: bool = False) -> dict:
    """``dvc status`` and ``dvc repro`` with nothing changed in a finished workspace, ``repeat`` times each,
    interleaved, then ``dvc status <stage>`` once for each stage.

    Args:
        workspace: a DVC project whose pipeline has run and is locked.
        repeat: runs of each command.
        dry: time ``dvc repro --dry`` (the same checks; no stage can run).

    Returns:
        The ``*_70k`` entries of the results (see the module's docstring).

    Raises:
        NotUpToDate: ``dvc status`` lists something to do.
        SystemExit: ``dvc repro`` ran a stage after all (the workspace changed meanwhile).
    """
    params = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8"))
    stages = list(yaml.safe_load((workspace / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    repro = ("dvc", "repro", "--dry") if dry else ("dvc", "repro")
    status_runs, repro_runs = [], []
    for _ in range(repeat):
        wall, _, output = timed_command(workspace, ("dvc", "status"))
        if output.strip() != UP_TO_DATE:
            raise NotUpToDate(f"`dvc status` in {workspace} lists changes:\n{output[-2000:]}")
        status_runs.append(wall)
        wall, cpu, output = timed_command(workspace, repro)
        ran = _RUNNING.findall(output)
        if ran:
            raise SystemExit(f"{' '.join(repro)} in {workspace} ran {', '.join(ran)}: the workspace changed meanwhile")
        repro_runs.append((wall, cpu))
        print(f"nothing changed: dvc status {status_runs[-1]} s, {' '.join(repro)} {wall} s ({cpu} s CPU)", flush=True)
    by_stage = {stage: timed_command(workspace, ("dvc", "status", stage))[0] for stage in stages}
    print("dvc status <stage>: " + ", ".join(f"{stage} {s} s" for stage, s in by_stage.items()), flush=True)
    best_wall, best_cpu = min(repro_runs)
    return {
        "noop_70k_s": best_wall,
        "noop_70k_cpu_s": best_cpu,
        "noop_70k_runs_s": [wall for wall, _ in repro_runs],
        "noop_70k_command": " ".join(repro),
        "status_70k_s": min(status_runs),
        "status_70k_runs_s": status_runs,
        "status_70k_by_stage_s": by_stage,
        "images_70k": count_files(workspace / params["paths"]["raw"]),
        "noop_70k_data": DEFAULT_DATA,
        "noop_70k_machine": describe_machine(),
    }


def measure_flowers(args: argparse.Namespace) -> dict:
    """The flower part: a full run, a no-op and a head-only change in a throw-away workspace."""
    started = time.perf_counter()
    with scratch_folder(args.keep, "headstart-repro-") as scratch:
        params = flower_params(args.per_class)
        root = scratch / "workspace"
        create_workspace(root, params)
        result = {
            "benchmark": "repro",
            "machine": describe_machine(),
            "data": f"shared/datasets/flowers, {args.per_class} photos per class (5 classes)",
            "params": "params.yaml otherwise (backbone, image size, search, fine-tuning, export)",
            **measure(root, params, args.extra_trials),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="flower photos per class (data.max_per_class)")
    parser.add_argument("--extra-trials", type=int, default=2, help="added to tune.max_trials for the head change")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary folder)")
    parser.add_argument(
        "--workspace", type=Path, default=REPO, help="a finished default run to time the no-op in (default: this repo)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of `dvc status` and of `dvc repro` at 70,000")
    parser.add_argument("--skip-flowers", action="store_true", help="only the default project; keep the flower figures")
    parser.add_argument("--dry", action="store_true", help="time `dvc repro --dry`, which can never run a stage")
    args = parser.parse_args()
    path = RESULTS / "repro.json"
    result = files.read_json(path) if args.skip_flowers and path.exists() else {"benchmark": "repro"}
    if not args.skip_flowers:
        result = measure_flowers(args)
    for key in [k for k in result if "_70k" in k]:
        del result[key]  # never leave an older measurement beside a newer one
    try:
        result.update(measure_noop_at_scale(args.workspace.resolve(), args.repeat, args.dry))
    except NotUpToDate as error:
        if args.skip_flowers:
            raise SystemExit(f"{error}\nrun `python -m benchmarks.default_run` first") from error
        print(f"the no-op at the default project's size is not measured: {error}", flush=True)
        result["noop_70k_skipped"] = f"{args.workspace} was not up to date (run python -m benchmarks.default_run first)"
    write_result("repro", result)


if __name__ == "__main__":
    main()
