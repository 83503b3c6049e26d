"""audit stage: which of the model's mistakes are the data's, from the cached features alone.

Reads:  paths.features/{train,val,test}.{npy,npz} and meta.json, paths.head_model (its probabilities for val and
        test: a model that never trained on them); params ``audit``, ``seed``, ``compute``
Writes: paths.label_issues, paths.near_duplicates, paths.outliers (CSV), paths.review_suggestions (review-file
        entries, commented out); paths.plots/audit/ (overlapping_classes.csv, out_of_sample_probabilities.csv);
        paths.metrics/audit.json (counts per split, kind and class)
"""

import time

from pipeline.audit import findings, suggestions
from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.features import extraction
from pipeline.serving import classifier
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("audit", params) as run:
        start = time.perf_counter()
        folder = params.path("features")
        sets = {name: extraction.read_feature_set(folder / f"{name}.npz") for name in extraction.SPLITS}
        meta = files.read_json(folder / extraction.META_FILE)
        head = classifier.load_head(params.path("head_model"))
        held_out = {name: classifier.head_probabilities(head, sets[name].features) for name in ("val", "test")}
        found = findings.audit(sets, held_out, params.audit, meta["backbone"], params.seed)
        files.write_csv(params.path("label_issues"), found.label_issues)
        files.write_csv(params.path("near_duplicates"), found.duplicates)
        files.write_csv(params.path("outliers"), found.outliers)
        files.write_text(
            params.path("review_suggestions"), suggestions.suggestions_text(found.suggestions, params.paths.review)
        )
        plots = params.path("plots") / "audit"
        files.write_csv(plots / "overlapping_classes.csv", found.overlapping)
        files.write_csv(plots / "out_of_sample_probabilities.csv", findings.probability_table(found, sets))
        metrics, nested = findings.summarize(found, sets)
        metrics["seconds"] = round(time.perf_counter() - start, 3)
        run.log_metrics(metrics)
        for key, value in nested.items():
            run.record(key, value)
        for name, table in findings.tables(found).items():
            run.log_table(table, name)
        run.log_artifact(params.path("review_suggestions"))
        print(f"audit: {findings.describe(found, metrics)} → {params.paths.review_suggestions}")


if __name__ == "__main__":
    run_cli(main)
