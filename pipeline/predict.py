"""Predictions from a saved classifier: image files in, class probabilities (and a table of them) out.

The evaluate stage scores the test split with these functions; the model takes raw 0-255 RGB images
at its own input size, so the only thing to know besides the files is the crop policy.

Run as a command, it predicts image files and folders with ``paths.model`` or a registered model::

    python -m pipeline.predict photos/ extra.jpg --model models:/headstart-classifier@champion --output out.csv

Every file is fully decoded first; one that is not a usable image is reported on stderr as
``path: reason`` and left out of the output, and the rest are still predicted. Exit status: 0 when
every file was predicted, 1 when some were left out (the output holds the rest), 2 when none could
be (or the arguments, params or model are wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline import config, features, files, images, inputs, runtime, split
from pipeline.errors import UserError, run_cli

_CLIP = 1e-15  # probabilities are clipped before the log, so a confident miss has a finite loss
IMAGE_SUFFIXES = images.SUFFIXES  # what a folder is searched for
MODEL_URI_SCHEMES = ("models:/", "runs:/")  # --model values loaded through MLflow rather than from a file
PARTIAL_EXIT = 1  # some files were left out, the rest predicted


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


def input_size(model: keras.Model) -> int:
    """The square side the model takes."""
    return int(model.input_shape[1])


def predict_probabilities(model: keras.Model, paths: Sequence[Path], crop: inputs.Crop, batch_size: int,
                          desc: str = "predict",
                          forward: Callable[[tf.Tensor], tf.Tensor] | None = None) -> np.ndarray:
    """Class probabilities for every file, in order (the files are decoded as extract decodes them).

    Args:
        model: a classifier from ``load_model``.
        paths: image files.
        crop: ``center``, ``pad`` or ``stretch``, as the model was trained.
        batch_size: images per forward pass.
        desc: the progress bar's label.
        forward: ``features.compile_forward(model)`` when the caller keeps one (a server predicting
            many requests); compiled here otherwise.

    Returns:
        ``(len(paths), classes)`` float32 probabilities.
    """
    if not paths:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    if forward is None:
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
    found = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(current) / name for name in sorted(names)
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return found


def check_images(paths: Sequence[Path], max_pixels: int) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Decode every file in full (as the split stage checks its images) before any is batched.

    A file the input pipeline cannot decode would otherwise stop the whole run halfway.

    Returns:
        The usable files, in order, and ``(file, reason)`` for each one that is not.
    """
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path, (_, reason) in zip(paths, images.inspect_images(list(paths), max_pixels)):
        if reason is None:
            good.append(path)
        else:
            bad.append((path, reason))
    return good, bad


def load_classifier(spec: str, params: config.Params) -> Classifier:
    """A classifier from a ``.keras`` file or an MLflow model URI (``models:/name@alias``, ``runs:/...``).

    A file takes its class names from ``paths.splits/classes.json`` and its crop from
    ``backbone.crop``; a registered model brings both with it (``pipeline/serving.py``).

    Raises:
        UserError: the model cannot be loaded, or its outputs do not match the class names.
    """
    if spec.startswith(MODEL_URI_SCHEMES):
        from pipeline import serving, tracking  # MLflow is slow to import and only needed here

        uri = tracking.tracking_uri(params)
        tracking.check_reachable(uri, params)
        return serving.load_classifier(spec, uri)
    classes_file = params.path("splits") / split.CLASSES_FILE
    if not classes_file.is_file():
        raise UserError(f"{classes_file} is missing (the class names of {spec}); run `dvc repro split` or `dvc pull`")
    classes = tuple(files.read_json(classes_file))
    model = load_model(Path(spec))
    if model.output_shape[-1] != len(classes):
        raise UserError(f"{spec} has {model.output_shape[-1]} outputs but {classes_file} names {len(classes)} classes; "
                        "run `dvc repro` so the two come from the same data")
    return Classifier(model, classes, params.backbone.crop, params.split.max_image_pixels)


def write_predictions(frame: pd.DataFrame, output: Path | None) -> None:
    """Write the predictions table: ``.csv``, ``.json`` (a list of rows), or CSV on stdout when no path."""
    if output is None:
        sys.stdout.write(frame.to_csv(index=False, lineterminator="\n"))
    elif output.suffix.lower() == ".json":
        files.write_text(output, json.dumps(frame.to_dict(orient="records"), indent=2, ensure_ascii=False) + "\n")
    else:
        files.write_csv(output, frame)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``python -m pipeline.predict`` (defaults left None come from params.yaml)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Predict the class of image files with the trained classifier or a registered model. "
                    "Run it from the repository root (it reads params.yaml).",
    )
    parser.add_argument("targets", nargs="+", type=Path, metavar="FILE_OR_FOLDER",
                        help=f"image files, or folders searched recursively for {', '.join(IMAGE_SUFFIXES)}")
    parser.add_argument("--model", help="a .keras file or an MLflow model URI such as models:/<name>@champion "
                                        "(default: paths.model)")
    parser.add_argument("--output", type=Path, help="a .csv or .json file (default: CSV on stdout)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: evaluate.batch_size)")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.suffix.lower() not in (".csv", ".json"):
        parser.error(f"--output {args.output}: the name must end in .csv or .json")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Predict files and folders; report unusable files on stderr and predict the rest."""
    args = parse_arguments(argv)
    params = config.load()
    runtime.configure(params.compute)
    targets = find_images(args.targets)  # before the model loads: a mistyped path fails at once
    classifier = load_classifier(args.model or str(params.path("model")), params)
    good, bad = check_images(targets, classifier.max_pixels)
    for path, reason in bad:
        print(f"{path}: {reason}", file=sys.stderr)
    if not good:
        raise UserError(f"none of the {len(bad)} file(s) is a usable image")
    probabilities = predict_probabilities(classifier.model, good, classifier.crop,
                                          args.batch_size or params.evaluate.batch_size)
    write_predictions(predictions_frame([str(p) for p in good], None, probabilities, classifier.classes), args.output)
    where = f" → {args.output}" if args.output else ""
    print(f"predict: {len(good)} image(s) predicted{where}, {len(bad)} left out", file=sys.stderr)
    if bad:
        sys.exit(PARTIAL_EXIT)


if __name__ == "__main__":
    run_cli(main)
