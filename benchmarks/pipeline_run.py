"""Benchmark: what the record stage (one MLflow pipeline run per result) adds to a ``dvc repro``.

In a throw-away copy of the project on ``--per-class`` Fashion-MNIST images per class, the whole pipeline runs
once per store: the embedded one (sqlite) and a real ``mlflow server`` on 127.0.0.1. Then, ``--repeat`` times
each, interleaved: the record stage forced (its previous pipeline run deleted first, untimed, so each does a
new result's whole work) and not forced (DVC's start and check alone). ``added_s`` is the difference of the
medians (the goal: at most 3 s on a 2-core CPU); ``command_s`` is ``python -m stages.record`` alone and
``import_s`` what it imports before its first request. Results: docs/benchmarks.md, "The pipeline run".

Writes ``benchmarks/results/pipeline_run.json`` (``embedded`` and ``server``)::

    python -m benchmarks.pipeline_run [--per-class 30] [--repeat 11] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import describe_machine, write_result
from benchmarks.workspace import create_workspace, repository_params, scratch_folder
from pipeline.core import files

RECORD = "record"
IMPORTS = {
    "embedded": "import mlflow, mlflow.store.tracking.sqlalchemy_store",
    "server": "import mlflow",
}


def small_params(per_class: int) -> dict:
    """params.yaml with ``per_class`` Fashion-MNIST images per class, exported as float32 only: on a few dozen
    test images one float16 disagreement already fails export's 0.99 agreement, which is not measured here."""
    params = repository_params()
    params["data"]["max_per_class"] = per_class
    params["export"]["formats"] = ["float32"]
    return params


def timed(root: Path, command: tuple[str, ...], tracking_uri: str | None) -> float:
    """Run ``command`` in ``root`` against a tracking store (None: the workspace's own); its wall seconds.

    Raises:
        SystemExit: the command failed (with the end of its output).
    """
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    started = time.perf_counter()
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {root}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (sqlite, proxied artifacts) until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=5).close()
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"mlflow server did not start: {folder / 'server.log'}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def measure(root: Path, store: str, tracking_uri: str | None, repeat: int) -> dict:
    """The interleaved timings in a finished workspace (see the module's docstring)."""
    commands = {
        "record_s": ("dvc", "repro", "--force", "--single-item", RECORD),
        "check_s": ("dvc", "repro", "--single-item", RECORD),
        "command_s": (sys.executable, "-m", f"stages.{RECORD}"),
        "import_s": (sys.executable, "-c", IMPORTS[store]),
    }
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeat):
        for name, command in commands.items():
            if name in ("record_s", "command_s"):
                delete_pipeline_run(root, tracking_uri)
            runs[name].append(round(timed(root, command, tracking_uri), 2))
        print(f"{store}, round {round_ + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in runs.items()), flush=True)
    medians = {name: round(statistics.median(values), 2) for name, values in runs.items()}
    return {**medians, "added_s": round(medians["record_s"] - medians["check_s"], 2), "runs_s": runs}


def delete_pipeline_run(root: Path, tracking_uri: str | None) -> None:
    """Delete the pipeline run ``metrics/record.json`` names, so that the next one nests every stage run again."""
    import mlflow

    record = files.read_json(root / "metrics" / f"{RECORD}.json")
    client = mlflow.MlflowClient(tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
    client.delete_run(record["mlflow"]["run_id"])


def measure_store(scratch: Path, store: str, per_class: int, repeat: int) -> dict:
    """A workspace whose runs go to ``store``: the whole pipeline once, then the timings."""
    root = scratch / store
    create_workspace(root, small_params(per_class))
    with contextlib.ExitStack() as stack:
        uri = stack.enter_context(mlflow_server(scratch / "mlflow-server")) if store == "server" else None
        full = timed(root, ("dvc", "repro"), uri)
        print(f"{store}: the whole pipeline {full:.0f} s", flush=True)
        return {"full_s": round(full, 1), **measure(root, store, uri, repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30, help="Fashion-MNIST images per class")
    parser.add_argument("--repeat", type=int, default=11, help="interleaved rounds of each timing")
    parser.add_argument(
        "--keep", type=Path, help="build the workspaces here and keep them (default: a temporary folder)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "pipeline_run",
        "machine": describe_machine(),
        "data": f"Fashion-MNIST, {args.per_class} images per class, params.yaml otherwise (export: float32)",
    }
    with scratch_folder(args.keep, "headstart-pipeline-run-") as scratch:
        for store in IMPORTS:
            result[store] = measure_store(scratch, store, args.per_class, args.repeat)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result("pipeline_run", result)
    for store in IMPORTS:
        print(f"{store} store: record adds {result[store]['added_s']} s (median of {args.repeat})")


if __name__ == "__main__":
    main()
