"""A saved classifier and the image files it is used on: loading, input checks, probabilities, the predictions table.

The evaluate stage scores the test split with these functions and ``python -m pipeline.serving.predict``
predicts users' files with them; the model takes raw 0-255 RGB images at its own input size, so the only
thing to know besides the files is the crop policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.core.errors import UserError
from pipeline.data import images
from pipeline.features import extraction, inputs, runtimes

_CLIP = 1e-15  # probabilities are clipped before the log, so a confident miss has a finite loss
IMAGE_SUFFIXES = images.SUFFIXES  # what a folder is searched for
Forward = Callable[[tf.Tensor], tf.Tensor]


@dataclass(frozen=True)
class Classifier:
    """A classifier with everything needed to use it on image files."""

    model: keras.Model  # raw 0-255 RGB images in, probabilities out
    classes: tuple[str, ...]  # the class names, by output index
    crop: inputs.Crop  # how images are fitted to the model's input, as in training
    max_pixels: int  # larger images are refused (decompression-bomb guard, split.max_image_pixels)


def load_model(path: Path) -> keras.Model:
    """A classifier saved by the finetune stage.

    Raises:
        UserError: the file is missing or is not a Keras model.
    """
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the model {path}: {error}") from None


def load_head(path: Path) -> keras.Model:
    """The head train_head saved: cached features in, logits out (recompiled wherever it is trained again).

    Raises:
        UserError: the file is missing or is not a Keras model.
    """
    return load_model(path)


def input_size(model: keras.Model) -> int:
    """The square side the model takes."""
    return int(model.input_shape[1])


def predict_probabilities(
    model: keras.Model,
    paths: Sequence[Path],
    crop: inputs.Crop,
    batch_size: int,
    desc: str = "predict",
    forward: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> np.ndarray:
    """Class probabilities for every file, in order (the files are decoded as extract decodes them).

    Args:
        model: a classifier from ``load_model``.
        paths: image files.
        crop: ``center``, ``pad`` or ``stretch``, as the model was trained.
        batch_size: images per forward pass.
        desc: the progress bar's label.
        forward: ``extraction.compile_forward(model)`` or ``compile_on_runtime``'s when the caller
            keeps one (a server predicting many requests, a stage on ``compute.runtime``); TensorFlow's
            compiled here otherwise.

    Returns:
        ``(len(paths), classes)`` float32 probabilities.
    """
    if not paths:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    if forward is None:
        # One constant-folded graph, faster than the eager call (docs/benchmarks.md, "Measurements behind
        # single lines of code").
        forward = extraction.compile_forward(model)
    batches = inputs.image_dataset(paths, input_size(model), crop, batch_size)
    probabilities, _ = extraction.compute_features(forward, batches, len(paths), "float32", desc)
    return probabilities


def compile_on_runtime(model: keras.Model, requested: str, batch_size: int, threads: int) -> tuple[str, Forward]:
    """The classifier's frozen forward pass on ``compute.runtime`` (``auto``: the one measured fastest here).

    Args:
        model: a classifier from ``load_model``.
        requested: ``compute.runtime``.
        batch_size: images per forward pass (what ``auto`` measures, and remembers the choice for).
        threads: ``compute.threads``.

    Returns:
        The runtime used and the ``forward`` for ``predict_probabilities``.
    """
    name, forward, _ = runtimes.choose(model, requested, batch_size, threads, runtimes.choices_dir())
    return name, forward


def head_probabilities(head: keras.Model, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of a head (logits out) on cached features."""
    logits = head.predict(np.asarray(features, np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.softmax(logits), dtype=np.float32)


def predictions_frame(
    paths: Sequence[str] | np.ndarray, labels: np.ndarray | None, probabilities: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """One row per image: path, label, predicted, confidence, loss, then one probability column per class.

    Args:
        paths: the images' paths as they should be written.
        labels: true class indices, or None when unknown (no label and loss columns then).
        probabilities: from ``predict_probabilities``.
        classes: the class names, by index.
    """
    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({"path": list(paths)})
    if labels is not None:
        frame["label"] = [classes[i] for i in labels]
    frame["predicted"] = [classes[i] for i in predicted]
    frame["confidence"] = probabilities.max(axis=1)
    if labels is not None:
        truth = probabilities[np.arange(len(labels)), labels]
        frame["loss"] = -np.log(np.clip(truth, _CLIP, 1.0))
        frame["correct"] = predicted == labels
    for index, name in enumerate(classes):
        frame[f"p:{name}"] = probabilities[:, index]
    return frame


def check_same_rows(expected: Sequence[str] | np.ndarray, found: Sequence[str] | np.ndarray, what: str) -> None:
    """Refuse to compare two sets of predictions that are not about the same images in the same order."""
    if list(expected) != list(found):
        raise UserError(f"{what} do not list the same images as the test split; run `dvc repro` to rebuild them")


def find_images(targets: Sequence[Path]) -> list[Path]:
    """The files to predict: each file named, and every image file under each folder named.

    Folders are searched recursively for the suffixes in ``IMAGE_SUFFIXES`` (any case), in sorted
    order, skipping hidden files and folders; a file named on its own is taken whatever its suffix.

    Raises:
        UserError: a target does not exist, or nothing was found.
    """
    found: list[Path] = []
    for target in targets:
        if target.is_file():
            found.append(target)
        elif target.is_dir():
            found.extend(_images_under(target))
        else:
            raise UserError(f"{target}: no such file or folder")
    if not found:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, targets))}")
    return found


def _images_under(folder: Path) -> list[Path]:
    found: list[Path] = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(current) / name
            for name in sorted(names)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return found


def check_images(paths: Sequence[Path], max_pixels: int) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Decode every file in full (as the split stage checks its images) before any is batched.

    A file the input pipeline cannot decode would otherwise stop the whole run halfway.

    Returns:
        The usable files, in order, and ``(file, reason)`` for each one that is not.
    """
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path, (_, reason) in zip(paths, images.inspect_images(list(paths), max_pixels), strict=True):
        if reason is None:
            good.append(path)
        else:
            bad.append((path, reason))
    return good, bad
