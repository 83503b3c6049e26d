"""finetune stage: put the best head back on the backbone, unfreeze its top, train it from images.

Reads:  paths.splits, the images, paths.head_model, paths.best_hparams, paths.features/meta.json (the input
        size the head was trained at); params ``backbone``,
        ``finetune``, ``augment``, ``train_head.class_weight``, ``tune.objective``, ``compute``, ``seed``;
        ``TF_CONFIG`` with ``compute.distribution: multi_worker`` (docs/scale.md, "Fine-tuning on several machines")
Writes: paths.model (raw 0-255 RGB images in, class probabilities out); paths.plots/finetune/history.csv;
        paths.metrics/finetune.json; the model in MLflow (with a signature). A multi-worker worker writes none
        of these: it trains in step with the chief and exits.
"""

import os
import tempfile
from pathlib import Path

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.tracking import runs
from pipeline.training import finetune, strategy


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)  # thread pools first: the strategy starts TensorFlow
    placement = strategy.place(params.compute.distribution, strategy.env_tf_config())
    spread = strategy.spread(placement, os.environ)
    strategy.check_agreement(spread, strategy.fingerprint(params))
    if not placement.writes:
        result = finetune.train_classifier(params, spread, None)
        with tempfile.TemporaryDirectory() as scratch:  # saving may read the mirrored weights collectively:
            files.save_model(result.classifier, Path(scratch) / "model.keras")  # every process saves once
        print(f"finetune worker {placement.task}: {result.steps} training steps in step with the chief; wrote nothing")
        return
    with runs.stage_run("finetune", params) as run:
        run.set_tags({"distribution": spread.describe(), "distribution.role": placement.role})
        run.log_params({"distribution.tasks": placement.tasks, "distribution.replicas": spread.replicas})
        result = finetune.train_classifier(params, spread, run)
        files.write_csv(params.path("plots") / "finetune" / "history.csv", result.history)
        files.save_model(result.classifier, params.path("model"))
        size = int(result.classifier.input_shape[1])
        run.log_keras_model(result.classifier, (size, size, 3), (result.classifier.output_shape[-1],))
        run.log_metrics(result.metrics)
        who = f" ({spread.describe()}, {result.steps} training steps here)" if placement.task else ""
        print(
            f"finetune: {finetune.describe_result(result.metrics, params.tune.objective)}{who} → {params.paths.model}"
        )


if __name__ == "__main__":
    run_cli(main)
