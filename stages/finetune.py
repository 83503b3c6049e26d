"""finetune stage: put the best head back on the backbone, unfreeze its top, train it from images.

Reads:  paths.splits, the images, paths.head_model, paths.best_hparams, paths.features/meta.json (the input
        size the head was trained at); params ``backbone``,
        ``finetune``, ``augment``, ``train_head.class_weight``, ``tune.objective``, ``compute``, ``seed``
Writes: paths.model (raw 0-255 RGB images in, class probabilities out); paths.plots/finetune/history.csv;
        paths.metrics/finetune.json; the model in MLflow (with a signature)
"""

import time

from pipeline.core import config, files, runtime
from pipeline.core.errors import run_cli
from pipeline.data import split
from pipeline.features import backbones, extraction
from pipeline.tracking import runs
from pipeline.training import finetune, fitting


def main() -> None:
    params = config.load()
    runtime.configure(params.compute)
    with runs.stage_run("finetune", params) as run:
        backbone = backbones.get(params.backbone.name)
        size = extraction.read_image_size(params.path("features"), backbone.name)  # what the head was trained on
        core, weights = backbones.build_backbone(
            backbone, size, params.backbone.weights, params.root, params.path("weights")
        )
        # Seeded after the backbone is built: with ``weights: none`` its random weights must stay the ones
        # extract drew (runtime's fixed seed). The layers built from here on (the head's dropout) draw from ``seed``.
        fitting.seed_everything(params.seed)
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
            print(f"finetune: schedule {reason}")
            run.set_tags({"schedule_rule": reason})
            metrics.update(learning_rate_peak=float(settings.learning_rate), epochs_planned=int(settings.epochs))
            batches = finetune.make_batches(train, val, size, params.backbone.crop, settings, params.seed)
            started = time.perf_counter()
            history, start, kept = finetune.fine_tune(
                model,
                batches,
                settings,
                params.tune.objective,
                fitting.class_weights(train.labels, len(train.classes), params.train_head.class_weight),
                initial_epoch=head_epochs,
                callbacks=[fitting.EpochLog(run.log_metrics)],
            )
            frame = fitting.history_frame(history, first_epoch=head_epochs + 1)
            run.log_dict({"trainable_layers": trainable}, "trainable_layers.json")
            metrics.update(
                finetune.summarize(
                    frame, params.tune.objective, start, kept, trainable, model, time.perf_counter() - started
                )
            )
        files.write_csv(params.path("plots") / "finetune" / "history.csv", frame)
        classifier = finetune.with_probabilities(model)
        files.save_model(classifier, params.path("model"))
        run.log_keras_model(classifier, (size, size, 3), (model.output_shape[-1],))
        run.log_metrics(metrics)
        print(f"finetune: {finetune.describe_result(metrics, params.tune.objective)} → {params.paths.model}")


if __name__ == "__main__":
    run_cli(main)
