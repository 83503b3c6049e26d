"""Split stage: verify every image and divide them into stratified, seeded train/val/test splits.

Reads:  paths.raw; paths.review (a person's exclude / relabel decisions, pipeline/data/review.py); params
        ``split``, ``seed``
Writes: paths.splits/{train,val,test}.csv (path, label, sha256), classes.json, report.json (with what the
        review file changed);
        paths.plots/split/class_counts.png; paths.metrics/split.json
"""

from pipeline.core import config, files
from pipeline.core.errors import run_cli
from pipeline.data import charts, dataset, images, review, split
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    with runs.stage_run("split", params) as run:
        scan = dataset.scan_dataset(params.path("raw"))
        checks = images.inspect_images([scan.root / e.rel for e in scan.entries], params.split.max_image_pixels)
        items, excluded = split.collect_items(scan, checks, params.paths.raw)
        decisions = review.read_review(params.path("review"))
        review.check_entries(decisions, split.raw_paths(scan, params.paths.raw), scan.classes, params.paths.review)
        items, reviewed = review.apply_entries(items, decisions)
        result = split.split_images(items, params.split, params.seed, scan.presplit)
        report = split.build_report(result, scan, excluded, params.split, reviewed)
        with files.staged_dir(params.path("splits")) as staging:
            for name, members in result.items.items():
                files.write_csv(staging / f"{name}.csv", split.split_frame(members))
            files.write_json(staging / split.CLASSES_FILE, sorted({i.label for i in items}))
            files.write_json(staging / "report.json", report)
        chart = charts.class_counts_chart(result.counts())
        files.save_figure(chart, params.path("plots") / "split" / "class_counts.png")
        run.log_figure(chart, "class_counts.png")
        run.log_table(split.counts_frame(result), "class_counts")
        run.log_dict(report, "split_report.json")
        run.log_metrics({f"images_{name}": n for name, n in report["images"].items()})
        run.log_metrics(
            {
                "classes": report["classes"],
                "excluded_files": len(report["excluded"]),
                "duplicate_groups": result.duplicate_groups,
                "duplicate_copies": result.duplicate_copies,
                "review_excluded": report["review"]["excluded"],
                "review_relabelled": report["review"]["relabelled"],
            }
        )
        lines = split.describe(report, reviewed, params.paths.review)
        for line in lines[:-1]:
            print(f"split: {line}")
        print(f"split: {lines[-1]} → {params.paths.splits}")


if __name__ == "__main__":
    run_cli(main)
