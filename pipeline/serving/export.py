"""TFLite export: the classifier converted to each format, and every conversion checked against it.

A format is only worth shipping if it predicts what model.keras predicts. Each converted model runs
over the whole test split beside the Keras model (the same decoded batches, so the comparison sees
identical pixels); its top-1 agreement with Keras, the largest probability difference, its test
accuracy, file size and speed are measured, and a format that agrees on fewer images than
``export.min_agreement`` stops the stage before anything is written.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import console, files, progress
from pipeline.core.errors import UserError
from pipeline.features import extraction, inputs

Format = Literal["float32", "float16", "dynamic_range"]
LABELS_FILE = "labels.txt"
REFERENCE = "keras"  # the name the Keras model's numbers go under, beside the formats'
QUANTIZATION = {
    "float32": "none: float32 weights and arithmetic",
    "float16": "float16 weights (half the size), computed in float32",
    "dynamic_range": "int8 weights (a quarter of the size), activations quantized on the fly",
}
# What the TFLite converter and interpreter print on every conversion and load, telling the user nothing.
_CONVERTER_NOTES = re.compile(
    r"^(W\d{4} .*Ignored (output_format|drop_control_dependency)"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)
CROP_RULES = {
    "center": "resize the short side to image_size, keep the centred square",
    "pad": "resize the long side to image_size, pad the rest with black, centred",
    "stretch": "resize both sides to image_size",
}


def model_file(fmt: str) -> str:
    """The file name of one format's model in the export folder."""
    return f"model_{fmt}.tflite"


def convert(model: keras.Model, fmt: Format) -> bytes:
    """Convert the classifier to a TFLite flatbuffer with TFLite's built-in ops only.

    The model is traced as ``model(images, training=False)`` with a free batch size and that
    concrete function is converted. ``model.export``'s SavedModel (and Keras' ``litert`` export,
    which goes through it) keeps the augmentation layers' random ops, because their seed state is
    captured even at inference; TFLite can only run those through the Flex delegate, which apps do
    not ship by default. The traced function holds the inference path alone.

    Args:
        model: the classifier from ``classifier.load_model`` (raw 0-255 RGB images in, probabilities out).
        fmt: ``float32``; ``float16`` (weights stored as float16); ``dynamic_range`` (int8 weights).

    Returns:
        The ``.tflite`` file's bytes.
    """
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images")
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    if fmt != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range (int8 weight) quantization
    if fmt == "float16":
        converter.target_spec.supported_types = [tf.float16]
    with console.quiet_lines(_CONVERTER_NOTES):
        return converter.convert()


def load_interpreter(content: bytes, threads: int) -> tf.lite.Interpreter:
    """A TFLite interpreter for a converted model, tensors allocated.

    Args:
        content: the ``.tflite`` bytes.
        threads: CPU threads (``compute.threads``); 0 means every core.
    """
    with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter (it warns that ai-edge-litert's will replace it); it runs the
        # same flatbuffers as the LiteRT runtime apps use.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated", category=UserWarning)
        interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)
    with console.quiet_lines(_CONVERTER_NOTES):
        interpreter.allocate_tensors()
    return interpreter


def run_interpreter(interpreter: tf.lite.Interpreter, images: np.ndarray) -> np.ndarray:
    """Class probabilities for one batch; the input is resized whenever the batch size changes.

    Args:
        interpreter: from ``load_interpreter``.
        images: ``(batch, size, size, 3)`` float32 raw 0-255 RGB pixels.

    Returns:
        ``(batch, classes)`` float32 probabilities (a copy: the interpreter reuses its buffers).
    """
    (entry,) = interpreter.get_input_details()
    if tuple(entry["shape"]) != images.shape:
        interpreter.resize_tensor_input(entry["index"], images.shape)
        interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], np.ascontiguousarray(images, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


@dataclass(frozen=True)
class Outputs:
    """What each model said about the same images, and the seconds it spent (decoding excluded)."""

    probabilities: dict[str, np.ndarray]  # REFERENCE and each format: (images, classes)
    seconds: dict[str, float]


def _run_on_batch(interpreter: tf.lite.Interpreter, batch: tf.Tensor) -> np.ndarray:
    return run_interpreter(interpreter, batch.numpy())


def predict_side_by_side(
    forward: Callable[[tf.Tensor], tf.Tensor],
    interpreters: Mapping[str, tf.lite.Interpreter],
    batches: Iterable[tf.Tensor],
    count: int,
    desc: str = "export parity",
) -> Outputs:
    """Run the Keras model and every TFLite model on each batch, decoding each image once.

    Args:
        forward: the Keras model as evaluate runs it (``extraction.compile_forward``).
        interpreters: one per format.
        batches: image batches in row order (``inputs.image_dataset``).
        count: the number of images.
        desc: the progress bar's label.

    Returns:
        Every model's probabilities, row-aligned, and its time.
    """
    runners: dict[str, Callable[[tf.Tensor], np.ndarray]] = {REFERENCE: lambda batch: forward(batch).numpy()}
    runners.update({name: functools.partial(_run_on_batch, interpreter) for name, interpreter in interpreters.items()})
    parts: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    seconds = dict.fromkeys(runners, 0.0)
    with progress.bar(total=count, desc=desc, unit="img", unit_scale=True) as bar:
        for batch in batches:
            for name, run in runners.items():
                start = time.perf_counter()
                parts[name].append(run(batch))
                seconds[name] += time.perf_counter() - start
            bar.update(len(batch))
    rows = sum(len(part) for part in parts[REFERENCE])
    if rows != count:
        raise RuntimeError(f"expected {count} images, the input pipeline gave {rows}")
    return Outputs({name: np.concatenate(part) for name, part in parts.items()}, seconds)


def score_format(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """How closely a converted model follows the Keras model, and how well it classifies.

    Args:
        reference: the Keras model's probabilities, ``(images, classes)``.
        candidate: the converted model's, same shape and rows.
        labels: the true class indices.

    Returns:
        ``agreement`` (fraction of images with the same top-1 class), ``disagreements`` (their
        count), ``max_abs_diff`` (largest difference of any probability) and ``accuracy``.
    """
    if reference.shape != candidate.shape or len(reference) == 0:
        raise ValueError(f"cannot compare probabilities of shapes {reference.shape} and {candidate.shape}")
    same = reference.argmax(axis=1) == candidate.argmax(axis=1)
    return {
        "agreement": float(same.mean()),
        "disagreements": int((~same).sum()),
        "max_abs_diff": float(np.abs(candidate.astype(np.float64) - reference).max()),
        "accuracy": float((candidate.argmax(axis=1) == labels).mean()),
    }


def check_parity(scores: Mapping[str, Mapping[str, float]], min_agreement: float) -> None:
    """Refuse to export when any format's top-1 agreement with the Keras model is below the minimum.

    Args:
        scores: per format, from ``score_format``.
        min_agreement: ``export.min_agreement``.

    Raises:
        UserError: naming each failing format with its agreement and probability difference.
    """
    failing = [
        f"  {fmt}: top-1 agreement {s['agreement']:.4f} ({s['disagreements']} test images predicted differently), "
        f"max probability difference {s['max_abs_diff']:.4g}, test accuracy {s['accuracy']:.4f}"
        for fmt, s in scores.items()
        if s["agreement"] < min_agreement
    ]
    if failing:
        raise UserError(
            f"export: {len(failing)} TFLite format(s) agree with model.keras on fewer test images than "
            f"export.min_agreement ({min_agreement:g}); nothing was written:\n"
            + "\n".join(failing)
            + "\nremove the format from export.formats, or lower export.min_agreement if the difference is acceptable"
        )


def measure(
    model: keras.Model,
    converted: Mapping[Format, bytes],
    images: Sequence[Path],
    labels: np.ndarray,
    crop: inputs.Crop,
    batch_size: int,
    threads: int,
) -> dict[str, dict[str, float | int]]:
    """Score every converted model against the Keras model on the given images (the test split).

    Args:
        model: the Keras classifier.
        converted: ``.tflite`` bytes per format.
        images: the image files, decoded as evaluate decodes them.
        labels: their true class indices.
        crop: ``backbone.crop``.
        batch_size: images per forward pass.
        threads: ``compute.threads`` for the interpreters.

    Returns:
        Per format its ``score_format`` numbers plus ``size_mb``, ``images_per_s`` and ``speedup``
        (images/s relative to Keras); under ``REFERENCE`` the Keras model's ``accuracy`` and ``images_per_s``.

    Raises:
        UserError: there are no images to compare on.
    """
    if not images:
        raise UserError("export: the test split has no images to check the TFLite models on")
    interpreters: dict[str, tf.lite.Interpreter] = {
        fmt: load_interpreter(content, threads) for fmt, content in converted.items()
    }
    batches = inputs.image_dataset(images, int(model.input_shape[1]), crop, batch_size)
    outputs = predict_side_by_side(extraction.compile_forward(model), interpreters, batches, len(images))
    speed = {name: len(images) / max(spent, 1e-9) for name, spent in outputs.seconds.items()}
    reference = outputs.probabilities[REFERENCE]
    scores: dict[str, dict[str, float | int]] = {
        REFERENCE: {
            "accuracy": float((reference.argmax(axis=1) == labels).mean()),
            "images_per_s": round(speed[REFERENCE], 1),
        }
    }
    for fmt, content in converted.items():
        scores[fmt] = {
            **score_format(reference, outputs.probabilities[fmt], labels),
            "size_mb": round(len(content) / 1e6, 3),
            "images_per_s": round(speed[fmt], 1),
            "speedup": round(speed[fmt] / speed[REFERENCE], 2),
        }
    return scores


def describe_model(
    fmt: Format, content: bytes, size: int, crop: inputs.Crop, classes: Sequence[str], scores: Mapping[str, float | int]
) -> dict:
    """What an app needs to feed one exported model and read its answer (written beside it as JSON).

    Timings are left out, so the same model and test split give the same file.
    """
    interpreter = load_interpreter(content, 1)
    (given,), (answer,) = interpreter.get_input_details(), interpreter.get_output_details()
    return {
        "file": model_file(fmt),
        "format": fmt,
        "quantization": QUANTIZATION[fmt],
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
        "input": {
            "name": given["name"],
            "shape": [int(d) for d in given["shape_signature"]],
            "dtype": "float32",
            "pixels": "RGB, raw 0-255 values (the model does its own normalization)",
            "image_size": size,
            "crop": crop,
            "crop_rule": CROP_RULES[crop],
        },
        "output": {
            "name": answer["name"],
            "shape": [int(d) for d in answer["shape_signature"]],
            "dtype": "float32",
            "values": f"class probabilities (softmax), in the order of {LABELS_FILE}",
        },
        "labels": LABELS_FILE,
        "classes": len(classes),
        "parity": {key: scores[key] for key in ("agreement", "disagreements", "max_abs_diff", "accuracy")},
    }


def write_export(
    folder: Path, converted: Mapping[Format, bytes], descriptions: Mapping[Format, dict], classes: Sequence[str]
) -> None:
    """Write each model, its description and the class names into a (staging) folder."""
    for fmt, content in converted.items():
        files.write_bytes(folder / model_file(fmt), content)
        files.write_json(folder / f"model_{fmt}.json", descriptions[fmt])
    files.write_text(folder / LABELS_FILE, "".join(f"{name}\n" for name in classes))


def describe_models(
    converted: Mapping[Format, bytes],
    size: int,
    crop: inputs.Crop,
    classes: Sequence[str],
    scores: Mapping[str, Mapping[str, float | int]],
) -> dict[Format, dict]:
    """``describe_model`` for every converted format."""
    return {fmt: describe_model(fmt, content, size, crop, classes, scores[fmt]) for fmt, content in converted.items()}


def describe_export(scores: Mapping[str, Mapping[str, float | int]], formats: Sequence[str], images: int) -> str:
    """The console's account of the export: size, agreement and speed of each format."""
    return (
        "; ".join(
            f"{fmt} {scores[fmt]['size_mb']:.1f} MB, agreement {scores[fmt]['agreement']:.4f}, "
            f"{scores[fmt]['speedup']:.2f}x Keras's speed"
            for fmt in formats
        )
        + f" on {images} test images"
    )
