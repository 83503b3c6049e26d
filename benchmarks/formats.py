"""Benchmark: what each image format costs the input pipeline, and through extract.

The same photos (512 flowers, 128x128) are written once in every format the pipeline reads: JPEG (the
originals), PNG, WebP (lossy, quality 90, and lossless), TIFF (8-bit, and 16-bit with deflate) and AVIF.
JPEG, PNG and BMP/GIF go through TensorFlow's decoders; WebP, TIFF and AVIF through Pillow
(``images.decode_with_pillow``) inside the same tf.data pipeline. For each format, in turns with the
others over five rounds (best pass kept, median recorded):

- ``decode``: ``inputs.image_dataset`` alone at 96 px (read, decode, crop, resize, batch);
- ``extract``: the extract stage's path at 96 px (the same, into the frozen EfficientNet-Lite0).

Writes ``benchmarks/results/formats.json``::

    python -m benchmarks.formats [--images 512]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import BATCH, FLOWERS, THREADS, describe_machine, rates, sample_images, set_threads, write_result
from pipeline.core import config
from pipeline.features import backbones, extraction, inputs

SIZE = 96
FORMATS = {  # name -> (suffix, how to write it from 8-bit RGB pixels)
    "JPEG": (".jpg", None),  # the original files
    "PNG": (".png", lambda pixels, path: Image.fromarray(pixels).save(path)),
    "WebP q90": (".webp", lambda pixels, path: Image.fromarray(pixels).save(path, quality=90)),
    "WebP lossless": (".webp", lambda pixels, path: Image.fromarray(pixels).save(path, lossless=True)),
    "TIFF 8-bit": (".tif", lambda pixels, path: Image.fromarray(pixels).save(path)),
    "TIFF 16-bit deflate": (".tif", lambda pixels, path: _write_tiff16(pixels, path)),
    "AVIF q90": (".avif", lambda pixels, path: Image.fromarray(pixels).save(path, quality=90)),
}


def _write_tiff16(pixels: np.ndarray, path: Path) -> None:
    import tifffile  # comes with scikit-image (test dependencies)

    tifffile.imwrite(path, pixels.astype(np.uint16) * 257, photometric="rgb", compression="zlib")


def write_formats(paths: list[Path], folder: Path) -> dict[str, list[Path]]:
    """The photos re-encoded in every format of ``FORMATS`` under ``folder``."""
    encoded: dict[str, list[Path]] = {}
    for name, (suffix, write) in FORMATS.items():
        if write is None:
            encoded[name] = paths
            continue
        out = folder / name.replace(" ", "_")
        out.mkdir()
        encoded[name] = []
        for index, path in enumerate(paths):
            with Image.open(path) as image:
                target = out / f"{index:04d}{suffix}"
                write(np.asarray(image.convert("RGB")), target)
                encoded[name].append(target)
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    set_threads(THREADS)
    params = config.load()
    model, _ = backbones.build_extractor(
        backbones.get("efficientnet_lite0"), SIZE, "imagenet", Path("."), params.path("weights")
    )
    forward = extraction.compile_forward(model)
    paths = sample_images(FLOWERS, args.images)
    with tempfile.TemporaryDirectory(prefix="headstart-formats-") as folder:
        encoded = write_formats(paths, Path(folder))
        sizes = {name: round(sum(p.stat().st_size for p in files_) / len(files_)) for name, files_ in encoded.items()}

        def decode(name: str) -> None:
            for _ in inputs.image_dataset(encoded[name], SIZE, "center", BATCH):
                pass

        def extract(name: str) -> None:
            batches = inputs.image_dataset(encoded[name], SIZE, "center", BATCH)
            extraction.compute_features(forward, batches, len(encoded[name]), "float32", f"extract {name}")

        runs = {
            f"{kind} {name}": functools.partial(decode if kind == "decode" else extract, name)
            for name in FORMATS
            for kind in ("decode", "extract")
        }
        measured = rates(args.images, runs)
    by_format = {
        name: {
            "bytes_per_image": sizes[name],
            "decode_images_per_s": measured[f"decode {name}"]["best"],
            "decode_images_per_s_median": measured[f"decode {name}"]["median"],
            "extract_images_per_s": measured[f"extract {name}"]["best"],
            "extract_images_per_s_median": measured[f"extract {name}"]["median"],
        }
        for name in FORMATS
    }
    jpeg = by_format["JPEG"]["extract_images_per_s"]
    for numbers in by_format.values():
        numbers["extract_vs_jpeg"] = round(numbers["extract_images_per_s"] / jpeg, 3)
    result = {
        "benchmark": "formats",
        "machine": describe_machine(),
        "data": f"{args.images} photos from shared/datasets/flowers (128x128), written in each format",
        "backbone": "efficientnet_lite0 (imagenet)",
        "image_size": SIZE,
        "batch_size": BATCH,
        "threads": THREADS,
        "formats": by_format,
    }
    write_result("formats", result)
    for name, numbers in by_format.items():
        print(f"{name:20s} {numbers}")


if __name__ == "__main__":
    main()
