"""Predictions from a saved classifier: image files in, class probabilities (and a table of them) out.

The evaluate stage scores the test split with these functions; the model takes raw 0-255 RGB images
at its own input size, so the only thing to know besides the files is the crop policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline import features, inputs
from pipeline.errors import UserError

_CLIP = 1e-15  # probabilities are clipped before the log, so a confident miss has a finite loss


def load_model(path: Path) -> keras.Model:
    """A classifier saved by the finetune stage.

    Raises:
        UserError: the file is missing or is not a Keras model.
    """
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the model {path}: {error}") from None


def input_size(model: keras.Model) -> int:
    """The square side the model takes."""
    return int(model.input_shape[1])


def predict_probabilities(model: keras.Model, paths: Sequence[Path], crop: inputs.Crop, batch_size: int,
                          desc: str = "predict") -> np.ndarray:
    """Class probabilities for every file, in order (the files are decoded as extract decodes them).

    Args:
        model: a classifier from ``load_model``.
        paths: image files.
        crop: ``center``, ``pad`` or ``stretch``, as the model was trained.
        batch_size: images per forward pass.
        desc: the progress bar's label.

    Returns:
        ``(len(paths), classes)`` float32 probabilities.
    """
    if not paths:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    forward = features.compile_forward(model)  # one constant-folded graph: about 3 times the eager call's speed
    batches = inputs.image_dataset(paths, input_size(model), crop, batch_size)
    probabilities, _ = features.compute_features(forward, batches, len(paths), "float32", desc)
    return probabilities


def head_probabilities(head: keras.Model, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of a head (logits out) on cached features."""
    logits = head.predict(np.asarray(features, np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.softmax(logits), dtype=np.float32)


def predictions_frame(paths: Sequence[str], labels: np.ndarray | None, probabilities: np.ndarray,
                      classes: Sequence[str]) -> pd.DataFrame:
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


def check_same_rows(expected: Sequence[str], found: Sequence[str], what: str) -> None:
    """Refuse to compare two sets of predictions that are not about the same images in the same order."""
    if list(expected) != list(found):
        raise UserError(f"{what} do not list the same images as the test split; run `dvc repro` to rebuild them")
