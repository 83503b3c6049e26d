"""The backbone's input size: a number from params.yaml, the backbone's own, or ``auto`` from the images.

``backbone.image_size: auto`` follows the data. Photos get the backbone's native size (224 for
EfficientNet-Lite0), where its ImageNet features are best; small images get a small input, which
costs a fraction of the time and loses nothing, since upscaling a 28 px image to 224 px invents no
detail. The rule, on the median short side ``s`` of the train images (their headers; no pixels read):

    size = s × AUTO_UPSCALE, rounded up to a multiple of AUTO_STEP,
           then held between max(AUTO_FLOOR, the backbone's minimum) and its native size

so Fashion-MNIST's 28 px become AUTO_FLOOR, 128 px photos 160 and anything from 180 px up the
native size. The median (ties: the lower middle) makes the choice robust to a few odd images and the
same on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

AUTO = "auto"
AUTO_UPSCALE = 1.25  # ImageNet objects fill more of the frame than most photos' subjects: a little larger helps
AUTO_STEP = 16
AUTO_FLOOR = 64


def median_short_side(sizes: Sequence[tuple[int, int]]) -> int:
    """The lower median of ``min(width, height)`` over ``(width, height)`` pairs.

    Raises:
        ValueError: no sizes.
    """
    if not sizes:
        raise ValueError("no images to choose an input size from")
    sides = sorted(min(width, height) for width, height in sizes)
    return sides[(len(sides) - 1) // 2]


def auto_size(short_side: int, native: int, smallest: int) -> int:
    """The ``auto`` rule (module docstring) for a median short side, a backbone's native and minimum size."""
    wanted = math.ceil(short_side * AUTO_UPSCALE / AUTO_STEP) * AUTO_STEP
    return max(max(AUTO_FLOOR, smallest), min(native, wanted))


def choose_image_size(requested: int | str | None, native: int, smallest: int, sizes: Sequence[tuple[int, int]]) -> int:
    """The input size to use.

    Args:
        requested: ``backbone.image_size``: a number (used as it is), None (the backbone's native
            size) or ``auto``.
        native: the backbone's own input size.
        smallest: the smallest input it takes.
        sizes: ``(width, height)`` of the train images, read only for ``auto``.
    """
    if requested is None:
        return native
    if requested == AUTO:
        return auto_size(median_short_side(sizes), native, smallest)
    return int(requested)


def describe_choice(requested: int | str | None, size: int, short_side: int | None) -> str:
    """Why this size, for the console and meta.json, e.g. ``auto: median short side 28 px → 64 px``."""
    if requested == AUTO:
        return f"auto: median short side {short_side} px → {size} px"
    if requested is None:
        return f"the backbone's own size, {size} px"
    return f"{size} px (backbone.image_size)"
