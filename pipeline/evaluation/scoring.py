"""Classification metrics for the evaluate stage: scikit-learn and SciPy compute them, this module sets conventions.

The fine-tuned model and the head-only model are scored by these same functions on the same test split, so
their numbers compare directly (``compare_finetuned_with_head`` pairs them image by image, ``describe_paired``
says in words whether fine-tuning paid). Every function is pure: arrays in, numbers out. ``sklearn.metrics``
computes the confusion matrix, per-class, macro and weighted precision, recall and F1, log loss, the ROC and PR
curves and their areas (one class at a time for one-vs-rest); ``scipy.stats.binomtest`` McNemar's exact test;
this module adds top-k accuracy (ties go to the true class), the reliability bins and calibration error, the
curve and plot tables, the paired verdict's wording and the input checks (the same messages everywhere).

Conventions: ``labels`` are integer class indices ``(n,)``, ``probabilities`` ``(n, k)``, ``binary_truth`` 0/1
(or bool) with the positive class's ``scores``. The predicted class is a row's arg-max, an exact tie going to the
lowest index. A ratio whose denominator is 0 (precision of a class never predicted, recall of a class never
present) is 0.0 (``zero_division=0``); ROC AUC without both outcomes, and average precision without positives,
are nan, without scikit-learn's warnings. No samples is a ValueError: an empty test split is a bug upstream.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning

# What the finetune stage did (``fine_tuning_outcome``): whether the model evaluate scores differs from the head.
FineTuning = Literal["trained", "kept_start", "off"]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Count samples by true class (rows) and predicted class (columns).

    Args:
        labels: true class indices, shape ``(n,)``.
        predicted: predicted class indices, shape ``(n,)``.
        num_classes: ``k``, the number of classes; classes that never occur still get a row and a column.

    Returns:
        A ``(k, k)`` integer matrix.

    Raises:
        ValueError: no samples, mismatched lengths, or an index outside ``[0, k)``.
    """
    labels = _class_indices(labels, num_classes, "labels")
    predicted = _class_indices(predicted, num_classes, "predicted")
    if len(labels) != len(predicted):
        raise ValueError(f"labels ({len(labels)}) and predicted ({len(predicted)}) differ in length")
    # Checked first because scikit-learn would silently drop an index outside ``labels``.
    return metrics.confusion_matrix(labels, predicted, labels=np.arange(num_classes))


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class, read off a confusion matrix.

    Args:
        confusion: a ``(k, k)`` matrix from ``confusion_matrix``.

    Returns:
        ``precision``, ``recall``, ``f1`` (float arrays, shape ``(k,)``; 0/0 counts as 0.0) and
        ``support`` (int array: true samples per class).
    """
    confusion = np.asarray(confusion)
    if not confusion.any():  # scikit-learn refuses all-zero weights; with no samples every ratio is 0/0, so 0.0
        zeros = np.zeros(len(confusion))
        return {"precision": zeros, "recall": zeros.copy(), "f1": zeros.copy(), "support": zeros.astype(np.int64)}
    true, predicted = np.indices(confusion.shape)
    # scikit-learn scores label pairs, not a matrix: one (true, predicted) pair per cell, weighted by its count.
    # zero_division=0 makes 0/0 a 0.0 without an UndefinedMetricWarning.
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        true.ravel(),
        predicted.ravel(),
        labels=np.arange(len(confusion)),
        sample_weight=confusion.ravel(),
        zero_division=0,
    )
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` most probable.

    Tie rule: the true class counts as in the top ``k`` when fewer than ``k`` classes have a
    strictly higher probability. Ties therefore go to the true class, and the result does not
    depend on class order (so ``k=1`` can exceed arg-max accuracy on exactly tied rows).

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, num_classes)``.
        k: how many of the most probable classes count; at least 1.

    Returns:
        A fraction in ``[0, 1]``; 1.0 whenever ``k >= num_classes``.

    Raises:
        ValueError: ``k < 1`` or invalid inputs (see ``confusion_matrix``).
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    if k < 1:
        raise ValueError(f"top-k accuracy needs k >= 1, got {k}")
    # Not sklearn.metrics.top_k_accuracy_score: on a tied row it ranks the highest class index first, so
    # the true class of [0.4, 0.4, 0.2] would be a top-1 hit as class 1 and a miss as class 0.
    truth = probabilities[np.arange(len(labels)), labels]
    higher = (probabilities > truth[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative natural log of the probability given to the true class.

    Rows are scored as given, not renormalised: a row need not sum to exactly 1 (a float32 softmax is
    off by about 1e-7), and only the true class's probability counts.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, num_classes)``; at least two classes.
        eps: probabilities are clipped to ``[eps, 1]`` first, so a confident miss costs ``-log(eps)``
            rather than infinity.

    Returns:
        The mean loss, in nats.
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    # scikit-learn has no eps argument (gone in 1.5): it clips to [e, 1 - e] with e = 2.2e-16, float64's
    # machine epsilon. Clipping to [eps, 1] here first keeps ``eps`` (an eps below e acts as e) and keeps
    # values outside [0, 1], which scikit-learn refuses, scored as before; its 1 - e ceiling adds at most
    # 2.2e-16 nats. It does not renormalise either, but it warns about a row that does not sum to 1 within
    # 1.5e-8, as most float32 softmax rows do: silenced.
    with _ignoring("The y_prob values do not sum to one"):
        loss = metrics.log_loss(labels, np.clip(probabilities, eps, 1.0), labels=np.arange(probabilities.shape[1]))
    return float(loss)


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """Group predictions by confidence (the top probability) into equal-width bins on ``[0, 1]``.

    Each bin is ``[lower, upper)``, except the last, which is ``[lower, 1]``: a confidence of
    exactly 1.0 lands there, and one on an inner edge lands in the bin above it.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, num_classes)``.
        bins: number of bins.

    Returns:
        One dict per bin, in order: ``lower``, ``upper``, ``count`` (int), ``confidence`` (mean top
        probability) and ``accuracy`` (fraction whose arg-max is right); the last two are nan for
        an empty bin (nothing to plot). Plain Python numbers.
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    if bins < 1:
        raise ValueError(f"reliability needs at least one bin, got {bins}")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="right")
    result = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        result.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else float("nan"),
                "accuracy": float(correct[members].mean()) if count else float("nan"),
            }
        )
    return result


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over bins of ``count / n * |accuracy - confidence|``.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, num_classes)``.
        bins: number of equal-width confidence bins (see ``reliability_bins``).

    Returns:
        A value in ``[0, 1]``; 0 for a perfectly calibrated model.
    """
    table = reliability_bins(labels, probabilities, bins)
    n = sum(b["count"] for b in table)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]))


def roc_curve(binary_truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve, one point per distinct score, highest threshold first.

    A sample is called positive when its score is ``>=`` the threshold, so tied scores enter the
    curve together (a diagonal step). Collinear points are kept (``drop_intermediate=False``).

    Args:
        binary_truth: 0/1 or bool, shape ``(n,)``.
        scores: higher means more likely positive, shape ``(n,)``.

    Returns:
        ``(fpr, tpr, thresholds)``, each of length distinct scores + 1; the first point is
        ``(0, 0)`` at threshold ``inf``. ``fpr`` (``tpr``) is nan when the truth has no negatives
        (positives).
    """
    truth, scores = _check_binary(binary_truth, scores)
    with _ignoring(category=UndefinedMetricWarning):  # no negatives (positives): the nan fpr (tpr) says it
        fpr, tpr, thresholds = metrics.roc_curve(truth, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def roc_auc(binary_truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, by the trapezoid rule.

    Equal to the probability that a random positive scores above a random negative, a tie
    counting 1/2 (the Mann-Whitney statistic).

    Args:
        binary_truth: 0/1 or bool, shape ``(n,)``.
        scores: higher means more likely positive, shape ``(n,)``.

    Returns:
        The AUC in ``[0, 1]``, or nan when the truth holds only one class.
    """
    truth, scores = _check_binary(binary_truth, scores)
    with _ignoring(category=UndefinedMetricWarning):  # one class in the truth: nan
        return float(metrics.roc_auc_score(truth, scores))


def precision_recall_curve(binary_truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score threshold, as scikit-learn lays them out.

    Args:
        binary_truth: 0/1 or bool, shape ``(n,)``.
        scores: higher means more likely positive, shape ``(n,)``.

    Returns:
        ``(precision, recall, thresholds)``: thresholds ascending; ``precision`` and ``recall`` one
        longer, ending with the point ``(1, 0)``, so recall is non-increasing. Recall is nan when
        the truth has no positives.
    """
    truth, scores = _check_binary(binary_truth, scores)
    with _ignoring("No positive class found in y_true"):
        precision, recall, thresholds = metrics.precision_recall_curve(truth, scores, drop_intermediate=False)
    if not truth.any():
        recall[:-1] = np.nan  # scikit-learn sets it to 1 and warns; 0 of 0 positives found is undefined
    return precision, recall, thresholds


def average_precision(binary_truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, step-wise: the sum of ``(R_n - R_{n-1}) * P_n`` over thresholds.

    No interpolation (scikit-learn's ``average_precision_score``).

    Args:
        binary_truth: 0/1 or bool, shape ``(n,)``.
        scores: higher means more likely positive, shape ``(n,)``.

    Returns:
        AP in ``[0, 1]``, or nan when the truth has no positives.
    """
    truth, scores = _check_binary(binary_truth, scores)
    if not truth.any():
        return float("nan")  # scikit-learn would return 0.0 and warn
    return float(metrics.average_precision_score(truth, scores))


def roc_auc_ovr(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """One-vs-rest ROC AUC of each class, and their macro and support-weighted means.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, num_classes)``.

    Returns:
        ``per_class`` (float array, nan for a class that is absent from the truth or is all of it),
        ``macro`` (mean over the classes whose AUC is defined) and ``weighted`` (the same classes,
        weighted by support); both nan when no class has a defined AUC.
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    # One binary AUC per class rather than roc_auc_score(multi_class="ovr"): that refuses rows that do not
    # sum to 1 within 1e-5, and its means would be nan as soon as one class is, instead of skipping it.
    classes = range(probabilities.shape[1])
    per_class = np.array([roc_auc(labels == c, probabilities[:, c]) for c in classes])
    support = np.bincount(labels, minlength=probabilities.shape[1])
    defined = ~np.isnan(per_class)
    if not defined.any():
        return {"per_class": per_class, "macro": float("nan"), "weighted": float("nan")}
    weighted = np.sum(per_class[defined] * support[defined]) / np.sum(support[defined])
    return {"per_class": per_class, "macro": float(np.mean(per_class[defined])), "weighted": float(weighted)}


def compare_paired(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, float | int]:
    """Two classifiers' predictions on the same test images: the accuracy difference and McNemar's exact test.

    Only the images where exactly one of the two is right carry information about which is better; under
    "equally good" each such image is a fair coin. The two-sided p-value is the chance of a split at least
    as lopsided as the one seen. Paired this way, a difference can be clear on a test set where each
    accuracy's own 95% interval is wide, because the images both get right or both get wrong cancel out.

    Args:
        labels: true class indices, shape ``(n,)``.
        first: the first classifier's predicted class indices, shape ``(n,)``.
        second: the second classifier's, same images in the same order.

    Returns:
        ``difference`` (second's accuracy minus first's), ``only_first_right``, ``only_second_right``
        and ``p_value`` (1.0 when they never disagree on correctness).
    """
    labels, first, second = (np.asarray(values) for values in (labels, first, second))
    if labels.ndim != 1 or first.shape != labels.shape or second.shape != labels.shape:
        raise ValueError(
            f"labels and both predictions must have one shape (n,); got {labels.shape}, {first.shape}, {second.shape}"
        )
    if len(labels) == 0:
        raise ValueError("no samples to compare")
    first_right, second_right = first == labels, second == labels
    only_first, only_second = int(np.sum(first_right & ~second_right)), int(np.sum(second_right & ~first_right))
    return {
        "difference": float(np.mean(second_right) - np.mean(first_right)),
        "only_first_right": only_first,
        "only_second_right": only_second,
        "p_value": mcnemar_exact_p(only_first, only_second),
    }


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: SciPy's exact binomial test of the discordant split against a fair coin.

    1.0 when the two never disagree on correctness; 0.0 when the p-value is below the smallest float.
    """
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0  # binomtest needs n >= 1; no discordant pair is no evidence either way
    return float(binomtest(only_first, discordant, 0.5).pvalue)


def compare_finetuned_with_head(labels: np.ndarray, finetuned: np.ndarray, head: np.ndarray) -> dict[str, float | int]:
    """``compare_paired`` of the head alone (first) and the fine-tuned model (second), under evaluate.json's names.

    Args:
        labels: true class indices, shape ``(n,)``.
        finetuned: the fine-tuned model's predicted class indices, shape ``(n,)``.
        head: the head's on the cached features of the same images, in the same order.

    Returns:
        ``accuracy_difference`` (fine-tuned minus head), ``p_value`` (McNemar, exact, two-sided),
        ``only_finetuned`` and ``only_head``: the images only that one classified right.
    """
    paired = compare_paired(labels, head, finetuned)
    return {
        "accuracy_difference": paired["difference"],
        "p_value": paired["p_value"],
        "only_finetuned": paired["only_second_right"],
        "only_head": paired["only_first_right"],
    }


def fine_tuning_outcome(finetune_metrics: Mapping[str, Any]) -> FineTuning:
    """What the finetune stage did to the head on the frozen backbone, read off its ``metrics/finetune.json``.

    Returns:
        ``off`` (``finetune.enabled: false``: it records the head's epochs only), ``kept_start`` (no
        fine-tuning epoch beat the starting weights, so those were handed on: ``kept_epoch`` 0), else ``trained``.
    """
    if "epochs_trained" not in finetune_metrics:
        return "off"
    return "kept_start" if not finetune_metrics.get("kept_epoch") else "trained"


def describe_paired(
    finetuned_accuracy: float,
    head_accuracy: float,
    comparison: Mapping[str, float | int],
    fine_tuning: FineTuning = "trained",
    alpha: float = 0.05,
) -> str:
    """Whether fine-tuning paid, in words: the console's evaluate line and the report's overview say it so.

    Example: ``test accuracy 0.9120 (head alone 0.9010): fine-tuning +0.0110, 160 vs 50 images only one
    got right, McNemar p 2e-25 — it paid``.

    Args:
        finetuned_accuracy: the fine-tuned model's test accuracy.
        head_accuracy: the head's on the cached test features.
        comparison: from ``compare_finetuned_with_head``.
        fine_tuning: from ``fine_tuning_outcome``; unless ``trained`` the model is the head on the frozen
            backbone, so there is no comparison to judge and the sentence says why.
        alpha: below this p-value the difference counts as clear.

    Returns:
        One sentence, lower-case first, no full stop.
    """
    heading = f"test accuracy {finetuned_accuracy:.4f} (head alone {head_accuracy:.4f})"
    if fine_tuning != "trained":
        why = (
            "fine-tuning was off (finetune.enabled: false)"
            if fine_tuning == "off"
            else "fine-tuning kept its starting weights (no epoch beat them on val)"
        )
        return f"{heading}: {why}, so the model is the head on the frozen backbone and there is nothing to compare"
    only_finetuned, only_head, p = comparison["only_finetuned"], comparison["only_head"], comparison["p_value"]
    # A clear McNemar result means the discordant counts differ, so their order gives the winner.
    if p >= alpha:
        verdict = "no clear difference"
    else:
        verdict = "it paid" if only_finetuned > only_head else "the head alone was better"
    shown_p = f"{p:.2g}" if p > 0 else "< 1e-300"  # the exact tail can underflow a float on huge test sets
    return (
        f"{heading}: fine-tuning {comparison['accuracy_difference']:+.4f}, {only_finetuned} vs {only_head} "
        f"images only one got right, McNemar p {shown_p} — {verdict}"
    )


def summarize(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], top_k: int, bins: int = 15
) -> dict[str, Any]:
    """Every headline number for one model on one split, as a JSON-ready dict (nothing rounded).

    Macro means run over the classes that occur in the truth or the predictions (scikit-learn's
    default); a class absent from both still appears under ``per_class``, with zeros.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, len(classes))``.
        classes: class names, in index order.
        top_k: ``k`` for ``top_{k}_accuracy``, reported only when there are more than ``k`` classes.
        bins: confidence bins for the ECE.

    Returns:
        ``n``, ``accuracy``, ``precision``/``recall``/``f1`` with ``_macro`` and ``_weighted``
        suffixes, ``log_loss``, ``ece``, ``roc_auc`` (binary: class 1's AUC; more classes: the
        macro one-vs-rest AUC, plus ``roc_auc_weighted``), maybe ``top_{k}_accuracy``, and
        ``per_class``: ``{name: {precision, recall, f1, support, accuracy}}``. AUCs may be nan.
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    _check_classes(classes, probabilities.shape[1])
    predicted = probabilities.argmax(axis=1)
    scores = per_class_scores(confusion_matrix(labels, predicted, len(classes)))
    summary: dict[str, Any] = {"n": len(labels), "accuracy": float(np.mean(predicted == labels))}
    if len(classes) > top_k:
        summary[f"top_{top_k}_accuracy"] = top_k_accuracy(labels, probabilities, top_k)
    summary.update(_averages(labels, predicted))
    summary["log_loss"] = log_loss(labels, probabilities)
    summary["ece"] = expected_calibration_error(labels, probabilities, bins)
    summary.update(_auc_summary(labels, probabilities))
    summary["per_class"] = _per_class(scores, classes)
    return summary


def _per_class(scores: dict[str, np.ndarray], classes: list[str]) -> dict[str, dict[str, float | int]]:
    return {
        name: {
            "precision": float(scores["precision"][c]),
            "recall": float(scores["recall"][c]),
            "f1": float(scores["f1"][c]),
            "support": int(scores["support"][c]),
            "accuracy": float(scores["recall"][c]),  # a class's accuracy is its recall
        }
        for c, name in enumerate(classes)
    }


def _averages(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Macro and support-weighted precision, recall and F1, over the classes in the truth or the predictions."""
    # labels=None: scikit-learn averages over exactly those classes; a weighted mean gives the others weight 0 anyway.
    macro = metrics.precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    weighted = metrics.precision_recall_fscore_support(labels, predicted, average="weighted", zero_division=0)
    result = {}
    for i, name in enumerate(("precision", "recall", "f1")):
        result[f"{name}_macro"] = float(macro[i])
        result[f"{name}_weighted"] = float(weighted[i])
    return result


def _auc_summary(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    if probabilities.shape[1] == 2:
        return {"roc_auc": roc_auc(labels == 1, probabilities[:, 1])}
    ovr = roc_auc_ovr(labels, probabilities)
    return {"roc_auc": ovr["macro"], "roc_auc_weighted": ovr["weighted"]}


def _check_predictions(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be 2-D (samples, classes), got shape {probabilities.shape}")
    labels = _class_indices(labels, probabilities.shape[1], "labels")
    if len(labels) != len(probabilities):
        raise ValueError(f"labels ({len(labels)}) and probabilities ({len(probabilities)}) differ in length")
    return labels, probabilities


def _class_indices(values: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if len(values) == 0:
        raise ValueError(f"no samples to evaluate: {name} is empty")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {values.dtype}")
    if values.min() < 0 or values.max() >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), found {values.min()}..{values.max()}")
    return values


def _check_binary(binary_truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, scores = np.asarray(binary_truth), np.asarray(scores, dtype=float)
    if truth.ndim != 1 or truth.shape != scores.shape:
        raise ValueError(f"binary_truth {truth.shape} and scores {scores.shape} must be 1-D and of equal length")
    if len(truth) == 0:
        raise ValueError("no samples to evaluate: binary_truth is empty")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("binary_truth must hold only 0/1 (or False/True)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return truth.astype(np.int64), scores


def _check_classes(classes: list[str], num_classes: int) -> None:
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for {num_classes} probability columns")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique, got {classes}")


@contextmanager
def _ignoring(message: str = "", category: type[Warning] = UserWarning) -> Iterator[None]:
    """Silence one scikit-learn warning about an input whose result this module defines (each caller says how)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


def curve_inputs(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Truth and scores for one ROC/PR curve: class 1's probability for two classes, otherwise the
    micro average (every one-vs-rest decision pooled).

    Returns:
        Binary truth, scores, and what the curve is of (for titles).
    """
    labels, probabilities = _check_predictions(labels, probabilities)
    if probabilities.shape[1] == 2:
        return labels == 1, probabilities[:, 1], "class 1"
    onehot = np.eye(probabilities.shape[1], dtype=bool)[labels]
    return onehot.ravel(), probabilities.ravel(), "micro-average, one-vs-rest"


@dataclass(frozen=True)
class Curves:
    """ROC and precision-recall curves of one positive class (or of the micro average)."""

    fpr: np.ndarray
    tpr: np.ndarray
    roc_thresholds: np.ndarray
    auc: float
    precision: np.ndarray
    recall: np.ndarray
    pr_thresholds: np.ndarray  # one fewer than points: the last point (recall 0) has none
    average_precision: float
    label: str  # what the curves are of: a class name, or the micro average


def curves(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> Curves:
    """The ROC and PR curves of ``curve_inputs``, with their areas."""
    truth, scores, kind = curve_inputs(labels, probabilities)
    fpr, tpr, roc_thresholds = roc_curve(truth, scores)
    precision, recall, pr_thresholds = precision_recall_curve(truth, scores)
    label = classes[1] if len(classes) == 2 else kind
    return Curves(
        fpr,
        tpr,
        roc_thresholds,
        roc_auc(truth, scores),
        precision,
        recall,
        pr_thresholds,
        average_precision(truth, scores),
        label,
    )


def thin(table_length: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` rows spread evenly over a table, first and last included."""
    if table_length <= most:
        return np.arange(table_length)
    return np.unique(np.linspace(0, table_length - 1, most).round().astype(int))


def plot_tables(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], bins: int, found: Curves, curve_points: int = 500
) -> dict[str, Any]:
    """The data-series files `dvc plots` draws, as tables by name.

    ``confusion``: one row per sample with the ``actual`` and ``predicted`` class names (DVC's
    confusion template counts them); ``reliability``: the confidence bins; ``roc`` (fpr, tpr,
    threshold) and ``pr`` (recall, precision, threshold) of the curves, thinned to at most
    ``curve_points`` rows so the files stay small.

    Args:
        labels: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, len(classes))``.
        classes: class names, in index order.
        bins: confidence bins of the reliability table.
        found: the ROC and PR curves, from ``curves``.
        curve_points: the most rows of a curve table.
    """
    import pandas as pd

    labels, probabilities = _check_predictions(labels, probabilities)
    names = np.asarray(classes, dtype=object)
    roc = pd.DataFrame({"fpr": found.fpr, "tpr": found.tpr, "threshold": found.roc_thresholds})
    pr = pd.DataFrame(
        {"recall": found.recall, "precision": found.precision, "threshold": np.append(found.pr_thresholds, np.nan)}
    )
    return {
        "confusion": pd.DataFrame({"actual": names[labels], "predicted": names[probabilities.argmax(axis=1)]}),
        "reliability": pd.DataFrame(reliability_bins(labels, probabilities, bins)),
        "roc": roc.iloc[thin(len(roc), curve_points)].reset_index(drop=True),
        "pr": pr.iloc[thin(len(pr), curve_points)].reset_index(drop=True),
    }
