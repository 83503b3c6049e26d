"""Benchmark: what cached features save a hyperparameter search, per trial.

One trial is the same head (params.yaml's ``train_head`` defaults), epochs, batch size, seed and data, trained
two ways in one run: ``cached`` on features the frozen backbone computed once (the train_head stage's way), and
``end_to_end`` from the image files through the frozen backbone every epoch. Data: every flower photo of
``shared/datasets/flowers``, every fifth file of a class held out for val, at 96 px with EfficientNet-Lite0.
Trials take turns, three of each; the fastest of each counts, and the one-off extraction is timed too. Last,
a 12-trial random search on the cached features records the resident memory after every trial: it must stay
flat. Results: docs/benchmarks.md, "Head search speed".

Writes ``benchmarks/results/tuning.json``::

    python -m benchmarks.tuning [--epochs 5] [--size 96]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from benchmarks.common import FLOWERS, THREADS, describe_machine, set_threads, write_result
from pipeline.core import config
from pipeline.features import backbones, extraction, inputs
from pipeline.training import fitting, head
from pipeline.training.tuning import search, space, trial_log

ROUNDS = 3


def flower_files(folder: Path) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Every JPEG with its class index; every fifth file of a class (sorted by name) goes to val."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    train: list[Path] = []
    val: list[Path] = []
    train_labels: list[int] = []
    val_labels: list[int] = []
    for index, name in enumerate(classes):
        for position, path in enumerate(sorted((folder / name).glob("*.jpg"))):
            (val if position % 5 == 4 else train).append(path)
            (val_labels if position % 5 == 4 else train_labels).append(index)
    return train, np.array(train_labels, np.int32), val, np.array(val_labels, np.int32)


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def memory_by_trial(
    cached: dict[str, np.ndarray],
    train_labels: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    width: int,
    params: config.Params,
    trials: int = 12,
) -> list[float]:
    """Resident memory after each trial of a real random search on the cached features: flat if
    every trial's graph and weights are released (Keras Tuner clears the session between trials)."""
    train = extraction.FeatureSet(
        cached["train"], train_labels, np.array([]), np.array([]), tuple(map(str, range(num_classes)))
    )
    val = extraction.FeatureSet(cached["val"], val_labels, np.array([]), np.array([]), train.classes)
    log = trial_log.TrialLog(None, "random")
    hypermodel = space.HeadHyperModel(
        params.tune.space, width, num_classes, params.train_head, params.tune.objective, params.seed, log
    )
    tune = dataclasses.replace(params.tune, algorithm="random", max_trials=trials)
    with tempfile.TemporaryDirectory() as folder:
        tuner = search.make_tuner(hypermodel, tune, params.train_head.epochs, Path(folder) / "tuner", params.seed, log)
        tuner.search(train, val, epochs=params.train_head.epochs, verbose=0)
    return [log.rss_mb[trial_id] for trial_id in sorted(log.rss_mb)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    set_threads(THREADS)
    params = config.load()
    settings = head.HeadSettings.from_params(params.train_head)
    entry = backbones.get("efficientnet_lite0")
    extractor, _ = backbones.build_extractor(entry, args.size, "imagenet", params.root, params.path("weights"))
    train, train_labels, val, val_labels = flower_files(FLOWERS)
    num_classes = int(train_labels.max()) + 1

    forward = extraction.compile_forward(extractor)
    cached: dict[str, np.ndarray] = {}

    def extract() -> None:
        for name, paths in (("train", train), ("val", val)):
            batches = inputs.image_dataset(paths, args.size, "center", 64)
            cached[name], _ = extraction.compute_features(forward, batches, len(paths), "float32", f"extract {name}")

    extract_s = timed(extract)

    def cached_trial() -> None:
        keras.backend.clear_session()
        fitting.seed_everything(params.seed)
        model = head.build_head(entry.feature_width, num_classes, settings)
        model.fit(
            cached["train"],
            train_labels,
            validation_data=(cached["val"], val_labels),
            batch_size=settings.batch_size,
            epochs=args.epochs,
            verbose=0,
        )

    def end_to_end_trial() -> None:
        keras.backend.clear_session()
        fitting.seed_everything(params.seed)
        head_model = head.build_head(entry.feature_width, num_classes, settings)
        images = keras.Input((args.size, args.size, 3))
        model = keras.Model(images, head_model(extractor(images, training=False)))
        fitting.compile_classifier(model, settings.optimizer, settings.learning_rate)
        model.fit(
            inputs.image_dataset(
                train, args.size, "center", settings.batch_size, labels=train_labels, shuffle_seed=params.seed
            ),
            validation_data=inputs.image_dataset(val, args.size, "center", settings.batch_size, labels=val_labels),
            epochs=args.epochs,
            shuffle=False,
            verbose=0,
        )  # the dataset shuffles its files

    seconds: dict[str, list[float]] = {"cached": [], "end_to_end": []}
    for _ in range(ROUNDS):
        seconds["cached"].append(timed(cached_trial))
        seconds["end_to_end"].append(timed(end_to_end_trial))
        print({k: [round(s, 2) for s in v] for k, v in seconds.items()}, flush=True)
    best = {name: min(values) for name, values in seconds.items()}
    memory = memory_by_trial(cached, train_labels, val_labels, num_classes, entry.feature_width, params)
    result = {
        "benchmark": "tuning",
        "machine": describe_machine(),
        "data": f"shared/datasets/flowers: {len(train)} train + {len(val)} val JPEGs, {num_classes} classes",
        "backbone": f"efficientnet_lite0 (imagenet), {args.size} px",
        "head": settings.as_dict(),
        "epochs": args.epochs,
        "threads": THREADS,
        "extract_s": round(extract_s, 2),
        "s_per_trial_cached": round(best["cached"], 3),
        "s_per_trial_end_to_end": round(best["end_to_end"], 3),
        "speedup_cached_vs_end_to_end": round(best["end_to_end"] / best["cached"], 1),
        "all_trials_s": {name: [round(s, 3) for s in values] for name, values in seconds.items()},
        "search_trials": len(memory),
        "rss_mb_by_trial": [round(m, 1) for m in memory],
        "rss_growth_mb_after_first_trial": round(memory[-1] - memory[0], 1),
    }
    write_result("tuning", result)
    print({k: v for k, v in result.items() if k.startswith(("s_per", "speedup", "extract"))})


if __name__ == "__main__":
    main()
