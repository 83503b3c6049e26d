"""analyze stage: error analysis of the test predictions, and one self-contained HTML report.

Reads:  paths.predictions, paths.metrics/evaluate.json, paths.metrics/finetune.json (whether fine-tuning
        ran, for the overview's verdict), the audit stage's lists (paths.label_issues, paths.near_duplicates,
        paths.outliers, paths.plots/audit/overlapping_classes.csv, paths.metrics/audit.json), paths.model and
        the images; params ``analyze``, ``audit.shown``, ``evaluate.calibration_bins``, ``backbone.crop``,
        ``compute``
Writes: paths.report (images embedded; opens with no network); paths.plots/analyze/ (per_class_accuracy.csv,
        confused_pairs.csv, worst_errors.csv and the report's figures as PNG); paths.metrics/analyze.json
"""

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.evaluation import analyze
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("analyze", params) as run:
        result = analyze.analyze(params)
        files.write_text(params.path("report"), result.html)
        folder = params.path("plots") / "analyze"
        for name, table in result.tables.items():
            files.write_csv(folder / f"{name}.csv", table)
            run.log_table(table, name)
        for name, png in result.pngs.items():
            files.write_bytes(folder / f"{name}.png", png)
            run.log_artifact(folder / f"{name}.png", "figures")
        run.log_artifact(params.path("report"))
        run.log_metrics(result.metrics)
        run.record("worst_class", result.worst_class)
        print(f"analyze: report with {result.sections} sections → {params.paths.report}")


if __name__ == "__main__":
    run_cli(main)
