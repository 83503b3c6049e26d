"""Figures people would rather look at than read: built with matplotlib's object API (no global
pyplot state), with fonts that can draw class names in any script."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import matplotlib
import matplotlib.font_manager
from matplotlib.figure import Figure

# Tried in order for each glyph; the first installed ones are used (CJK class names need a CJK font).
_FONT_CANDIDATES = (
    "DejaVu Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Noto Sans",
)
_SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


@contextlib.contextmanager
def unicode_fonts() -> Iterator[None]:
    """Use every installed candidate font as a fallback chain while figures are built."""
    installed = {font.name for font in matplotlib.font_manager.fontManager.ttflist}
    families = [name for name in _FONT_CANDIDATES if name in installed] or ["sans-serif"]
    with matplotlib.rc_context({"font.family": families}):
        yield


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
            left = [a + b for a, b in zip(left, values)]
        for y, total in enumerate(left):
            axes.text(total, y, f" {total}", va="center", fontsize=8)
        axes.set_xlabel("images")
        axes.set_title(f"Images per class and split ({len(classes)} classes, {sum(left)} images)")
        figure.legend(loc="outside lower center", ncols=len(counts), frameon=False)
        axes.margins(x=0.1)
    return figure
