"""The split stage's chart: images per class and split, one stacked bar per class."""

from __future__ import annotations

from matplotlib.figure import Figure

from pipeline.core.figures import unicode_fonts

_SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def class_counts_chart(counts: dict[str, dict[str, int]]) -> Figure:
    """Horizontal stacked bars of images per class, one colour per split.

    Args:
        counts: images per class, by split name.

    Returns:
        The figure; its height grows with the number of classes so labels never overlap.
    """
    classes = sorted({c for per_class in counts.values() for c in per_class}, reverse=True)
    with unicode_fonts():
        figure = Figure(figsize=(8, 1.5 + 0.28 * len(classes)), layout="constrained")
        axes = figure.add_subplot()
        left = [0] * len(classes)
        for split, per_class in counts.items():
            values = [per_class.get(c, 0) for c in classes]
            axes.barh(classes, values, left=left, label=split, color=_SPLIT_COLOURS.get(split))
            left = [a + b for a, b in zip(left, values, strict=True)]
        for y, total in enumerate(left):
            axes.text(total, y, f" {total}", va="center", fontsize=8)
        axes.set_xlabel("images")
        axes.set_title(f"Images per class and split ({len(classes)} classes, {sum(left)} images)")
        figure.legend(loc="outside lower center", ncols=len(counts), frameon=False)
        axes.margins(x=0.1)
    return figure
