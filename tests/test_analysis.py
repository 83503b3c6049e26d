"""Error analysis tables on a hand-made predictions table, and the evaluate + analyze stages end to end."""

from __future__ import annotations

import html.parser
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import analysis, analysis_report, scoring
from pipeline.serving import classifier

CLASSES = ["cat", "dog", "猫"]


def hand_made() -> pd.DataFrame:
    # label, probabilities (cat, dog, 猫); predicted = arg-max.
    rows = [
        ("a.png", 0, [0.9, 0.05, 0.05]),  # right
        ("b.png", 0, [0.2, 0.7, 0.1]),  # cat → dog, loss -log 0.2
        ("c.png", 0, [0.1, 0.8, 0.1]),  # cat → dog, loss -log 0.1 (the worst)
        ("d.png", 1, [0.1, 0.6, 0.3]),  # right
        ("e.png", 1, [0.3, 0.3, 0.4]),  # dog → 猫, loss -log 0.3
        ("f.png", 2, [0.0, 0.0, 1.0]),  # right
    ]
    labels = np.array([r[1] for r in rows])
    return classifier.predictions_frame([r[0] for r in rows], labels, np.array([r[2] for r in rows]), CLASSES)


def test_predictions_frame_columns_and_losses():
    frame = hand_made()
    assert list(frame.columns[:6]) == ["path", "label", "predicted", "confidence", "loss", "correct"]
    assert analysis.class_names(frame) == CLASSES
    assert list(frame["predicted"]) == ["cat", "dog", "dog", "dog", "猫", "猫"]
    assert frame["loss"].tolist() == pytest.approx(
        [-np.log(0.9), -np.log(0.2), -np.log(0.1), -np.log(0.6), -np.log(0.3), 0.0]
    )
    assert frame["correct"].tolist() == [True, False, False, True, False, True]


def test_worst_errors_are_the_wrong_answers_by_loss():
    worst = analysis.worst_errors(hand_made(), 2)
    assert list(worst["path"]) == ["c.png", "b.png"]  # losses: c -log 0.1 = 2.30, b -log 0.2 = 1.61, e -log 0.3 = 1.20
    assert list(worst.columns) == ["path", "label", "predicted", "confidence", "loss"]


def test_per_class_accuracy_worst_first():
    table = analysis.per_class_accuracy(hand_made(), CLASSES)
    assert list(table["class"]) == ["cat", "dog", "猫"]  # 1/3, 1/2, 1/1
    assert table["accuracy"].tolist() == pytest.approx([1 / 3, 1 / 2, 1.0])
    assert table["support"].tolist() == [3, 2, 1] and table["errors"].tolist() == [2, 1, 0]


def test_per_class_accuracy_keeps_classes_without_test_images():
    table = analysis.per_class_accuracy(hand_made(), [*CLASSES, "owl"])
    assert table.iloc[-1]["class"] == "owl" and table.iloc[-1]["support"] == 0 and np.isnan(table.iloc[-1]["accuracy"])


def test_confused_pairs_with_shares():
    pairs = analysis.confused_pairs(hand_made(), 5)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["cat", "dog", 2], ["dog", "猫", 1]]
    assert pairs["share_of_class"].tolist() == pytest.approx([2 / 3, 1 / 2])


def test_confidence_of_right_and_wrong_answers():
    table = analysis.confidence_summary(hand_made()).set_index("predictions")
    assert table.loc["correct", "count"] == 3 and table.loc["wrong", "count"] == 3
    assert table.loc["correct", "mean_confidence"] == pytest.approx((0.9 + 0.6 + 1.0) / 3)
    assert table.loc["wrong", "mean_confidence"] == pytest.approx((0.7 + 0.8 + 0.4) / 3)


class _Tree(html.parser.HTMLParser):
    """Checks that every element is closed in order; collects ids, img sources and script tags."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.sources: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        attributes = dict(attrs)
        self.ids |= {attributes["id"]} if "id" in attributes else set()
        self.sources += [attributes["src"]] if "src" in attributes else []
        self.scripts += tag == "script"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):  # noqa: ANN001
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


@pytest.mark.slow
def test_evaluate_and_analyze_through_dvc(tiny_run, tmp_path):
    project = tiny_run.copy(tmp_path)  # classes cat, sea lion, 猫
    root = project.root

    scores = json.loads((root / "metrics/evaluate.json").read_text())
    assert (
        set(scores["finetuned"])
        == set(scores["head_only"])
        >= {"accuracy", "f1_macro", "log_loss", "ece", "roc_auc", "per_class"}
    )
    assert set(scores["finetuned"]["per_class"]) == {"cat", "sea lion", "猫"}
    paired = scores["finetuned_vs_head"]
    assert set(paired) == {"accuracy_difference", "p_value", "only_finetuned", "only_head"}
    assert paired["accuracy_difference"] == pytest.approx(
        scores["finetuned"]["accuracy"] - scores["head_only"]["accuracy"]
    )
    # Every image only one got right moves the difference by 1/n; the rest cancel out.
    assert paired["only_finetuned"] - paired["only_head"] == round(
        paired["accuracy_difference"] * scores["finetuned"]["n"]
    )
    assert paired["p_value"] == scoring.mcnemar_exact_p(paired["only_finetuned"], paired["only_head"])
    logged = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(scores["mlflow"]["run_id"]).data.metrics
    assert {key: logged[f"finetuned_vs_head.{key}"] for key in paired} == pytest.approx(paired)
    assert not any(key.startswith("finetuned_vs_head.") for key in scores)  # nested in the JSON, flat in MLflow
    test = pd.read_csv(root / "data/splits/test.csv")
    predictions = pd.read_csv(root / "reports/predictions.csv")
    assert list(predictions["path"]) == list(test["path"]) and scores["finetuned"]["n"] == len(test)
    assert predictions["correct"].mean() == pytest.approx(scores["finetuned"]["accuracy"])
    confusion = pd.read_csv(root / "plots/evaluate/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == len(test)
    for name in ("confusion_matrix", "reliability", "curves"):
        assert (root / f"plots/evaluate/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (root / "reports/report.html").read_text(encoding="utf-8")
    tree = _Tree()
    tree.feed(page)
    tree.close()
    assert tree.stack == [] and tree.scripts == 0
    assert {"overview", "classes", "confidence", "errors", "gradcam"} <= tree.ids
    assert {"label-issues", "near-duplicates", "outliers", "overlapping-classes", "activations"} <= tree.ids
    assert tree.sources and all(src.startswith("data:image/png;base64,") for src in tree.sources)
    assert "http://" not in page and "https://" not in page
    for name in ("猫", "sea lion", "cat"):
        assert name in page
    fine_tuning = scoring.fine_tuning_outcome(json.loads((root / "metrics/finetune.json").read_text()))
    sentence = analysis_report.paired_sentence(scores, fine_tuning)
    assert sentence.startswith(f"Test accuracy {scores['finetuned']['accuracy']:.4f} (head alone ")
    assert f"<p>{html.escape(sentence)}</p>" in page
    analyze = json.loads((root / "metrics/analyze.json").read_text())
    assert analyze["errors"] == int((~predictions["correct"]).sum())
    plots = json.loads(project.run("dvc", "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
