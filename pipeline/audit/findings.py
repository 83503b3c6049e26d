"""The whole audit on one run's cached features: every list, and the numbers that summarise them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.audit import duplicates, labels, neighbours, outliers, probabilities, suggestions
from pipeline.core.config import AuditParams
from pipeline.features.extraction import FeatureSet

DUPLICATE_NEIGHBOURS = 10  # candidate pairs kept per image (a group of more copies shows as several pairs)


@dataclass(frozen=True)
class Findings:
    """What the audit found."""

    probabilities: dict[str, np.ndarray]  # out-of-sample, by split
    label_issues: pd.DataFrame  # every split, each ranked by self-confidence
    overlapping: pd.DataFrame  # class pairs, most overlap first (train split)
    duplicates: pd.DataFrame
    duplicate_threshold: float
    threshold_source: str
    outliers: pd.DataFrame
    outlier_limit: float
    outlier_neighbours: int
    suggestions: list[tuple[str, list]]
    seconds: dict[str, float]


def audit(
    sets: Mapping[str, FeatureSet],
    held_out: Mapping[str, np.ndarray],
    params: AuditParams,
    backbone: str,
    seed: int,
) -> Findings:
    """Run every check.

    Args:
        sets: ``train``, ``val`` and ``test`` features with their rows.
        held_out: the head's probabilities for each split but train (a model that never trained on them).
        params: the ``audit`` section.
        backbone: the features' backbone (its calibrated near-duplicate threshold).
        seed: the folds' and the projection's seed.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    classes = sets["train"].classes
    train = sets["train"]
    probs = {
        "train": probabilities.out_of_fold_probabilities(
            train.features, train.labels, len(classes), params.folds, seed
        ),
        **{name: np.asarray(values) for name, values in held_out.items()},
    }
    seconds["probabilities"] = time.perf_counter() - start
    start = time.perf_counter()
    issues = pd.concat(
        [labels.label_issues(s.paths, s.labels, probs[name], classes, name) for name, s in sets.items()],
        ignore_index=True,
    )
    overlapping = labels.overlapping_classes(train.labels, probs["train"], classes)
    seconds["label_issues"] = time.perf_counter() - start
    start = time.perf_counter()
    graph = neighbours.build_graph(
        {name: s.features for name, s in sets.items()}, max(params.neighbours, DUPLICATE_NEIGHBOURS), seed
    )
    seconds["neighbours"] = time.perf_counter() - start
    typical = float(np.median(graph.to_train["train"].distances[:, 0])) if len(train.labels) > 1 else 1.0
    threshold, source = duplicates.choose_threshold(params.duplicate_threshold, backbone, typical)
    pairs = duplicates.near_duplicates(graph, sets, threshold)
    far, limit = outliers.outliers(graph, sets, params.neighbours)
    return Findings(
        probabilities=probs,
        label_issues=issues,
        overlapping=overlapping,
        duplicates=pairs,
        duplicate_threshold=threshold,
        threshold_source=source,
        outliers=far,
        outlier_limit=limit,
        outlier_neighbours=params.neighbours,
        suggestions=suggestions.suggest(issues, pairs, far),
        seconds=seconds,
    )


def summarize(findings: Findings, sets: Mapping[str, FeatureSet]) -> tuple[dict[str, float], dict[str, Any]]:
    """MLflow metrics (flat names) and the nested counts per split and class for the metrics JSON."""
    issues, pairs = findings.label_issues, findings.duplicates
    metrics: dict[str, float] = {
        "label_issues": len(issues),
        "near_duplicates": len(pairs),
        "label_conflicts": int(pairs["label_conflict"].sum()) if len(pairs) else 0,
        "outliers": len(findings.outliers),
        "duplicate_threshold": findings.duplicate_threshold,
        "outlier_limit": round(findings.outlier_limit, 6),
        "outlier_neighbours": findings.outlier_neighbours,
        "suggestions": sum(len(entries) for _, entries in findings.suggestions),
    }
    for name, subset in sets.items():
        n = len(subset.labels)
        metrics[f"out_of_sample_images_{name}"] = n
        metrics[f"label_issues_{name}"] = int((issues["split"] == name).sum())
        metrics[f"label_issue_rate_{name}"] = round(metrics[f"label_issues_{name}"] / n, 6) if n else 0.0
        metrics[f"outliers_{name}"] = int((findings.outliers["split"] == name).sum())
        predicted = findings.probabilities[name].argmax(axis=1)
        metrics[f"out_of_sample_accuracy_{name}"] = round(float((predicted == subset.labels).mean()), 6) if n else 0.0
    for kind in duplicates.KINDS:
        metrics[f"near_duplicates_{kind.replace(' ', '_').replace('-', '_')}"] = int((pairs["kind"] == kind).sum())
    nested = {
        "label_issues_by_class": {
            name: {
                str(k): int(v) for k, v in issues[issues["split"] == name]["label"].value_counts().sort_index().items()
            }
            for name in sets
        },
        "duplicate_threshold_source": findings.threshold_source,
        "seconds_by_phase": {k: round(v, 3) for k, v in findings.seconds.items()},
    }
    return metrics, nested


def probability_table(found: Findings, sets: Mapping[str, FeatureSet]) -> pd.DataFrame:
    """Every image's out-of-sample probability of its given label and its most probable class (one row each)."""
    frames = []
    for name, subset in sets.items():
        probs = found.probabilities[name]
        rows = range(len(subset.labels))
        frames.append(
            pd.DataFrame(
                {
                    "path": subset.paths.astype(str),
                    "split": name,
                    "label": [subset.classes[i] for i in subset.labels],
                    "given_probability": [round(float(probs[r, subset.labels[r]]), 6) for r in rows],
                    "predicted": [subset.classes[i] for i in probs.argmax(axis=1)],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def tables(found: Findings) -> dict[str, pd.DataFrame]:
    """The audit's lists by the names MLflow shows them under."""
    return {
        "label_issues": found.label_issues,
        "near_duplicates": found.duplicates,
        "outliers": found.outliers,
        "overlapping_classes": found.overlapping,
    }


def describe(found: Findings, metrics: Mapping[str, float]) -> str:
    """The console's account of the audit, from ``summarize``'s numbers (and the seconds it took)."""
    return (
        f"{metrics['label_issues']} likely label errors "
        f"(train {metrics['label_issues_train']}, val {metrics['label_issues_val']}, "
        f"test {metrics['label_issues_test']}), {metrics['near_duplicates']} near-duplicate pairs "
        f"({metrics['near_duplicates_train_test']} train-test, {metrics['label_conflicts']} label conflicts; "
        f"threshold {found.duplicate_threshold:g}: {found.threshold_source}), {metrics['outliers']} outliers "
        f"in {metrics['seconds']:.1f} s"
    )
