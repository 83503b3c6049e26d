"""The analyze stage's work: error-analysis tables of the test predictions and the self-contained HTML report.

``analyze`` reads the evaluate and audit stages' outputs from the params' paths and returns the report, the
tables behind it and its figures; the stage only saves and logs them. What the report shows is decided in
``analysis_report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.core import files
from pipeline.core.config import AnalyzeParams, Params
from pipeline.evaluation import analysis, analysis_report, report, scoring


@dataclass(frozen=True)
class Analysis:
    """What the analyze stage writes and logs."""

    html: str  # the report: images embedded, no external reference
    tables: dict[str, pd.DataFrame]  # per_class_accuracy, confused_pairs, worst_errors (CSV for `dvc plots`)
    pngs: dict[str, bytes]  # the report's figures by name
    metrics: dict[str, float]  # errors, worst_class_accuracy, missing_glyphs
    worst_class: str
    sections: int


def analyze(params: Params) -> Analysis:
    """Build the error-analysis tables and the report from the predictions and the earlier stages' numbers.

    Raises:
        RuntimeError: the report would refer outside itself (a bug: it must open with no network).
    """
    predictions = files.read_csv(params.path("predictions"), text_columns=("path", "label", "predicted"))
    scores = files.read_json(params.path("metrics") / "evaluate.json")
    fine_tuning = scoring.fine_tuning_outcome(files.read_json(params.path("metrics") / "finetune.json"))
    classes = analysis.class_names(predictions)
    tables = error_tables(predictions, classes, params.analyze)
    rendered = analysis_report.Rendered()
    sections = analysis_report.build_sections(params, predictions, tables, scores, fine_tuning, rendered)
    per_class = tables["per_class_accuracy"]
    errors = int((~predictions["correct"]).sum())
    html = report.build_report(
        "Error analysis",
        f"{len(predictions)} test images · {len(classes)} classes · {params.backbone.name}",
        {
            "test accuracy": scores["finetuned"]["accuracy"],
            "head alone": scores["head_only"]["accuracy"],
            "errors": errors,
            "classes": len(classes),
        },
        sections,
        analysis_report.glyph_notes(rendered.missing_glyphs, classes),
    )
    outside = report.find_external_references(html)
    if outside:
        raise RuntimeError(f"the report refers outside itself: {outside}")
    metrics = {
        "errors": errors,
        "worst_class_accuracy": float(per_class["accuracy"].iloc[0]),
        "missing_glyphs": len(rendered.missing_glyphs),
    }
    return Analysis(html, tables, rendered.pngs, metrics, str(per_class["class"].iloc[0]), len(sections))


def error_tables(predictions: pd.DataFrame, classes: list[str], settings: AnalyzeParams) -> dict[str, pd.DataFrame]:
    """Per-class accuracy (worst first), the most-confused pairs and the worst errors."""
    return {
        "per_class_accuracy": analysis.per_class_accuracy(predictions, classes),
        "confused_pairs": analysis.confused_pairs(predictions, settings.confused_pairs),
        "worst_errors": analysis.worst_errors(predictions, settings.worst_errors),
    }
