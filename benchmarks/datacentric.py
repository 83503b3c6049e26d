"""Benchmark: the data-centric audit (pipeline/audit) for speed at 70,000 images and for what it finds.

Parts, each adding its key to ``benchmarks/results/datacentric.json`` (the others are kept):

* ``speed``: ``python -m stages.audit`` on this workspace's cached features (the default run's; ``make run``
  first), wall seconds, the stage's phases and the process's peak memory. Goal: at most 60 s on 2 cores.
* ``flips``: the photo sets' split and Lite0 features, 5% of the train labels flipped by a seeded draw;
  precision and recall of the train split's label-issue list against them, and the 24 least likely labels
  of the unmodified sets drawn to ``results/datacentric_<set>_top24.png`` for a person to judge.
* ``fashion``: what the default run's audit flags; then every flagged train image excluded through the review
  file, ``dvc repro``, the test accuracy then (the review file is put back and ``dvc repro`` restores the
  default outputs from DVC's run cache; ``--skip-rerun`` leaves this out). Results: docs/benchmarks.md.

    python -m benchmarks.datacentric [--parts speed flips fashion] [--skip-rerun]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    PHOTO_SETS,
    RESULTS,
    SEED,
    WORK,
    describe_machine,
    sampling_noise,
    split_dataset,
    write_features,
    write_result,
)
from benchmarks.workspace import run_measured

CACHE = WORK / "datacentric"  # the photo sets' features, kept between runs
FLIP_SHARE = 0.05


def speed() -> dict[str, Any]:
    """The audit stage on this workspace's features, timed, with the child process's own peak memory."""
    CACHE.mkdir(parents=True, exist_ok=True)
    peak_mib, seconds = run_measured(Path.cwd(), "stages.audit", log=CACHE / "audit.log")
    audit = json.loads(Path("metrics/audit.json").read_text(encoding="utf-8"))
    meta = json.loads(Path("data/features/meta.json").read_text(encoding="utf-8"))
    return {
        "images": sum(meta["counts"].values()),
        "feature_width": meta["feature_width"],
        "wall_seconds": round(seconds, 1),
        "stage_seconds": audit["seconds"],
        "phases_seconds": audit["seconds_by_phase"],
        "peak_rss_mib": round(peak_mib),
        "machine": describe_machine(),
        "goal_seconds": 60,
        "goal_met": seconds <= 60,
    }


def features_of(name: str) -> dict[str, Any]:
    """The set's split and Lite0 features at the auto size, cached under ``CACHE``."""
    from pipeline.features import extraction

    folder, val, test = PHOTO_SETS[name]
    out = CACHE / name
    splits = split_dataset(folder, val, test)
    if not (out / "test.npz").is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_features(splits, out)
    return {split: extraction.read_feature_set(out / f"{split}.npz") for split in splits}


def flips(name: str) -> dict[str, Any]:
    """Precision and recall on 5% flipped train labels; the issues of the unmodified set."""
    from pipeline.audit import labels, neighbours, outliers, probabilities

    sets = features_of(name)
    train = sets["train"]
    classes = len(train.classes)
    rng = np.random.default_rng(SEED)
    flipped = rng.choice(len(train.labels), size=round(FLIP_SHARE * len(train.labels)), replace=False)
    given = train.labels.copy()
    given[flipped] = (given[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    probs = probabilities.out_of_fold_probabilities(train.features, given, classes, 5, SEED)
    found = labels.label_issues(np.arange(len(given)).astype(str), given, probs, train.classes, "train")
    named = set(found["path"].astype(int))
    truth = set(flipped.tolist())
    clean = probabilities.out_of_fold_probabilities(train.features, train.labels, classes, 5, SEED)
    issues = labels.label_issues(train.paths, train.labels, clean, train.classes, "train")
    draw_top(issues.head(24), RESULTS / f"datacentric_{name}_top24.png")
    already = {i for i, path in enumerate(train.paths) if path in set(issues["path"])}
    new = named - already
    unit = neighbours.unit_rows(train.features)
    nearest = neighbours.nearest(unit, unit, 1, np.arange(len(unit))).distances[:, 0]
    graph = neighbours.build_graph({split: s.features for split, s in sets.items()}, 10)
    far, limit = outliers.outliers(graph, sets, 10)
    return {
        "train_images": len(given),
        "out_of_fold_accuracy": round(float((probs.argmax(axis=1) == given).mean()), 4),
        "flipped": len(truth),
        "listed": len(named),
        "precision": round(len(named & truth) / max(1, len(named)), 4),
        "recall": round(len(named & truth) / len(truth), 4),
        "precision_beyond_unmodified": round(len(new & truth) / max(1, len(new)), 4),
        "unmodified_train_issues": len(issues),
        "outliers": len(far),
        "outlier_limit": round(limit, 4),
        "top_outliers": far.head(5)[["path", "split", "label", "score"]].to_dict("records"),
        "unmodified_top24": issues.head(24)[["path", "label", "suggested", "score"]].to_dict("records"),
        "nearest_neighbour_distance_quantiles": {
            str(q): round(float(np.quantile(nearest, q)), 4) for q in (0.001, 0.01, 0.1, 0.5)
        },
    }


def draw_top(issues: Any, path: Path) -> None:
    """The listed images with given → suggested, for a person to judge."""
    from pipeline.core import files
    from pipeline.data import images
    from pipeline.evaluation import gallery

    pictures = [images.load_thumbnail(Path(p), 160) for p in issues["path"]]
    captions = [f"{i + 1}. given {r.label}\n→ {r.suggested} ({r.score:.2f})" for i, r in enumerate(issues.itertuples())]
    files.save_figure(gallery.image_grid(pictures, captions, path.stem, 6), path)


def fashion(rerun: bool) -> dict[str, Any]:
    """Flagged test images on the default run and, with ``rerun``, the accuracy without the flagged train images."""
    audit = json.loads(Path("metrics/audit.json").read_text(encoding="utf-8"))
    before = json.loads(Path("metrics/evaluate.json").read_text(encoding="utf-8"))["finetuned"]
    result: dict[str, Any] = {
        "test_images": audit["out_of_sample_images_test"],
        "flagged_test_label_issues": audit["label_issues_test"],
        "flagged_test_outliers": audit["outliers_test"],
        "train_test_near_duplicates": audit["near_duplicates_train_test"],
        "flagged_train_label_issues": audit["label_issues_train"],
        "test_accuracy": before["accuracy"],
    }
    if not rerun:
        return result
    import pandas as pd

    from pipeline.evaluation import scoring

    review = Path("data/review.yaml")
    original = review.read_text(encoding="utf-8")
    right_before = pd.read_csv("reports/predictions.csv", dtype={"path": str}).set_index("path")["correct"]
    issues = pd.read_csv("reports/label_issues.csv", dtype=str)
    train = issues[issues["split"] == "train"]["path"]
    try:
        review.write_text(original + "".join(f"- path: {p}\n  exclude: true\n" for p in train), encoding="utf-8")
        start = time.perf_counter()
        subprocess.run(["dvc", "repro"], check=True)
        after = json.loads(Path("metrics/evaluate.json").read_text(encoding="utf-8"))["finetuned"]
        right_after = pd.read_csv("reports/predictions.csv", dtype={"path": str}).set_index("path")["correct"]
        right_after = right_after.reindex(right_before.index)  # the same test images, paired
        only_after = int((right_after & ~right_before).sum())
        only_before = int((right_before & ~right_after).sum())
        result["rerun"] = {
            "excluded_train_images": len(train),
            "test_accuracy": after["accuracy"],
            "test_images": after["n"],
            "difference": round(after["accuracy"] - before["accuracy"], 4),
            "only_right_after": only_after,
            "only_right_before": only_before,
            "mcnemar_p": scoring.mcnemar_exact_p(only_after, only_before),
            "sampling_noise_95": round(sampling_noise(before["accuracy"], after["n"]), 4),
            "minutes": round((time.perf_counter() - start) / 60, 1),
            "note": "same test split (only train images excluded), paired image by image; one run each on one "
            "CPU model, so the difference is the excluded images' effect together with the changed order of "
            "training (no repeated runs to separate the two)",
        }
    finally:
        review.write_text(original, encoding="utf-8")
        subprocess.run(["dvc", "repro"], check=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts", nargs="+", default=["speed", "flips", "fashion"], choices=["speed", "flips", "fashion"]
    )
    parser.add_argument(
        "--skip-rerun", action="store_true", help="fashion: no re-run of the pipeline without the flagged train images"
    )
    args = parser.parse_args()
    out = RESULTS / "datacentric.json"
    results = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    if {"flips", "fashion"} & set(args.parts):
        results["machine"] = describe_machine()
    if "speed" in args.parts:
        results["speed"] = speed()
    if "flips" in args.parts:
        results["flips"] = {name: flips(name) for name in PHOTO_SETS}
    if "fashion" in args.parts:
        results["fashion"] = fashion(not args.skip_rerun)
    write_result("datacentric", results)
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
