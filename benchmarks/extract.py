"""Benchmark: how close the extract stage's input pipeline gets to the backbone's own speed.

Three ways to turn the same image files into features, measured in one run on the same images,
model, batch size and thread count:

- ``forward``: the backbone alone on images already decoded and resized, held in memory (the ceiling);
- ``extract``: the extract stage's path (``inputs.image_dataset`` + ``extraction.compute_features``);
- ``naive``: the lecture notes' loop: PIL-load each image, stack a batch, ``model.predict`` per batch.

Each path runs five passes, taken in turns with the others; the fastest pass is the result (the median is
recorded too), so one-off graph tracing counts against none of them. Per-dataset set-up (reading headers,
tracing the map function) is part of every extract pass. Writes ``benchmarks/results/extract.json``::

    python -m benchmarks.extract [--images 512] [--sizes 96 224]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import machine
from pipeline.core import config, files, runtime
from pipeline.features import backbones, extraction, inputs

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers"
RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 64
THREADS = 2


def sample_images(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs spread evenly over the classes, in a fixed order."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.jpg")) for c in classes]
    picked = [images[i] for i in range(max(map(len, per_class))) for images in per_class if i < len(images)]
    if len(picked) < count:
        raise SystemExit(f"{folder} has {len(picked)} images; {count} requested")
    return picked[:count]


def rates(count: int, runs: dict[str, Callable[[], None]], rounds: int = 5) -> dict[str, dict[str, float]]:
    """Images per second of each path, run in turns (one pass of each per round) so that drift in the
    machine's speed hits every path alike; the best and the median pass of each are kept."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {
        name: {"best": round(count / min(s), 1), "median": round(count / statistics.median(s), 1)}
        for name, s in seconds.items()
    }


def naive_features(model, paths: list[Path], size: int) -> np.ndarray:  # noqa: ANN001 - a Keras model
    """The seed-style loop: one PIL load per image, a stacked batch, ``model.predict`` per batch."""
    from PIL import Image

    out = []
    for start in range(0, len(paths), BATCH):
        batch = []
        for path in paths[start : start + BATCH]:
            with Image.open(path) as image:
                batch.append(np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32))
        out.append(model.predict(np.stack(batch), verbose=0))
    return np.concatenate(out)


def measure(size: int, paths: list[Path], cache_dir: Path) -> dict[str, float]:
    """Images/s of the three paths at one input size."""
    import tensorflow as tf

    model, _ = backbones.build_extractor(backbones.get("efficientnet_lite0"), size, "imagenet", Path("."), cache_dir)
    forward_fn = extraction.compile_forward(model)
    count = len(paths)
    decoded = [images for images in inputs.image_dataset(paths, size, "center", BATCH)]  # pre-decoded, in memory
    resident = [tf.identity(images) for images in decoded]

    def forward() -> None:
        extraction.compute_features(forward_fn, resident, count, "float32", f"forward {size}px")

    def extract() -> None:
        batches = inputs.image_dataset(paths, size, "center", BATCH)
        extraction.compute_features(forward_fn, batches, count, "float32", f"extract {size}px")

    measured = rates(
        count, {"forward": forward, "extract": extract, "naive": lambda: naive_features(model, paths, size)}
    )
    return {f"{name}_images_per_s": r["best"] for name, r in measured.items()} | {
        f"{name}_images_per_s_median": r["median"] for name, r in measured.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    args = parser.parse_args()
    runtime.configure(config.ComputeParams(threads=THREADS))
    params = config.load()
    paths = sample_images(FLOWERS, args.images)
    by_size = {}
    for size in args.sizes:
        by_size[size] = measure(size, paths, params.path("weights"))
        print(f"{size} px: {by_size[size]}")
    result = {
        "benchmark": "extract",
        "machine": machine.describe(),
        "data": f"{args.images} JPEGs from shared/datasets/flowers (128x128 photos)",
        "backbone": "efficientnet_lite0 (imagenet)",
        "batch_size": BATCH,
        "threads": THREADS,
        "sizes": by_size,
    }
    for size, rates in by_size.items():
        result[f"ratio_vs_forward_{size}"] = round(rates["extract_images_per_s"] / rates["forward_images_per_s"], 3)
        result[f"speedup_vs_naive_{size}"] = round(rates["extract_images_per_s"] / rates["naive_images_per_s"], 2)
    result["speedup_vs_naive"] = min(result[f"speedup_vs_naive_{size}"] for size in by_size)
    files.write_json(RESULTS / "extract.json", result)
    print({k: v for k, v in result.items() if k.startswith(("ratio", "speedup"))})


if __name__ == "__main__":
    main()
