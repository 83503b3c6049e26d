"""Benchmark: the extract stage's peak memory at N and at 4N images.

Extract streams the images (decoded a few batches ahead of the network) and writes features into
one preallocated array, so only that array should grow with the number of images (4N x 1280
float32: 10 MB for 2,000 images). In a throw-away copy of the project on the flower photos
(``shared/datasets/flowers``, ``data.max_per_class`` = N / 5, params.yaml's values otherwise),
``dvc repro split`` prepares the split, then ``python -m stages.extract`` runs as a child process that
reports its own peak resident memory as it exits (``workspace.run_measured``); then again with 4N images.
Writes ``benchmarks/results/memory.json``::

    python -m benchmarks.memory [--n 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import describe_machine, write_result
from benchmarks.workspace import create_workspace, flower_params, run_in, run_measured, scratch_folder, write_params
from pipeline.core import files

CLASSES = 5  # the flower photos' classes


def measure_at(root: Path, params: dict, images: int) -> dict[str, float]:
    """Split ``images`` flower photos in the workspace, then extract them; peak memory and seconds."""
    params["data"]["max_per_class"] = images // CLASSES
    write_params(root, params)
    started = time.perf_counter()
    run_in(root, ("dvc", "repro", "split"))
    split_s = round(time.perf_counter() - started, 1)
    peak, extract_s = run_measured(root, "stages.extract")
    counts = files.read_json(root / params["paths"]["features"] / "meta.json")["counts"]
    print(f"{sum(counts.values())} images: extract peak RSS {peak} MiB ({extract_s} s)", flush=True)
    return {"images": sum(counts.values()), "peak_rss_mb": peak, "extract_s": extract_s, "split_s": split_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images in the smaller run (a multiple of 5)")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    started = time.perf_counter()
    with scratch_folder(args.keep, "headstart-memory-") as scratch:
        params = flower_params(args.n // CLASSES)
        root = scratch / "workspace"
        create_workspace(root, params)
        small, large = measure_at(root, params, args.n), measure_at(root, params, 4 * args.n)
        width = files.read_json(root / params["paths"]["features"] / "meta.json")["feature_width"]
    result = {
        "benchmark": "memory",
        "machine": describe_machine(),
        "data": f"shared/datasets/flowers, {args.n // CLASSES} then {4 * args.n // CLASSES} photos per class",
        "backbone": f"{params['backbone']['name']} ({params['backbone']['weights']}), "
        f"{params['backbone']['image_size']} px, batch {params['extract']['batch_size']}",
        "n": small["images"],
        "peak_rss_mb_n": small["peak_rss_mb"],
        "peak_rss_mb_4n": large["peak_rss_mb"],
        "growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1),
        "feature_array_mb_4n": round(large["images"] * width * 4 / 2**20, 1),
        "parts_s": {
            "extract_n": small["extract_s"],
            "extract_4n": large["extract_s"],
            "split_n": small["split_s"],
            "split_4n": large["split_s"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result("memory", result)
    print({k: v for k, v in result.items() if k.startswith(("n", "peak", "growth", "feature"))})


if __name__ == "__main__":
    main()
