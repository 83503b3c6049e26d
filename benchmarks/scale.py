"""Benchmark: the head trained on features larger than memory, and the audit on streamed features.

Synthetic features (class centres plus noise, float32, 1,280 wide) are written block by block in the extract
stage's on-disk format in a throw-away copy of the project; then, each as a child process that reports its
own peak resident memory (``workspace.run_measured``): ``stages.train_head`` on ``--rows`` train rows (one
trial, one epoch), one epoch of ``head.fit_head`` alone (``--epoch``), ``stages.audit`` on ``--audit-rows``
rows, and at the default run's 70,000 rows an epoch from arrays in memory against one from the memory-mapped
files (``--small``), interleaved. The features are deleted afterwards. Results: docs/scale.md.

Writes ``benchmarks/results/scale.json``::

    python -m benchmarks.scale [--rows 1000000] [--audit-rows 20000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, describe_machine, write_result
from benchmarks.workspace import create_workspace, repository_params, run_measured, scratch_folder
from pipeline.core import files

WIDTH = 1280
CLASSES = 10
VAL_ROWS = 20_000
SMALL_ROWS = 70_000
CHUNK = 65_536


def write_synthetic(folder: Path, name: str, rows: int, seed: int) -> None:
    """A split of synthetic features in the extract stage's format, written a chunk of rows at a time."""
    from pipeline.features import extraction

    rng = np.random.default_rng([seed, rows])
    centres = np.random.default_rng(0).normal(size=(CLASSES, WIDTH)).astype(np.float32)
    labels = rng.integers(0, CLASSES, rows)

    def blocks():
        for start in range(0, rows, CHUNK):
            chunk = labels[start : start + CHUNK]
            yield centres[chunk] + 3 * rng.standard_normal((len(chunk), WIDTH), dtype=np.float32)

    files.write_npy_blocks(folder / f"{name}.npy", blocks(), rows, WIDTH, "float32")
    paths = np.array([f"images/{c}/{i:07d}.png" for i, c in enumerate(labels)])
    sha256 = np.array([f"{i:064x}" for i in range(rows)])
    extraction.write_rows(folder / f"{name}.npz", labels, paths, sha256, [f"class_{c}" for c in range(CLASSES)])


def scale_params() -> dict[str, Any]:
    """params.yaml with one random-search trial and one epoch."""
    params = repository_params()
    params["tune"].update({"enabled": True, "algorithm": "random", "max_trials": 1})
    params["train_head"]["epochs"] = 1
    return params


def fit_one_epoch(folder: Path) -> dict[str, float]:
    """One epoch of ``head.fit_head`` on the split files in ``folder``, as train_head runs it (child mode)."""
    from pipeline.core.config import TrainHeadParams
    from pipeline.features import extraction
    from pipeline.training import fitting, head

    train, val = (extraction.read_feature_set(folder / f"{name}.npz") for name in ("train", "val"))
    started = time.perf_counter()
    scale = head.feature_scale(train.features)
    scale_s = time.perf_counter() - started
    params = repository_params()["train_head"]
    settings = head.HeadSettings.from_values(params)
    fitting.seed_everything(0)
    model = head.build_head(WIDTH, CLASSES, settings, scale)
    started = time.perf_counter()
    head.fit_head(model, train, val, settings, TrainHeadParams(**{**params, "epochs": 1}), "val_accuracy")
    return {"scale_s": round(scale_s, 1), "epoch_s": round(time.perf_counter() - started, 1)}


def compare_small(folder: Path) -> dict[str, list[float]]:
    """Seconds of the second of two epochs at ``SMALL_ROWS`` rows: arrays in memory vs the streamed files,
    interleaved (two rounds), so that a busy machine slows both alike."""
    import keras

    from pipeline.features import extraction
    from pipeline.training import fitting, head

    train, val = (extraction.read_feature_set(folder / f"{name}.npz") for name in ("train", "val"))
    in_memory = np.array(train.features), np.array(val.features)
    scale = head.feature_scale(in_memory[0])
    settings = head.HeadSettings(1, 256, "relu", 0.2, "adam", 1e-3, 128)
    times: dict[str, list[float]] = {"arrays": [], "stream": []}

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.last = time.perf_counter() - self.start

    for _ in range(2):
        for way in times:
            fitting.seed_everything(0)
            model, clock = head.build_head(WIDTH, CLASSES, settings, scale), Clock()
            if way == "arrays":
                model.fit(
                    in_memory[0],
                    train.labels,
                    validation_data=(in_memory[1], val.labels),
                    batch_size=settings.batch_size,
                    epochs=2,
                    verbose=0,
                    callbacks=[clock],
                )
            else:
                model.fit(
                    head.stream_batches(train.features, train.labels, settings.batch_size, 0),
                    validation_data=head.stream_batches(val.features, val.labels, settings.batch_size),
                    epochs=2,
                    verbose=0,
                    callbacks=[clock],
                )
            times[way].append(round(clock.last, 2))
    return times


def run_child(root: Path, mode: str, folder: Path) -> tuple[dict[str, Any], float]:
    """This module in ``mode`` (``--epoch`` / ``--small``) as a child process: its JSON answer and peak MiB."""
    answer = root / f"{mode.strip('-')}.json"
    peak, _ = run_measured(  # run from the repository (the workspace has no benchmarks package), logged in root
        REPO, "benchmarks.scale", mode, str(folder), "--answer", str(answer), log=root / f"{mode.strip('-')}.log"
    )
    return files.read_json(answer), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="train rows (1,280 float32 each)")
    parser.add_argument("--audit-rows", type=int, default=20_000, help="train rows for the audit")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary folder)")
    parser.add_argument("--epoch", type=Path, help=argparse.SUPPRESS)  # child mode: one epoch on this folder
    parser.add_argument("--small", type=Path, help=argparse.SUPPRESS)  # child mode: the 70k comparison
    parser.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epoch or args.small:
        answer = fit_one_epoch(args.epoch) if args.epoch else compare_small(args.small)
        args.answer.write_text(json.dumps(answer))
        return
    started = time.perf_counter()
    with scratch_folder(args.keep, "headstart-scale-") as scratch:
        params = scale_params()
        root = scratch / "workspace"
        create_workspace(root, params)
        features = root / params["paths"]["features"]
        write_synthetic(features, "train", args.rows, 1)
        write_synthetic(features, "val", VAL_ROWS, 2)
        files.write_json(features / "meta.json", {"backbone": params["backbone"]["name"], "feature_width": WIDTH})
        stage_peak, stage_s = run_measured(root, "stages.train_head")
        print(f"train_head on {args.rows} x {WIDTH}: peak RSS {stage_peak} MiB, {stage_s} s", flush=True)
        epoch, epoch_peak = run_child(root, "--epoch", features)
        print(f"fit_head one epoch: {epoch}, peak RSS {epoch_peak} MiB", flush=True)
        write_synthetic(features, "train", SMALL_ROWS, 1)
        small, _ = run_child(root, "--small", features)
        print(f"{SMALL_ROWS} rows, seconds per epoch: {small}", flush=True)
        write_synthetic(features, "train", args.audit_rows, 1)
        write_synthetic(features, "val", args.audit_rows // 10, 2)
        write_synthetic(features, "test", args.audit_rows // 10, 3)
        audit_peak, audit_s = run_measured(root, "stages.audit")
        print(f"audit on {args.audit_rows} train rows: peak RSS {audit_peak} MiB, {audit_s} s", flush=True)
    result = {
        "benchmark": "scale",
        "machine": describe_machine(),
        "data": f"synthetic features, {CLASSES} classes, float32 x {WIDTH}; val {VAL_ROWS} rows",
        "rows": args.rows,
        "features_gb": round(args.rows * WIDTH * 4 / 1e9, 2),
        "train_head_peak_rss_mb": stage_peak,
        "train_head_s": stage_s,
        "trials": 1,
        "search_samples": params["tune"]["search_samples"],
        "epoch_s": epoch["epoch_s"],
        "feature_scale_s": epoch["scale_s"],
        "fit_peak_rss_mb": epoch_peak,
        "small_rows": SMALL_ROWS,
        "small_epoch_s": small,
        "audit_rows": args.audit_rows,
        "audit_peak_rss_mb": audit_peak,
        "audit_s": audit_s,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result("scale", result)
    print({k: v for k, v in result.items() if k != "machine"})


if __name__ == "__main__":
    main()
