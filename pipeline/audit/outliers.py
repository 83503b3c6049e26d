"""Outliers: images far from every training image (out of distribution, or not what the classes show).

An image's score is its mean cosine distance to its ``k`` nearest train images (train images: their k
nearest other train images). An image is an outlier when its score exceeds Q3 + 1.7 x IQR of the
train images' scores: the interquartile-range rule cleanlab's Datalab applies to the same kind of
score (its default threshold 0.37037 is that 1.7, ``OutlierIssueManager``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipeline.audit.neighbours import Graph
from pipeline.features.extraction import FeatureSet

IQR_SCALE = 1.7
COLUMNS = ["path", "split", "label", "score", "nearest_train", "nearest_distance"]


def outlier_limit(train_scores: np.ndarray) -> float:
    """Q3 + ``IQR_SCALE`` x IQR of the train images' scores."""
    q1, q3 = np.percentile(train_scores, [25, 75])
    return float(q3 + IQR_SCALE * (q3 - q1))


def outliers(graph: Graph, sets: Mapping[str, FeatureSet], k: int) -> tuple[pd.DataFrame, float]:
    """The images of every split whose score exceeds the limit, the farthest first, and the limit.

    Args:
        graph: ``neighbours.build_graph`` with at least ``k`` neighbours.
        sets: the splits' features with their paths and labels.
        k: neighbours averaged.
    """
    scores = outlier_scores(graph, k)
    limit = outlier_limit(scores["train"]) if len(scores["train"]) else float("inf")
    train_paths = sets["train"].paths
    records = []
    for name, values in scores.items():
        near = graph.to_train[name]
        for row in np.flatnonzero(values > limit):
            subset = sets[name]
            records.append(
                {
                    "path": str(subset.paths[row]),
                    "split": name,
                    "label": subset.classes[int(subset.labels[row])],
                    "score": round(float(values[row]), 6),
                    "nearest_train": str(train_paths[near.indices[row, 0]]),
                    "nearest_distance": round(float(near.distances[row, 0]), 6),
                }
            )
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame = frame.sort_values(["score", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return frame, limit


def outlier_scores(graph: Graph, k: int) -> dict[str, np.ndarray]:
    """Every image's score by split (for a ranking of all images, not only those over the limit)."""
    return {name: near.distances[:, :k].mean(axis=1) for name, near in graph.to_train.items()}
