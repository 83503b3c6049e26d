"""Likely label errors and overlapping classes, found by confident learning (cleanlab).

``cleanlab.filter.find_label_issues`` (Northcutt et al., 2021, "Confident learning: estimating
uncertainty in dataset labels") counts, per pair of classes, the images whose out-of-sample
probability of another class exceeds that class's own average confidence, and flags that many of
the least likely given labels. Its list is ranked here by self-confidence (the probability of the
given label: lowest first). ``cleanlab.dataset.find_overlapping_classes`` reads the same counts as
a joint distribution of given and true labels, and names the class pairs the data itself mixes up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from cleanlab.dataset import find_overlapping_classes
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

COLUMNS = ["path", "split", "label", "suggested", "score", "suggested_probability"]


def label_issues(
    paths: Sequence[str] | np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    split: str,
) -> pd.DataFrame:
    """The images whose given label is likely wrong, the least likely first.

    Args:
        paths: one per row.
        labels: given class indices.
        probabilities: out-of-sample ``(n, classes)`` probabilities (no row's from a model that saw it).
        classes: class names by index.
        split: the split's name, a column of the result.

    Returns:
        One row per likely error: path, split, given label, suggested label (the most probable
        class), score (self-confidence, the probability of the given label) and the suggested
        label's probability; empty with these columns when none is found.
    """
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return pd.DataFrame(columns=COLUMNS)
    probabilities = _complete(probabilities)
    found = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(labels, probabilities, method="self_confidence")
    suggested = probabilities.argmax(axis=1)
    rows = np.asarray(found, dtype=int)
    return pd.DataFrame(
        {
            "path": np.asarray(paths)[rows],
            "split": split,
            "label": [classes[i] for i in labels[rows]],
            "suggested": [classes[i] for i in suggested[rows]],
            "score": [_significant(v) for v in scores[rows]],
            "suggested_probability": [_significant(v) for v in probabilities[rows, suggested[rows]]],
        },
        columns=COLUMNS,
    )


def overlapping_classes(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Class pairs the data mixes up, most first: cleanlab's estimate of how many images of each pair
    are filed under one class and belong to the other (either way), and that as a share of all images."""
    labels = np.asarray(labels, dtype=int)
    columns = ["class_a", "class_b", "overlapping_images", "joint_probability"]
    if len(np.unique(labels)) < 2:
        return pd.DataFrame(columns=columns)
    found = find_overlapping_classes(labels=labels, pred_probs=_complete(probabilities), class_names=list(classes))
    frame = pd.DataFrame(
        {
            "class_a": found["Class Name A"].astype(str),
            "class_b": found["Class Name B"].astype(str),
            "overlapping_images": found["Num Overlapping Examples"].astype(int),
            "joint_probability": found["Joint Probability"].astype(float).round(6),
        },
        columns=columns,
    )
    return frame[frame["overlapping_images"] > 0].reset_index(drop=True)


def _significant(value: float) -> float:
    """Four significant digits: a confident model's tiny probabilities stay distinguishable in the CSV."""
    return float(f"{float(value):.4g}")


def _complete(probabilities: np.ndarray) -> np.ndarray:
    """Rows that sum to one in float64 (cleanlab checks), without zero columns' NaNs."""
    values = np.clip(np.asarray(probabilities, dtype=np.float64), 0, None)
    return values / values.sum(axis=1, keepdims=True)
