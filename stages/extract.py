"""Extract stage: run the frozen pretrained backbone once over every image and cache its features.

Reads:  paths.splits/{train,val,test}.csv, classes.json; the images; params ``backbone``, ``extract``, ``compute``;
        ~/.cache/headstart/runtimes.json (``compute.runtime: auto``'s remembered choice, written on first use)
Writes: paths.features/{train,val,test}.npz, meta.json (the same bytes on every run on one CPU model
        at a fixed ``compute.threads``); paths.metrics/extract.json (the timings, the CPU model and
        its instruction set)
"""

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.features import backbones, extraction
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("extract", params) as run:
        backbone = backbones.get(params.backbone.name)
        size, size_rule = extraction.choose_image_size(backbone, params)
        model, weights = backbones.build_extractor(
            backbone, size, params.backbone.weights, params.root, params.path("weights")
        )
        run.set_tags(
            {
                "backbone": backbone.name,
                "weights.sha256": weights.sha256,
                "image_size": str(size),
                "image_size_rule": size_rule,
            }
        )
        with files.staged_dir(params.path("features")) as staging:
            meta, seconds = extraction.extract_splits(model, backbone, weights, size, params, staging, size_rule)
        cpu = runtime.describe_cpu()
        run.record("cpu", {**cpu, "threads": params.compute.threads})  # beside the timings, and why bits differ
        run.set_tags({"runtime": meta["runtime"]})  # compute.runtime as it was resolved (auto: runtimes.choose)
        run.record("runtime", meta["runtime"])
        run.log_dict(meta, "features_meta.json")
        metrics = extraction.summarize(meta, seconds)
        run.log_metrics(metrics)
        print(f"extract: {extraction.describe(meta, metrics, cpu)} → {params.paths.features}")


if __name__ == "__main__":
    run_cli(main)
