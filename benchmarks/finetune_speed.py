"""Benchmark: fine-tuning speed per backbone and input size, so a user can pick by cost.

For EfficientNet-Lite0, 1 and 2 (ImageNet weights, offline) at 64 px, 160 px and each one's native size, builds
the finetune stage's model (``finetune.assemble`` with params.yaml's augmentation, unfrozen from params.yaml's
``finetune.unfreeze_from``, compiled with its optimizer and label smoothing) and times training steps on batches
of params.yaml's ``finetune.batch_size`` random images (two warm-up steps, then ``STEPS``): images per second of
the training step alone (no decoding, no val pass), the part that dominates the finetune stage. Writes
``benchmarks/results/finetune_speed.json``::

    python -m benchmarks.finetune_speed [--steps 8]
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import REPO, describe_machine, write_result

if TYPE_CHECKING:
    from pipeline.core.config import Params

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SIZES = (64, 160)  # and each backbone's native size
STEPS = 8
CLASSES = 5


def time_steps(params: Params, name: str, size: int, steps: int) -> float:
    """Images per second of the finetune stage's training step for one backbone at one size."""
    import keras
    import numpy as np

    from pipeline.features import backbones
    from pipeline.training import finetune, fitting

    keras.backend.clear_session()
    backbone = backbones.get(name)
    core, _ = backbones.build_backbone(backbone, size, "imagenet", REPO, params.path("weights"))
    head = keras.Sequential([keras.Input((backbone.feature_width,)), keras.layers.Dense(CLASSES)])
    model = finetune.assemble(backbone, core, head, size, finetune.augmentation_layers(params.augment, params.seed))
    finetune.unfreeze(core, backbone, params.finetune)
    fitting.compile_classifier(
        model, params.finetune.optimizer, finetune.SMALL_SET_RATE, params.finetune.label_smoothing
    )
    batch = params.finetune.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, CLASSES, batch)
    for _ in range(2):  # the first steps trace and compile the graph
        model.train_on_batch(images, labels)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    from pipeline.core import config, runtime
    from pipeline.features import backbones

    params = config.load(REPO / "params.yaml")
    runtime.configure(params.compute)
    results: dict[str, Any] = {}
    for name in BACKBONES:
        native = backbones.get(name).default_size
        results[name] = {}
        for size in sorted({*SIZES, native}):
            rate = time_steps(params, name, size, args.steps)
            results[name][str(size)] = round(rate, 1)
            print(f"{name} {size} px: {rate:.1f} images/s", flush=True)
    path = write_result(
        "finetune_speed",
        {
            "benchmark": "finetune_speed",
            "machine": describe_machine(),
            "threads": params.compute.threads,
            "batch_size": params.finetune.batch_size,
            "unfreeze_from": params.finetune.unfreeze_from,
            "steps": args.steps,
            "images_per_s": results,
        },
    )
    print(f"→ {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
