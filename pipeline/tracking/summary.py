"""What a pipeline run records about one result: every setting, the values ``auto`` resolved to, the headline numbers.

Pure functions over params.yaml's values and the stages' ``metrics/<stage>.json``; ``pipeline_run`` logs what
they return. The names are the ones ``dvc exp show`` uses, so the MLflow columns and DVC's match:

- a setting is its dotted path in params.yaml (``finetune.learning_rate``), lists kept whole (``[0, 1, 2]``);
- a setting that a stage resolves (``auto``, or null for "the backbone's own") has a second param with the value
  the stage used: ``<setting>.resolved`` (``finetune.learning_rate.resolved``), so a chart can plot against it;
- evaluate's numbers keep the names of ``metrics/evaluate.json`` (``finetuned.accuracy``), every other stage's
  are prefixed with the stage (``train_head.best_val_accuracy``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

RESOLVED_SUFFIX = ".resolved"
# setting → (stage, key in its metrics JSON) of the value the stage used
RESOLVED: dict[str, tuple[str, str]] = {
    "backbone.image_size": ("extract", "image_size"),
    "compute.runtime": ("extract", "runtime"),
    "finetune.learning_rate": ("finetune", "learning_rate_peak"),
    "finetune.epochs": ("finetune", "epochs_planned"),
    "audit.duplicate_threshold": ("audit", "duplicate_threshold"),
}
_MODEL_SCORES = ("accuracy", "f1_macro", "log_loss", "ece", "top_*_accuracy")
# stage → patterns of the flattened keys of its metrics JSON that are its headline numbers
HEADLINES: dict[str, tuple[str, ...]] = {
    "split": ("images_*", "classes", "excluded_files", "review_excluded", "review_relabelled"),
    "train_head": ("best_val_accuracy", "best_val_loss", "trials_completed"),
    "audit": (
        "label_issues",
        "label_issues_train",
        "label_issues_val",
        "label_issues_test",
        "label_conflicts",
        "near_duplicates",
        "near_duplicates_train_*",
        "near_duplicates_val_test",
        "outliers",
    ),
    "finetune": ("best_val_accuracy", "best_val_loss", "val_accuracy_before", "epochs_trained"),
    "evaluate": (
        *(f"finetuned.{score}" for score in _MODEL_SCORES),
        *(f"head_only.{score}" for score in _MODEL_SCORES),
        "finetuned_vs_head.*",
    ),
    "export": ("*.size_mb", "*.agreement"),
}
UNPREFIXED = ("evaluate",)  # names as in metrics/evaluate.json, the evaluate run and `dvc exp show`


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def param_text(value: Any) -> str:
    """A setting as an MLflow param value, spelled as every stage run spells it: ``null`` for None, else ``str``."""
    return "null" if value is None else str(value)


def setting_params(settings: Mapping[str, Any], outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Every value of params.yaml by its dotted name, plus ``<setting>.resolved`` for each resolved setting.

    Args:
        settings: params.yaml as read (nested mappings).
        outputs: ``{stage: its metrics JSON}``; a stage that is missing, or that did not record the value (a
            disabled fine-tuning has no learning rate), adds no resolved param.
    """
    params = {name: param_text(value) for name, value in flatten(settings).items()}
    for setting, (stage, key) in RESOLVED.items():
        value = outputs.get(stage, {}).get(key)
        if value is not None:
            params[setting + RESOLVED_SUFFIX] = param_text(value)
    return params


def headline_metrics(outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each stage's headline numbers (``HEADLINES``) from its metrics JSON, by their pipeline-run names."""
    metrics: dict[str, float] = {}
    for stage, patterns in HEADLINES.items():
        prefix = "" if stage in UNPREFIXED else f"{stage}."
        for key, value in flatten(outputs.get(stage, {})).items():
            if _is_number(value) and any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
                metrics[prefix + key] = float(value)
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
