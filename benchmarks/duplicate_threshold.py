"""Benchmark: does ``audit.duplicate_threshold: auto`` still separate copies of a photo from distinct photos?

The audit's calibrated thresholds (``pipeline.audit.duplicates.DEFAULT_THRESHOLDS``) came from this
measurement. For each photo set, a seeded sample of originals, and four planted copies of some of them
(horizontal flip, JPEG quality 70, a 90% centre crop, half the size); features extracted as the extract
stage does (centre crop) by every calibrated backbone, L2-normalised as the audit does. Per backbone: the
cosine distance of each kind of copy to its original, the nearest pairs of distinct originals, and at the
backbone's threshold the share of each kind of copy found and the distinct pairs wrongly paired. A change
to a backbone, its preprocessing or the input pipeline that moves the two apart shows here.

Writes ``benchmarks/results/duplicate_threshold.json``::

    python -m benchmarks.duplicate_threshold [--sets flowers hymenoptera] [--size 224] [--sample 300] [--planted 60]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import PHOTO_SETS, REPO, SEED, describe_machine, set_threads, write_result

COPIES = ("flip", "jpeg70", "crop90", "half")
NEAREST_PAIRS = 10  # the nearest distinct pairs recorded


def make_copy(image: Image.Image, kind: str) -> Image.Image:
    """One planted copy of ``image`` (a kind of ``COPIES``)."""
    if kind == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "jpeg70":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "crop90":
        w, h = image.size
        dw, dh = round(w * 0.05), round(h * 0.05)
        return image.crop((dw, dh, w - dw, h - dh))
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BICUBIC)


def plant_copies(folder: Path, sample: int, planted: int, out: Path) -> tuple[list[Path], list[tuple[int, str, Path]]]:
    """A seeded sample of the images under ``folder`` saved as PNG in ``out``, and ``COPIES`` of the first
    ``planted`` of them: the originals' paths and, per copy, (its original's index, kind, path)."""
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    rng = np.random.default_rng(SEED)
    chosen = [found[i] for i in sorted(rng.choice(len(found), min(sample, len(found)), replace=False))]
    originals, copies = [], []
    for n, path in enumerate(chosen):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        originals.append(out / f"o{n:05d}.png")
        image.save(originals[-1])
        for kind in COPIES if n < planted else ():
            copies.append((n, kind, out / f"c{n:05d}_{kind}.png"))
            make_copy(image, kind).save(copies[-1][2])
    return originals, copies


def distances(unit: np.ndarray, originals: int, copies: list[tuple[int, str, Path]]) -> dict[str, Any]:
    """Copy-to-original distances by kind and the distinct originals' pairwise distances (sorted)."""
    first, planted = unit[:originals], unit[originals:]
    by_kind = {
        kind: np.array([1 - float(planted[i] @ first[n]) for i, (n, k, _) in enumerate(copies) if k == kind])
        for kind in COPIES
    }
    upper = np.triu_indices(originals, 1)
    return {"copies": by_kind, "distinct": np.sort(1 - (first @ first.T)[upper])}


def measure_backbone(name: str, paths: list[Path], args: argparse.Namespace) -> np.ndarray:
    """Unit-length features of ``paths`` by backbone ``name`` at ``args.size``, as extract and the audit make them."""
    from pipeline.audit import neighbours
    from pipeline.features import backbones, extraction, inputs

    model, _ = backbones.build_extractor(backbones.get(name), args.size, args.weights, REPO, args.cache)
    values, _ = extraction.compute_features(
        extraction.compile_forward(model),
        inputs.image_dataset(paths, args.size, "center", 64),
        len(paths),
        "float32",
        name,
    )
    return neighbours.unit_rows(values)


def summarize(found: dict[str, Any], threshold: float) -> dict[str, Any]:
    """What one backbone's distances say about its threshold."""
    distinct = found["distinct"]
    return {
        "threshold": threshold,
        "copy_distance": {
            kind: {q: round(float(np.quantile(v, p)), 4) for q, p in (("median", 0.5), ("q90", 0.9), ("max", 1.0))}
            for kind, v in found["copies"].items()
        },
        "copies_found": {kind: round(float(np.mean(v < threshold)), 3) for kind, v in found["copies"].items()},
        "nearest_distinct": [round(float(d), 4) for d in distinct[:NEAREST_PAIRS]],
        "distinct_pairs_under_threshold": int(np.sum(distinct < threshold)),
    }


def measure_set(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every backbone's distances on one set's originals and planted copies."""
    from pipeline.audit import duplicates

    with tempfile.TemporaryDirectory(prefix="headstart-duplicates-") as scratch:
        originals, copies = plant_copies(folder, args.sample, args.planted, Path(scratch))
        paths = originals + [path for _, _, path in copies]
        per_backbone = {}
        for name in args.backbones:
            found = distances(measure_backbone(name, paths, args), len(originals), copies)
            threshold = duplicates.DEFAULT_THRESHOLDS.get(name, duplicates.UNCALIBRATED_THRESHOLD)
            per_backbone[name] = summarize(found, threshold)
            print(f"{folder.name} {name}: {per_backbone[name]}", flush=True)
    return {
        "folder": folder.name,
        "originals": len(originals),
        "planted": len(copies) // len(COPIES),
        "backbones": per_backbone,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.audit.duplicates import DEFAULT_THRESHOLDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(PHOTO_SETS), help="photo sets by name, or image folders")
    parser.add_argument("--size", type=int, default=224, help="the backbones' input size in pixels")
    parser.add_argument("--sample", type=int, default=300, help="originals drawn from each set")
    parser.add_argument("--planted", type=int, default=60, help="originals that get the four copies")
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_THRESHOLDS))
    parser.add_argument(
        "--weights", default="imagenet", help="none: random weights (checks the code, measures nothing)"
    )
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "weights", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="write here instead of benchmarks/results/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads()
    started = time.perf_counter()
    folders = {name: PHOTO_SETS[name][0] for name in args.sets if name in PHOTO_SETS}
    folders |= {Path(name).name: Path(name) for name in args.sets if name not in PHOTO_SETS}
    sets = {name: measure_set(folder, args) for name, folder in folders.items()}
    result = {
        "benchmark": "duplicate_threshold",
        "machine": describe_machine(),
        "image_size": args.size,
        "weights": args.weights,
        "copies": list(COPIES),
        "sets": sets,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"→ {write_result('duplicate_threshold', result, args.output)}")


if __name__ == "__main__":
    main()
