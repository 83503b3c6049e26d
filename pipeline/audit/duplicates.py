"""Near-duplicates: pairs of images whose features are almost the same, and the leakage they cause.

A resized, re-encoded, flipped or slightly cropped copy of a training image in the test split is not
caught by the split stage's sha256 check, and it inflates the test score. Two images are
near-duplicates when the cosine distance of their L2-normalised features is under a threshold.

The default thresholds (``DEFAULT_THRESHOLDS``) are calibrated per backbone by planting flipped,
re-encoded, cropped and half-size copies of flowers and hymenoptera photos: each backbone's value finds
most copies and pairs no two distinct photos (``benchmarks/duplicate_threshold.py``; the figures are in
docs/benchmarks.md, "Near-duplicate threshold"). Other backbones are not calibrated: 0.10, and the docs
say so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from pipeline.audit.neighbours import Graph, Neighbours
from pipeline.features.extraction import FeatureSet

DEFAULT_THRESHOLDS = {"efficientnet_lite0": 0.10, "efficientnet_lite1": 0.10, "efficientnet_lite2": 0.12}
UNCALIBRATED_THRESHOLD = 0.10
TYPICAL_SHARE = 0.3  # auto never exceeds this share of the median nearest-neighbour distance in train
KINDS = ("train-test", "val-test", "train-val", "within train", "within val", "within test")  # test leaks first
COLUMNS = ["kind", "path_a", "label_a", "path_b", "label_b", "distance", "label_conflict", "identical_file"]


def choose_threshold(setting: str | float, backbone: str, typical: float) -> tuple[float, str]:
    """The threshold to use and where it comes from (``audit.duplicate_threshold``).

    ``auto``: the backbone's calibrated value, capped at ``TYPICAL_SHARE`` x ``typical`` (the median
    distance from a train image to its nearest other train image). The cap is for sets of look-alike
    images, where distinct images lie as close as copies of photos do: on Fashion-MNIST (28 px, upscaled
    to 64) the median is 0.106, and pairs at 0.03-0.035 are about half the same product, half not; at
    0.06 they are different products. On photos the cap rarely binds (flowers: 0.253 → 0.076;
    hymenoptera: 0.347 → 0.104).
    """
    if setting != "auto":
        return float(setting), "audit.duplicate_threshold"
    calibrated = DEFAULT_THRESHOLDS.get(backbone, UNCALIBRATED_THRESHOLD)
    origin = (
        f"calibrated for {backbone} with planted copies"
        if backbone in DEFAULT_THRESHOLDS
        else f"not calibrated for {backbone}: the general default"
    )
    cap = round(TYPICAL_SHARE * typical, 4)
    if cap < calibrated:
        return cap, (
            f"{TYPICAL_SHARE:g} x the median nearest-neighbour distance {typical:.3f} of the train images, "
            f"under the {calibrated:g} {origin}"
        )
    return calibrated, origin


def near_duplicates(graph: Graph, sets: Mapping[str, FeatureSet], threshold: float) -> pd.DataFrame:
    """Every pair of images closer than ``threshold``, by kind (train-val, ..., within test), nearest first.

    Args:
        graph: ``neighbours.build_graph`` of the same splits.
        sets: the splits' features with their paths, labels and sha256.
        threshold: the cosine distance under which a pair counts.

    Returns:
        One row per unordered pair (``COLUMNS``); ``label_conflict``: the two are filed under different
        classes; ``identical_file``: the same bytes (same sha256).
    """
    found: dict[tuple[str, int, str, int], float] = {}
    for name, near in graph.to_train.items():
        for row, column, distance in _close(near, threshold):
            if name == "train":
                key = ("train", min(row, column), "train", max(row, column))
            else:
                key = ("train", column, name, row)
            found[key] = min(distance, found.get(key, np.inf))
    held = [(name, row) for name in graph.held_out_splits for row in range(len(sets[name].paths))]
    for row, column, distance in _close(graph.held_out, threshold):
        (split_a, row_a), (split_b, row_b) = sorted((held[row], held[column]), key=_held_order(graph))
        key = (split_a, row_a, split_b, row_b)
        found[key] = min(distance, found.get(key, np.inf))
    records = [_record(key, distance, sets) for key, distance in found.items()]
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame["order"] = frame["kind"].map(KINDS.index)
    frame = frame.sort_values(["order", "distance", "path_a", "path_b"], kind="stable").drop(columns="order")
    return frame.reset_index(drop=True)


def _held_order(graph: Graph) -> Callable[[tuple[str, int]], tuple[int, int]]:
    """Sort key of a held-out member: val before test, then by row."""
    positions = {name: i for i, name in enumerate(graph.held_out_splits)}
    return lambda member: (positions[member[0]], member[1])


def _close(near: Neighbours, threshold: float) -> list[tuple[int, int, float]]:
    rows, columns = np.nonzero(near.distances < threshold)
    return [(int(r), int(near.indices[r, c]), float(near.distances[r, c])) for r, c in zip(rows, columns, strict=True)]


def _record(key: tuple[str, int, str, int], distance: float, sets: Mapping[str, FeatureSet]) -> dict[str, object]:
    split_a, row_a, split_b, row_b = key
    a, b = sets[split_a], sets[split_b]
    label_a, label_b = a.classes[int(a.labels[row_a])], b.classes[int(b.labels[row_b])]
    return {
        "kind": f"within {split_a}" if split_a == split_b else f"{split_a}-{split_b}",
        "path_a": str(a.paths[row_a]),
        "label_a": label_a,
        "path_b": str(b.paths[row_b]),
        "label_b": label_b,
        "distance": round(distance, 6),
        "label_conflict": label_a != label_b,
        "identical_file": str(a.sha256[row_a]) == str(b.sha256[row_b]),
    }
