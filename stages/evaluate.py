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

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.evaluation import evaluate
from pipeline.serving import registry
from pipeline.tracking import runs


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("evaluate", params) as run:
        result = evaluate.evaluate(params)
        run.set_tags({"runtime": result.runtime})
        run.record("runtime", result.runtime)
        files.write_csv(params.path("predictions"), result.predictions)
        plots = params.path("plots") / "evaluate"
        for name, table in result.plot_tables.items():
            files.write_csv(plots / f"{name}.csv", table)
        for name, figure in result.charts.items():
            files.save_figure(figure, plots / f"{name}.png")
            run.log_figure(figure, f"{name}.png")
        for name, scores in result.scores.items():
            run.log_metrics(
                {f"{name}.{key}": value for key, value in scores.items() if key != "per_class"}, to_json=False
            )
            run.record(name, scores)  # nested, per-class numbers included: dvc metrics show/diff
        run.log_metrics({f"finetuned_vs_head.{key}": value for key, value in result.paired.items()}, to_json=False)
        run.record("finetuned_vs_head", result.paired)
        run.log_table(result.predictions, "predictions")
        print(f"evaluate: {result.verdict}")
        if params.registry.enabled:
            entry = registry.register_classifier(params, result.scores["finetuned"], run.run_id, run.tags)
            run.record("registry", entry)
            print(f"evaluate: {registry.describe_entry(entry)}")


if __name__ == "__main__":
    run_cli(main)
