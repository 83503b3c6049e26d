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
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BATCH, FLOWERS, THREADS, describe_machine, rates, sample_images, set_threads, write_result
from pipeline.core import config
from pipeline.features import backbones, extraction, inputs


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
    set_threads(THREADS)
    params = config.load()
    paths = sample_images(FLOWERS, args.images)
    by_size = {}
    for size in args.sizes:
        by_size[size] = measure(size, paths, params.path("weights"))
        print(f"{size} px: {by_size[size]}")
    result: dict[str, Any] = {
        "benchmark": "extract",
        "machine": describe_machine(),
        "data": f"{args.images} JPEGs from shared/datasets/flowers (128x128 photos)",
        "backbone": "efficientnet_lite0 (imagenet)",
        "batch_size": BATCH,
        "threads": THREADS,
        "sizes": by_size,
    }
    for size, speeds in by_size.items():
        result[f"ratio_vs_forward_{size}"] = round(speeds["extract_images_per_s"] / speeds["forward_images_per_s"], 3)
        result[f"speedup_vs_naive_{size}"] = round(speeds["extract_images_per_s"] / speeds["naive_images_per_s"], 2)
    result["speedup_vs_naive"] = min(result[f"speedup_vs_naive_{size}"] for size in by_size)
    write_result("extract", result)
    print({k: v for k, v in result.items() if k.startswith(("ratio", "speedup"))})


if __name__ == "__main__":
    main()
