"""Benchmark: the frozen forward pass on each runtime (TensorFlow, TFLite with XNNPACK, ONNX Runtime).

EfficientNet-Lite0 with its ImageNet weights, at 96 and 224 px, batch 64 and batch 1, on decoded
flower photos held in memory (the backbone alone, no decoding). Every runtime runs the same frozen
graph (``pipeline/features/runtimes.py``); in each round every runtime takes its turn on the same
images, so drift in the machine's speed hits all alike; the best round is the result (the median is
kept too). Beside the speeds: the largest absolute and relative difference of each runtime's
features from TensorFlow's, its conversion time, and how long ``compute.runtime: auto`` takes to
choose. With ``--emulate-avx2`` the whole measurement is repeated in a child process with
``ONEDNN_MAX_CPU_ISA=AVX2`` (TensorFlow's oneDNN kernels limited to AVX2; XNNPACK and ONNX Runtime
have no such switch and keep their AVX-512 kernels). Writes the key ``inference`` of
``benchmarks/results/runtimes.json``, leaving the file's other keys as they are::

    python -m benchmarks.runtimes [--sizes 64 96 224] [--batches 64 1] [--threads 2] [--emulate-avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import FLOWERS, RESULTS, THREADS, describe_machine, sample_images, set_threads
from pipeline.core import config, files
from pipeline.features import backbones, inputs, runtimes

RESULT = RESULTS / "runtimes.json"  # shared with benchmarks.training_speed: each writes its own key
ROUNDS = 12
IMAGES_PER_ROUND = {64: 64, 1: 8}  # per runtime and round: short rounds, so that the best falls in a quiet moment


def measure_size(size: int, batch_sizes: list[int], cache_dir: Path, threads: int) -> dict[str, Any]:
    """Speeds, differences and conversion times of every runtime at one input size."""
    import tensorflow as tf

    model, _ = backbones.build_extractor(backbones.get("efficientnet_lite0"), size, "imagenet", Path("."), cache_dir)
    frozen = runtimes.freeze(model)
    forwards, convert_s = {}, {}
    for name, build in (
        ("tensorflow", lambda: runtimes.compile_tensorflow(frozen)),
        ("tflite", lambda: runtimes.compile_tflite(frozen, threads)),
        ("onnx", lambda: runtimes.compile_onnx(frozen, threads)),
    ):
        start = time.perf_counter()
        forwards[name] = build()
        convert_s[name] = round(time.perf_counter() - start, 2)
    pixels = np.concatenate(list(inputs.image_dataset(sample_images(FLOWERS, 128), size, "center", 64)))
    reference = forwards["tensorflow"](tf.constant(pixels)).numpy()
    result: dict[str, Any] = {"convert_seconds": convert_s, "difference_vs_tensorflow": {}, "batches": {}}
    for name, forward in forwards.items():
        values = forward(tf.constant(pixels)).numpy()
        diff = np.abs(values.astype(np.float64) - reference)
        result["difference_vs_tensorflow"][name] = {
            "max_abs": float(diff.max()),
            "max_rel": float(diff.max() / np.abs(reference).max()),
            "repeats_bitwise": bool(np.array_equal(values, forward(tf.constant(pixels)).numpy())),
        }
    for batch in batch_sizes:
        result["batches"][str(batch)] = measure_batch(forwards, pixels, batch)
        print(f"{size} px, batch {batch}: {result['batches'][str(batch)]}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        chosen, _, how = runtimes.choose(model, "auto", 64, threads, Path(scratch))
        result["auto"] = {"batch": 64, "runtime": chosen, "seconds": round(time.perf_counter() - start, 1), **how}
    return result


def measure_batch(forwards: dict[str, Any], pixels: np.ndarray, batch: int) -> dict[str, Any]:
    """Images/s of each runtime at one batch size, interleaved round by round."""
    import tensorflow as tf

    count = IMAGES_PER_ROUND[batch]
    chunks = [tf.constant(pixels[i : i + batch]) for i in range(0, count, batch)]
    for forward in forwards.values():
        forward(chunks[0]).numpy()  # warm-up (and the resize to this batch size)
    seconds: dict[str, list[float]] = {name: [] for name in forwards}
    for _ in range(ROUNDS):
        for name, forward in forwards.items():
            start = time.perf_counter()
            for chunk in chunks:
                forward(chunk).numpy()
            seconds[name].append(time.perf_counter() - start)
    best = {name: count / min(s) for name, s in seconds.items()}
    return {
        name: {
            "images_per_s": round(best[name], 1),
            "images_per_s_median": round(count / statistics.median(s), 1),
            "vs_tensorflow": round(best[name] / best["tensorflow"], 2),
        }
        for name, s in seconds.items()
    }


def measure_all(sizes: list[int], batch_sizes: list[int], threads: int) -> dict[str, Any]:
    """Every size in this process, with the machine and the oneDNN ISA limit in force."""
    set_threads(threads)
    cache_dir = config.load().path("weights")
    return {
        "machine": describe_machine(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "sizes": {str(size): measure_size(size, batch_sizes, cache_dir, threads) for size in sizes},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1], choices=sorted(IMAGES_PER_ROUND))
    parser.add_argument("--threads", type=int, default=THREADS, help="compute.threads for every runtime")
    parser.add_argument("--emulate-avx2", action="store_true", help="repeat with ONEDNN_MAX_CPU_ISA=AVX2")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # print JSON, write nothing
    args = parser.parse_args()
    started = time.perf_counter()
    measured = measure_all(args.sizes, args.batches, args.threads)
    if args.child:
        print("RESULT " + json.dumps(measured))
        return
    runs = {"native": measured}
    if args.emulate_avx2:
        command = [sys.executable, "-m", "benchmarks.runtimes", "--child", "--sizes", *map(str, args.sizes)]
        command += ["--batches", *map(str, args.batches), "--threads", str(args.threads)]
        child = subprocess.run(
            command, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, capture_output=True, text=True, check=True
        )
        line = next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))
        runs["onednn_avx2"] = json.loads(line.removeprefix("RESULT "))
    everything = files.read_json(RESULT) if RESULT.exists() else {}
    everything["inference"] = {
        "benchmark": "runtimes",
        "machine": measured["machine"],
        "seconds": round(time.perf_counter() - started, 1),
        "backbone": "efficientnet_lite0 (imagenet)",
        "data": "128 flower photos (shared/datasets/flowers), decoded and held in memory",
        "threads": args.threads,
        "rounds": ROUNDS,
        "note": "each ratio is measured in one process, runtimes in turns on the same images; best round",
        "runs": runs,
    }
    files.write_json(RESULT, everything)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
