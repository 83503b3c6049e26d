"""Image grids for the analysis report: misclassified examples with their captions, and Grad-CAM
overlays beside the images they explain. Built with matplotlib's object API, like ``figures``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.core.figures import plain_text, unicode_fonts

_CAPTION_FONTSIZE = 8
_CAPTION_LINE_INCHES = 0.17


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 5) -> Figure:
    """Images in a grid, each with its (possibly multi-line) caption underneath.

    Args:
        images: uint8 RGB arrays (grayscale 2-D arrays are drawn in grey).
        captions: one caption per image, e.g. ``"true: cat\\npred: dog (0.93)"``.
        title: the title above the grid.
        columns: images per row at most.

    Returns:
        The figure; its height grows with the number of rows.
    """
    rows, columns = _grid_shape(len(images), len(captions), columns)
    with unicode_fonts():
        cell_height = 2.1 + _CAPTION_LINE_INCHES * _caption_lines(captions)
        figure = Figure(figsize=(2.2 * columns, 0.7 + rows * cell_height), layout="constrained")
        grid = figure.add_gridspec(rows, columns)
        for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
            axes = figure.add_subplot(grid[divmod(index, columns)])
            _show(axes, image)
            axes.set_xlabel(plain_text(caption), fontsize=_CAPTION_FONTSIZE)
        figure.suptitle(plain_text(title))
    return figure


def heatmap_grid(
    images: Sequence[np.ndarray],
    overlays: Sequence[np.ndarray],
    captions: Sequence[str],
    title: str,
    columns: int = 4,
) -> Figure:
    """Each example as a pair, the image and its Grad-CAM overlay, with a caption under the pair.

    Args:
        images: uint8 RGB arrays.
        overlays: uint8 RGB arrays, the heatmap already blended over the matching image.
        captions: one caption per example.
        title: the title above the grid.
        columns: pairs per row at most.

    Returns:
        The figure; its height grows with the number of rows.
    """
    return pair_grid(images, overlays, captions, title, ("image", "Grad-CAM"), columns)


def pair_grid(
    lefts: Sequence[np.ndarray],
    rights: Sequence[np.ndarray],
    captions: Sequence[str],
    title: str,
    titles: tuple[str, str],
    columns: int = 4,
) -> Figure:
    """Pairs of images side by side (an image and its heatmap, two near-duplicates), a caption under each pair.

    Args:
        lefts: uint8 RGB arrays, the left image of each pair.
        rights: the right image of each pair.
        captions: one caption per pair.
        title: the title above the grid.
        titles: the titles above every left and every right image.
        columns: pairs per row at most.
    """
    images, overlays = lefts, rights
    if len(overlays) != len(images):
        raise ValueError(f"{len(images)} left images but {len(overlays)} right ones")
    rows, columns = _grid_shape(len(images), len(captions), columns)
    with unicode_fonts():
        cell_height = 1.75 + _CAPTION_LINE_INCHES * _caption_lines(captions)
        figure = Figure(figsize=(3.9 * columns, 0.7 + rows * cell_height), layout="constrained")
        cells = figure.subfigures(rows, columns, squeeze=False).flat
        # the grid may have more cells than images: the spare cells of the last row stay empty
        for cell, image, overlay, caption in zip(cells, images, overlays, captions, strict=False):
            original_axes, overlay_axes = cell.subplots(1, 2)
            _show(original_axes, image, titles[0])
            _show(overlay_axes, overlay, titles[1])
            cell.supxlabel(plain_text(caption), fontsize=_CAPTION_FONTSIZE)
        figure.suptitle(plain_text(title))
    return figure


def _grid_shape(images: int, captions: int, columns: int) -> tuple[int, int]:
    """Rows and columns for ``images`` cells: no more columns than images."""
    if images == 0 or captions != images or columns < 1:
        raise ValueError(
            f"need one caption per image and at least one column: {images} images, "
            f"{captions} captions, {columns} columns"
        )
    columns = min(columns, images)
    return math.ceil(images / columns), columns


def _caption_lines(captions: Sequence[str]) -> int:
    """The number of lines of the longest caption."""
    return max(caption.count("\n") + 1 for caption in captions)


def _show(axes: Axes, image: np.ndarray, title: str | None = None) -> None:
    """Draw an image without ticks (the frame stays, so an x label can carry the caption)."""
    axes.imshow(image, cmap="gray" if np.ndim(image) == 2 else None)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=_CAPTION_FONTSIZE)
