"""The tf.data input pipeline shared by extract, finetune and evaluate: files to batches of pixels.

Images are read and decoded in parallel (JPEG, PNG, BMP, the first frame of a GIF), turned upright
by their EXIF orientation, expanded to three channels when grayscale, fitted to a square by the crop
policy, batched and prefetched so decoding overlaps the model. Pixels stay raw 0-255 floats: each
model does its own preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf
from PIL import Image

Crop = Literal["center", "pad", "stretch"]
_EXIF_ORIENTATION = 0x0112


def read_orientation(path: Path) -> int:
    """The EXIF orientation tag (1-8) of an image, 1 when it has none; reads only the header."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return 1  # unreadable metadata: decode the pixels as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_orientations(paths: Sequence[Path]) -> np.ndarray:
    """EXIF orientations for many files (1 for everything but JPEG)."""
    return np.fromiter((read_orientation(p) if _may_have_exif(p) else 1 for p in paths), dtype=np.int32,
                       count=len(paths))


def _may_have_exif(path: Path) -> bool:
    """Whether a file is a JPEG, the format cameras write orientation into (sniffed from its magic bytes).

    Other formats are skipped: reading a PNG's EXIF can mean decoding the whole file.
    """
    with open(path, "rb") as handle:
        return handle.read(2) == b"\xff\xd8"


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Apply an EXIF orientation so the image is upright (the same result as PIL's exif_transpose).

    Every orientation is a transpose (5-8) followed by flips, so it is done with two data-dependent
    ops and no control flow, which would cost more than the decoding in a tf.data map.
    """
    transposed = orientation >= 5
    image = tf.transpose(image, tf.where(transposed, [1, 0, 2], [0, 1, 2]))
    flip_rows = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
    flip_cols = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_rows, flip_cols]))
    return tf.reverse(image, axes)


def fit(image: tf.Tensor, size: int, crop: Crop) -> tf.Tensor:
    """Fit an image into a ``size`` x ``size`` square, float32 0-255.

    ``center`` keeps the largest centred square and resizes it; ``pad`` resizes the longer side to
    ``size`` and pads the rest with black, centred; ``stretch`` resizes both sides to ``size``.
    """
    image = tf.cast(image, tf.float32)
    if crop == "center":
        shape = tf.shape(image)[:2]
        side = tf.reduce_min(shape)
        top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
        image = _resize(image[top : top + side, left : left + side], tf.constant([size, size]))
    elif crop == "pad":
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scaled = tf.maximum(tf.cast(tf.round(shape * size / tf.reduce_max(shape)), tf.int32), 1)
        image = _resize(image, scaled)
        image = tf.image.pad_to_bounding_box(image, (size - scaled[0]) // 2, (size - scaled[1]) // 2, size, size)
    else:
        image = _resize(image, tf.constant([size, size]))
    return tf.ensure_shape(image, (size, size, 3))


def _resize(image: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Bilinear resize, antialiased where a side shrinks more than twofold (where plain bilinear aliases).

    Antialiasing costs about three times as much, so mild resizes, the common case, skip it.
    """
    shrink = tf.reduce_any(tf.shape(image)[:2] > 2 * target)
    return tf.cond(
        shrink,
        lambda: tf.image.resize(image, target, antialias=True),
        lambda: tf.image.resize(image, target),
    )


def load_image(path: tf.Tensor, orientation: tf.Tensor, size: int, crop: Crop) -> tf.Tensor:
    """Read, decode, orient and fit one image file."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return fit(orient(image, orientation), size, crop)


def image_dataset(
    paths: Sequence[Path],
    size: int,
    crop: Crop,
    batch_size: int,
    labels: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Batches of fitted images (and labels, when given), in the order of ``paths``.

    Args:
        paths: image files.
        size: square side in pixels.
        crop: ``center``, ``pad`` or ``stretch``.
        batch_size: images per batch; the last batch may be smaller.
        labels: optional integer labels aligned with ``paths``.

    Returns:
        A dataset of ``images`` (float32, ``[batch, size, size, 3]``, 0-255) or ``(images, labels)``.
    """
    names = tf.constant([str(p) for p in paths], dtype=tf.string)
    orientations = tf.constant(read_orientations(paths))
    pipeline = tf.data.Dataset.from_tensor_slices((names, orientations))
    images = pipeline.map(lambda p, o: load_image(p, o, size, crop), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    if labels is not None:
        images = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(np.asarray(labels, dtype=np.int32)))
    return images.batch(batch_size).prefetch(tf.data.AUTOTUNE)
