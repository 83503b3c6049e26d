"""The runtime of frozen forward passes: one Keras model compiled into a batch-to-array function on
TensorFlow, TFLite (XNNPACK) or ONNX Runtime, and ``auto``, which measures them on this machine.

Extract, evaluate and predict push images through a network whose weights never change; which
library runs that network fastest depends on the CPU (oneDNN, XNNPACK and ONNX Runtime's MLAS pick
their kernels by instruction set, and each is best on different chips). Every runtime gets the same
graph (``freeze``). The outputs agree with TensorFlow's to float rounding (about 1e-5 on features of
magnitude 1-10, ``tests/test_runtimes.py``) and repeat bit for bit on one machine at a fixed thread
count, but differ in the last bits between runtimes: the runtime is recorded beside the features.

``auto`` times every runtime on a few batches of the real input shape, in turns, and keeps TensorFlow
unless another is faster by ``MARGIN`` in every round. The choice is remembered outside the project, per
machine, model and library versions (``choose``), so two runs on one machine write the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)  # what TF's own converters use

from pipeline.core import console, files, runtime
from pipeline.core.errors import UserError

Runtime = Literal["tensorflow", "tflite", "onnx"]
RUNTIMES: tuple[Runtime, ...] = ("tensorflow", "tflite", "onnx")  # the reference first: ties go to it
AUTO = "auto"
CHOICES_FILE = "runtimes.json"  # in the cache folder given to ``choose``
MARGIN = 1.10  # another runtime must be this much faster than TensorFlow to be chosen
MEASURE_BATCHES = 2  # timed batches per runtime and round
# Untimed batches first: after only one, ONNX Runtime's next calls were still slow (docs/benchmarks.md,
# "Measurements behind single lines of code").
WARM_UP_BATCHES = 2
MEASURE_ROUNDS = 3  # a runtime must beat TensorFlow in each (``pick_fastest``)
ONNX_OPSET = 17
Forward = Callable[[tf.Tensor], tf.Tensor]
# What the TFLite converter and interpreter print on every conversion and load, telling the user nothing.
_NOTES = re.compile(
    r"^(W\d{4} .*Ignored (output_format|drop_control_dependency)|INFO: Created TensorFlow Lite XNNPACK delegate)"
)
_LOAD_LINES = re.compile(r"^I\d{4} \d")  # TensorFlow's start-up INFO lines, printed again when tf2onnx loads


def _onnx_modules() -> tuple[Any, Any]:
    """onnxruntime and tf2onnx, imported with TensorFlow's repeated start-up lines kept off the console."""
    with console.quiet_lines(_LOAD_LINES):
        import onnxruntime
        import tf2onnx
    return onnxruntime, tf2onnx


def freeze(model: keras.Model) -> Any:
    """The model as one concrete function for any batch size (``training=False``), variables as constants.

    The backbone's weights never change here, so they are baked into the graph; TF's graph optimiser
    then folds each BatchNormalization into the convolution before it, which makes the forward pass
    faster on CPU (docs/benchmarks.md, "Extract speed"). TFLite and tf2onnx convert this same
    function: given the unfrozen extractor, the TFLite converter kept its weights as variables
    (``READ_VARIABLE`` ops) that the interpreter never initialised, and every output was NaN.
    """
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images")
    traced = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(traced)


def compile_tensorflow(frozen: Any) -> Forward:
    """TensorFlow running the frozen graph (the reference, and what extract always did)."""
    return lambda images: frozen(images)[0]


def compile_tflite(frozen: Any, threads: int) -> Forward:
    """TFLite's interpreter with its default XNNPACK delegate on the frozen graph (float32, no quantization).

    The interpreter is resized whenever the batch size changes (the last batch of a split).
    """
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # it asks for a trackable object, which a graph of constants does not need
    try:
        with console.quiet_lines(_NOTES):
            content = tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
    finally:
        absl.setLevel(level)
    with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter (it warns that ai-edge-litert's will replace it).
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated", category=UserWarning)
        interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)
    (entry,) = interpreter.get_input_details()
    output = interpreter.get_output_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def forward(images: tf.Tensor) -> tf.Tensor:
        pixels = np.ascontiguousarray(np.asarray(images), np.float32)
        if shape[0] != pixels.shape:
            interpreter.resize_tensor_input(entry["index"], pixels.shape)
            with console.quiet_lines(_NOTES):
                interpreter.allocate_tensors()
            shape[0] = pixels.shape
        interpreter.set_tensor(entry["index"], pixels)
        interpreter.invoke()
        return tf.constant(interpreter.get_tensor(output))  # a copy: the interpreter reuses its buffers

    return forward


def compile_onnx(frozen: Any, threads: int) -> Forward:
    """ONNX Runtime's CPU provider on the frozen graph, converted by tf2onnx (opset ``ONNX_OPSET``).

    One intra-op pool of ``threads`` threads and sequential execution, so that the work is split the
    same way on every run.
    """
    onnxruntime, tf2onnx = _onnx_modules()
    spec = tf.TensorSpec(frozen.inputs[0].shape, tf.float32, name="images")
    graph = tf.function(lambda images: frozen(images)[0])
    proto, _ = tf2onnx.convert.from_function(graph, input_signature=[spec], opset=ONNX_OPSET)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initializers tell the user nothing
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: tf.constant(
        session.run(None, {name: np.ascontiguousarray(np.asarray(images), np.float32)})[0]
    )


def compile_forward(model: keras.Model, name: Runtime, threads: int) -> Forward:
    """The frozen model as a batch-to-features function on one runtime.

    Args:
        model: a Keras model taking ``(batch, size, size, 3)`` float32 images.
        name: ``tensorflow``, ``tflite`` or ``onnx``.
        threads: ``compute.threads`` (0: every core).

    Returns:
        A function from an image batch (a tensor or array) to a ``tf.Tensor`` of outputs.
    """
    frozen = freeze(model)
    if name == "tensorflow":
        return compile_tensorflow(frozen)
    if name == "tflite":
        return compile_tflite(frozen, threads)
    if name == "onnx":
        return compile_onnx(frozen, threads)
    raise UserError(f"compute.runtime: unknown runtime {name!r}; use auto or one of {', '.join(RUNTIMES)}")


def versions(name: str) -> dict[str, str]:
    """The library versions a runtime adds to TensorFlow's (recorded in meta.json beside them)."""
    if name == "tflite":
        return {"tflite": tf.__version__}  # the interpreter TensorFlow ships
    if name == "onnx":
        onnxruntime, tf2onnx = _onnx_modules()
        return {"onnxruntime": onnxruntime.__version__, "tf2onnx": tf2onnx.__version__}
    return {}


def measure_speeds(forwards: dict[str, Forward], batch: np.ndarray) -> dict[str, list[float]]:
    """Images per second of each forward function on one batch, per round; the runtimes take turns.

    Args:
        forwards: one per runtime.
        batch: images of the real input shape (their content does not change the speed).

    Returns:
        Per runtime, one speed per round (``MEASURE_ROUNDS``), in the order measured.
    """
    images = tf.constant(batch)
    for forward in forwards.values():
        for _ in range(WARM_UP_BATCHES):
            forward(images).numpy()  # allocation, first-call set-up
    rounds: dict[str, list[float]] = {name: [] for name in forwards}
    for _ in range(MEASURE_ROUNDS):
        for name, forward in forwards.items():
            start = time.perf_counter()
            for _ in range(MEASURE_BATCHES):
                forward(images).numpy()
            rounds[name].append(MEASURE_BATCHES * len(batch) / (time.perf_counter() - start))
    return rounds


def pick_fastest(rounds: dict[str, list[float]], margin: float = MARGIN) -> Runtime:
    """TensorFlow, unless another runtime beat it by ``margin`` in every round; then the one that beat it most.

    Each round compares runtimes measured seconds apart, so a burst of load from another process
    slows one round for all of them; a runtime must win every round, not only its best one, so a
    noisy machine keeps TensorFlow (today's behaviour) rather than flip to a slower runtime.
    """
    reference = rounds.get("tensorflow")
    if not reference:
        return "tensorflow"
    worst_ratio = {
        name: min(speed / base for speed, base in zip(speeds, reference, strict=True))
        for name, speeds in rounds.items()
        if name != "tensorflow"
    }
    if not worst_ratio:
        return "tensorflow"
    best = max(worst_ratio, key=worst_ratio.__getitem__)
    return best if worst_ratio[best] >= margin else "tensorflow"  # type: ignore[return-value]


def choices_dir() -> Path:
    """Where ``auto``'s choices are remembered: ``$XDG_CACHE_HOME/headstart`` (``~/.cache/headstart``).

    One folder per user, not per project: every checkout on the machine (the fresh workspaces of
    ``tests/test_determinism.py`` too) reads the same choice, so none measures again and flips it.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headstart"


def choice_key(model: keras.Model, batch_size: int, threads: int) -> str:
    """What a remembered choice is valid for: the machine, the thread count, the model and shapes, the libraries."""
    onnxruntime, _ = _onnx_modules()
    cpu = runtime.describe_cpu()
    return (
        f"{cpu['model']}|{cpu['isa']}|{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}|threads={threads}"
        f"|{model.name}|{'x'.join(str(d) for d in model.input_shape[1:])}|batch={batch_size}"
        f"|tensorflow={tf.__version__}|onnxruntime={onnxruntime.__version__}"
    )


def choose(
    model: keras.Model, requested: str, batch_size: int, threads: int, cache_dir: Path
) -> tuple[Runtime, Forward, dict[str, Any]]:
    """The runtime to use, its compiled forward function, and how it was chosen.

    A named runtime is used as it is. ``auto`` reads ``cache_dir/runtimes.json``; on a miss it
    compiles every runtime, measures them on ``batch_size`` random images of the model's input
    shape and writes the choice (with the speeds) there, keyed by CPU model, instruction set, threads,
    model, input size, batch size and library versions (``choice_key``): two runs on one machine choose
    the same runtime, so they write the same bytes.

    Args:
        model: the frozen model (extractor or classifier).
        requested: ``compute.runtime``.
        batch_size: images per forward pass.
        threads: ``compute.threads``.
        cache_dir: where choices are remembered (``choices_dir()``).

    Returns:
        The runtime, its forward function and ``{"requested", "runtime", "rule", ...}``: the speeds
        measured (images/s) when they were measured now or read back.
    """
    if requested != AUTO:
        name: Runtime = requested  # type: ignore[assignment]
        return name, compile_forward(model, name, threads), {"requested": requested, "runtime": name, "rule": "set"}
    key = choice_key(model, batch_size, threads)
    path = cache_dir / CHOICES_FILE
    with _locked(path):  # two stages measuring at once would otherwise each keep their own choice
        remembered = files.read_json(path) if path.is_file() else {}
        if key not in remembered:
            name, forward, entry = _measure_choice(model, batch_size, threads)
            files.write_json(path, {**remembered, key: entry})
            return name, forward, {"requested": AUTO, "rule": "measured", **entry}
    entry = remembered[key]
    name = entry["runtime"]
    return name, compile_forward(model, name, threads), {"requested": AUTO, "rule": "remembered", **entry}


def _measure_choice(model: keras.Model, batch_size: int, threads: int) -> tuple[Runtime, Forward, dict[str, Any]]:
    frozen = freeze(model)
    forwards = {
        "tensorflow": compile_tensorflow(frozen),
        "tflite": compile_tflite(frozen, threads),
        "onnx": compile_onnx(frozen, threads),
    }
    pixels = np.random.default_rng(0).uniform(0, 255, (batch_size, *model.input_shape[1:])).astype(np.float32)
    rounds = measure_speeds(forwards, pixels)
    name = pick_fastest(rounds)
    entry = {
        "runtime": name,
        "images_per_s": {runtime_name: round(max(speeds), 1) for runtime_name, speeds in rounds.items()},
        "rounds": {runtime_name: [round(speed, 1) for speed in speeds] for runtime_name, speeds in rounds.items()},
        "margin": MARGIN,
    }
    return name, forwards[name], entry


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (POSIX ``flock``; released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
