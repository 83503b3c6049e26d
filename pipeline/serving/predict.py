"""Predictions from a saved classifier: image files in, class probabilities (and a table of them) out.

The command line over ``pipeline/serving/classifier.py`` (``headstart predict``, or
``python -m pipeline.serving.predict``): it predicts image files and folders with ``paths.model`` or
a registered model::

    headstart predict photos/ extra.jpg --model models:/headstart-classifier@champion --output out.csv

Every file is fully decoded first; one that is not a usable image is reported on stderr as
``path: reason`` and left out of the output, and the rest are still predicted. Exit status: 0 when
every file was predicted, 1 when some were left out (the output holds the rest), 2 when none could
be (or the arguments, params or model are wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core import config, files, runtime
from pipeline.core.errors import UserError, run_cli
from pipeline.data import split
from pipeline.features import runtimes
from pipeline.serving.classifier import (
    IMAGE_SUFFIXES,
    Classifier,
    check_images,
    compile_on_runtime,
    find_images,
    load_model,
    predict_probabilities,
    predictions_frame,
)

PROG = "python -m pipeline.serving.predict"
MODEL_URI_SCHEMES = ("models:/", "runs:/")  # --model values loaded through MLflow rather than from a file
PARTIAL_EXIT = 1  # some files were left out, the rest predicted


def load_classifier(spec: str, params: config.Params) -> Classifier:
    """A classifier from a ``.keras`` file or an MLflow model URI (``models:/name@alias``, ``runs:/...``).

    A file takes its class names from ``paths.splits/classes.json`` and its crop from
    ``backbone.crop``; a registered model brings both with it (``pipeline/serving/pyfunc_model.py``).

    Raises:
        UserError: the model cannot be loaded, or its outputs do not match the class names.
    """
    if spec.startswith(MODEL_URI_SCHEMES):
        from pipeline.serving import pyfunc_model
        from pipeline.tracking import store  # MLflow is slow to import and only needed here

        uri = store.tracking_uri(params)
        store.check_reachable(uri, params)
        return pyfunc_model.load_classifier(spec, uri)
    classes_file = params.path("splits") / split.CLASSES_FILE
    if not classes_file.is_file():
        raise UserError(f"{classes_file} is missing (the class names of {spec}); run `dvc repro split` or `dvc pull`")
    classes = tuple(files.read_json(classes_file))
    model = load_model(Path(spec))
    if model.output_shape[-1] != len(classes):
        raise UserError(
            f"{spec} has {model.output_shape[-1]} outputs but {classes_file} names {len(classes)} classes; "
            "run `dvc repro` so the two come from the same data"
        )
    return Classifier(model, classes, params.backbone.crop, params.split.max_image_pixels)


def write_predictions(frame: pd.DataFrame, output: Path | None) -> None:
    """Write the predictions table: ``.csv``, ``.json`` (a list of rows), or CSV on stdout when no path."""
    if output is None:
        sys.stdout.write(frame.to_csv(index=False, lineterminator="\n"))
    elif output.suffix.lower() == ".json":
        files.write_text(output, json.dumps(frame.to_dict(orient="records"), indent=2, ensure_ascii=False) + "\n")
    else:
        files.write_csv(output, frame)


def parse_arguments(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    """The command line of ``headstart predict`` (defaults left None come from params.yaml)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Predict the class of image files with the trained classifier or a registered model. "
        "Run it from the repository root (it reads params.yaml).",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        type=Path,
        metavar="FILE_OR_FOLDER",
        help=f"image files, or folders searched recursively for {', '.join(IMAGE_SUFFIXES)}",
    )
    parser.add_argument(
        "--model", help="a .keras file or an MLflow model URI such as models:/<name>@champion (default: paths.model)"
    )
    parser.add_argument("--output", type=Path, help="a .csv or .json file (default: CSV on stdout)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: evaluate.batch_size)")
    parser.add_argument(
        "--runtime",
        choices=("auto", *runtimes.RUNTIMES),
        help="what runs the model's forward pass (default: compute.runtime; `mlflow models serve` always "
        "runs on TensorFlow)",
    )
    args = parser.parse_args(argv)
    if args.output is not None and args.output.suffix.lower() not in (".csv", ".json"):
        parser.error(f"--output {args.output}: the name must end in .csv or .json")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> None:
    """Predict files and folders; report unusable files on stderr and predict the rest."""
    args = parse_arguments(argv, prog)
    params = config.load()
    runtime.configure(params.compute)
    targets = find_images(args.targets)  # before the model loads: a mistyped path fails at once
    classifier = load_classifier(args.model or str(params.path("model")), params)
    good, bad = check_images(targets, classifier.max_pixels)
    for path, reason in bad:
        print(f"{path}: {reason}", file=sys.stderr)
    if not good:
        raise UserError(f"none of the {len(bad)} file(s) is a usable image")
    batch_size = args.batch_size or params.evaluate.batch_size
    _, forward = compile_on_runtime(
        classifier.model, args.runtime or params.compute.runtime, batch_size, params.compute.threads
    )
    probabilities = predict_probabilities(classifier.model, good, classifier.crop, batch_size, forward=forward)
    write_predictions(predictions_frame([str(p) for p in good], None, probabilities, classifier.classes), args.output)
    where = f" → {args.output}" if args.output else ""
    print(f"predict: {len(good)} image(s) predicted{where}, {len(bad)} left out", file=sys.stderr)
    if bad:
        sys.exit(PARTIAL_EXIT)


if __name__ == "__main__":
    run_cli(main)
