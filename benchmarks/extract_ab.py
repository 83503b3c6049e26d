"""Benchmark: extract's speed on JPEG photos in this checkout against an earlier commit, measured in turns.

A change to the input pipeline must not slow the usual case down. Both trees run the same measurement
(the extract stage's path: ``inputs.image_dataset`` + ``extraction.compute_features``, EfficientNet-Lite0
with its ImageNet weights, the same 512 flower JPEGs, batch 64, 2 threads) in fresh processes, taken in
turns (baseline, this checkout, baseline, ...) so that drift in the machine's speed hits both alike;
each process keeps its best of three passes per size, and each round gives one ratio (this checkout over
the baseline, measured minutes apart). Writes ``benchmarks/results/extract_ab.json``::

    python -m benchmarks.extract_ab --baseline 842ba01 [--rounds 3] [--sizes 96 224]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import FLOWERS, REPO, describe_machine, sample_images, write_result

# Run inside each tree (its own ``pipeline`` package): prints {size: best images/s}.
MEASURE = """
import json, sys, time
from pathlib import Path
import tensorflow as tf
from pipeline.features import backbones, extraction, inputs
tf.config.threading.set_intra_op_parallelism_threads(2)  # what compute.threads: 2 does, in any revision
tf.config.threading.set_inter_op_parallelism_threads(2)
paths, sizes, weights = [Path(p) for p in json.loads(sys.argv[1])], json.loads(sys.argv[2]), Path(sys.argv[3])
best = {}
for size in sizes:
    model, _ = backbones.build_extractor(backbones.get("efficientnet_lite0"), size, "imagenet", Path("."), weights)
    forward = extraction.compile_forward(model)
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        batches = inputs.image_dataset(paths, size, "center", 64)
        extraction.compute_features(forward, batches, len(paths), "float32", "ab")
        passes.append(len(paths) / (time.perf_counter() - start))
    best[size] = max(passes)
print("RESULT", json.dumps(best))
"""


def measure(tree: Path, paths: list[Path], sizes: list[int], weights: Path) -> dict[str, float]:
    """Best images/s per size of one fresh process running ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps([str(p) for p in paths]), json.dumps(sizes), str(weights)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    args = parser.parse_args()
    paths = sample_images(FLOWERS, args.images)
    weights = REPO / ".cache" / "weights"
    revision = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="headstart-ab-") as folder:
        baseline = Path(folder) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(baseline), revision], cwd=REPO, check=True)
        try:
            for round_ in range(args.rounds):
                for name, tree in (("baseline", baseline), ("current", REPO)):
                    runs[name].append(measure(tree, paths, args.sizes, weights))
                    print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False)
    by_size = {}
    for size in map(str, args.sizes):
        base = [r[size] for r in runs["baseline"]]
        current = [r[size] for r in runs["current"]]
        paired = [c / b for b, c in zip(base, current, strict=True)]  # the same round: the same machine speed
        by_size[size] = {
            "baseline_images_per_s": [round(v, 1) for v in base],
            "current_images_per_s": [round(v, 1) for v in current],
            "ratio_per_round": [round(r, 3) for r in paired],
            "median_ratio": round(statistics.median(paired), 3),
            "ratio_range": [round(min(paired), 3), round(max(paired), 3)],
        }
    result = {
        "benchmark": "extract_ab",
        "machine": describe_machine(),
        "baseline": revision,
        "current": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip(),
        "data": f"{args.images} JPEGs from shared/datasets/flowers (128x128 photos)",
        "rounds": args.rounds,
        "sizes": by_size,
    }
    write_result("extract_ab", result)
    print(json.dumps(by_size, indent=2))


if __name__ == "__main__":
    main()
