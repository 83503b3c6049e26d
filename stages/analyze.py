"""analyze stage: error analysis of the test predictions, and one self-contained HTML report.

Reads:  paths.predictions, paths.metrics/evaluate.json, paths.metrics/finetune.json (whether fine-tuning
        ran, for the overview's verdict), the audit stage's lists (paths.label_issues, paths.near_duplicates,
        paths.outliers, paths.plots/audit/overlapping_classes.csv, paths.metrics/audit.json), paths.model and
        the images; params ``analyze``, ``audit.shown``, ``evaluate.calibration_bins``, ``backbone.crop``,
        ``compute``
Writes: paths.report (images embedded; opens with no network); paths.plots/analyze/ (per_class_accuracy.csv,
        confused_pairs.csv, worst_errors.csv and the report's figures as PNG); paths.metrics/analyze.json
"""

import functools

import pandas as pd

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.evaluation import analysis, analysis_report, audit_report, report, scoring
from pipeline.serving import classifier
from pipeline.tracking import runs

THUMBNAIL_PX = 200
ACTIVATION_EXAMPLES = 3  # test images whose feature maps are shown


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("analyze", params) as run:
        predictions = files.read_csv(params.path("predictions"), text_columns=("path", "label", "predicted"))
        scores = files.read_json(params.path("metrics") / "evaluate.json")
        fine_tuning = scoring.fine_tuning_outcome(files.read_json(params.path("metrics") / "finetune.json"))
        classes = analysis.class_names(predictions)
        tables = {
            "per_class_accuracy": analysis.per_class_accuracy(predictions, classes),
            "confused_pairs": analysis.confused_pairs(predictions, params.analyze.confused_pairs),
            "worst_errors": analysis.worst_errors(predictions, params.analyze.worst_errors),
        }
        worst, per_class = tables["worst_errors"], tables["per_class_accuracy"]
        errors = int((~predictions["correct"]).sum())
        examples = analysis_report.load_examples(worst, classes, params, THUMBNAIL_PX)
        rendered = analysis_report.Rendered()
        sections = [
            analysis_report.overview_section(
                predictions, scores, rendered, params.evaluate.calibration_bins, fine_tuning
            ),
            analysis_report.class_section(per_class, tables["confused_pairs"], rendered),
            analysis_report.confidence_section(predictions, rendered),
            *analysis_report.error_sections(worst, examples, rendered),
            *data_sections(params, tables["confused_pairs"], rendered),
            activation_section(params, predictions, rendered),
        ]
        notes = analysis_report.glyph_notes(rendered.missing_glyphs, classes)
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
            notes,
        )
        outside = report.find_external_references(html)
        if outside:
            raise RuntimeError(f"the report refers outside itself: {outside}")
        files.write_text(params.path("report"), html)
        write_tables_and_figures(tables, rendered, params, run)
        run.log_artifact(params.path("report"))
        run.log_metrics(
            {
                "errors": errors,
                "worst_class_accuracy": float(per_class["accuracy"].iloc[0]),
                "missing_glyphs": len(rendered.missing_glyphs),
            }
        )
        run.record("worst_class", str(per_class["class"].iloc[0]))
        print(f"analyze: report with {len(sections)} sections → {params.paths.report}")


def data_sections(
    params: config.Params, confused: pd.DataFrame, rendered: analysis_report.Rendered
) -> list[report.Section]:
    """The audit stage's findings: label errors, near-duplicates, outliers and overlapping classes."""
    audit = files.read_json(params.path("metrics") / "audit.json")
    text = (
        "path",
        "split",
        "label",
        "suggested",
        "kind",
        "path_a",
        "label_a",
        "path_b",
        "label_b",
        "class_a",
        "class_b",
    )
    read = functools.partial(files.read_csv, text_columns=text)
    issues = read(params.path("label_issues"))
    sizes = {name: int(audit[f"out_of_sample_images_{name}"]) for name in ("train", "val", "test")}
    draw, root, shown = rendered.add, params.root, params.audit.shown
    return [
        audit_report.label_issue_section(issues, sizes, draw, root, shown),
        audit_report.duplicate_section(
            read(params.path("near_duplicates")),
            audit["duplicate_threshold"],
            audit["duplicate_threshold_source"],
            draw,
            root,
            shown,
        ),
        audit_report.outlier_section(
            read(params.path("outliers")), audit["outlier_limit"], audit["outlier_neighbours"], draw, root, shown
        ),
        audit_report.overlap_section(read(params.path("plots") / "audit" / "overlapping_classes.csv"), confused),
    ]


def activation_section(
    params: config.Params, predictions: pd.DataFrame, rendered: analysis_report.Rendered
) -> report.Section:
    """Feature maps at several depths for the most confident right answer of a few classes, and the first filters."""
    model = classifier.load_model(params.path("model"))
    shown = analysis_report.activation_examples(predictions, ACTIVATION_EXAMPLES)
    views = analysis_report.model_views(model, [params.root / p for p in shown["path"]], params.backbone.crop)
    return analysis_report.activation_section(model, views, analysis_report.example_captions(shown), rendered)


def write_tables_and_figures(tables, rendered, params, run) -> None:  # noqa: ANN001
    """The tables behind the report as CSV for `dvc plots`, and its figures as PNG, locally and in MLflow."""
    folder = params.path("plots") / "analyze"
    for name, table in tables.items():
        files.write_csv(folder / f"{name}.csv", table)
        run.log_table(table, name)
    for name, png in rendered.pngs.items():
        files.write_bytes(folder / f"{name}.png", png)
        run.log_artifact(folder / f"{name}.png", "figures")


if __name__ == "__main__":
    run_cli(main)
