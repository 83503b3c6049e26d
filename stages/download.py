"""Download stage: bring the images of ``data.source`` into a class-per-folder tree.

Reads:  params ``data``; the source (Fashion-MNIST files, an archive URL, or a local folder)
Writes: paths.raw/[<split>/]<class>/<image>, paths.metrics/download.json
"""

from pipeline.core import config, files
from pipeline.core.errors import run_cli
from pipeline.data import sources
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    with runs.stage_run("download", params) as run:
        # Built beside paths.raw and swapped in only when complete: a failure leaves nothing half-written.
        with files.staged_dir(params.path("raw")) as staging:
            acquired = sources.acquire(params.data, staging, params.path("downloads"))
        run.log_metrics(
            {"images": acquired.images, "classes": acquired.classes, "ignored_files": len(acquired.ignored)}
        )
        run.record("ignored_by_reason", sources.count_reasons(acquired.ignored))
        run.set_tags({"data.layout": "train/val/test folders" if acquired.presplit else "class folders"})
        if acquired.ignored:
            run.log_dict([{"path": p, "reason": r} for p, r in acquired.ignored], "ignored_files.json")
            for line in sources.describe_left_out(acquired.ignored):
                print(f"download: {line}")
        run.log_metrics({"empty_class_folders": len(acquired.empty_classes)}, to_json=False)
        run.record("empty_class_folders", list(acquired.empty_classes))
        for folder in acquired.empty_classes:
            print(f"download: ignored empty class folder {folder}/: it holds no files, so it is not a class")
        print(f"download: {acquired.images} images in {acquired.classes} classes → {params.paths.raw}")


if __name__ == "__main__":
    run_cli(main)
