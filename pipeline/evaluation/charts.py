"""The evaluation's charts: confusion matrix, ROC and precision-recall curves, reliability diagram,
per-class accuracy and the confidence histogram.

They stay legible with many classes: figures grow with the class count, tick fonts shrink within reason,
long class names are cut, and names are drawn literally (a ``$`` in a name never starts mathtext).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from pipeline.core.figures import plain_text, unicode_fonts

_MAX_LABELS = 120  # above this many classes, only every n-th class gets a tick label
_MAX_LABEL_CHARS = 40


def confusion_matrix_chart(confusion: np.ndarray, classes: Sequence[str], text_limit: int = 25) -> Figure:
    """The confusion matrix of a classifier on the test images.

    Args:
        confusion: k x k counts, rows the true class and columns the predicted one.
        classes: the k class names, in matrix order.
        text_limit: up to this many classes, counts and row-normalised rates are drawn side by side
            with every cell annotated; above it, one row-normalised heatmap with a colorbar.

    Returns:
        The figure; it grows with the number of classes so that tick labels never overlap.
    """
    confusion = np.asarray(confusion)
    if confusion.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {confusion.shape} for {len(classes)} classes")
    with unicode_fonts():
        if len(classes) <= text_limit:
            return _confusion_panels(confusion, [_tick_text(name) for name in classes])
        return _confusion_heatmap(confusion, [_tick_text(name) for name in classes])


def _confusion_panels(confusion: np.ndarray, labels: list[str]) -> Figure:
    """Counts and row-normalised rates side by side, every cell annotated."""
    count = len(labels)
    fontsize = _tick_fontsize(count)
    side = max(2.8, 0.34 * count)
    margin = _text_inches(labels, fontsize) + 0.6
    figure = Figure(figsize=(2 * (side + margin) + 0.4, side + margin + 1.0), layout="constrained")
    cell_fontsize = min(11.0, max(6.0, side / count * 72 / 3.4))
    panels = (
        (confusion, Normalize(0, max(1, confusion.max())), "{:.0f}", "counts"),
        (_row_rates(confusion), Normalize(0, 1), "{:.0%}", "row-normalised: recall per true class"),
    )
    for axes, (values, norm, template, title) in zip(figure.subplots(1, 2), panels, strict=True):
        image = axes.imshow(values, cmap=_heat_colours(), norm=norm, interpolation="nearest")
        _annotate_cells(axes, image, values, template, cell_fontsize)
        _label_classes(axes, labels, fontsize, step=1, pitch=side / count)
        axes.set_title(title)
    figure.suptitle(f"Confusion matrix on {int(confusion.sum())} test images: counts and row-normalised rates")
    return figure


def _confusion_heatmap(confusion: np.ndarray, labels: list[str]) -> Figure:
    """One row-normalised heatmap without cell text, a colorbar, and (every n-th) class labelled."""
    count = len(labels)
    step = math.ceil(count / _MAX_LABELS)
    fontsize = _tick_fontsize(math.ceil(count / step))
    side = max(4.0, fontsize * 1.5 / 72 * math.ceil(count / step))  # 1.5 line heights per label
    margin = _text_inches(labels[::step], fontsize) + 0.6
    figure = Figure(figsize=(side + margin + 1.6, side + margin + 1.3), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(_row_rates(confusion), cmap=_heat_colours(), vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.6, label="share of the true class's test images")
    _label_classes(axes, labels, fontsize, step=step, pitch=side / count)
    sparse = f"; one class in {step} labelled" if step > 1 else ""
    axes.set_title(f"Row-normalised (recall per true class), {count} classes{sparse}")
    figure.suptitle(f"Confusion matrix on {int(confusion.sum())} test images")
    return figure


def _row_rates(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total; nan for a class without test images."""
    totals = confusion.sum(axis=1, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, confusion / totals, np.nan)


def _heat_colours() -> Colormap:
    """Blues, with grey for undefined (nan) cells."""
    return matplotlib.colormaps["Blues"].with_extremes(bad="#DDDDDD")


def _annotate_cells(axes: Axes, image: AxesImage, values: np.ndarray, template: str, fontsize: float) -> None:
    """Write each defined cell's value in a colour readable on that cell."""
    for (row, column), value in np.ndenumerate(values):
        if np.isfinite(value):
            colour = _contrast_colour(image.cmap(image.norm(value)))
            axes.text(column, row, template.format(value), ha="center", va="center", color=colour, fontsize=fontsize)


def _contrast_colour(rgba: Sequence[float] | np.ndarray) -> str:
    """Black or white, whichever has the higher WCAG contrast ratio against ``rgba``."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "white" if 1.05 / (luminance + 0.05) > (luminance + 0.05) / 0.05 else "black"


def _label_classes(axes: Axes, labels: list[str], fontsize: float, step: int, pitch: float) -> None:
    """Class names on both axes of a matrix; x labels turn vertical unless they fit side by side."""
    ticks = np.arange(0, len(labels), step)
    shown = [labels[i] for i in ticks]
    rotation = 0 if _text_inches(shown, fontsize) < 0.85 * pitch * step else 90
    axes.set_xticks(ticks, shown, rotation=rotation, fontsize=fontsize)
    axes.set_yticks(ticks, shown, fontsize=fontsize)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")


def _tick_fontsize(count: int) -> float:
    """Tick label size in points: 9 for a few classes, shrinking to 6 at 75 and more."""
    return float(np.clip(11 - count / 15, 6, 9))


def _tick_text(name: str) -> str:
    """A class name as a tick label: literal, and cut short when very long."""
    if len(name) > _MAX_LABEL_CHARS:
        name = name[: _MAX_LABEL_CHARS - 1] + "…"
    return plain_text(name)


def _text_inches(texts: Iterable[str], fontsize: float) -> float:
    """A generous estimate of the widest text's width in inches (wide East Asian characters count double)."""

    def ems(text: str) -> float:
        return sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.65 for c in text)

    return max((ems(text) for text in texts), default=0.0) * fontsize / 72


def curves_chart(
    roc: tuple[np.ndarray, np.ndarray], auc: float, pr: tuple[np.ndarray, np.ndarray], ap: float, positive: str
) -> Figure:
    """ROC and precision-recall curves of a binary classifier, side by side.

    Args:
        roc: false positive rates and true positive rates.
        auc: area under the ROC curve.
        pr: precisions and recalls.
        ap: average precision.
        positive: the name of the positive class.

    Returns:
        The figure, both panels on [0, 1] x [0, 1].
    """
    (fpr, tpr), (precision, recall) = roc, pr
    with unicode_fonts():
        figure = Figure(figsize=(10, 5), layout="constrained")
        roc_axes, pr_axes = figure.subplots(1, 2)
        roc_axes.plot(fpr, tpr, color="#4C72B0", lw=2, clip_on=False, label=f"classifier (AUC = {auc:.3f})")
        roc_axes.plot([0, 1], [0, 1], "--", color="0.55", label="chance (AUC = 0.500)")
        roc_title = f"ROC curve, AUC = {auc:.3f}"
        _unit_axes(roc_axes, "false positive rate", "true positive rate (recall)", roc_title, "lower right")
        pr_axes.plot(
            recall, precision, color="#C44E52", lw=2, drawstyle="steps-post", clip_on=False, label=f"AP = {ap:.3f}"
        )
        _unit_axes(pr_axes, "recall", "precision", f"Precision-recall curve, AP = {ap:.3f}", "lower left")
        figure.suptitle(f"Binary classification, positive class: {plain_text(positive)}")
    return figure


def _unit_axes(axes: Axes, xlabel: str, ylabel: str, title: str, legend: str) -> None:
    """Square [0, 1] axes with labels, a title, a light grid and a legend."""
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel=ylabel, title=title, aspect="equal")
    axes.grid(alpha=0.3)
    axes.legend(loc=legend)  # type: ignore[call-overload]  # a location name; matplotlib types it as a Literal


def reliability_chart(bins: list[dict], ece: float) -> Figure:
    """Reliability diagram: accuracy per confidence bin against perfect calibration.

    Args:
        bins: one dict per bin with keys lower, upper, count, confidence and accuracy (the last two
            nan for an empty bin).
        ece: the expected calibration error.

    Returns:
        The figure: accuracy bars with the gap to the mean confidence shaded, and below them a
        small panel of images per bin.
    """
    lower, upper, count, confidence, accuracy = (
        np.array([b[key] for b in bins], dtype=float) for key in ("lower", "upper", "count", "confidence", "accuracy")
    )
    centre, width = (lower + upper) / 2, upper - lower
    filled = (count > 0) & np.isfinite(accuracy) & np.isfinite(confidence)
    with unicode_fonts():
        figure = Figure(figsize=(6, 6.8), layout="constrained")
        main, counts = figure.subplots(2, 1, height_ratios=(3, 1))
        main.bar(
            centre[filled], accuracy[filled], width=width[filled], color="#4C72B0", edgecolor="white", label="accuracy"
        )
        gap = np.abs(confidence - accuracy)[filled]
        bottom = np.fmin(confidence, accuracy)[filled]
        main.bar(
            centre[filled],
            gap,
            bottom=bottom,
            width=width[filled],
            color="#C44E52",
            alpha=0.35,
            hatch="//",
            edgecolor="#C44E52",
            label="gap to mean confidence",
        )
        main.plot([0, 1], [0, 1], "--", color="0.4", label="perfect calibration")
        main.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top-class probability)",
            ylabel="accuracy",
            title=f"Reliability diagram, ECE = {ece:.3f}",
        )
        main.legend(loc="upper left")
        counts.bar(centre, count, width=width, color="0.55", edgecolor="white")
        counts.set(
            xlim=(0, 1),
            xlabel="confidence (top-class probability)",
            ylabel="images",
            title="test images per confidence bin",
        )
    return figure


def per_class_accuracy_chart(names: Sequence[str], accuracy: Sequence[float], support: Sequence[int]) -> Figure:
    """Horizontal bars of accuracy per class, the worst class at the top.

    Args:
        names: class names.
        accuracy: accuracy (recall) per class on the test images; nan for a class without any.
        support: test images per class.

    Returns:
        The figure; its height grows with the number of classes so labels never overlap.
    """
    values = np.asarray(accuracy, dtype=float)
    order = np.argsort(np.nan_to_num(values, nan=2.0), kind="stable")  # classes without test images go last
    count, fontsize = len(order), _tick_fontsize(len(order))
    labels = [_tick_text(names[i]) for i in order]
    with unicode_fonts():
        height = 1.4 + count * fontsize * 1.6 / 72
        figure = Figure(figsize=(6.5 + _text_inches(labels, fontsize), height), layout="constrained")
        axes = figure.add_subplot()
        axes.barh(np.arange(count), np.nan_to_num(values[order]), height=0.7, color="#4C72B0")
        axes.set_yticks(np.arange(count), labels, fontsize=fontsize)
        axes.invert_yaxis()  # position 0, the worst class, at the top
        for position, index in enumerate(order):
            _bar_note(axes, position, values[index], int(support[index]), fontsize)
        axes.set_xlim(0, 1)
        axes.set_xlabel("accuracy (recall) on the test images")
        axes.set_ylabel("class, worst first")
        axes.set_title(f"Per-class accuracy, worst first ({count} classes, {int(np.sum(support))} test images)")
    return figure


def _bar_note(axes: Axes, position: int, value: float, support: int, fontsize: float) -> None:
    """Write the value and support at the end of a bar: inside a long bar, after a short one."""
    if not np.isfinite(value):
        axes.text(0.01, position, "no test images", va="center", fontsize=fontsize, color="0.35")
        return
    inside = value > 0.7
    axes.text(
        value - 0.01 if inside else value + 0.01,
        position,
        f"{value:.0%} (n={support})",
        ha="right" if inside else "left",
        va="center",
        fontsize=fontsize,
        color="white" if inside else "black",
    )


def confidence_histogram(confidence: np.ndarray, correct: np.ndarray) -> Figure:
    """Overlaid histograms of the top-class confidence of correct and of wrong predictions.

    Args:
        confidence: the top-class probability of each test prediction, in [0, 1].
        correct: whether each prediction was right.

    Returns:
        The figure; either group may be empty.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0, 1, 21)
    with unicode_fonts():
        figure = Figure(figsize=(7, 4.2), layout="constrained")
        axes = figure.add_subplot()
        for mask, name, colour in ((correct, "correct", "#55A868"), (~correct, "wrong", "#C44E52")):
            axes.hist(
                confidence[mask],
                bins=edges.tolist(),
                histtype="stepfilled",
                alpha=0.4,
                color=colour,
                edgecolor=colour,
                linewidth=1.5,
                label=f"{name} ({int(mask.sum())})",
            )
        axes.set_xlim(0, 1)
        axes.set_xlabel("top-class confidence")
        axes.set_ylabel("test images")
        axes.set_title(f"Confidence of {confidence.size} test predictions, correct vs wrong")
        axes.legend(loc="upper left")
    return figure
