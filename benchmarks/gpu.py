"""Benchmark: extract and fine-tuning speed on a GPU at 224 px, with mixed precision off and on.

For EfficientNet-Lite0 (ImageNet weights, offline), under each dtype policy (``float32``, ``mixed_float16``):
images per second of the extract stage's own path over synthetic JPEGs (reading and decoding count), of the
same frozen forward pass on a batch already on the GPU (extract's ceiling; the goal is extract at 0.8 of it
or more), and of the finetune stage's training step on random images. A few minutes on one GPU, no
downloads. Refuses, with exit status 2, where TensorFlow sees no GPU; ``--allow-cpu --quick`` checks every
part on the CPU (not a GPU figure). What each figure means: docs/scale.md, "GPU figures".

Writes ``benchmarks/results/gpu.json`` with the GPU's name::

    python -m benchmarks.gpu        # make bench-gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS, describe_machine
from pipeline.core import files

RESULT = RESULTS / "gpu.json"
BACKBONE = "efficientnet_lite0"
POLICIES = ("float32", "mixed_float16")
NO_GPU = 2  # exit status where TensorFlow sees no GPU
GOAL = 0.8  # extract's share of the bare forward pass's speed


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    size: int  # input side in pixels
    batch: int  # images per batch (extract, forward and fine-tuning)
    images: int  # images extracted (the JPEGs are reused in turn)
    files: int  # distinct JPEGs written
    forward_batches: int  # timed forward passes
    finetune_steps: int  # timed training steps


FULL = Sizes(size=224, batch=64, images=4096, files=512, forward_batches=64, finetune_steps=20)
QUICK = Sizes(size=64, batch=8, images=16, files=8, forward_batches=2, finetune_steps=1)  # --allow-cpu checks


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields with some grain, 500 x 375, quality 90) in ``folder``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (500, 375), Image.Resampling.BICUBIC
        )
        grain = rng.normal(0, 8, (375, 500, 3))
        pixels = np.clip(np.asarray(coarse, np.float64) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def measure_extract(params: Any, paths: list[Path], sizes: Sizes) -> dict[str, float]:
    """Extract's images/s over the files and the bare forward pass's on a batch already on the device."""
    import numpy as np
    import tensorflow as tf

    from pipeline.features import backbones, extraction, inputs

    entry = backbones.get(BACKBONE)
    extractor, _ = backbones.build_extractor(entry, sizes.size, "imagenet", REPO, params.path("weights"))
    forward = extraction.compile_forward(extractor)
    listed = [paths[i % len(paths)] for i in range(sizes.images)]
    batch = tf.constant(np.random.default_rng(0).integers(0, 256, (sizes.batch, sizes.size, sizes.size, 3)), tf.float32)
    forward(batch).numpy()  # first call: kernels chosen and loaded
    started = time.perf_counter()
    for _ in range(sizes.forward_batches):
        forward(batch).numpy()  # the same device-to-host copy of the features as extract makes
    forward_rate = sizes.forward_batches * sizes.batch / (time.perf_counter() - started)
    batches = inputs.image_dataset(listed, sizes.size, "center", sizes.batch)
    _, seconds = extraction.compute_features(forward, batches, len(listed), "float32", "extract")
    extract_rate = len(listed) / seconds
    return {
        "extract_images_per_s": round(extract_rate, 1),
        "forward_images_per_s": round(forward_rate, 1),
        "extract_to_forward": round(extract_rate / forward_rate, 3),
    }


def measure_finetune(params: Any, sizes: Sizes) -> float:
    """Images per second of the finetune stage's training step under the global dtype policy."""
    import keras
    import numpy as np

    from pipeline.features import backbones
    from pipeline.training import finetune, fitting

    entry = backbones.get(BACKBONE)
    core, _ = backbones.build_backbone(entry, sizes.size, "imagenet", REPO, params.path("weights"))
    head = keras.Sequential([keras.Input((entry.feature_width,)), keras.layers.Dense(5, dtype="float32")])
    augmentation = finetune.augmentation_layers(params.augment, params.seed)
    model = finetune.assemble(entry, core, head, sizes.size, augmentation)
    finetune.unfreeze(core, entry, params.finetune)
    fitting.compile_classifier(
        model, params.finetune.optimizer, finetune.SMALL_SET_RATE, params.finetune.label_smoothing
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (sizes.batch, sizes.size, sizes.size, 3)).astype("float32")
    labels = rng.integers(0, 5, sizes.batch)
    for _ in range(2):  # the first steps trace and compile the graph
        model.train_on_batch(images, labels)
    started = time.perf_counter()
    for _ in range(sizes.finetune_steps):
        model.train_on_batch(images, labels)
    return round(sizes.batch * sizes.finetune_steps / (time.perf_counter() - started), 1)


def measure_policy(params: Any, policy: str, paths: list[Path], sizes: Sizes) -> dict[str, Any]:
    """Every measurement under one dtype policy (set after clearing the session, which resets it)."""
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    try:
        result: dict[str, Any] = measure_extract(params, paths, sizes)
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(policy)
        result["finetune_images_per_s"] = measure_finetune(params, sizes)
    finally:
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")
    result["meets_goal"] = result["extract_to_forward"] >= GOAL
    return result


def describe_devices(gpus: list[Any]) -> list[dict[str, Any]]:
    """Each GPU's name and compute capability, as TensorFlow reports them."""
    import tensorflow as tf

    described = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        described.append(
            {
                "name": details.get("device_name", gpu.name),
                "compute_capability": ".".join(map(str, capability)) if capability else None,
            }
        )
    return described


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULT, help="where the JSON goes")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per pool (0: every core)")
    # For checking the code on a machine without a GPU: measures the CPU, at tiny sizes with --quick.
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    from pipeline.core import config, runtime

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        print(
            "benchmarks.gpu: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty); "
            "run it on a machine with an NVIDIA GPU, its driver and TensorFlow's CUDA build "
            "(pip install 'tensorflow[and-cuda]'): nothing measured, nothing written",
            file=sys.stderr,
        )
        return NO_GPU
    params = config.load(REPO / "params.yaml")
    runtime.configure(dataclasses.replace(params.compute, threads=args.threads))
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="headstart-gpu-") as folder:
        paths = write_jpegs(Path(folder), sizes.files)
        results = {policy: measure_policy(params, policy, paths, sizes) for policy in POLICIES}
    for policy, numbers in results.items():
        print(f"{policy}: {numbers}", flush=True)
    devices = describe_devices(gpus)
    where = describe_machine()
    where["device"] = devices[0]["name"] if devices else "CPU (--allow-cpu: not a GPU figure)"
    files.write_json(
        args.output,
        {
            "benchmark": "gpu",
            "machine": where,
            "gpus": devices,
            "tensorflow": tf.__version__,
            "backbone": f"{BACKBONE} (imagenet)",
            "image_size": sizes.size,
            "batch_size": sizes.batch,
            "images": sizes.images,
            "jpeg": "500 x 375, quality 90, synthetic; center crop",
            "threads": args.threads,
            "unfreeze_from": params.finetune.unfreeze_from,
            "finetune_steps": sizes.finetune_steps,
            "goal_extract_to_forward": GOAL,
            "quick": args.quick,
            "policies": results,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"→ {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
