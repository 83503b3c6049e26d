"""Benchmark: switches that might make training faster on CPU without changing its results.

Each switch is timed off and on, the two taking turns round by round so that load from other jobs falls on
both alike; a comparison's result is the median per-round ratio. ``head``: the train_head fit on synthetic
features of Lite0's width, for params.yaml's head and the search space's largest; ``finetune``: the finetune
stage's training step on random images (XLA timed without the augmentation layers, which Keras refuses to
compile). Switches: ``jit_compile``, ``steps_per_execution`` (head), and, each in its own process since they
act when TensorFlow starts, ``TF_ENABLE_ONEDNN_OPTS`` and one inter-op thread. Same-seed losses and accuracies
are compared too, so a faster switch that changes results shows. Results: docs/scale.md.

Writes the key ``training`` of ``benchmarks/results/runtimes.json`` (other keys kept)::

    python -m benchmarks.training_speed [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras

from benchmarks.common import REPO, RESULTS, describe_machine
from pipeline.core import files

RESULT = RESULTS / "runtimes.json"  # shared with benchmarks.runtimes: each writes its own key
KEY = "training"
ROWS, WIDTH, CLASSES, VAL_ROWS = 10_000, 1_280, 10, 2_000
HEAD_EPOCHS = 5
FINETUNE_SIZES = (96, 224)
FINETUNE_STEPS = {96: 6, 224: 2}
STEPS_PER_EXECUTION = 16
# Settings that act when TensorFlow starts: environment variables and thread pools, one process each.
PROCESS_SETTINGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "inter_op_1": {"inter_op": 1},
}


def synthetic_features(rows: int, seed: int) -> tuple[Any, Any]:
    """Features like a backbone's (non-negative, clustered by class) and balanced-ish labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).gamma(2.0, 0.02, (CLASSES, WIDTH)).astype("float32")
    labels = rng.integers(0, CLASSES, rows).astype("int32")
    noise = rng.gamma(2.0, 0.5, (rows, WIDTH)).astype("float32")
    return np.maximum(centres[labels] + noise - 1.0, 0.0).astype("float32"), labels


class EpochTimes(keras.callbacks.Callback):
    """Records each epoch's wall time."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def head_settings(params: Any, which: str) -> Any:
    """params.yaml's default head, or the largest of the search space."""
    import dataclasses

    from pipeline.training import head

    settings = head.HeadSettings.from_params(params.train_head)
    if which == "default":
        return settings
    space = params.tune.space
    return dataclasses.replace(
        settings, hidden_layers=max(space.hidden_layers), units=max(space.units), activation="gelu", batch_size=64
    )


def fit_head(params: Any, which: str, jit: bool, steps_per_execution: int, epochs: int, data: Any) -> dict[str, Any]:
    """One same-seed head fit: seconds per epoch and the final loss and val accuracy."""
    from pipeline.training import fitting, head

    (train_x, train_y), (val_x, val_y) = data
    keras.backend.clear_session()
    fitting.seed_everything(params.seed)
    settings = head_settings(params, which)
    model = head.build_head(WIDTH, CLASSES, settings, head.feature_scale(train_x))
    model.jit_compile = jit  # the compiled train function is made at the first fit, so this still counts
    model.steps_per_execution = steps_per_execution
    times = EpochTimes()
    history = model.fit(  # fed as the stage feeds it: windows of the (here in-memory) features, rebatched
        head.stream_batches(train_x, train_y, settings.batch_size, params.seed),
        validation_data=head.stream_batches(val_x, val_y, settings.batch_size),
        epochs=epochs,
        class_weight=fitting.class_weights(train_y, CLASSES, params.train_head.class_weight),
        callbacks=[times],
        verbose=0,
    )
    return {
        "jit_compile": bool(model.jit_compile),
        "first_epoch_s": times.seconds[0],
        "epoch_s": statistics.median(times.seconds[1:]),
        "loss": float(history.history["loss"][-1]),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
    }


def finetune_steps(params: Any, size: int, jit: bool, steps: int, augment: bool = True) -> dict[str, Any]:
    """The finetune stage's training step at one size: images per second and the per-step losses.

    ``augment=False`` leaves the augmentation layers out of the model, as if they ran on the input pipeline:
    Keras refuses XLA for a model holding RandomRotation or RandomZoom (``supports_jit`` is False: their
    image transform has no XLA kernel) and quietly trains without it.
    """
    import numpy as np

    from pipeline.features import backbones
    from pipeline.training import finetune, fitting

    keras.backend.clear_session()
    fitting.seed_everything(params.seed)
    backbone = backbones.get("efficientnet_lite0")
    core, _ = backbones.build_backbone(backbone, size, "imagenet", REPO, params.path("weights"))
    head = keras.Sequential([keras.Input((backbone.feature_width,)), keras.layers.Dense(5)])
    augmentation = (
        finetune.augmentation_layers(params.augment, params.seed)
        if augment
        else keras.Sequential([keras.layers.Identity()], name="augmentation")
    )
    model = finetune.assemble(backbone, core, head, size, augmentation)
    finetune.unfreeze(core, backbone, params.finetune)
    fitting.compile_classifier(
        model, params.finetune.optimizer, finetune.SMALL_SET_RATE, params.finetune.label_smoothing
    )
    model.jit_compile = jit  # Keras warns and keeps False where a layer does not support XLA
    batch = params.finetune.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 5, batch)
    losses = []
    started = time.perf_counter()
    losses.append(float(model.train_on_batch(images, labels)[0]))
    first = time.perf_counter() - started
    losses.append(float(model.train_on_batch(images, labels)[0]))
    started = time.perf_counter()
    for _ in range(steps):
        losses.append(float(model.train_on_batch(images, labels)[0]))
    return {
        "jit_compile": bool(model.jit_compile),
        "first_step_s": first,
        "images_per_s": batch * steps / (time.perf_counter() - started),
        "losses": losses,
    }


def compare(runs: dict[str, list[dict[str, Any]]], measure: str, faster: str) -> dict[str, Any]:
    """Two settings' runs (round by round) as medians, the median per-round speed-up of the second over
    the first, and how far their results differ."""
    (off, a), (on, b) = runs.items()
    ratios = [
        (y[measure] / x[measure]) if faster == "higher" else (x[measure] / y[measure])
        for x, y in zip(a, b, strict=True)
    ]
    summary: dict[str, Any] = {
        off: {k: round(statistics.median(r[k] for r in a), 4) for k in a[0] if isinstance(a[0][k], float)},
        on: {k: round(statistics.median(r[k] for r in b), 4) for k in b[0] if isinstance(b[0][k], float)},
        "speedup": round(statistics.median(ratios), 3),
        "speedups_by_round": [round(r, 3) for r in ratios],
    }
    summary[on]["jit_compile_used"] = b[0].get("jit_compile")
    if "losses" in a[0]:
        summary["max_loss_difference"] = float(
            max(abs(p - q) for x, y in zip(a, b, strict=True) for p, q in zip(x["losses"], y["losses"], strict=True))
        )
        summary["loss_after_steps"] = {off: a[0]["losses"][-1], on: b[0]["losses"][-1]}
    else:
        summary["max_loss_difference"] = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b, strict=True))
        summary["max_val_accuracy_difference"] = max(
            abs(x["val_accuracy"] - y["val_accuracy"]) for x, y in zip(a, b, strict=True)
        )
    return summary


def layers_without_jit(params: Any) -> list[str]:
    """The finetune model's layers that keep Keras from compiling it with XLA."""
    from pipeline.training import finetune

    augmentation = finetune.augmentation_layers(params.augment, params.seed)
    augmentation.build((None, 96, 96, 3))
    return [layer.name for layer in augmentation._flatten_layers() if not layer.supports_jit]


def measure_in_process(params: Any, rounds: int, quick: bool) -> dict[str, Any]:
    """The switches that can change within one process: XLA and steps per execution."""
    data = (synthetic_features(ROWS, 1), synthetic_features(VAL_ROWS, 2))
    epochs = 3 if quick else HEAD_EPOCHS
    results: dict[str, Any] = {}
    for which in ("default", "largest"):
        for name, (a, b) in {
            "jit_compile": (("jit_compile=False", False, 1), ("jit_compile=True", True, 1)),
            "steps_per_execution": (
                ("steps_per_execution=1", False, 1),
                (f"steps_per_execution={STEPS_PER_EXECUTION}", False, STEPS_PER_EXECUTION),
            ),
        }.items():
            off, on = a[0], b[0]
            runs: dict[str, list[dict[str, Any]]] = {off: [], on: []}
            for _ in range(rounds):
                runs[off].append(fit_head(params, which, a[1], a[2], epochs, data))
                runs[on].append(fit_head(params, which, b[1], b[2], epochs, data))
            results[f"head_{which}_{name}"] = compare(runs, "epoch_s", "lower")
            print(f"head {which} {name}: {results[f'head_{which}_{name}']}", flush=True)
    for size in (64,) if quick else FINETUNE_SIZES:
        steps = 1 if quick else FINETUNE_STEPS[size]
        runs = {"jit_compile=False": [], "jit_compile=True": []}
        for _ in range(rounds):
            for jit in (False, True):
                runs[f"jit_compile={jit}"].append(finetune_steps(params, size, jit, steps, augment=False))
        key = f"finetune_{size}px_no_augmentation_layers_jit_compile"
        results[key] = compare(runs, "images_per_s", "higher")
        print(f"{key}: {results[key]}", flush=True)
    return results


def worker(setting: str, quick: bool) -> dict[str, Any]:
    """In a fresh process: the default head fit and fine-tuning at 96 px under one process setting."""
    from pipeline.core import config, runtime

    params = config.load(REPO / "params.yaml")
    runtime.configure(params.compute)
    inter = PROCESS_SETTINGS[setting].get("inter_op")
    if inter is not None:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    data = (synthetic_features(ROWS, 1), synthetic_features(VAL_ROWS, 2))
    size = 64 if quick else 96
    return {
        "head": fit_head(params, "default", False, 1, 3 if quick else HEAD_EPOCHS, data),
        "finetune": finetune_steps(params, size, False, 1 if quick else FINETUNE_STEPS[96]),
    }


def measure_processes(rounds: int, quick: bool) -> dict[str, Any]:
    """Each process setting against the baseline, taking turns, one fresh process per run."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PROCESS_SETTINGS}
    for _ in range(rounds):
        for name, setting in PROCESS_SETTINGS.items():
            env = {**os.environ, **{k: v for k, v in setting.items() if isinstance(v, str)}}
            command = [
                sys.executable,
                "-m",
                "benchmarks.training_speed",
                "--worker",
                name,
                *(["--quick"] if quick else []),
            ]
            out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    results: dict[str, Any] = {}
    for name in PROCESS_SETTINGS:
        if name == "baseline":
            continue
        for part, measure, faster in (("head", "epoch_s", "lower"), ("finetune", "images_per_s", "higher")):
            pair = {"baseline": [r[part] for r in runs["baseline"]], name: [r[part] for r in runs[name]]}
            results[f"{part}_{name}"] = compare(pair, measure, faster)
            print(f"{part} {name}: {results[f'{part}_{name}']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    parser.add_argument("--worker", choices=PROCESS_SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.quick)))
        return
    from pipeline.core import config, runtime

    params = config.load(REPO / "params.yaml")
    runtime.configure(params.compute)
    started = time.perf_counter()
    comparisons = {**measure_in_process(params, args.rounds, args.quick), **measure_processes(args.rounds, args.quick)}
    existing = files.read_json(args.output) if args.output.exists() else {}
    existing[KEY] = {
        "benchmark": "training_speed",
        "machine": describe_machine(),
        "threads": params.compute.threads,
        "rounds": args.rounds,
        "quick": args.quick,
        "pairing": "settings interleaved round by round in one run; the median per-round ratio",
        "head_data": f"{ROWS:,} x {WIDTH:,} synthetic features, {CLASSES} classes, {VAL_ROWS:,} val rows",
        "head_epochs": 3 if args.quick else HEAD_EPOCHS,
        "finetune_batch_size": params.finetune.batch_size,
        "steps_per_execution": STEPS_PER_EXECUTION,
        "finetune_layers_without_xla": layers_without_jit(params),
        "comparisons": comparisons,
        "seconds": round(time.perf_counter() - started, 1),
    }
    files.write_json(args.output, existing)
    print(f"→ {args.output}")


if __name__ == "__main__":
    main()
