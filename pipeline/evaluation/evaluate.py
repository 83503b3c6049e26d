"""The evaluate stage's work: both models on the test split, their scores, charts and the paired verdict.

The fine-tuned model scores the test images; the head alone scores the cached test features of the same
images, which shows what fine-tuning added. ``evaluate`` reads its inputs from the params' paths and returns
everything the stage writes and logs, so the stage itself only saves and records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.data import split
from pipeline.evaluation import charts, scoring
from pipeline.features import extraction
from pipeline.serving import classifier

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

MODELS = ("finetuned", "head_only")


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate stage writes and logs."""

    runtime: str  # where the classifier ran (compute.runtime resolved): the probabilities' last bits depend on it
    predictions: pd.DataFrame  # one row per test image (``classifier.predictions_frame``)
    scores: dict[str, dict[str, Any]]  # by model (MODELS): ``scoring.summarize``, per-class numbers included
    paired: dict[str, Any]  # ``scoring.compare_finetuned_with_head``: McNemar's exact test on the discordant images
    plot_tables: dict[str, pd.DataFrame]  # the CSVs `dvc plots` draws, by name
    charts: dict[str, Figure]  # confusion_matrix, reliability, curves
    verdict: str  # one sentence: whether fine-tuning paid (``scoring.describe_paired``)


def evaluate(params: Params) -> Evaluation:
    """Score the fine-tuned model on the test images and the head on the cached test features.

    Raises:
        UserError: the cached features are not those of the test split's images, or a model cannot be loaded.
    """
    test = split.read_split_files(params.path("splits"), "test", params.root)
    classes = list(test.classes)
    cached = extraction.read_feature_set(params.path("features") / "test.npz")
    classifier.check_same_rows(test.rel_paths, cached.paths, "the cached test features")
    model = classifier.load_model(params.path("model"))
    runtime, forward = classifier.compile_on_runtime(
        model, params.compute.runtime, params.evaluate.batch_size, params.compute.threads
    )
    probabilities = {
        "finetuned": classifier.predict_probabilities(
            model, test.paths, params.backbone.crop, params.evaluate.batch_size, "evaluate", forward
        ),
        "head_only": classifier.head_probabilities(classifier.load_head(params.path("head_model")), cached.features),
    }
    settings = params.evaluate
    scores = {
        name: scoring.summarize(test.labels, probabilities[name], classes, settings.top_k, settings.calibration_bins)
        for name in MODELS
    }
    predicted = probabilities["finetuned"].argmax(axis=1)
    paired = scoring.compare_finetuned_with_head(test.labels, predicted, probabilities["head_only"].argmax(axis=1))
    fine_tuning = scoring.fine_tuning_outcome(files.read_json(params.path("metrics") / "finetune.json"))
    plot_tables, figures = draw(test.labels, probabilities["finetuned"], classes, settings.calibration_bins, scores)
    return Evaluation(
        runtime=runtime,
        predictions=classifier.predictions_frame(test.rel_paths, test.labels, probabilities["finetuned"], classes),
        scores=scores,
        paired=paired,
        plot_tables=plot_tables,
        charts=figures,
        verdict=scoring.describe_paired(
            scores["finetuned"]["accuracy"], scores["head_only"]["accuracy"], paired, fine_tuning
        ),
    )


def draw(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], bins: int, scores: dict[str, dict[str, Any]]
) -> tuple[dict[str, pd.DataFrame], dict[str, Figure]]:
    """The fine-tuned model's plot tables (the CSVs `dvc plots` draws) and its charts."""
    curves = scoring.curves(labels, probabilities, classes)
    confusion = scoring.confusion_matrix(labels, probabilities.argmax(axis=1), len(classes))
    reliability = scoring.reliability_bins(labels, probabilities, bins)
    return scoring.plot_tables(labels, probabilities, classes, bins, curves), {
        "confusion_matrix": charts.confusion_matrix_chart(confusion, classes),
        "reliability": charts.reliability_chart(reliability, scores["finetuned"]["ece"]),
        "curves": charts.curves_chart(
            (curves.fpr, curves.tpr),
            curves.auc,
            (curves.precision, curves.recall),
            curves.average_precision,
            curves.label,
        ),
    }
