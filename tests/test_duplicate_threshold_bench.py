"""benchmarks/duplicate_threshold.py: the planted copies, and the whole benchmark at its smallest (random
weights, a few tiny images: it checks the code, not the thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import duplicate_threshold, report

REPO = Path(__file__).resolve().parents[1]


def write_photos(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return root


def test_each_kind_of_copy_is_what_its_name_says() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    copies = {kind: duplicate_threshold.make_copy(image, kind) for kind in duplicate_threshold.COPIES}
    assert np.array_equal(np.asarray(copies["flip"]), np.asarray(image)[:, ::-1])
    assert copies["jpeg70"].size == image.size and not np.array_equal(np.asarray(copies["jpeg70"]), np.asarray(image))
    assert copies["crop90"].size == (54, 36)
    assert copies["half"].size == (30, 20)


def test_the_smallest_run_writes_every_figure_and_its_row(tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos", 4)
    out = tmp_path / "duplicate_threshold.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.duplicate_threshold", "--sets", str(photos), "--size", "32"]
        + ["--sample", "6", "--planted", "2", "--backbones", "efficientnet_lite0", "--weights", "none"]
        + ["--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    entry = result["sets"]["photos"]
    assert (entry["originals"], entry["planted"]) == (6, 2)
    found = entry["backbones"]["efficientnet_lite0"]
    assert found["threshold"] == 0.10  # the calibrated value the audit uses for Lite0
    assert set(found["copy_distance"]) == set(found["copies_found"]) == set(duplicate_threshold.COPIES)
    nearest = found["nearest_distinct"]
    assert len(nearest) == duplicate_threshold.NEAREST_PAIRS and nearest == sorted(nearest)  # of 6 x 5 / 2 pairs
    assert 0 <= found["distinct_pairs_under_threshold"] <= 15
    (row,) = report.duplicate_threshold_rows(result)
    assert row[0] == "Near-duplicate threshold, photos (32 px)" and "Lite0 at 0.1" in row[1]
