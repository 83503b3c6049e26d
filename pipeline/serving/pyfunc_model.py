"""The classifier as an MLflow pyfunc model: images in, the predicted class and every probability out.

evaluate logs ``model.keras`` with this flavor (``log_classifier``), so ``mlflow models serve`` answers
``POST /invocations`` and ``mlflow.pyfunc.load_model(...).predict`` works with no headstart-specific code
on the caller's side. The input is a data frame with one column, ``image``: raw image file bytes
(declared ``binary``, so REST clients send them base64-encoded) or, from Python, file paths. The output
has one row per image: ``predicted`` (the class name), ``confidence`` and ``p:<class>`` for every class,
the columns of ``reports/predictions.csv``.

Images are decoded exactly as in training (``pipeline.features.inputs``, the crop stored with the model); bytes
are written to a temporary folder first, since that pipeline plans each file's decoding from its header.
A request holding a file that is not a usable image is refused as a whole, naming the row and the reason.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.features import extraction
from pipeline.serving import classifier

INPUT_COLUMN = "image"
MODEL_ARTIFACT = "model"  # the .keras file
CLASSES_ARTIFACT = "classes"  # classes.json: the class names, by output index
PACKAGE = Path(__file__).resolve().parent  # logged as the model's code, so serving needs no checkout
# Distributions the model's code imports; pinned to the versions it was logged with.
REQUIREMENTS = ("mlflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pillow", "pyyaml", "tqdm")


class ImageClassifier(PythonModel):
    """The pyfunc model; its state comes from the logged artifacts and ``model_config`` in ``load_context``."""

    def load_context(self, context: Any) -> None:
        """Load the Keras model, the class names and the decoding settings logged with it."""
        settings = context.model_config
        self.classifier = classifier.Classifier(
            model=classifier.load_model(Path(context.artifacts[MODEL_ARTIFACT])),
            classes=tuple(files.read_json(Path(context.artifacts[CLASSES_ARTIFACT]))),
            crop=settings["crop"],
            max_pixels=int(settings["max_image_pixels"]),
        )
        self.batch_size = int(settings["batch_size"])
        self.forward = extraction.compile_forward(self.classifier.model)  # traced once, not per request

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per image: ``predicted``, ``confidence`` and ``p:<class>`` per class.

        Raises:
            MlflowException: no ``image`` column, or a value that is not a usable image (HTTP 400).
        """
        if INPUT_COLUMN not in model_input.columns:
            raise _bad_input(
                f"the input needs a column '{INPUT_COLUMN}' (image bytes or file paths); "
                f"found {list(model_input.columns)}"
            )
        with tempfile.TemporaryDirectory(prefix="headstart-serve-") as folder:
            paths = stage_inputs(model_input[INPUT_COLUMN].tolist(), Path(folder))
            good, bad = classifier.check_images(paths, self.classifier.max_pixels)
            if bad:
                rows = {path: row for row, path in enumerate(paths)}
                raise _bad_input("; ".join(f"row {rows[path]}: {reason}" for path, reason in bad))
            probabilities = classifier.predict_probabilities(
                self.classifier.model, good, self.classifier.crop, self.batch_size, "serve", self.forward
            )
        frame = classifier.predictions_frame([""] * len(good), None, probabilities, self.classifier.classes)
        return frame.drop(columns="path")


def stage_inputs(values: list[Any], folder: Path) -> list[Path]:
    """The files to decode: bytes are written into ``folder``, strings are taken as paths.

    Raises:
        MlflowException: a value is neither (HTTP 400).
    """
    paths = []
    for row, value in enumerate(values):
        if isinstance(value, (bytes, bytearray, memoryview)):
            path = folder / f"{row:06d}"
            path.write_bytes(bytes(value))
            paths.append(path)
        elif isinstance(value, str):
            paths.append(Path(value))
        else:
            raise _bad_input(f"row {row}: expected image bytes or a file path, found {type(value).__name__}")
    return paths


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def signature(classes: list[str]) -> ModelSignature:
    """``image`` (binary) in; ``predicted``, ``confidence`` and one probability column per class out."""
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", "predicted"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", f"p:{name}") for name in classes]
    return ModelSignature(inputs=Schema([ColSpec("binary", INPUT_COLUMN)]), outputs=Schema(outputs))


def log_classifier(model_path: Path, classes_path: Path, settings: dict[str, Any], name: str = "classifier") -> str:
    """Log the classifier as a pyfunc model in the active run; returns its model URI.

    Args:
        model_path: the ``.keras`` file (raw 0-255 RGB images in, probabilities out).
        classes_path: ``classes.json``.
        settings: ``crop``, ``max_image_pixels`` and ``batch_size``, given back to ``load_context``.
        name: the logged model's name.
    """
    with _without_advice():
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=ImageClassifier(),
            artifacts={MODEL_ARTIFACT: str(model_path), CLASSES_ARTIFACT: str(classes_path)},
            model_config=settings,
            code_paths=[str(PACKAGE)],
            signature=signature(files.read_json(classes_path)),
            # Listed, not inferred: inference loads the model in a subprocess, which takes longer than the logging.
            pip_requirements=[f"{dist}=={importlib.metadata.version(dist)}" for dist in REQUIREMENTS],
        )
    return info.model_uri


@contextlib.contextmanager
def _without_advice() -> Iterator[None]:
    """Silence MLflow's advice against two choices made on purpose, leaving every other message.

    The pickled model is an empty instance of a class imported from the logged code (no state,
    nothing to execute), and there is no input example: checking one would load the model and
    run it while logging, minutes of a long evaluate on a large model.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "serialized using CloudPickle" not in record.getMessage()

    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            yield
    finally:
        logger.removeFilter(keep)


def load_classifier(uri: str, tracking_uri: str) -> classifier.Classifier:
    """The classifier inside a logged pyfunc model (downloaded through MLflow).

    Args:
        uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run id>/classifier``...
        tracking_uri: the tracking (and registry) store to resolve it in.

    Raises:
        UserError: the model does not exist or is not one this module logged.
    """
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as error:
        raise UserError(f"cannot load {uri} from {tracking_uri}: {error}") from None
    wrapped = model.unwrap_python_model()
    if not hasattr(wrapped, "classifier"):
        raise UserError(f"{uri} is not a headstart image classifier (its pyfunc model is {type(wrapped).__name__})")
    return wrapped.classifier
