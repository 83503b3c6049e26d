"""Cached backbone features: computing them batch by batch, and their on-disk format.

``<split>.npy`` holds the features (rows x width, a plain NumPy array file written batch by batch,
read memory-mapped: see ``store``); ``<split>.npz`` holds the rows they belong to: ``labels`` (class
indices into ``classes``), ``paths`` and ``sha256`` (the split CSV's rows, in its order) and
``classes``. ``meta.json`` says how the features were made, so a head trained on them knows what
backbone to put back under it. All are a function of the images and the params alone (no timings,
no dates): two runs at the same ``compute.threads`` write the same bytes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import files, progress
from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.data import split
from pipeline.features import backbones, inputs, runtimes, sizing, store

META_FILE = "meta.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FeatureSet:
    """One split's features with the rows they came from (``features`` memory-mapped when read from disk)."""

    features: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    classes: tuple[str, ...]


def compile_forward(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The frozen extractor as one constant-folded TensorFlow graph for any batch size (``training=False``).

    ``runtimes.freeze`` bakes the weights in as constants, so TF's graph optimiser folds each
    BatchNormalization into the convolution before it (faster on CPU: docs/benchmarks.md,
    "Extract speed"). The result differs from the Keras model's only by float rounding
    (about 1e-5) and is the same on every run. This is ``compute.runtime: tensorflow``, and the
    reference the other runtimes are checked against (``pipeline/features/runtimes.py``).
    """
    return runtimes.compile_tensorflow(runtimes.freeze(model))


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
    for values in _forward_batches(forward, batches, count, desc):
        if out is None:
            out = np.empty((count, values.shape[1]), dtype=dtype)
        out[row : row + len(values)] = values
        row += len(values)
    if out is None:
        raise UserError(f"{desc}: no images to extract")
    return out, time.perf_counter() - start


def write_features(
    forward: Callable[[tf.Tensor], tf.Tensor],
    batches: Iterable[tf.Tensor],
    count: int,
    dtype: str,
    desc: str,
    path: Path,
) -> float:
    """Run the frozen extractor over every batch, appending each batch's features to ``path`` (``.npy``).

    Memory holds one batch, whatever ``count`` is; the file's bytes equal those of
    ``compute_features``'s array saved whole.

    Args:
        forward: from ``compile_forward``.
        batches: image batches in row order.
        count: total number of images.
        dtype: stored precision.
        desc: label for the progress bar.
        path: the features file to write.

    Returns:
        The seconds spent.
    """
    start = time.perf_counter()
    blocks = _forward_batches(forward, batches, count, desc)
    first = next(blocks, None)
    if first is None:
        raise UserError(f"{desc}: no images to extract")
    files.write_npy_blocks(path, itertools.chain([first], blocks), count, first.shape[1], dtype)
    return time.perf_counter() - start


def _forward_batches(
    forward: Callable[[tf.Tensor], tf.Tensor], batches: Iterable[tf.Tensor], count: int, desc: str
) -> Iterator[np.ndarray]:
    """Each batch's features as NumPy, with a progress bar; checks that ``count`` images came."""
    row = 0
    with progress.bar(total=count, desc=desc, unit="img", unit_scale=True) as bar:
        for batch in batches:
            values = forward(batch).numpy()
            row += len(values)
            bar.update(len(values))
            yield values
    if row != count:
        raise RuntimeError(f"expected {count} images, the input pipeline gave {row}")


def features_path(path: Path) -> Path:
    """The features file (``<split>.npy``) beside a split's rows file (``<split>.npz``)."""
    return Path(path).with_suffix(".npy")


def write_rows(path: Path, labels: np.ndarray, paths: np.ndarray, sha256: np.ndarray, classes: Iterable[str]) -> None:
    """Write one split's rows (``<split>.npz``: labels, paths, sha256, classes; reproducible, no pickle)."""
    files.write_npz(
        path,
        labels=labels,
        paths=np.asarray(paths).astype(str),
        sha256=np.asarray(sha256).astype(str),
        classes=np.asarray(tuple(classes), dtype=str),
    )


def write_feature_set(path: Path, subset: FeatureSet) -> None:
    """Write one split: its rows to ``path`` (``<split>.npz``), its features beside it (``<split>.npy``).

    The features are copied a block of rows at a time, so a memory-mapped set is never loaded whole.
    """
    width = subset.features.shape[1]
    blocks = store.iter_blocks(subset.features)
    files.write_npy_blocks(features_path(path), blocks, len(subset.features), width, str(subset.features.dtype))
    write_rows(path, subset.labels, subset.paths, subset.sha256, subset.classes)


def read_feature_set(path: Path) -> FeatureSet:
    """Read a split written by ``write_feature_set`` (or extract): the rows into memory, the features
    memory-mapped (nothing of them is read yet; ``store`` reads them in blocks).

    Args:
        path: the split's rows file, ``<split>.npz``; its features are ``<split>.npy`` beside it.

    Raises:
        UserError: the features file is missing (features cached by a version that kept them in the ``.npz``).
    """
    features = features_path(path)
    if not features.is_file():
        raise UserError(f"{features} is missing: the features were cached in an older format; run `dvc repro extract`")
    with np.load(path, allow_pickle=False) as data:
        return FeatureSet(
            features=store.open_features(features),
            labels=data["labels"],
            paths=data["paths"],
            sha256=data["sha256"],
            classes=tuple(str(c) for c in data["classes"]),
        )


def read_train_val(folder: Path) -> tuple[FeatureSet, FeatureSet]:
    """The train and val splits' cached features in ``folder`` (``paths.features``), as ``read_feature_set``
    reads each: what the head and its search train on."""
    return read_feature_set(folder / "train.npz"), read_feature_set(folder / "val.npz")


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
        UserError: there are no cached features, or they come from another backbone than params.yaml names.
    """
    if not (folder / META_FILE).is_file():
        raise UserError(f"{folder / META_FILE} is missing: no features are cached yet; run `dvc repro extract` first")
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
        The metadata written to ``meta.json`` (with the ``runtime`` that ran the backbone, chosen
        by ``runtimes.choose`` from ``compute.runtime``), and the seconds the backbone's passes took
        (a metric, kept out of the files so that they repeat bytewise).
    """
    runtime, forward, _ = runtimes.choose(
        model, params.compute.runtime, params.extract.batch_size, params.compute.threads, runtimes.choices_dir()
    )
    counts: dict[str, int] = {}
    seconds = 0.0
    for name in SPLITS:
        rows = split.read_split_files(params.path("splits"), name, params.root)
        seconds += _extract_split(forward, rows, name, size, params, out)
        counts[name] = len(rows.paths)
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
        "classes": list(rows.classes),
        "counts": counts,
        "batch_size": params.extract.batch_size,
        "threads": params.compute.threads,
        "runtime": runtime,  # the features' last bits depend on it (runtimes.py)
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, **runtimes.versions(runtime)},
    }
    files.write_json(out / META_FILE, meta)
    return meta, seconds


def _extract_split(
    forward: runtimes.Forward, rows: split.SplitFiles, name: str, size: int, params: Params, out: Path
) -> float:
    """Write one split's features (``<name>.npy``) and rows (``<name>.npz``); the seconds the backbone took."""
    batches = inputs.image_dataset(rows.paths, size, params.backbone.crop, params.extract.batch_size)
    try:
        spent = write_features(
            forward, batches, len(rows.paths), params.extract.dtype, f"extract {name}", out / f"{name}.npy"
        )
    except tf.errors.OpError as error:
        raise UserError(
            f"extract: reading the {name} images failed: {error.message.splitlines()[0]}; "
            "the images changed after the split stage? run `dvc repro` to redo the split"
        ) from None
    write_rows(out / f"{name}.npz", rows.labels, rows.rel_paths, rows.sha256, rows.classes)
    return spent


def summarize(meta: dict[str, Any], seconds: float) -> dict[str, float]:
    """The extract stage's metrics: speed, time, feature width, input size and images per split."""
    images = sum(meta["counts"].values())
    return {
        "images_per_s": round(images / seconds, 1) if seconds else 0.0,
        "seconds": round(seconds, 3),
        "feature_width": meta["feature_width"],
        "image_size": meta["image_size"],
        **{f"images_{name}": n for name, n in meta["counts"].items()},
    }


def describe(meta: dict[str, Any], metrics: dict[str, float], cpu: dict[str, str]) -> str:
    """The console's account of the extraction (``summarize``'s ``metrics``): how many images, how wide, how fast,
    on what."""
    return (
        f"{sum(meta['counts'].values())} images → {meta['feature_width']} features each ({meta['backbone']}, "
        f"{meta['image_size_rule']}, {metrics['images_per_s']:.0f} images/s with {meta['runtime']} on "
        f"{cpu['model']}, {cpu['isa']})"
    )
