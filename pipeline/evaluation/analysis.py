"""Error analysis from the evaluate stage's predictions table: which images fail worst, which classes
are hardest, which classes are mistaken for which, and how confident right and wrong answers are.

Every function takes the predictions frame (``classifier.predictions_frame``: path, label, predicted,
confidence, loss, correct, ``p:<class>`` columns) and returns a small table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

PROBABILITY_PREFIX = "p:"


def class_names(predictions: pd.DataFrame) -> list[str]:
    """The class names, in index order, from the probability columns."""
    return [c.removeprefix(PROBABILITY_PREFIX) for c in predictions.columns if c.startswith(PROBABILITY_PREFIX)]


def probabilities(predictions: pd.DataFrame) -> np.ndarray:
    """The ``(n, classes)`` probability matrix."""
    columns = [c for c in predictions.columns if c.startswith(PROBABILITY_PREFIX)]
    return predictions[columns].to_numpy(dtype=np.float64)


def worst_errors(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` wrong predictions with the highest loss (the most confidently wrong first).

    Ties in loss keep the predictions' order, so the choice is the same on every run.
    """
    wrong = predictions.loc[~predictions["correct"].astype(bool)]
    ranked = wrong.sort_values("loss", ascending=False, kind="stable").head(count)
    return ranked[["path", "label", "predicted", "confidence", "loss"]].reset_index(drop=True)


def per_class_accuracy(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Accuracy (recall) of each class with its support and errors, the worst class first.

    Classes with the same accuracy are ordered by more support first, then by name.
    """
    grouped = predictions.groupby("label", sort=False)["correct"]
    frame = pd.DataFrame({"class": list(classes)})
    frame["support"] = frame["class"].map(grouped.size()).fillna(0).astype(int)
    frame["correct"] = frame["class"].map(grouped.sum()).fillna(0).astype(int)
    frame["errors"] = frame["support"] - frame["correct"]
    frame["accuracy"] = np.where(frame["support"] > 0, frame["correct"] / frame["support"].clip(lower=1), np.nan)
    ordered = frame.sort_values(
        ["accuracy", "support", "class"], ascending=[True, False, True], kind="stable", na_position="last"
    )
    return ordered[["class", "accuracy", "support", "errors"]].reset_index(drop=True)


def confused_pairs(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` most frequent (true → predicted) mistakes, with their share of the true class."""
    wrong = predictions.loc[~predictions["correct"].astype(bool)]
    support = predictions.groupby("label").size()
    pairs = wrong.groupby(["label", "predicted"]).size().rename("count").reset_index()
    pairs["share_of_class"] = pairs["count"] / pairs["label"].map(support)
    pairs = pairs.sort_values(["count", "label", "predicted"], ascending=[False, True, True], kind="stable")
    return pairs.rename(columns={"label": "true"}).head(count).reset_index(drop=True)


def confidence_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Mean and median top-class confidence of right and wrong answers, with their counts."""
    rows = []
    for name, correct in (("correct", True), ("wrong", False)):
        subset = predictions.loc[predictions["correct"].astype(bool) == correct, "confidence"]
        rows.append(
            {
                "predictions": name,
                "count": len(subset),
                "mean_confidence": subset.mean() if len(subset) else np.nan,
                "median_confidence": subset.median() if len(subset) else np.nan,
            }
        )
    return pd.DataFrame(rows)
