"""The tf.data input pipeline shared by extract, finetune, evaluate and predict: files to batches of pixels.

Every file is planned before the pipeline starts, from its header alone (``images.read_header``):
the decoder, how far a JPEG can be shrunk while it is decoded (libjpeg's DCT scaling decodes a
12-megapixel photo at 1/8 size for a fraction of the cost), the region to keep, the EXIF turn that
makes it upright, the size to resize to and whether that resize needs antialiasing. Files that share
a plan's shape share one map function with no data-dependent ops; a dataset of same-sized, upright
images (the usual case) decodes with a handful of ops per image, and mixed ones pick their function
with one ``switch_case``. JPEG, PNG, BMP and GIF are decoded by TensorFlow's ops; WebP, TIFF and AVIF
by Pillow (``images.decode_with_pillow``, called from the pipeline's threads). Images are read and
decoded in parallel, expanded to three channels when grayscale, batched and prefetched so decoding
overlaps the model. Pixels stay raw 0-255 floats: each model does its own preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from pipeline.core.errors import UserError
from pipeline.data import images

Crop = Literal["center", "pad", "stretch"]
_JPEG_RATIOS = (8, 4, 2)  # the DCT scalings libjpeg offers, largest first
_PREFETCH_BATCHES = 2  # decoded ahead of the model: enough to hide the decoding, little memory


@dataclass(frozen=True)
class Shape:
    """The ops one file needs; files with the same shape share a map function."""

    jpeg: bool  # decode_jpeg with a DCT ratio; otherwise decode_image (PNG, GIF, BMP) or Pillow
    pillow: bool  # images.decode_with_pillow (WebP, TIFF, AVIF), inside the pipeline
    ratio: int  # JPEG DCT downscaling while decoding: 1, 2, 4 or 8
    orientation: int  # EXIF orientation, 1 = already upright
    cropped: bool  # a box of the decoded image is kept, not all of it
    padded: bool  # the resized image is smaller than the square and padded with black
    antialias: bool  # the resize shrinks a side more than twofold


@dataclass(frozen=True)
class Plan:
    """How one file becomes a ``size`` x ``size`` image: its shape and the numbers that vary per file."""

    shape: Shape
    box: tuple[int, int, int, int]  # (top, left, height, width) kept of the decoded image, as stored
    target: tuple[int, int]  # (height, width) after resizing, upright
    offset: tuple[int, int]  # (top, left) of the resized image inside the square


def plan_image(header: images.Header, size: int, crop: Crop) -> Plan:
    """Plan the decoding of one image from its header.

    ``center`` keeps the largest centred square of the upright image and resizes it; ``pad``
    resizes the longer side to ``size`` and pads the rest with black, centred; ``stretch`` resizes
    both sides to ``size``. A JPEG is decoded at the smallest DCT scale that still gives at least
    ``size`` pixels where they are needed, so the result is never upsampled because of it.

    Args:
        header: the file's format, stored size and EXIF orientation.
        size: the square side in pixels.
        crop: the crop policy.

    Returns:
        The plan.
    """
    jpeg = header.format == "JPEG"
    needed = max(header.height, header.width) if crop == "pad" else min(header.height, header.width)
    ratio = next((r for r in _JPEG_RATIOS if jpeg and -(-needed // r) >= size), 1)
    height, width = -(-header.height // ratio), -(-header.width // ratio)  # libjpeg rounds scaled sizes up
    turned = header.orientation >= 5
    up_height, up_width = (width, height) if turned else (height, width)
    box, target, offset = (0, 0, height, width), (size, size), (0, 0)
    if crop == "center":
        side = min(up_height, up_width)
        box = _stored_box(up_height, up_width, side, header.orientation)
        kept = (side, side)
    else:
        kept = (up_height, up_width)
        if crop == "pad":
            longest = max(up_height, up_width)
            target = (max(round(up_height * size / longest), 1), max(round(up_width * size / longest), 1))
            offset = ((size - target[0]) // 2, (size - target[1]) // 2)
    shape = Shape(
        jpeg=jpeg,
        pillow=header.format in images.PILLOW_FORMATS,
        ratio=ratio,
        orientation=header.orientation,
        cropped=box != (0, 0, height, width),
        padded=target != (size, size),
        antialias=kept[0] > 2 * target[0] or kept[1] > 2 * target[1],
    )
    return Plan(shape, box, target, offset)


def _stored_box(up_height: int, up_width: int, side: int, orientation: int) -> tuple[int, int, int, int]:
    """The centred square of the upright image, as a box of the image as stored (before the EXIF turn).

    Cropping first and turning the small crop is cheaper than turning the whole image, and gives
    exactly the same pixels: the upright image is ``flips(transpose(stored))``, so the box is mapped
    back through the flips, then the transpose.
    """
    top, left = (up_height - side) // 2, (up_width - side) // 2
    if orientation in (3, 4, 7, 8):  # rows flipped
        top = up_height - top - side
    if orientation in (2, 3, 6, 7):  # columns flipped
        left = up_width - left - side
    return (left, top, side, side) if orientation >= 5 else (top, left, side, side)


def orient(image: tf.Tensor, orientation: int) -> tf.Tensor:
    """Apply an EXIF orientation so the image is upright (the same result as PIL's exif_transpose).

    Every orientation is a transpose (5-8) followed by flips of the rows and/or columns.
    """
    if orientation >= 5:
        image = tf.transpose(image, [1, 0, 2])
    axes = [axis for axis, flips in ((0, (3, 4, 7, 8)), (1, (2, 3, 6, 7))) if orientation in flips]
    return tf.reverse(image, axes) if axes else image


def _loader(shape: Shape, size: int) -> Callable[..., tf.Tensor]:
    """The map function for one shape: read, decode, crop, turn upright, resize, pad."""

    def load(path: tf.Tensor, box: tf.Tensor, target: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
        if shape.pillow:
            image = tf.numpy_function(_decode_with_pillow, [path], tf.uint8, stateful=False)
        elif shape.jpeg:
            image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, ratio=shape.ratio)
        else:  # GIF: the first frame
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape((None, None, 3))
        if shape.cropped:
            image = tf.slice(image, tf.concat([box[:2], [0]], 0), tf.concat([box[2:], [3]], 0))
        image = orient(image, shape.orientation)
        image = tf.image.resize(image, target if shape.padded else [size, size], antialias=shape.antialias)
        if shape.padded:
            image = tf.image.pad_to_bounding_box(image, offset[0], offset[1], size, size)
        return tf.ensure_shape(image, (size, size, 3))

    return load


def _decode_with_pillow(path: bytes) -> np.ndarray:
    """``images.decode_with_pillow`` for a path as tf.data hands it over (bytes)."""
    return images.decode_with_pillow(os.fsdecode(path))


def plan_images(paths: Sequence[Path], size: int, crop: Crop) -> list[Plan]:
    """Plans for many files (headers only; a few tens of microseconds a file).

    Raises:
        UserError: a file is missing or is not an image.
    """
    return [plan_image(_read_header(path), size, crop) for path in paths]


def read_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """``(width, height)`` of each file as stored, from its header.

    Raises:
        UserError: a file is missing or is not an image.
    """
    return [(header.width, header.height) for header in map(_read_header, paths)]


def _read_header(path: Path) -> images.Header:
    try:
        return images.read_header(path)
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def image_dataset(
    paths: Sequence[Path],
    size: int,
    crop: Crop,
    batch_size: int,
    labels: Sequence[int] | np.ndarray | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of fitted images (and labels, when given), in the order of ``paths``.

    Args:
        paths: image files.
        size: square side in pixels.
        crop: ``center``, ``pad`` or ``stretch``.
        batch_size: images per batch; the last batch may be smaller.
        labels: optional integer labels aligned with ``paths``.
        shuffle_seed: when set, the files are shuffled (a new, seeded order on every pass over
            the dataset) before they are decoded, which costs no memory for pixels.

    Returns:
        A dataset of ``images`` (float32, ``[batch, size, size, 3]``, 0-255) or ``(images, labels)``.
    """
    plans = plan_images(paths, size, crop)
    if not plans:
        empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, size, size, 3), np.float32))
        with_labels = tf.data.Dataset.zip(empty, tf.data.Dataset.from_tensor_slices(np.zeros(0, np.int32)))
        return (empty if labels is None else with_labels).batch(batch_size)
    shapes = sorted({plan.shape for plan in plans}, key=lambda s: tuple(map(int, vars(s).values())))
    loaders = [_loader(shape, size) for shape in shapes]
    columns = _plan_columns(plans, shapes, paths, labels)

    def load(which: tf.Tensor, *per_file: tf.Tensor) -> tf.Tensor:
        if len(loaders) == 1:
            return loaders[0](*per_file)  # one shape: no branching at all
        return tf.switch_case(which, [lambda f=f: f(*per_file) for f in loaders])

    # One decoding thread per core and a fixed prefetch instead of tf.data's autotuning: its optimiser
    # thread can hold up the release of a finished iterator, a stall every split and every epoch would
    # pay (docs/benchmarks.md, "Extract speed").
    threads = os.cpu_count() or 1
    files = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle_seed is not None:
        files = files.shuffle(len(plans), seed=shuffle_seed, reshuffle_each_iteration=True)
    if labels is None:
        decoded = files.map(
            lambda w, p, b, t, o, _: load(w, p, b, t, o), num_parallel_calls=threads, deterministic=True
        )
    else:
        decoded = files.map(
            lambda w, p, b, t, o, y: (load(w, p, b, t, o), y), num_parallel_calls=threads, deterministic=True
        )
    options = tf.data.Options()
    options.autotune.enabled = False
    return decoded.batch(batch_size).prefetch(_PREFETCH_BATCHES).with_options(options)


def _plan_columns(
    plans: Sequence[Plan], shapes: Sequence[Shape], paths: Sequence[Path], labels: Sequence[int] | np.ndarray | None
) -> tuple[tf.Tensor, ...]:
    """The per-file decode plans as tensor columns: loader index, path, box, target, offset, label (0 without)."""
    index = {shape: i for i, shape in enumerate(shapes)}
    return (
        tf.constant([index[plan.shape] for plan in plans], tf.int32),
        tf.constant([str(p) for p in paths], tf.string),
        tf.constant(np.array([plan.box for plan in plans], np.int32).reshape(-1, 4)),
        tf.constant(np.array([plan.target for plan in plans], np.int32).reshape(-1, 2)),
        tf.constant(np.array([plan.offset for plan in plans], np.int32).reshape(-1, 2)),
        tf.constant(np.zeros(len(plans), np.int32) if labels is None else np.asarray(labels, np.int32)),
    )
