"""export stage: model.keras as TFLite models, each checked against it on the test split.

Reads:  paths.model, paths.splits/test.csv and the test images; params ``export``, ``backbone.crop``,
        ``evaluate.batch_size``, ``compute``
Writes: paths.tflite/ (model_<format>.tflite and model_<format>.json per ``export.formats``, labels.txt;
        empty when ``export.enabled`` is false); paths.metrics/export.json (per format: top-1 agreement with
        model.keras, max probability difference, test accuracy, size, images/s)
"""

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.data import split
from pipeline.serving import classifier, export
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    folder = params.path("tflite")
    with runs.stage_run("export", params) as run:
        run.record("enabled", params.export.enabled)
        if not params.export.enabled:
            with files.staged_dir(folder):
                pass  # an empty folder: DVC still finds the stage's output
            print(f"export: export.enabled is false; {params.paths.tflite} left empty")
            return
        test = split.read_split_files(params.path("splits"), "test", params.root)
        model = classifier.load_model(params.path("model"))
        formats = tuple(dict.fromkeys(params.export.formats))  # a format listed twice is exported once
        converted = {fmt: export.convert(model, fmt) for fmt in formats}
        settings = (params.backbone.crop, params.evaluate.batch_size, params.compute.threads)
        scores = export.measure(model, converted, test.paths, test.labels, *settings)
        for name, numbers in scores.items():  # logged before the check, so a failed run shows why
            run.log_metrics({f"{name}.{key}": value for key, value in numbers.items()}, to_json=False)
        export.check_parity({fmt: scores[fmt] for fmt in formats}, params.export.min_agreement)
        size = classifier.input_size(model)
        descriptions = export.describe_models(converted, size, params.backbone.crop, test.classes, scores)
        with files.staged_dir(folder) as staging:
            export.write_export(staging, converted, descriptions, test.classes)
        for path in sorted(folder.iterdir()):
            run.log_artifact(path, "tflite")
        for name, numbers in scores.items():
            run.record(name, numbers)
        run.record("images", len(test.paths))
        print(f"export: {export.describe_export(scores, formats, len(test.paths))}")


if __name__ == "__main__":
    run_cli(main)
