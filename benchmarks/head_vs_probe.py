"""Benchmark: the pipeline's tuned head against a linear probe on the same cached features, on real photos.

For each photo set in ``shared/datasets``: the pipeline's split and EfficientNet-Lite0 features at the size
``backbone.image_size: auto`` picks for those photos (``common.split_dataset``, ``common.write_features``), then

- ``head``: train_head's search exactly as params.yaml ships it (``search.make_search`` / ``run_search``: the
  known-good first trials, the search sample, the trials on val), the chosen head trained again on all train
  features, as the stage does (without MLflow);
- ``logistic_regression``: the accuracy benchmark's probe (``benchmarks/baselines/logistic_regression.py``),

scored on the same test images and paired with McNemar's exact test. The issue's goal: the head is never more
than 0.005 below the probe. Writes ``benchmarks/results/head_vs_probe.json``::

    python -m benchmarks.head_vs_probe [--datasets flowers hymenoptera]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PHOTO_SETS,
    PROBE_BACKBONE,
    REPO,
    SEED,
    describe_machine,
    set_threads,
    split_dataset,
    write_features,
    write_result,
)


def tuned_head(folder: Path) -> tuple[Any, dict[str, Any]]:
    """train_head's search and final fit on the features in ``folder``: test predictions and the chosen settings."""
    from pipeline.features import extraction
    from pipeline.training import head

    model, settings = fit_tuned_head(folder)
    test = extraction.read_feature_set(folder / "test.npz")
    return model.predict(head.as_inputs(test.features), verbose=0).argmax(axis=1), settings.as_dict()


def fit_tuned_head(folder: Path) -> tuple[Any, Any]:
    """train_head's search and final fit on the train/val features in ``folder``: the head and its settings."""
    import keras

    from pipeline.core import config
    from pipeline.features import extraction
    from pipeline.training import fitting, head
    from pipeline.training.tuning import search

    params = config.load(REPO / "params.yaml")
    params = dataclasses.replace(params, root=folder, paths=dataclasses.replace(params.paths, tuner="tuner"))
    train, val = (extraction.read_feature_set(folder / f"{name}.npz") for name in ("train", "val"))
    tuner = search.make_search(train, params, None)
    search.run_search(tuner, train, val, params)
    settings = search.best_settings(tuner)
    keras.backend.clear_session()
    fitting.seed_everything(params.seed)
    model = head.build_head(train.features.shape[1], len(train.classes), settings, head.feature_scale(train.features))
    head.fit_head(model, train, val, settings, params.train_head, params.tune.objective)
    return model, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(PHOTO_SETS), choices=list(PHOTO_SETS))
    args = parser.parse_args()
    set_threads()
    import numpy as np

    from benchmarks.baselines import logistic_regression  # imports TensorFlow: after the thread count is set
    from pipeline.evaluation import scoring

    results: dict[str, Any] = {"machine": describe_machine(), "backbone": PROBE_BACKBONE, "datasets": {}}
    for name in args.datasets:
        splits = split_dataset(*PHOTO_SETS[name])
        with tempfile.TemporaryDirectory() as folder:
            size = write_features(splits, Path(folder))
            probe = logistic_regression.train_and_score(Path(folder), SEED)
            predicted, settings = tuned_head(Path(folder))
        labels = splits["test"].labels
        head_accuracy = float(np.mean(predicted == labels))
        paired = scoring.compare_paired(labels, probe["predicted"], predicted)
        results["datasets"][name] = {
            "image_size": size,
            "test_images": len(labels),
            "head": head_accuracy,
            "logistic_regression": probe["accuracy"],
            "head_vs_probe": paired,
            "chosen_head": settings,
        }
        print(
            f"{name} ({size} px): head {head_accuracy:.4f}, logistic regression {probe['accuracy']:.4f}, "
            f"paired p {paired['p_value']:.2g}",
            flush=True,
        )
    print(f"→ {write_result('head_vs_probe', results)}")


if __name__ == "__main__":
    main()
