"""Benchmark: which offline backbone to default to, by test accuracy against extract time on real photos.

For each photo set in ``shared/datasets`` and each EfficientNet-Lite (0, 1, 2) at its native size (224, 240,
260 px: what ``backbone.image_size: auto`` gives hymenoptera's photos; flowers' 128 px photos would get 160),
the pipeline's own split (``common.split_dataset``: flowers 80/10/10; hymenoptera's ``val/`` as the test set,
val carved as 20 % of ``train/``), the pipeline's extractor and input pipeline (center crop), then one probe
per backbone: the logistic regression of ``benchmarks/baselines/`` on the cached features. All three
backbones see the same images in the same split, so their test predictions pair image by image (McNemar's
exact test against Lite0). Extract speed is images per second over all splits, on this machine.

Writes ``benchmarks/results/backbones.json``::

    python -m benchmarks.backbones [--datasets flowers hymenoptera] [--backbones efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PHOTO_SETS, REPO, SEED, describe_machine, set_threads, split_dataset, write_result

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def extract(name: str, splits: dict[str, Any], out: Path) -> tuple[int, float]:
    """Features of every split with ``name`` at its native size into ``out``; returns the size and images/s."""
    from pipeline.features import backbones, extraction, inputs
    from pipeline.features.extraction import FeatureSet

    backbone = backbones.get(name)
    size = backbone.default_size
    model, _ = backbones.build_extractor(backbone, size, "imagenet", REPO, REPO / ".cache" / "weights")
    forward = extraction.compile_forward(model)
    seconds, count = 0.0, 0
    for split_name, rows in splits.items():
        batches = inputs.image_dataset(rows.paths, size, "center", 32)
        values, spent = extraction.compute_features(
            forward, batches, len(rows.paths), "float32", f"{name} {split_name}"
        )
        extraction.write_feature_set(
            out / f"{split_name}.npz", FeatureSet(values, rows.labels, rows.rel_paths, rows.sha256, rows.classes)
        )
        seconds, count = seconds + spent, count + len(rows.paths)
    return size, count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(PHOTO_SETS), choices=list(PHOTO_SETS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    args = parser.parse_args()
    set_threads()
    from benchmarks.baselines import logistic_regression  # imports TensorFlow: after the thread count is set
    from pipeline.evaluation import scoring

    results: dict[str, Any] = {"machine": describe_machine(), "seed": SEED, "datasets": {}}
    for dataset_name in args.datasets:
        root, val, test = PHOTO_SETS[dataset_name]
        splits = split_dataset(root, val, test)
        per_backbone: dict[str, Any] = {}
        predictions = {}
        for name in args.backbones:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                size, rate = extract(name, splits, Path(folder))
                scores = logistic_regression.train_and_score(Path(folder), SEED)
            predictions[name] = scores.pop("predicted")
            probe = {f"probe_{k}": v for k, v in scores.items() if k != "accuracy"}  # the regression's own numbers
            per_backbone[name] = {
                "image_size": size,
                "extract_images_per_s": round(rate, 1),
                "test_accuracy": scores["accuracy"],
                **probe,
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(
                f"{dataset_name} {name} {size} px: test {scores['accuracy']:.4f}, extract {rate:.1f} images/s",
                flush=True,
            )
        labels = splits["test"].labels
        first = args.backbones[0]
        for name in args.backbones[1:]:
            per_backbone[name][f"vs_{first}"] = scoring.compare_paired(labels, predictions[first], predictions[name])
        results["datasets"][dataset_name] = {
            "images": {k: len(v.paths) for k, v in splits.items()},
            "backbones": per_backbone,
        }
    print(f"→ {write_result('backbones', results)}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
