"""What the analyze stage's report shows: its sections, in order, and what each holds.

``build_sections`` is the one list of the report's sections: the overview, the classes, confidence, the worst
errors and their Grad-CAM heatmaps, the audit's findings (``audit_report``) and the backbone's activations.
The figures are rendered once here (``Rendered``) and handed back too, so the stage saves and logs the same PNGs.
To change what the report shows, change this module; ``report`` and its templates only lay it out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from pipeline.core import figures, files
from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.data import images
from pipeline.evaluation import activations, analysis, audit_report, charts, gallery, gradcam, report, scoring
from pipeline.features import inputs
from pipeline.serving import classifier

THUMBNAIL_PX = 200  # the worst errors' gallery
ACTIVATION_EXAMPLES = 3  # test images whose feature maps are shown
# The headline numbers compared between the fine-tuned model and the head alone, in this order.
_COMPARED = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "log_loss", "ece", "roc_auc")


@dataclass
class Rendered:
    """What the sections need rendered: PNGs by name, and every character no font could draw."""

    pngs: dict[str, bytes] = field(default_factory=dict)
    missing_glyphs: set[str] = field(default_factory=set)

    def add(self, name: str, figure: Any, caption: str) -> report.Image:
        """Render a figure once; remember its PNG and any glyph it lacked."""
        png, missing = figures.to_png(figure)
        self.pngs[name] = png
        self.missing_glyphs |= set(missing)
        return report.Image(png, caption, alt=caption)


@dataclass(frozen=True)
class Examples:
    """The worst errors as pictures: originals for the gallery, model-size views and their Grad-CAM overlays."""

    originals: list[np.ndarray]
    overlays: list[np.ndarray] | None  # None: Grad-CAM switched off
    model_views: list[np.ndarray]


def build_sections(
    params: Params,
    predictions: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    scores: dict[str, dict[str, Any]],
    fine_tuning: scoring.FineTuning,
    rendered: Rendered,
) -> list[report.Section]:
    """Every section of the report, in order.

    Args:
        params: the run's params (the audit's lists, the images, the model and the analyze settings).
        predictions: the fine-tuned model's predictions table.
        tables: ``analysis``'s tables: per_class_accuracy, confused_pairs, worst_errors.
        scores: metrics/evaluate.json.
        fine_tuning: ``scoring.fine_tuning_outcome`` of metrics/finetune.json.
        rendered: collects the figures.
    """
    worst = tables["worst_errors"]
    model = classifier.load_model(params.path("model"))
    examples = load_examples(worst, analysis.class_names(predictions), params, THUMBNAIL_PX, model)
    return [
        overview_section(predictions, scores, rendered, params.evaluate.calibration_bins, fine_tuning),
        class_section(tables["per_class_accuracy"], tables["confused_pairs"], rendered),
        confidence_section(predictions, rendered),
        *error_sections(worst, examples, rendered),
        *data_sections(params, tables["confused_pairs"], rendered),
        activations_of_examples(model, params, predictions, rendered),
    ]


def data_sections(params: Params, confused: pd.DataFrame, rendered: Rendered) -> list[report.Section]:
    """The audit stage's findings: label errors, near-duplicates, outliers and overlapping classes."""
    audit = files.read_json(params.path("metrics") / "audit.json")
    text = (
        "path",
        "split",
        "label",
        "suggested",
        "kind",
        "path_a",
        "label_a",
        "path_b",
        "label_b",
        "class_a",
        "class_b",
    )
    read = functools.partial(files.read_csv, text_columns=text)
    issues = read(params.path("label_issues"))
    sizes = {name: int(audit[f"out_of_sample_images_{name}"]) for name in ("train", "val", "test")}
    draw, root, shown = rendered.add, params.root, params.audit.shown
    duplicates = read(params.path("near_duplicates"))
    threshold = audit["duplicate_threshold"], audit["duplicate_threshold_source"]
    outliers = read(params.path("outliers"))
    return [
        audit_report.label_issue_section(issues, sizes, draw, root, shown),
        audit_report.duplicate_section(duplicates, *threshold, draw, root, shown),
        audit_report.outlier_section(outliers, audit["outlier_limit"], audit["outlier_neighbours"], draw, root, shown),
        audit_report.overlap_section(read(params.path("plots") / "audit" / "overlapping_classes.csv"), confused),
    ]


def activations_of_examples(
    model: keras.Model, params: Params, predictions: pd.DataFrame, rendered: Rendered
) -> report.Section:
    """Feature maps at several depths for the most confident right answer of a few classes, and the first filters."""
    shown = activation_examples(predictions, ACTIVATION_EXAMPLES)
    views = model_views(model, [params.root / p for p in shown["path"]], params.backbone.crop)
    return activation_section(model, views, example_captions(shown), rendered)


def comparison_table(scores: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The fine-tuned model next to the head alone, one row per headline metric."""
    keys = [k for k in scores["finetuned"] if k.startswith("top_")] + list(_COMPARED)
    rows = [
        {
            "metric": key,
            "fine-tuned model": scores["finetuned"].get(key),
            "head on cached features": scores["head_only"].get(key),
        }
        for key in keys
        if key in scores["finetuned"]
    ]
    return pd.DataFrame(rows)


def paired_sentence(scores: dict[str, dict[str, Any]], fine_tuning: scoring.FineTuning) -> str:
    """The report's one sentence on whether fine-tuning paid, from metrics/evaluate.json."""
    words = scoring.describe_paired(
        scores["finetuned"]["accuracy"], scores["head_only"]["accuracy"], scores["finetuned_vs_head"], fine_tuning
    )
    return f"{words[0].upper()}{words[1:]}."


def example_captions(worst: pd.DataFrame) -> list[str]:
    """'true: cat / predicted: dog (0.93)' under each example."""
    return [f"true: {row.label}\npredicted: {row.predicted} ({row.confidence:.2f})" for row in worst.itertuples()]


def overview_section(
    predictions: pd.DataFrame,
    scores: dict[str, dict[str, Any]],
    rendered: Rendered,
    bins: int,
    fine_tuning: scoring.FineTuning,
) -> report.Section:
    """Whether fine-tuning paid (in ``scoring.describe_paired``'s words), headline numbers of both models,
    the confusion matrix and the reliability diagram.

    Args:
        predictions: the fine-tuned model's predictions table.
        scores: metrics/evaluate.json: ``finetuned``, ``head_only`` and ``finetuned_vs_head``.
        rendered: collects the figures.
        bins: confidence bins of the reliability diagram.
        fine_tuning: ``scoring.fine_tuning_outcome`` of metrics/finetune.json.
    """
    classes = analysis.class_names(predictions)
    labels = predictions["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probabilities = analysis.probabilities(predictions)
    confusion = scoring.confusion_matrix(labels, probabilities.argmax(axis=1), len(classes))
    matrix = rendered.add(
        "confusion_matrix",
        charts.confusion_matrix_chart(confusion, classes),
        "Confusion matrix of the fine-tuned model on the test split (rows: true class).",
    )
    reliability = rendered.add(
        "reliability",
        charts.reliability_chart(scoring.reliability_bins(labels, probabilities, bins), scores["finetuned"]["ece"]),
        "Reliability: accuracy against confidence; the diagonal is perfect calibration.",
    )
    return report.Section(
        "overview",
        "Overview",
        "The fine-tuned model scores the test split's images; the head alone scores the cached features of the "
        f"same images, which shows what fine-tuning added.\n\n{paired_sentence(scores, fine_tuning)}",
        images=(matrix, reliability),
        tables=(report.Table(comparison_table(scores), "Test-split metrics of both models"),),
    )


def class_section(per_class: pd.DataFrame, pairs: pd.DataFrame, rendered: Rendered) -> report.Section:
    """Per-class accuracy, worst first (``analysis.per_class_accuracy``), and the most frequent
    confusions (``analysis.confused_pairs``)."""
    chart = rendered.add(
        "per_class_accuracy",
        charts.per_class_accuracy_chart(per_class["class"], per_class["accuracy"].fillna(0), per_class["support"]),
        "Accuracy of each class, worst first.",
    )
    return report.Section(
        "classes",
        "Classes",
        "Which classes fail most, and what they are mistaken for.",
        images=(chart,),
        tables=(
            report.Table(per_class, "Per-class accuracy, worst first"),
            report.Table(pairs, "Most-confused pairs (true → predicted)"),
        ),
    )


def confidence_section(predictions: pd.DataFrame, rendered: Rendered) -> report.Section:
    """How confident right and wrong answers are."""
    histogram = rendered.add(
        "confidence",
        charts.confidence_histogram(
            predictions["confidence"].to_numpy(), predictions["correct"].astype(bool).to_numpy()
        ),
        "Top-class confidence of correct and wrong predictions.",
    )
    return report.Section(
        "confidence",
        "Confidence",
        "A well-behaved model is less sure when it is wrong: the two histograms should separate.",
        images=(histogram,),
        tables=(report.Table(analysis.confidence_summary(predictions), "Confidence of right and wrong answers"),),
    )


def error_sections(worst: pd.DataFrame, examples: Examples, rendered: Rendered) -> list[report.Section]:
    """The gallery of the worst errors and, when computed, their Grad-CAM heatmaps."""
    if worst.empty:
        return [report.Section("errors", "Worst errors", "There are no wrong predictions on the test split.")]
    captions = example_captions(worst)
    grid = rendered.add(
        "worst_errors",
        gallery.image_grid(examples.originals, captions, f"The {len(worst)} worst errors, by loss"),
        "Wrong predictions with the highest loss: the most confident mistakes first.",
    )
    sections = [
        report.Section(
            "errors",
            "Worst errors",
            "Each image with its true label, the prediction and the model's confidence in it.",
            images=(grid,),
            tables=(report.Table(worst, "The worst errors"),),
        )
    ]
    if examples.overlays is not None:
        heat = rendered.add(
            "gradcam",
            gallery.heatmap_grid(examples.model_views, examples.overlays, captions, "Grad-CAM for the predicted class"),
            "Where the backbone's last convolutional block looked to predict the wrong class.",
        )
        sections.append(
            report.Section(
                "gradcam",
                "Grad-CAM",
                "Grad-CAM weighs the last convolutional block's feature maps by the gradient of the predicted class's "
                "logit: warm regions pushed the model towards its (wrong) answer. Each image is shown as the model "
                "saw it (cropped and resized) next to the heatmap.",
                images=(heat,),
            )
        )
    return sections


def glyph_notes(missing: set[str], texts: Sequence[str]) -> list[str]:
    """A note for every character the figures could not draw (the report's text still has them)."""
    if not missing:
        return []
    affected = sorted({t for t in texts if set(t) & missing})
    return [
        f"No installed font could draw {len(missing)} character(s) ({''.join(sorted(missing))}); they show as "
        f"empty boxes in the figures for: {', '.join(affected)}. The tables give the names in full. Installing "
        "a font with CJK glyphs (Debian: fonts-wqy-zenhei or fonts-noto-cjk) fixes the figures."
    ]


def load_examples(
    worst: pd.DataFrame, classes: Sequence[str], params: Params, thumbnail_px: int, model: keras.Model
) -> Examples:
    """The worst errors as pictures: upright originals for the gallery and, when ``analyze.gradcam``
    is on, the images as the model saw them with Grad-CAM overlays for the predicted class.

    Raises:
        UserError: the model does not have the layers Grad-CAM needs.
    """
    paths = [params.root / p for p in worst["path"]]
    originals = [images.load_thumbnail(p, thumbnail_px) for p in paths]
    if not paths or not params.analyze.gradcam:
        return Examples(originals, None, [])
    views = np.concatenate(
        [b.numpy() for b in inputs.image_dataset(paths, classifier.input_size(model), params.backbone.crop, 64)]
    )
    predicted = np.array([list(classes).index(name) for name in worst["predicted"]])
    try:
        heatmaps = gradcam.grad_cam(model, views, predicted)
    except ValueError as error:
        raise UserError(f"Grad-CAM: {error}; set analyze.gradcam: false to skip it") from None
    views = np.clip(np.round(views), 0, 255).astype(np.uint8)
    return Examples(originals, [gradcam.overlay(v, h) for v, h in zip(views, heatmaps, strict=True)], list(views))


def activation_examples(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """Images for the activations section: the most confident right answers, one per class, up to ``count``.

    Ties in confidence keep the predictions' order, so the choice is the same on every run. The
    columns are those of ``analysis.worst_errors`` (``example_captions`` captions them).
    """
    right = predictions.loc[predictions["correct"].astype(bool)]
    ranked = right.sort_values("confidence", ascending=False, kind="stable").drop_duplicates("label")
    return ranked.head(count)[["path", "label", "predicted", "confidence", "loss"]].reset_index(drop=True)


def model_views(model: keras.Model, paths: Sequence[Path], crop: inputs.Crop) -> list[np.ndarray]:
    """Images as the model sees them: decoded, fitted to its input size (``crop``), uint8 RGB."""
    if not paths:
        return []
    batches = inputs.image_dataset(list(paths), classifier.input_size(model), crop, 64)
    views = np.concatenate([batch.numpy() for batch in batches])
    return list(np.clip(np.round(views), 0, 255).astype(np.uint8))


def activation_section(
    model: keras.Model,
    views: Sequence[np.ndarray],
    captions: Sequence[str],
    rendered: Rendered,
    depths: int = 4,
    channels: int = 8,
) -> report.Section:
    """Feature maps of a few images at several depths of the backbone, and its first convolution's filters.

    Args:
        model: the classifier (``classifier.load_model``), laid out as ``finetune.assemble`` builds it.
        views: the images as the model saw them (``model_views``), uint8 RGB at its input size; one
            figure each, ``activations_0``, ``activations_1``...
        captions: one per view, the title of its figure (e.g. ``example_captions``).
        rendered: collects the figures; the filters are ``first_conv_filters``.
        depths: stages of the backbone shown (``activations.block_depths``).
        channels: feature maps shown per depth, the most active ones.

    Raises:
        UserError: the model lacks the layers the activations need.
    """
    if len(captions) != len(views):
        raise ValueError(f"activation_section: {len(views)} views but {len(captions)} captions")
    try:
        backbone = activations.backbone_of(model)
        names = activations.block_depths(backbone, depths)
        maps = activations.block_activations(model, np.stack(views), names) if len(views) else []
        kernel = activations.first_conv_filters(backbone)[:, :, activations.rgb_channels(model), :]
    except ValueError as error:
        raise UserError(f"activations: {error}") from None
    shown = []
    for index, (view, caption) in enumerate(zip(views, captions, strict=True)):
        by_layer = {name: layer_maps[index] for name, layer_maps in zip(names, maps, strict=True)}
        shown.append(
            rendered.add(
                f"activations_{index}",
                activations.activation_grid(view, by_layer, channels, title=caption),
                f"The {channels} most active feature maps at {len(names)} depths of the backbone "
                f"({caption.replace(chr(10), ', ')}).",
            )
        )
    shown.append(
        rendered.add(
            "first_conv_filters",
            activations.filter_grid(kernel),
            "The weights of the backbone's first convolution, one colour patch per filter.",
        )
    )
    return report.Section(
        "activations",
        "Activations and filters",
        "Each image goes through the backbone, and the feature maps of a few of its blocks are drawn, the most "
        "active channels of each, bright where a channel fires. Early blocks keep the image's layout and fire on "
        "edges, colours and textures; deeper ones are coarser and more abstract, and fire on the parts that speak "
        "for a class. The first convolution's filters, drawn as colour patches, are detectors of oriented edges and "
        "colour contrasts.",
        images=tuple(shown),
    )
