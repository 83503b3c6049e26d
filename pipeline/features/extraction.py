"""Cached backbone features: computing them batch by batch, and their on-disk format.

``<split>.npz`` holds ``features`` (rows x width), ``labels`` (class indices into ``classes``),
``paths`` and ``sha256`` (the split CSV's rows, in its order) and ``classes``. ``meta.json`` says
how the features were made, so a head trained on them knows what backbone to put back under it.
Both are a function of the images and the params alone (no timings, no dates): two runs at the same
``compute.threads`` write the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)  # what TF's own converters use

from pipeline.core import files, progress
from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.data import split
from pipeline.features import backbones, inputs, sizing

META_FILE = "meta.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FeatureSet:
    """One split's features with the rows they came from."""

    features: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    classes: tuple[str, ...]


def compile_forward(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The frozen extractor as one constant-folded graph for any batch size (``training=False``).

    The backbone's weights never change here, so they are baked into the graph as constants; TF's
    graph optimiser then folds each BatchNormalization into the convolution before it, which makes
    the forward pass about 1.4 times faster on CPU (measured with ``benchmarks/extract.py``). The
    result differs from the Keras model's only by float rounding (about 1e-5) and is the same on
    every run. Tracing once, not per split, also keeps graph building out of the per-image cost.
    """
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    traced = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(traced)
    return lambda images: frozen(images)[0]


def compute_features(
    forward: Callable[[tf.Tensor], tf.Tensor], batches: Iterable[tf.Tensor], count: int, dtype: str, desc: str
) -> tuple[np.ndarray, float]:
    """Run the frozen extractor over every batch, filling one preallocated array.

    Only the output array grows with the number of images; each batch is converted and copied into
    it as soon as the model returns it.

    Args:
        forward: from ``compile_forward``.
        batches: image batches in row order.
        count: total number of images.
        dtype: stored precision.
        desc: label for the progress bar.

    Returns:
        The ``count`` x width feature array and the seconds spent.
    """
    out: np.ndarray | None = None
    start = time.perf_counter()
    row = 0
    with progress.bar(total=count, desc=desc, unit="img", unit_scale=True) as bar:
        for batch in batches:
            values = forward(batch).numpy()
            if out is None:
                out = np.empty((count, values.shape[1]), dtype=dtype)
            out[row : row + len(values)] = values
            row += len(values)
            bar.update(len(values))
    if row != count:
        raise RuntimeError(f"expected {count} images, the input pipeline gave {row}")
    if out is None:
        raise UserError(f"{desc}: no images to extract")
    return out, time.perf_counter() - start


def write_feature_set(path: Path, subset: FeatureSet) -> None:
    """Write one split's features (reproducible bytes, no pickle)."""
    files.write_npz(
        path,
        features=subset.features,
        labels=subset.labels,
        paths=subset.paths.astype(str),
        sha256=subset.sha256.astype(str),
        classes=np.asarray(subset.classes, dtype=str),
    )


def read_feature_set(path: Path) -> FeatureSet:
    """Read a split written by ``write_feature_set``."""
    with np.load(path, allow_pickle=False) as data:
        return FeatureSet(
            features=data["features"],
            labels=data["labels"],
            paths=data["paths"],
            sha256=data["sha256"],
            classes=tuple(str(c) for c in data["classes"]),
        )


def choose_image_size(backbone: backbones.Backbone, params: Params) -> tuple[int, str]:
    """The input size extract uses (and finetune reads back from meta.json), with the reason in words.

    ``backbone.image_size: auto`` reads the train images' headers (tens of microseconds each, no
    pixels) for ``sizing``'s rule.
    """
    requested = params.backbone.image_size
    sizes: list[tuple[int, int]] = []
    if requested == sizing.AUTO:
        sizes = inputs.read_sizes(split.read_split_files(params.path("splits"), "train", params.root).paths)
    size = sizing.choose_image_size(requested, backbone.default_size, backbone.min_size, sizes)
    backbones.check_size(backbone, size)
    return size, sizing.describe_choice(requested, size, sizing.median_short_side(sizes) if sizes else None)


def read_image_size(folder: Path, backbone: str) -> int:
    """The input size the cached features were computed at (meta.json), for a model built on them.

    Raises:
        UserError: the features come from another backbone than params.yaml names.
    """
    meta = files.read_json(folder / META_FILE)
    if meta["backbone"] != backbone:
        raise UserError(
            f"{folder / META_FILE}: the features come from {meta['backbone']}, params.yaml names "
            f"{backbone}; run `dvc repro` to extract them again"
        )
    return int(meta["image_size"])


def extract_splits(
    model: keras.Model,
    backbone: backbones.Backbone,
    weights: backbones.Weights,
    size: int,
    params: Params,
    out: Path,
    size_rule: str,
) -> tuple[dict, float]:
    """Extract every split listed in the split stage's CSVs into ``out``.

    Args:
        model: the extractor from ``backbones.build_extractor``.
        backbone: its registry entry.
        weights: the weights it carries.
        size: its input size.
        params: the loaded params (splits folder, crop, batch size, dtype).
        out: the (staging) features folder.
        size_rule: why this size (``sizing.describe_choice``), recorded beside it.

    Returns:
        The metadata written to ``meta.json``, and the seconds the backbone's passes took (a
        metric, kept out of the files so that they repeat bytewise).
    """
    forward = compile_forward(model)
    counts: dict[str, int] = {}
    seconds = 0.0
    for name in SPLITS:
        rows = split.read_split_files(params.path("splits"), name, params.root)
        batches = inputs.image_dataset(rows.paths, size, params.backbone.crop, params.extract.batch_size)
        try:
            values, spent = compute_features(forward, batches, len(rows.paths), params.extract.dtype, f"extract {name}")
        except tf.errors.OpError as error:
            raise UserError(
                f"extract: reading the {name} images failed: {error.message.splitlines()[0]}; "
                "the images changed after the split stage? run `dvc repro` to redo the split"
            ) from None
        write_feature_set(
            out / f"{name}.npz", FeatureSet(values, rows.labels, rows.rel_paths, rows.sha256, rows.classes)
        )
        counts[name] = len(rows.paths)
        seconds += spent
    classes = list(rows.classes)
    meta = {
        "backbone": backbone.name,
        "weights": weights.setting,
        "weights_sha256": weights.sha256,
        "image_size": size,
        "image_size_rule": size_rule,
        "crop": params.backbone.crop,
        "preprocessing": backbones.PREPROCESSING_DESCRIPTION[backbone.preprocessing],
        "dtype": params.extract.dtype,
        "feature_width": int(model.output_shape[-1]),
        "classes": classes,
        "counts": counts,
        "batch_size": params.extract.batch_size,
        "threads": params.compute.threads,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    files.write_json(out / META_FILE, meta)
    return meta, seconds
