"""Out-of-sample class probabilities for the train split: K-fold cross-validation on its cached features.

A label-error finder must judge each image by a model that never saw it. For the train split that is
K-fold cross-validation: the features are cut into ``folds`` stratified parts, and each part is
predicted by a linear classifier fitted on the other parts only. (The val and test splits are
predicted by the trained head, which never trained on them; the stage does that.)

The classifier is linear discriminant analysis with a shrunk covariance (scikit-learn's
``LinearDiscriminantAnalysis``, ``solver="lsqr"``): closed form, so an order of magnitude faster than a
logistic regression on large sets at nearly the same out-of-fold accuracy (see docs/benchmarks.md,
"Out-of-fold probabilities at scale"). Its probabilities are overconfident, so one temperature is fitted
to the out-of-fold log-probabilities (Guo et al., 2017, "On calibration of modern neural networks"): it
keeps every image's ranking and gives cleanlab's per-class thresholds probabilities that mean what they say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.features import store

SHRINKAGE = 0.3  # towards the scaled identity: invertible with fewer images than feature dimensions
FIT_MOST = 200_000  # rows a fold's classifier fits on at most (a seeded sample above): bounds memory on large sets
_PREDICT_ROWS = 65_536  # held-out rows read and predicted at a time


def linear_classifier() -> Any:
    """The per-fold classifier: shrunk-covariance LDA (any scikit-learn classifier with ``predict_log_proba``)."""
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage=SHRINKAGE)


def tiny_classifier() -> Any:
    """The classifier of a fold with no more images than classes, where LDA is undefined: a
    regularised logistic regression (scikit-learn), which fits on one image per class."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    folds: int,
    seed: int,
    make_classifier: Callable[[], Any] = linear_classifier,
) -> np.ndarray:
    """Each row's class probabilities from a classifier fitted without it.

    Args:
        features: ``(n, width)`` features, in memory or memory-mapped (read a fold at a time; a fold's
            classifier fits on a seeded sample of ``FIT_MOST`` rows where it has more).
        labels: ``(n,)`` class indices in ``range(classes)``.
        classes: the number of classes (columns of the result).
        folds: the number of folds; fewer when the rarest class has fewer images (at least 2).
        seed: the fold assignment's seed.
        make_classifier: a fresh scikit-learn classifier per fold (``tiny_classifier`` where a fold's
            training part has no more images than classes).

    Returns:
        ``(n, classes)`` float32 probabilities, temperature-scaled; a class missing from a fold's
        training part gets probability 0 for that fold's rows.

    Raises:
        ValueError: fewer than two images, or one class only.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=classes)
    present = counts[counts > 0]
    if len(labels) < 2 or len(present) < 2:
        raise ValueError("cross-validation needs at least two images of at least two classes")
    n_folds = int(max(2, min(folds, present.min())))
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    log_probs = np.full((len(labels), classes), -np.inf, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for fit_rows, held_rows in splitter.split(np.zeros((len(labels), 1)), labels):
        if len(fit_rows) > FIT_MOST:
            fit_rows = np.sort(rng.choice(fit_rows, FIT_MOST, replace=False))
        fit_labels = labels[fit_rows]
        tiny = len(fit_rows) <= len(np.unique(fit_labels))  # LDA needs more images than classes
        model = (tiny_classifier() if tiny else make_classifier()).fit(store.take_rows(features, fit_rows), fit_labels)
        columns = np.asarray(model.classes_, dtype=int)
        for start in range(0, len(held_rows), _PREDICT_ROWS):
            rows = held_rows[start : start + _PREDICT_ROWS]
            log_probs[np.ix_(rows, columns)] = _log_probabilities(model, store.take_rows(features, rows))
    temperature = fit_temperature(log_probs, labels)
    return np.exp(log_softmax(log_probs / temperature, axis=1)).astype(np.float32)


def _log_probabilities(model: Any, features: np.ndarray) -> np.ndarray:
    """Log-probabilities up to a constant per row, from the decision function where there is one: the
    probabilities of a confident linear model underflow to 0 and would tie every confident mistake."""
    if hasattr(model, "decision_function"):
        scores = np.asarray(model.decision_function(features), dtype=np.float64)
        return np.stack([-scores / 2, scores / 2], axis=1) if scores.ndim == 1 else scores
    return np.log(np.clip(model.predict_proba(features), 1e-300, None))


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the log loss of ``softmax(log_probs / T)`` (bounded to [0.05, 100])."""
    finite = np.where(np.isfinite(log_probs), log_probs, -1e30)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        scaled = log_softmax(finite / np.exp(log_t), axis=1)
        return float(-scaled[rows, labels].mean())

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(100.0)), method="bounded")
    return float(np.exp(result.x))
