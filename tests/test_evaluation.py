"""Evaluation metrics against hand-made predictions whose answers are worked out by hand below."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.evaluation import scoring

# Three classes, eight samples. Probabilities are multiples of 1/8, so every log and mean is exact.
#
#  #  label  probabilities (cat, dog, fox)  arg-max  right  confidence  p(true)  classes strictly above true
#  1   0     0.5    0.25   0.25             0        yes    0.5         1/2      none
#  2   0     0.75   0.125  0.125            0        yes    0.75        3/4      none
#  3   0     0.25   0.625  0.125            1        no     0.625       1/4      dog          -> top-2 hit
#  4   1     0.125  0.75   0.125            1        yes    0.75        3/4      none
#  5   1     0.625  0.25   0.125            0        no     0.625       1/4      cat          -> top-2 hit
#  6   1     0.5    0.125  0.375            0        no     0.5         1/8      cat, fox     -> top-2 miss
#  7   2     0.125  0.125  0.75             2        yes    0.75        3/4      none
#  8   2     0.25   0.25   0.5              2        yes    0.5         1/2      none
CLASSES = ["cat", "dog", "fox"]
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBABILITIES = np.array(
    [
        [0.5, 0.25, 0.25],
        [0.75, 0.125, 0.125],
        [0.25, 0.625, 0.125],
        [0.125, 0.75, 0.125],
        [0.625, 0.25, 0.125],
        [0.5, 0.125, 0.375],
        [0.125, 0.125, 0.75],
        [0.25, 0.25, 0.5],
    ]
)
PREDICTED = np.array([0, 0, 1, 1, 0, 0, 2, 2])

# Confusion (rows true, columns predicted):  cat [2, 1, 0], dog [2, 1, 0], fox [0, 0, 2].
# Predicted per class (column sums): 4, 2, 2.  Support (row sums): 3, 3, 2.
#   cat: precision 2/4 = 1/2, recall 2/3, F1 = 2*2 / (3 + 4) = 4/7
#   dog: precision 1/2,       recall 1/3, F1 = 2*1 / (3 + 2) = 2/5
#   fox: precision 2/2 = 1,   recall 2/2 = 1, F1 = 1
# Macro:    precision (1/2 + 1/2 + 1) / 3 = 2/3, recall (2/3 + 1/3 + 1) / 3 = 2/3,
#           F1 (4/7 + 2/5 + 1) / 3 = (20 + 14 + 35) / 105 = 23/35
# Weighted: precision (3/2 + 3/2 + 2) / 8 = 5/8, recall (2 + 1 + 2) / 8 = 5/8,
#           F1 (12/7 + 6/5 + 2) / 8 = (60 + 42 + 70) / 280 = 43/70
# Accuracy 5/8; top-2 accuracy 7/8 (only sample 6 misses).
# Log loss = -(log 1/2 + log 3/4 + log 1/4 + log 3/4 + log 1/4 + log 1/8 + log 3/4 + log 1/2) / 8
#          = (15 log 2 - 3 log 3) / 8.
EXPECTED_LOG_LOSS = (
    -(
        math.log(1 / 2)
        + math.log(3 / 4)
        + math.log(1 / 4)
        + math.log(3 / 4)
        + math.log(1 / 4)
        + math.log(1 / 8)
        + math.log(3 / 4)
        + math.log(1 / 2)
    )
    / 8
)
# ECE with 4 bins (edges 0, 1/4, 1/2, 3/4, 1; an edge goes to the bin above it):
#   [0.5, 0.75): samples 1, 3, 5, 6, 8: confidence (0.5 + 0.625 + 0.625 + 0.5 + 0.5) / 5 = 0.55,
#                accuracy 2/5 (1 and 8 right), gap 0.15
#   [0.75, 1]:   samples 2, 4, 7: confidence 0.75, accuracy 3/3, gap 0.25
#   ECE = 5/8 * 0.15 + 3/8 * 0.25 = 3/16
# One-vs-rest AUC, counting (positive, negative) pairs with the positive scored higher, a tie 1/2:
#   cat: positives p = 0.5, 0.75, 0.25; negatives p = 0.125, 0.625, 0.5, 0.125, 0.25
#        0.5 -> 1 + 0 + 1/2 + 1 + 1 = 3.5; 0.75 -> 5; 0.25 -> 1 + 0 + 0 + 1 + 1/2 = 2.5; AUC 11/15
#   dog: positives p = 0.75, 0.25, 0.125; negatives p = 0.25, 0.125, 0.625, 0.125, 0.25
#        0.75 -> 5; 0.25 -> 1/2 + 1 + 0 + 1 + 1/2 = 3; 0.125 -> 0 + 1/2 + 0 + 1/2 + 0 = 1; AUC 9/15
#   fox: positives 0.75, 0.5 above every negative (at most 0.375); AUC 1
#   macro (11/15 + 9/15 + 1) / 3 = 7/9; weighted (3 * 11/15 + 3 * 9/15 + 2 * 1) / 8 = 3/4

# Binary: eight samples, four positives, one positive tied with a negative at 0.7.
BINARY_TRUTH = np.array([1, 1, 0, 1, 0, 1, 0, 0])
BINARY_SCORES = np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.4, 0.3, 0.2])
# Pairs (4 x 4 = 16): positive 0.9 beats all 4, 0.8 all 4, 0.7 ties 0.7 (1/2) and beats 0.6, 0.3, 0.2,
# 0.4 beats 0.3 and 0.2: (4 + 4 + 3.5 + 2) / 16 = 27/32.
# Thresholds 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2 give (TP, FP) = (1,0) (2,0) (3,1) (3,2) (4,2) (4,3) (4,4):
#   recall    1/4, 1/2, 3/4, 3/4, 1,   1,   1
#   precision 1,   1,   3/4, 3/5, 2/3, 4/7, 1/2
# AP = sum of recall step * precision = 1/4 * 1 + 1/4 * 1 + 1/4 * 3/4 + 1/4 * 2/3 = 41/48.


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    confusion = scoring.confusion_matrix(LABELS, PREDICTED, 3)
    assert confusion.tolist() == [[2, 1, 0], [2, 1, 0], [0, 0, 2]]


def test_per_class_scores_match_the_hand_worked_values() -> None:
    scores = scoring.per_class_scores(np.array([[2, 1, 0], [2, 1, 0], [0, 0, 2]]))
    assert scores["precision"] == pytest.approx([1 / 2, 1 / 2, 1])
    assert scores["recall"] == pytest.approx([2 / 3, 1 / 3, 1])
    assert scores["f1"] == pytest.approx([4 / 7, 2 / 5, 1])
    assert scores["support"].tolist() == [3, 3, 2]


def test_zero_division_gives_zero_for_classes_never_predicted_or_never_present() -> None:
    # Labels [0, 0, 1], predicted [0, 2, 1], four classes. Class 2 is predicted once but never true:
    # precision 0/1 = 0, recall 0/0 = 0. Class 3 is neither: everything 0/0 = 0.
    confusion = scoring.confusion_matrix(np.array([0, 0, 1]), np.array([0, 2, 1]), 4)
    assert confusion.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    scores = scoring.per_class_scores(confusion)
    # class 0: precision 1/1, recall 1/2, F1 2*1 / (2 + 1) = 2/3; class 3 never seen: all 0/0 -> 0
    assert scores["precision"] == pytest.approx([1, 1, 0, 0])
    assert scores["recall"] == pytest.approx([1 / 2, 1, 0, 0])
    assert scores["f1"] == pytest.approx([2 / 3, 1, 0, 0])
    assert scores["support"].tolist() == [2, 1, 0, 0]


def test_top_k_accuracy_of_the_hand_made_set() -> None:
    assert scoring.top_k_accuracy(LABELS, PROBABILITIES, 1) == pytest.approx(5 / 8)
    assert scoring.top_k_accuracy(LABELS, PROBABILITIES, 2) == pytest.approx(7 / 8)
    assert scoring.top_k_accuracy(LABELS, PROBABILITIES, 3) == 1.0


def test_top_k_ties_go_to_the_true_class() -> None:
    probabilities = np.array([[0.4, 0.4, 0.2]])
    # No class is strictly above class 0 or class 1, so either counts as a top-1 hit.
    assert scoring.top_k_accuracy(np.array([0]), probabilities, 1) == 1.0
    assert scoring.top_k_accuracy(np.array([1]), probabilities, 1) == 1.0
    # Two classes are strictly above class 2: outside the top 2, inside the top 3.
    assert scoring.top_k_accuracy(np.array([2]), probabilities, 2) == 0.0
    assert scoring.top_k_accuracy(np.array([2]), probabilities, 3) == 1.0
    # A uniform row is a hit for every label.
    assert scoring.top_k_accuracy(np.array([0, 1, 2]), np.full((3, 3), 1 / 3), 1) == 1.0


def test_top_k_rejects_k_below_one() -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        scoring.top_k_accuracy(LABELS, PROBABILITIES, 0)


def test_log_loss_of_the_hand_made_set() -> None:
    assert scoring.log_loss(LABELS, PROBABILITIES) == pytest.approx(EXPECTED_LOG_LOSS)
    assert scoring.log_loss(LABELS, PROBABILITIES) == pytest.approx((15 * math.log(2) - 3 * math.log(3)) / 8)


def test_log_loss_clips_a_zero_true_class_probability() -> None:
    labels = np.array([0, 1])
    probabilities = np.array([[1.0, 0.0], [1.0, 0.0]])
    # Losses -log(1) = 0 and -log(eps).
    assert scoring.log_loss(labels, probabilities) == pytest.approx(-math.log(1e-15) / 2)
    assert scoring.log_loss(labels, probabilities, eps=1e-7) == pytest.approx(-math.log(1e-7) / 2)


@pytest.mark.filterwarnings("error")
def test_log_loss_scores_rows_that_do_not_sum_to_one_as_given() -> None:
    # Rows sum to 3/4 and 5/8 (a float32 softmax is off by ~1e-7; these are far off to show no renormalising):
    # losses -log(1/2) and -log(1/2), mean log 2; renormalised rows would give (log 3/2 + log 5/4) / 2. No warning.
    probabilities = np.array([[0.5, 0.25], [0.125, 0.5]])
    assert scoring.log_loss(np.array([0, 1]), probabilities) == pytest.approx(math.log(2))
    # A true-class probability above 1 is clipped to 1 (loss 0), not refused: (0 + log 2) / 2.
    above_one = np.array([[1.0000001, 0.0], [0.5, 0.5]])
    assert scoring.log_loss(np.array([0, 1]), above_one) == pytest.approx(math.log(2) / 2)


def test_reliability_bins_of_the_hand_made_set() -> None:
    table = scoring.reliability_bins(LABELS, PROBABILITIES, bins=4)
    assert [(b["lower"], b["upper"], b["count"]) for b in table] == [
        (0.0, 0.25, 0),
        (0.25, 0.5, 0),
        (0.5, 0.75, 5),
        (0.75, 1.0, 3),
    ]
    assert math.isnan(table[0]["confidence"]) and math.isnan(table[0]["accuracy"])
    assert table[2]["confidence"] == pytest.approx(0.55)
    assert table[2]["accuracy"] == pytest.approx(2 / 5)
    assert table[3]["confidence"] == pytest.approx(0.75)
    assert table[3]["accuracy"] == 1.0


def test_expected_calibration_error_of_the_hand_made_set() -> None:
    assert scoring.expected_calibration_error(LABELS, PROBABILITIES, bins=4) == pytest.approx(3 / 16)
    # Two bins: everything lands in [0.5, 1], mean confidence (3*0.5 + 2*0.625 + 3*0.75) / 8 = 5/8 = accuracy.
    assert scoring.expected_calibration_error(LABELS, PROBABILITIES, bins=2) == pytest.approx(0.0)


def test_a_confidence_of_exactly_one_goes_to_the_last_bin() -> None:
    # Sample 1: confidence 1.0, wrong. Sample 2: confidence 0.25 (on an edge, so the bin above), right.
    labels = np.array([1, 0])
    probabilities = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    table = scoring.reliability_bins(labels, probabilities, bins=4)
    assert [b["count"] for b in table] == [0, 1, 0, 1]
    assert table[3]["accuracy"] == 0.0
    # ECE = 1/2 * |0 - 1| + 1/2 * |1 - 0.25| = 7/8
    assert scoring.expected_calibration_error(labels, probabilities, bins=4) == pytest.approx(7 / 8)


def test_roc_curve_steps_through_distinct_scores_with_ties_together() -> None:
    fpr, tpr, thresholds = scoring.roc_curve(BINARY_TRUTH, BINARY_SCORES)
    assert thresholds.tolist() == [math.inf, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2]
    assert fpr == pytest.approx([0, 0, 0, 1 / 4, 1 / 2, 1 / 2, 3 / 4, 1])
    assert tpr == pytest.approx([0, 1 / 4, 1 / 2, 3 / 4, 3 / 4, 1, 1, 1])


def test_roc_auc_counts_a_tied_pair_as_half() -> None:
    assert scoring.roc_auc(BINARY_TRUTH, BINARY_SCORES) == pytest.approx(27 / 32)
    assert scoring.roc_auc(BINARY_TRUTH.astype(bool), BINARY_SCORES) == pytest.approx(27 / 32)
    # All scores equal: every pair is a tie, AUC 1/2. Reversed scores: 1 - 27/32.
    assert scoring.roc_auc(BINARY_TRUTH, np.full(8, 0.3)) == pytest.approx(1 / 2)
    assert scoring.roc_auc(BINARY_TRUTH, -BINARY_SCORES) == pytest.approx(5 / 32)


def test_precision_recall_curve_and_average_precision() -> None:
    precision, recall, thresholds = scoring.precision_recall_curve(BINARY_TRUTH, BINARY_SCORES)
    assert thresholds.tolist() == [0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    assert precision == pytest.approx([1 / 2, 4 / 7, 2 / 3, 3 / 5, 3 / 4, 1, 1, 1])
    assert recall == pytest.approx([1, 1, 1, 3 / 4, 3 / 4, 1 / 2, 1 / 4, 0])
    assert scoring.average_precision(BINARY_TRUTH, BINARY_SCORES) == pytest.approx(41 / 48)


def test_average_precision_with_a_tie_at_the_top() -> None:
    # Scores 0.9 (pos), 0.9 (neg), 0.1 (pos): threshold 0.9 gives TP 1, FP 1 -> P 1/2, R 1/2;
    # threshold 0.1 gives TP 2, FP 1 -> P 2/3, R 1. AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    assert scoring.average_precision(np.array([1, 0, 1]), np.array([0.9, 0.9, 0.1])) == pytest.approx(7 / 12)


@pytest.mark.parametrize("truth", [[1, 1, 1], [0, 0, 0]])
def test_a_single_class_in_the_truth_gives_nan_auc(truth: list[int]) -> None:
    assert math.isnan(scoring.roc_auc(np.array(truth), np.array([0.1, 0.5, 0.9])))


def test_average_precision_is_nan_without_positives_and_one_with_only_positives() -> None:
    scores = np.array([0.1, 0.5, 0.9])
    assert math.isnan(scoring.average_precision(np.array([0, 0, 0]), scores))
    assert scoring.average_precision(np.array([1, 1, 1]), scores) == pytest.approx(1.0)


def test_precision_recall_curve_without_positives_has_nan_recall() -> None:
    # No positives: recall 0/0 at every threshold is nan (scikit-learn would say 1); precision 0/1, 0/2, 0/3.
    precision, recall, thresholds = scoring.precision_recall_curve(np.array([0, 0, 0]), np.array([0.1, 0.5, 0.9]))
    assert thresholds.tolist() == [0.1, 0.5, 0.9]
    assert precision.tolist() == [0, 0, 0, 1]
    assert np.isnan(recall[:-1]).all() and recall[-1] == 0


@pytest.mark.filterwarnings("error")
def test_degenerate_inputs_raise_no_library_warnings() -> None:
    # Each of these hits a 0/0 or a one-class truth, where scikit-learn warns unless told otherwise.
    one_class = np.array([1, 1, 1]), np.array([0.1, 0.5, 0.9])
    fpr, tpr, _ = scoring.roc_curve(*one_class)
    assert np.isnan(fpr).all() and tpr.tolist() == [0, 1 / 3, 2 / 3, 1]
    assert math.isnan(scoring.roc_auc(*one_class))
    assert math.isnan(scoring.average_precision(np.array([0, 0, 0]), one_class[1]))
    scoring.precision_recall_curve(np.array([0, 0, 0]), one_class[1])
    scores = scoring.per_class_scores(np.zeros((3, 3), dtype=np.int64))  # no samples at all: every ratio 0/0
    assert scores["precision"].tolist() == scores["recall"].tolist() == scores["f1"].tolist() == [0, 0, 0]
    assert scores["support"].tolist() == [0, 0, 0]
    summary = scoring.summarize(np.array([0, 0]), np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25]]), CLASSES, top_k=2)
    # Truth all cat; arg-max cat (tie -> lowest index) then dog. Macro over cat and dog: precision (1 + 0) / 2.
    assert summary["precision_macro"] == pytest.approx(1 / 2)
    assert math.isnan(summary["roc_auc"])


def test_roc_auc_ovr_of_the_hand_made_set() -> None:
    ovr = scoring.roc_auc_ovr(LABELS, PROBABILITIES)
    assert ovr["per_class"] == pytest.approx([11 / 15, 9 / 15, 1])
    assert ovr["macro"] == pytest.approx(7 / 9)
    assert ovr["weighted"] == pytest.approx(3 / 4)


def test_roc_auc_ovr_skips_classes_without_both_outcomes() -> None:
    # Class 2 never occurs: its AUC is nan and it is left out of both means.
    # cat: positives p = 0.5, 0.25 vs negatives 0.25, 0.5 -> 1 + 1/2 + 1/2 + 0 = 2 of 4 pairs; dog likewise.
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25]])
    ovr = scoring.roc_auc_ovr(labels, probabilities)
    assert ovr["per_class"][:2] == pytest.approx([1 / 2, 1 / 2])
    assert math.isnan(ovr["per_class"][2])
    assert ovr["macro"] == pytest.approx(1 / 2)
    assert ovr["weighted"] == pytest.approx(1 / 2)
    single = scoring.roc_auc_ovr(np.array([0, 0]), np.array([[0.9, 0.1], [0.6, 0.4]]))
    assert math.isnan(single["macro"]) and math.isnan(single["weighted"])


def test_summarize_a_multiclass_set() -> None:
    summary = scoring.summarize(LABELS, PROBABILITIES, CLASSES, top_k=2, bins=4)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert set(summary) == {
        "n",
        "accuracy",
        "top_2_accuracy",
        "precision_macro",
        "precision_weighted",
        "recall_macro",
        "recall_weighted",
        "f1_macro",
        "f1_weighted",
        "log_loss",
        "ece",
        "roc_auc",
        "roc_auc_weighted",
        "per_class",
    }
    assert summary["n"] == 8
    assert summary["accuracy"] == pytest.approx(5 / 8)
    assert summary["top_2_accuracy"] == pytest.approx(7 / 8)
    assert summary["precision_macro"] == pytest.approx(2 / 3)
    assert summary["recall_macro"] == pytest.approx(2 / 3)
    assert summary["f1_macro"] == pytest.approx(23 / 35)
    assert summary["precision_weighted"] == pytest.approx(5 / 8)
    assert summary["recall_weighted"] == pytest.approx(5 / 8)
    assert summary["f1_weighted"] == pytest.approx(43 / 70)
    assert summary["log_loss"] == pytest.approx(EXPECTED_LOG_LOSS)
    assert summary["ece"] == pytest.approx(3 / 16)
    assert summary["roc_auc"] == pytest.approx(7 / 9)
    assert summary["roc_auc_weighted"] == pytest.approx(3 / 4)
    assert summary["per_class"]["dog"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 3, "f1": 2 / 5, "support": 3, "accuracy": 1 / 3}
    )
    assert list(summary["per_class"]) == CLASSES


def test_summarize_returns_plain_python_numbers() -> None:
    summary = scoring.summarize(LABELS, PROBABILITIES, CLASSES, top_k=2)
    values = [v for k, v in summary.items() if k != "per_class"]
    values += [v for scores in summary["per_class"].values() for v in scores.values()]
    assert all(type(v) in (int, float) for v in values)
    assert type(summary["n"]) is int and type(summary["per_class"]["cat"]["support"]) is int


def test_summarize_a_binary_set_uses_class_one_auc_and_omits_top_k() -> None:
    probabilities = np.stack([1 - BINARY_SCORES, BINARY_SCORES], axis=1)
    summary = scoring.summarize(BINARY_TRUTH, probabilities, ["no", "yes"], top_k=2)
    assert summary["roc_auc"] == pytest.approx(27 / 32)
    assert "roc_auc_weighted" not in summary
    assert not any(key.startswith("top_") for key in summary)
    # Arg-max is "yes" above 0.5: right for 0.9, 0.8 and the positive 0.7, wrong for the negative 0.7 and 0.6;
    # "no" below: wrong for the positive 0.4, right for 0.3 and 0.2. 5 of 8.
    assert summary["accuracy"] == pytest.approx(5 / 8)


def test_top_k_key_is_absent_when_classes_do_not_exceed_k() -> None:
    assert "top_3_accuracy" not in scoring.summarize(LABELS, PROBABILITIES, CLASSES, top_k=3)
    assert "top_5_accuracy" not in scoring.summarize(LABELS, PROBABILITIES, CLASSES, top_k=5)


def test_summarize_survives_a_class_that_never_occurs() -> None:
    # Same four samples as the OvR test; "fox" is neither true nor predicted.
    # Confusion cat [1, 1, 0], dog [1, 1, 0]: precision, recall, F1 all 1/2 for cat and dog, 0 for fox.
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25]])
    summary = scoring.summarize(labels, probabilities, CLASSES, top_k=2)
    json.dumps(summary, allow_nan=False)
    # Macro over the classes that occur (cat, dog), not dragged down to 1/3 by fox.
    assert summary["precision_macro"] == pytest.approx(1 / 2)
    assert summary["f1_macro"] == pytest.approx(1 / 2)
    assert summary["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "accuracy": 0.0}
    assert summary["roc_auc"] == pytest.approx(1 / 2)


def test_summarize_with_a_single_class_in_the_truth_reports_nan_auc() -> None:
    labels = np.array([1, 1, 1])
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]])
    summary = scoring.summarize(labels, probabilities, ["no", "yes"], top_k=1)
    assert math.isnan(summary["roc_auc"])
    json.dumps(summary)  # nan is written as NaN, which Python's json reads back
    # Arg-max: yes, no (tie -> lowest index), no: accuracy 1/3. Top-1 with ties to the true class: 2/3.
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["top_1_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: scoring.confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), 3),
        lambda: scoring.top_k_accuracy(np.array([], dtype=int), np.zeros((0, 3)), 1),
        lambda: scoring.log_loss(np.array([], dtype=int), np.zeros((0, 3))),
        lambda: scoring.expected_calibration_error(np.array([], dtype=int), np.zeros((0, 3))),
        lambda: scoring.roc_auc(np.array([]), np.array([])),
        lambda: scoring.average_precision(np.array([]), np.array([])),
        lambda: scoring.roc_auc_ovr(np.array([], dtype=int), np.zeros((0, 3))),
        lambda: scoring.summarize(np.array([], dtype=int), np.zeros((0, 3)), CLASSES, top_k=2),
        lambda: scoring.summarize([], np.zeros((0, 3)), CLASSES, top_k=2),
    ],
)
def test_empty_input_raises_a_clear_error(call: object) -> None:
    with pytest.raises(ValueError, match="no samples"):
        call()  # type: ignore[operator]


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        scoring.log_loss(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="differ in length"):
        scoring.log_loss(np.array([0, 1, 2]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="class names"):
        scoring.summarize(LABELS, PROBABILITIES, ["cat", "dog"], top_k=2)
    with pytest.raises(ValueError, match="0/1"):
        scoring.roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))


def test_compare_paired_counts_the_images_only_one_model_gets_right() -> None:
    # Ten images of class 0, two of class 1. first is right on images 0-7 and 10; second on 2-11.
    labels = np.array([0] * 10 + [1] * 2)
    first = np.array([0] * 8 + [1, 1] + [1, 0])
    second = np.array([1, 1] + [0] * 8 + [1, 1])
    result = scoring.compare_paired(labels, first, second)
    # Only first right: images 0, 1. Only second right: 8, 9, 11. Accuracies 9/12 and 10/12.
    assert result["only_first_right"] == 2 and result["only_second_right"] == 3
    assert result["difference"] == pytest.approx(1 / 12)
    # Five discordant images, split 2:3: p = 2 * (C(5,0) + C(5,1) + C(5,2)) / 2**5 = 2 * 16 / 32, capped at 1.
    assert result["p_value"] == 1.0


@pytest.mark.parametrize(
    ("only_first", "only_second", "expected"),
    [
        (1, 6, 2 * (1 + 7) / 2**7),  # 0.125
        (6, 1, 2 * (1 + 7) / 2**7),  # symmetric
        (0, 10, 2 / 2**10),
        (5, 15, 2 * (1 + 20 + 190 + 1140 + 4845 + 15504) / 2**20),  # 0.0414, the textbook value
        (0, 0, 1.0),  # never disagree: no evidence either way
        (0, 1, 1.0),  # 2 * 1/2
    ],
)
def test_mcnemar_exact_p_matches_the_hand_worked_binomial_tails(
    only_first: int, only_second: int, expected: float
) -> None:
    assert scoring.mcnemar_exact_p(only_first, only_second) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_p_stays_finite_on_thousands_of_disagreements() -> None:
    # 2**3000 overflows a float; the integer tail keeps it exact. 1,400 vs 1,600 is a clear difference.
    p = scoring.mcnemar_exact_p(1400, 1600)
    assert 0 < p < 1e-3


def test_compare_paired_refuses_mismatched_or_empty_predictions() -> None:
    with pytest.raises(ValueError, match="one shape"):
        scoring.compare_paired(np.array([0, 1]), np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="no samples"):
        scoring.compare_paired(np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=int))


def _paired_predictions(only_finetuned: int, only_head: int, both: int, neither: int) -> tuple[np.ndarray, ...]:
    """Labels (all class 0) and the two models' predictions, with the given counts of who got each image right."""
    rows = [(1, 0)] * only_finetuned + [(0, 1)] * only_head + [(1, 1)] * both + [(0, 0)] * neither
    right = np.array(rows, dtype=bool)
    return np.zeros(len(rows), dtype=np.int64), np.where(right[:, 0], 0, 1), np.where(right[:, 1], 0, 1)


def test_compare_finetuned_with_head_names_the_models_and_subtracts_the_head() -> None:
    # 10 images only the fine-tuned model gets right, 2 only the head, 8 both: accuracies 18/20 and 10/20.
    labels, finetuned, head = _paired_predictions(10, 2, both=8, neither=0)
    result = scoring.compare_finetuned_with_head(labels, finetuned, head)
    assert set(result) == {"accuracy_difference", "p_value", "only_finetuned", "only_head"}
    assert result["only_finetuned"] == 10 and result["only_head"] == 2
    assert result["accuracy_difference"] == pytest.approx(18 / 20 - 10 / 20)
    # 12 discordant, split 10:2: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12 = 2 * 79 / 4096.
    assert result["p_value"] == pytest.approx(158 / 4096, rel=1e-12)
    swapped = scoring.compare_finetuned_with_head(labels, head, finetuned)
    assert (swapped["only_finetuned"], swapped["only_head"]) == (2, 10)
    assert swapped["accuracy_difference"] == pytest.approx(-0.4)


def test_describe_paired_says_fine_tuning_paid_on_a_clear_win() -> None:
    comparison = scoring.compare_finetuned_with_head(*_paired_predictions(10, 2, both=8, neither=0))
    assert scoring.describe_paired(0.9, 0.5, comparison) == (
        "test accuracy 0.9000 (head alone 0.5000): fine-tuning +0.4000, 10 vs 2 images only one got right, "
        "McNemar p 0.039 — it paid"
    )  # 158/4096 = 0.0386


def test_describe_paired_says_the_head_was_better_on_a_clear_loss() -> None:
    comparison = scoring.compare_finetuned_with_head(*_paired_predictions(2, 10, both=8, neither=0))
    assert scoring.describe_paired(0.5, 0.9, comparison) == (
        "test accuracy 0.5000 (head alone 0.9000): fine-tuning -0.4000, 2 vs 10 images only one got right, "
        "McNemar p 0.039 — the head alone was better"
    )


def test_describe_paired_finds_no_clear_difference_on_a_close_split() -> None:
    # 5:3 of 8 discordant: p = 2 * (1 + 8 + 28 + 56) / 256 = 0.727. Accuracies 10/14 and 8/14.
    comparison = scoring.compare_finetuned_with_head(*_paired_predictions(5, 3, both=5, neither=1))
    assert comparison["p_value"] == pytest.approx(186 / 256)
    assert scoring.describe_paired(10 / 14, 8 / 14, comparison).endswith(
        "fine-tuning +0.1429, 5 vs 3 images only one got right, McNemar p 0.73 — no clear difference"
    )
    # The threshold is alpha: the 10:2 split (p 0.0386) is no clear difference at 1%.
    clear = scoring.compare_finetuned_with_head(*_paired_predictions(10, 2, both=8, neither=0))
    assert scoring.describe_paired(0.9, 0.5, clear, alpha=0.01).endswith("— no clear difference")


def test_describe_paired_never_prints_p_0_when_the_tail_underflows() -> None:
    comparison = {
        "accuracy_difference": 0.11,
        "only_finetuned": 1100,
        "only_head": 0,
        "p_value": scoring.mcnemar_exact_p(1100, 0),
    }
    assert comparison["p_value"] == 0.0  # 2 / 2**1100 is below the smallest float
    assert "McNemar p < 1e-300 — it paid" in scoring.describe_paired(0.99, 0.88, comparison)


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("off", "fine-tuning was off (finetune.enabled: false)"),
        ("kept_start", "fine-tuning kept its starting weights (no epoch beat them on val)"),
    ],
)
def test_describe_paired_claims_no_comparison_when_the_model_is_the_head(outcome: str, reason: str) -> None:
    nothing = scoring.compare_finetuned_with_head(*_paired_predictions(0, 0, both=9, neither=1))
    assert scoring.describe_paired(0.9, 0.9, nothing, outcome) == (  # type: ignore[arg-type]
        f"test accuracy 0.9000 (head alone 0.9000): {reason}, so the model is the head on the frozen backbone "
        "and there is nothing to compare"
    )


def test_fine_tuning_outcome_reads_what_the_finetune_stage_recorded() -> None:
    assert scoring.fine_tuning_outcome({"head_epochs": 12, "mlflow": {"run_id": "x"}}) == "off"
    ran = {
        "head_epochs": 12,
        "val_accuracy_before": 0.90,
        "best_val_accuracy": 0.91,
        "epochs_trained": 3,
        "kept_epoch": 15,
        "trainable_layers": 16,
        "trainable_params": 3568042,
        "seconds": 210.8,
    }
    assert scoring.fine_tuning_outcome(ran) == "trained"
    assert scoring.fine_tuning_outcome({**ran, "best_val_accuracy": 0.90, "kept_epoch": 0}) == "kept_start"
