"""Benchmark: what a pretrained backbone buys in test accuracy, on real photos and on Fashion-MNIST.

Each dataset runs the real pipeline (``dvc repro`` stage by stage up to evaluate, params.yaml's defaults; only
what names the data set differs) in a throw-away copy of the project, then four classifiers are scored on the
same test images and paired by McNemar's exact test: ``scratch_cnn`` (a small CNN from random weights) and
``logistic_regression`` (a softmax layer on the cached features), both from ``benchmarks/baselines/``, against
the pipeline's ``head_only`` (the tuned head, backbone frozen) and ``finetuned`` models. The datasets: the
flowers and hymenoptera photos of ``shared/datasets`` and Fashion-MNIST capped at ``FASHION_MAX_PER_CLASS``
images per class (``DATASETS`` says how each is split). Results and how to read them: docs/benchmarks.md.

Writes ``benchmarks/results/accuracy.json``; ``--quick`` checks the whole benchmark end to end in a few minutes
(a few images per class, tiny training, written to ``benchmarks/work/``; not a measurement)::

    python -m benchmarks.accuracy [--datasets flowers hymenoptera fashion_mnist] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from benchmarks.common import FLOWERS, HYMENOPTERA, REPO, WORK, describe_machine, set_threads, write_result
from benchmarks.workspace import create_workspace, repository_params, run_in, scratch_folder
from pipeline.core import files
from pipeline.evaluation import scoring  # neither imports TensorFlow: none before the thread count is set

if TYPE_CHECKING:
    from pipeline.core.config import Params
    from pipeline.data.split import SplitFiles

QUICK_OUTPUT = WORK / "accuracy_quick.json"
STAGES = ("download", "split", "extract", "train_head", "finetune", "evaluate")
METHODS = ("scratch_cnn", "logistic_regression", "head_only", "finetuned")
# Paired comparisons on the same test images (McNemar's exact test): (baseline, challenger).
PAIRS = (
    ("logistic_regression", "head_only"),
    ("logistic_regression", "finetuned"),
    ("head_only", "finetuned"),
    ("scratch_cnn", "head_only"),
)
FASHION_MAX_PER_CLASS = 2000
QUICK_MAX_PER_CLASS = 30


def copy_hymenoptera(scratch: Path) -> Path:
    """ants/bees with the shipped ``val/`` as ``test/``, so the pipeline carves val from ``train/``."""
    target = scratch / "hymenoptera"
    for ours, theirs in (("train", "train"), ("test", "val")):
        shutil.copytree(HYMENOPTERA / theirs, target / ours)
    return target


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset: where its images come from and how its run differs from params.yaml."""

    description: str
    params: dict[str, dict[str, Any]]  # params.yaml changes, by section
    scratch_size: int  # the scratch CNN's input side in pixels
    scratch_epochs: int  # at most; early stopping on val ends sooner
    scratch_batch: int
    source: Callable[[Path], Path] | None = None  # makes the folder the ``folder`` source reads


DATASETS = {
    "flowers": Dataset(
        "shared/datasets/flowers: 5 classes of photos; split 80/10/10 by the pipeline (seeded, stratified)",
        {"data": {"source": "folder"}, "split": {"use_existing": False}},
        scratch_size=64,
        scratch_epochs=25,
        scratch_batch=64,
        source=lambda _: FLOWERS,
    ),
    "hymenoptera": Dataset(
        "shared/datasets/hymenoptera_data: ants vs. bees; its val/ folder is the test set, val is 20% of train/",
        {"data": {"source": "folder"}, "split": {"use_existing": True, "val": 0.2}},
        scratch_size=64,
        scratch_epochs=40,
        scratch_batch=32,
        source=copy_hymenoptera,
    ),
    "fashion_mnist": Dataset(
        f"Fashion-MNIST (Debian package), at most {FASHION_MAX_PER_CLASS} images per class: test images from the "
        "official test set, val is 10% of train",
        {"data": {"max_per_class": FASHION_MAX_PER_CLASS}},
        scratch_size=28,
        scratch_epochs=20,
        scratch_batch=128,
    ),
}


def workspace_params(dataset: Dataset, folder: Path | None, quick: bool) -> dict[str, Any]:
    """params.yaml for one dataset's run: this repository's, with the dataset's changes.

    ``quick`` caps every class at a few images and makes every training phase tiny: a check that the
    benchmark runs end to end, not a measurement.
    """
    params = repository_params()
    for section, changes in dataset.params.items():
        params[section].update(copy.deepcopy(changes))
    if folder is not None:
        params["data"]["folder"] = str(folder)
    if quick:
        params["data"]["max_per_class"] = QUICK_MAX_PER_CLASS
        params["backbone"]["image_size"] = 64
        params["tune"].update(algorithm="random", max_trials=2)
        params["train_head"]["epochs"] = 3
        params["finetune"].update(epochs=1)
    return params


def run_pipeline(root: Path) -> dict[str, float]:
    """``dvc repro`` each stage up to evaluate, in order; wall seconds per stage (process start included)."""
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        run_in(root, ("dvc", "repro", "--single-item", stage))
        seconds[stage] = round(time.perf_counter() - started, 1)
        print(f"  {stage}: {seconds[stage]} s", flush=True)
    return seconds


def read_metrics(root: Path, stage: str) -> dict[str, Any]:
    """A stage's ``metrics/<stage>.json`` in the workspace."""
    return json.loads((root / "metrics" / f"{stage}.json").read_text(encoding="utf-8"))


def pipeline_predictions(params: Params, test: SplitFiles) -> dict[str, np.ndarray]:
    """The predicted class of each test image, in the test split's order, by the pipeline's two classifiers:
    the fine-tuned model's from evaluate's predictions CSV, the head's from the head on the cached features."""
    from pipeline.features import extraction
    from pipeline.serving import classifier

    frame = pd.read_csv(params.path("predictions"))
    classifier.check_same_rows(test.rel_paths, list(frame["path"]), "the predictions CSV")
    index = {name: position for position, name in enumerate(test.classes)}
    cached = extraction.read_feature_set(params.path("features") / "test.npz")
    classifier.check_same_rows(test.rel_paths, cached.paths, "the cached test features")
    head = classifier.load_head(params.path("head_model"))
    return {
        "finetuned": frame["predicted"].map(index).to_numpy(),
        "head_only": classifier.head_probabilities(head, cached.features).argmax(axis=1),
    }


def compare_pairs(labels: np.ndarray, predicted: dict[str, np.ndarray]) -> dict[str, dict[str, float | int]]:
    """``PAIRS`` on the same test images: ``{"<challenger>_vs_<baseline>": scoring.compare_paired(...)}``."""
    return {
        f"{challenger}_vs_{baseline}": scoring.compare_paired(labels, predicted[baseline], predicted[challenger])
        for baseline, challenger in PAIRS
    }


def run_dataset(dataset: Dataset, scratch: Path, quick: bool) -> dict[str, Any]:
    """The pipeline's two classifiers and the scratch CNN on one dataset, in a workspace under ``scratch``.

    Returns:
        Test accuracy per method, with the images per split, seconds and the params the run used.
    """
    from benchmarks.baselines import logistic_regression, scratch_cnn
    from pipeline.core import config
    from pipeline.data import split
    from pipeline.features import extraction

    root = scratch / "workspace"
    create_workspace(root, workspace_params(dataset, dataset.source(scratch) if dataset.source else None, quick))
    stage_seconds = run_pipeline(root)
    params = config.load(root / "params.yaml")
    evaluated, finetuned = read_metrics(root, "evaluate"), read_metrics(root, "finetune")
    splits = {name: split.read_split_files(params.path("splits"), name, root) for name in ("train", "val", "test")}
    print(f"  scratch CNN at {dataset.scratch_size} px ...", flush=True)
    cnn = scratch_cnn.train_and_score(
        splits["train"],
        splits["val"],
        splits["test"],
        dataset.scratch_size,
        epochs=2 if quick else dataset.scratch_epochs,
        patience=scratch_cnn.PATIENCE,
        batch_size=dataset.scratch_batch,
        seed=params.seed,
    )
    print("  logistic regression on the cached features ...", flush=True)
    logreg = logistic_regression.train_and_score(params.path("features"), params.seed)
    predicted = {
        "scratch_cnn": cnn.pop("predicted"),
        "logistic_regression": logreg.pop("predicted"),
        **pipeline_predictions(params, splits["test"]),
    }
    head_s = stage_seconds["extract"] + stage_seconds["train_head"]
    return {
        "scratch_cnn": round(cnn.pop("accuracy"), 4),
        "logistic_regression": round(logreg.pop("accuracy"), 4),
        "head_only": round(evaluated["head_only"]["accuracy"], 4),
        "finetuned": round(evaluated["finetuned"]["accuracy"], 4),
        "paired": compare_pairs(splits["test"].labels, predicted),
        "data": dataset.description,
        "classes": len(splits["test"].classes),
        "images": {name: len(files_of.paths) for name, files_of in splits.items()},
        "max_per_class": params.data.max_per_class,
        "image_size": extraction.read_image_size(params.path("features"), params.backbone.name),  # what auto chose
        "scratch_image_size": dataset.scratch_size,
        # head_only: extract + train_head; finetuned: those and the finetune stage; scratch_cnn: decoding
        # the three splits, training and testing. Scoring both pipeline models is the evaluate stage.
        "seconds": {
            "scratch_cnn": round(cnn["decode_s"] + cnn["train_s"] + cnn["test_s"], 1),
            "logistic_regression": round(stage_seconds["extract"] + logreg["seconds"], 1),
            "head_only": round(head_s, 1),
            "finetuned": round(head_s + stage_seconds["finetune"], 1),
        },
        "stage_seconds": stage_seconds,
        "head": files.read_yaml(params.path("best_hparams")),
        "finetune": {
            "params": dataclasses.asdict(params.finetune),
            "augment": dataclasses.asdict(params.augment),
            **{
                key: finetuned[key]
                for key in (
                    "val_accuracy_before",
                    "best_val_accuracy",
                    "kept_epoch",
                    "epochs_trained",
                    "trainable_params",
                    "learning_rate_peak",
                )
                if key in finetuned
            },
        },
        "scratch": cnn,
        "logistic_regression_fit": logreg,
    }


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """The results as a markdown table: test accuracy and seconds per method, per dataset."""
    lines = [
        "| dataset | train / val / test images | scratch CNN | logistic regression | head only | fine-tuned "
        "| seconds (scratch / logistic / head / fine-tuned) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        images = " / ".join(f"{result['images'][split]:,}" for split in ("train", "val", "test"))
        accuracies = " | ".join(f"{result[method]:.3f}" for method in METHODS)
        seconds = " / ".join(f"{result['seconds'][method]:.0f}" for method in METHODS)
        lines.append(f"| {name} ({result['image_size']} px) | {images} | {accuracies} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="a few images per class, tiny training: a smoke run")
    parser.add_argument("--keep", type=Path, help="build the workspaces in this new folder and keep them")
    args = parser.parse_args()
    from pipeline.core import config

    threads = config.load(REPO / "params.yaml").compute.threads
    set_threads(threads)  # the scratch CNN's threads: the pipeline's
    started = time.perf_counter()
    load_before = os.getloadavg()
    results = {}
    with scratch_folder(args.keep, "headstart-accuracy-") as base:
        for name in args.datasets:
            print(f"{name}:", flush=True)
            results[name] = run_dataset(DATASETS[name], base / name, args.quick)
            print("  test accuracy: " + ", ".join(f"{m} {results[name][m]:.4f}" for m in METHODS), flush=True)
    output = write_result(
        "accuracy",
        {
            "benchmark": "accuracy",
            "machine": describe_machine(),
            # Other processes on the machine slow every number here down: the load before and after.
            "load_average": {
                "before": [round(v, 2) for v in load_before],
                "after": [round(v, 2) for v in os.getloadavg()],
            },
            "quick": args.quick,
            "backbone": "efficientnet_lite0 (imagenet)",
            "threads": threads,
            **results,
            "total_s": round(time.perf_counter() - started, 1),
        },
        QUICK_OUTPUT if args.quick else None,
    )
    print(summary_table(results))
    print(f"→ {output.relative_to(REPO)} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
