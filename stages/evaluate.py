"""evaluate stage: score the classifier on the test split, and the head alone on the cached test features.

Reads:  paths.splits/test.csv, the test images, paths.model, paths.features/test.npz, paths.head_model,
        paths.metrics/finetune.json (whether fine-tuning ran, for the console's verdict);
        params ``evaluate``, ``backbone.crop``, ``compute``, ``registry``
Writes: paths.predictions; paths.plots/evaluate/ (confusion.csv for `dvc plots`, confusion_matrix.png,
        reliability.png/.csv, roc.csv, pr.csv and curves.png: class 1's for two classes, else micro-averaged);
        paths.metrics/evaluate.json (both models side by side, ``finetuned_vs_head``: the accuracy difference and
        McNemar's exact test on the images only one got right, and the registry decision);
        with ``registry.enabled``, paths.model as a new version of ``registry.model_name`` in the MLflow
        model registry (a pyfunc model: image bytes or paths in), alias candidate, champion when it wins
"""

from pipeline.core import config, figures, files, runtime
from pipeline.core.errors import run_cli
from pipeline.data import split
from pipeline.evaluation import scoring
from pipeline.features import extraction
from pipeline.serving import classifier, registry
from pipeline.tracking import runs
from pipeline.training import finetune

MODELS = ("finetuned", "head_only")


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("evaluate", params) as run:
        test = split.read_split_files(params.path("splits"), "test", params.root)
        classes = list(test.classes)
        cached = extraction.read_feature_set(params.path("features") / "test.npz")
        classifier.check_same_rows(test.rel_paths, cached.paths, "the cached test features")
        model = classifier.load_model(params.path("model"))
        runtime_used, forward = classifier.compile_on_runtime(
            model, params.compute.runtime, params.evaluate.batch_size, params.compute.threads
        )
        run.set_tags({"runtime": runtime_used})
        run.record("runtime", runtime_used)  # the probabilities' last bits depend on it
        probabilities = {
            "finetuned": classifier.predict_probabilities(
                model, test.paths, params.backbone.crop, params.evaluate.batch_size, "evaluate", forward
            ),
            "head_only": classifier.head_probabilities(finetune.load_head(params.path("head_model")), cached.features),
        }
        scores = {
            name: scoring.summarize(
                test.labels, probabilities[name], classes, params.evaluate.top_k, params.evaluate.calibration_bins
            )
            for name in MODELS
        }
        frame = classifier.predictions_frame(test.rel_paths, test.labels, probabilities["finetuned"], classes)
        files.write_csv(params.path("predictions"), frame)
        plots = params.path("plots") / "evaluate"
        curves = scoring.curves(test.labels, probabilities["finetuned"], classes)
        for name, table in scoring.plot_tables(
            test.labels, probabilities["finetuned"], classes, params.evaluate.calibration_bins, curves
        ).items():
            files.write_csv(plots / f"{name}.csv", table)
        predicted = probabilities["finetuned"].argmax(axis=1)
        charts = {
            "confusion_matrix": figures.confusion_matrix_chart(
                scoring.confusion_matrix(test.labels, predicted, len(classes)), classes
            ),
            "reliability": figures.reliability_chart(
                scoring.reliability_bins(test.labels, probabilities["finetuned"], params.evaluate.calibration_bins),
                scores["finetuned"]["ece"],
            ),
            "curves": figures.curves_chart(
                (curves.fpr, curves.tpr),
                curves.auc,
                (curves.precision, curves.recall),
                curves.average_precision,
                curves.label,
            ),
        }
        for name, figure in charts.items():
            files.save_figure(figure, plots / f"{name}.png")
            run.log_figure(figure, f"{name}.png")
        for name in MODELS:
            run.log_metrics(
                {f"{name}.{key}": value for key, value in scores[name].items() if key != "per_class"}, to_json=False
            )
            run.record(name, scores[name])  # nested, per-class numbers included: dvc metrics show/diff
        paired = scoring.compare_finetuned_with_head(test.labels, predicted, probabilities["head_only"].argmax(axis=1))
        run.log_metrics({f"finetuned_vs_head.{key}": value for key, value in paired.items()}, to_json=False)
        run.record("finetuned_vs_head", paired)
        run.log_table(frame, "predictions")
        fine_tuning = scoring.fine_tuning_outcome(files.read_json(params.path("metrics") / "finetune.json"))
        verdict = scoring.describe_paired(
            scores["finetuned"]["accuracy"], scores["head_only"]["accuracy"], paired, fine_tuning
        )
        print(f"evaluate: {verdict}")
        if params.registry.enabled:
            entry = registry.register_classifier(params, scores["finetuned"], run.run_id, run.tags)
            run.record("registry", entry)
            print(
                f"evaluate: registered {entry['name']} v{entry['version']} (alias {registry.CANDIDATE}); "
                f"{entry['reason']}"
            )


if __name__ == "__main__":
    run_cli(main)
