"""One-off experiment (2026-12-04): how far a re-encoded, flipped, cropped or resized copy of an image lies
from its original in a backbone's feature space, against how far distinct images lie from each other.
It calibrates ``audit.duplicate_threshold: auto`` (pipeline/audit/neighbours.py, DEFAULT_THRESHOLDS).

For each set, a seeded sample of originals gets four copies each (horizontal flip, JPEG quality 70, a
90% centre crop, half the size); the features are extracted as the extract stage does (centre crop);
printed: per backbone and input size, the largest cosine distance of each kind of copy to its original
and the smallest distances between distinct originals (the 10 nearest pairs), so a threshold can be
put between the two.

    python -m benchmarks.experiments.duplicate_threshold FOLDER SIZE [SAMPLE]
    # e.g. ../shared/datasets/flowers 224 300
"""

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.features import backbones, extraction, inputs

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
COPIES = ("flip", "jpeg70", "crop90", "half")


def make_copy(image: Image.Image, kind: str) -> Image.Image:
    """One planted copy of ``image``."""
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


def main() -> None:
    folder, size = Path(sys.argv[1]), int(sys.argv[2])
    sample = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    rng = np.random.default_rng(42)
    chosen = [found[i] for i in sorted(rng.choice(len(found), min(sample, len(found)), replace=False))]
    planted = chosen[: min(60, len(chosen))]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for n, path in enumerate(chosen):
            target = Path(tmp) / f"o{n:05d}.png"
            Image.open(path).convert("RGB").save(target)
            paths.append(target)
        copies = []
        for n, path in enumerate(planted):
            image = Image.open(path).convert("RGB")
            for kind in COPIES:
                target = Path(tmp) / f"c{n:05d}_{kind}.png"
                make_copy(image, kind).save(target)
                copies.append((n, kind, target))
        for name in BACKBONES:
            backbone = backbones.get(name)
            model, _ = backbones.build_extractor(backbone, size, "imagenet", Path("."), Path(".cache/weights"))
            forward = extraction.compile_forward(model)
            everything = paths + [c[2] for c in copies]
            batches = inputs.image_dataset(everything, size, "center", 64)
            values, _ = extraction.compute_features(forward, batches, len(everything), "float32", name)
            for centred in (False, True):
                shifted = values - values[: len(paths)].mean(axis=0) if centred else values
                unit = shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
                originals, planted_rows = unit[: len(paths)], unit[len(paths) :]
                similar = originals @ originals.T
                np.fill_diagonal(similar, -1)
                upper = np.triu_indices(len(paths), 1)
                order = np.argsort(1 - similar[upper])[:10]
                distinct = (1 - similar[upper])[order]
                by_kind = {
                    kind: np.array(
                        [1 - float(planted_rows[i] @ originals[n]) for i, (n, k, _) in enumerate(copies) if k == kind]
                    )
                    for kind in COPIES
                }
                print(
                    f"{folder.name} {name} {size}px {'centred' if centred else 'raw'}: copies (median/90%/max) "
                    + ", ".join(
                        f"{k} {np.median(v):.3f}/{np.quantile(v, 0.9):.3f}/{v.max():.3f}" for k, v in by_kind.items()
                    )
                    + f"; distinct (10 nearest pairs) {', '.join(f'{d:.3f}' for d in distinct)}",
                    flush=True,
                )
                if centred:
                    pairs = [(chosen[upper[0][i]].name, chosen[upper[1][i]].name) for i in order[:4]]
                    print("  nearest distinct:", pairs, flush=True)


if __name__ == "__main__":
    main()
