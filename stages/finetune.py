"""finetune stage: put the best head back on the backbone, unfreeze its top, train it from images.

Reads:  paths.splits, the images, paths.head_model, paths.best_hparams, paths.features/meta.json (the input
        size the head was trained at); params ``backbone``,
        ``finetune``, ``augment``, ``train_head.class_weight``, ``tune.objective``, ``compute``, ``seed``;
        ``TF_CONFIG`` with ``compute.distribution: multi_worker`` (docs/scale.md, "Fine-tuning on several machines")
Writes: paths.model (raw 0-255 RGB images in, class probabilities out); paths.plots/finetune/history.csv;
        paths.metrics/finetune.json; the model in MLflow (with a signature). A multi-worker worker writes none
        of these: it trains in step with the chief and exits.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.data import split
from pipeline.features import backbones, extraction
from pipeline.tracking import runs
from pipeline.training import finetune, fitting, strategy

if TYPE_CHECKING:  # imported by pipeline/ at run time, after pipeline/__init__.py has quieted TensorFlow's start-up
    import keras
    import pandas as pd


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)  # thread pools first: the strategy starts TensorFlow
    placement = strategy.place(params.compute.distribution, strategy.env_tf_config())
    spread = strategy.spread(placement, os.environ)
    strategy.check_agreement(spread, strategy.fingerprint(params))
    if not placement.writes:
        with tempfile.TemporaryDirectory() as scratch:
            _, _, _, steps = train(params, spread, None, Path(scratch))
        print(f"finetune worker {placement.task}: took {steps} training steps in step with the chief; wrote nothing")
        return
    with runs.stage_run("finetune", params) as run:
        run.set_tags({"distribution": spread.describe(), "distribution.role": placement.role})
        run.log_params({"distribution.tasks": placement.tasks, "distribution.replicas": spread.replicas})
        classifier, frame, metrics, steps = train(params, spread, run, None)
        files.write_csv(params.path("plots") / "finetune" / "history.csv", frame)
        files.save_model(classifier, params.path("model"))
        size = int(classifier.input_shape[1])
        run.log_keras_model(classifier, (size, size, 3), (classifier.output_shape[-1],))
        run.log_metrics(metrics)
        who = f" ({spread.describe()}, {steps} training steps here)" if placement.task else ""
        print(f"finetune: {finetune.describe_result(metrics, params.tune.objective)}{who} → {params.paths.model}")


def train(
    params: config.Params, spread: strategy.Spread, run: runs.StageRun | None, scratch: Path | None
) -> tuple[keras.Model, pd.DataFrame, dict[str, float], int]:
    """Build the classifier under the strategy and fine-tune it.

    ``run`` is None on a worker, which logs nothing and saves the model into ``scratch`` (a temporary folder):
    saving may read the mirrored weights collectively, so every process saves once, as the chief does.

    Returns:
        The classifier with probabilities, the history, the metrics, and the training steps this process took.
    """
    backbone = backbones.get(params.backbone.name)
    size = extraction.read_image_size(params.path("features"), backbone.name)  # what the head was trained on
    steps = strategy.StepCount()
    with spread.scope():
        core, weights = backbones.build_backbone(
            backbone, size, params.backbone.weights, params.root, params.path("weights")
        )
        # Seeded after the backbone is built: with ``weights: none`` its random weights must stay the ones
        # extract drew (runtime's fixed seed). The layers built from here on (the head's dropout) draw from ``seed``.
        fitting.seed_everything(params.seed)
        if run is not None:
            run.set_tags({"backbone": backbone.name, "weights.sha256": weights.sha256})
        head_epochs = int(files.read_yaml(params.path("best_hparams"))["epochs"])
        model = finetune.assemble(
            backbone,
            core,
            finetune.load_head(params.path("head_model")),
            size,
            finetune.augmentation_layers(params.augment, params.seed),
        )
        metrics: dict[str, float] = {"head_epochs": head_epochs}
        frame = finetune.empty_history()
        if params.finetune.enabled:
            train, val = (split.read_split_files(params.path("splits"), name, params.root) for name in ("train", "val"))
            trainable = finetune.unfreeze(core, backbone, params.finetune)
            settings, reason = finetune.resolve_schedule(params.finetune, len(train.paths))
            settings, effective = strategy.scale(settings, spread.replicas)
            if spread.replicas > 1:
                reason += f"; × {spread.replicas} replicas (linear scaling)"
            print(f"finetune: schedule {reason}")
            metrics.update(learning_rate_peak=float(settings.learning_rate), epochs_planned=int(settings.epochs))
            batches = finetune.make_batches(train, val, size, params.backbone.crop, settings, params.seed)
            if spread.strategy is not None:
                batches = dataclasses.replace(
                    batches, train=strategy.shard(batches.train), val=strategy.shard(batches.val)
                )
            callbacks: list[keras.callbacks.Callback] = [steps]
            if run is not None:
                run.set_tags({"schedule_rule": reason})
                run.log_params({f"distribution.{k}": v for k, v in effective.items()})
                callbacks.append(fitting.EpochLog(run.log_metrics))
            started = time.perf_counter()
            history, start, kept = finetune.fine_tune(
                model,
                batches,
                settings,
                params.tune.objective,
                fitting.class_weights(train.labels, len(train.classes), params.train_head.class_weight),
                initial_epoch=head_epochs,
                callbacks=callbacks,
            )
            frame = fitting.history_frame(history, first_epoch=head_epochs + 1)
            if run is not None:
                run.log_dict({"trainable_layers": trainable}, "trainable_layers.json")
            metrics.update(
                finetune.summarize(
                    frame, params.tune.objective, start, kept, trainable, model, time.perf_counter() - started
                )
            )
    classifier = finetune.with_probabilities(model)
    if scratch is not None:
        files.save_model(classifier, scratch / "model.keras")
    return classifier, frame, metrics, steps.steps


if __name__ == "__main__":
    run_cli(main)
