"""Fine-tuning: the best head back on its backbone, the top of the backbone unfrozen and trained from
images with augmentation at a low learning rate (the Keras transfer-learning guide's second phase).

The assembled classifier takes raw 0-255 RGB images: augmentation layers (active only in training),
the backbone's own preprocessing, the backbone called with ``training=False``, global average
pooling, the head (logits), and a softmax for the model handed on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import pandas as pd
import tensorflow as tf

from pipeline.core import files, progress
from pipeline.core.config import AugmentParams, FinetuneParams, Params
from pipeline.core.errors import UserError
from pipeline.data import split
from pipeline.features import backbones, extraction, inputs
from pipeline.serving import classifier
from pipeline.tracking import runs
from pipeline.training import fitting, strategy

LAYER_NAMES = ("augmentation", "preprocessing", "backbone", "features", "head", "probabilities")
AUTO = "auto"
# ``finetune.learning_rate: auto`` and ``finetune.epochs: auto``: the peak rate and the passes by the train
# split's size. The boundary is BiT-HyperRule's between small and medium sets (Kolesnikov et al., 2020), which
# also gives small sets more passes; the values are the ones measured to pay on each side (docs/training.md,
# "What the fine-tuning defaults rest on").
LARGE_SET = 20_000
LARGE_SET_RATE = 5.0e-4
LARGE_SET_EPOCHS = 2
SMALL_SET_RATE = 2.0e-4
SMALL_SET_EPOCHS = 6


def augmentation_layers(params: AugmentParams, seed: int) -> keras.Sequential:
    """Random flips, turns, zooms and contrast changes from params; Keras skips them at inference.

    They act on raw 0-255 pixels, before the network's preprocessing. Cached features rule out
    augmentation while the head trains, so this is the first phase that sees it.
    """
    layers: list[keras.layers.Layer] = []
    if params.flip != "none":
        layers.append(keras.layers.RandomFlip(params.flip, seed=seed))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, fill_mode="reflect", seed=seed + 1))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, fill_mode="reflect", seed=seed + 2))
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast, value_range=(0, 255), seed=seed + 3))
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmentation")


def assemble(
    backbone: backbones.Backbone, core: keras.Model, head: keras.Model, size: int, augmentation: keras.Sequential
) -> keras.Model:
    """The whole classifier, logits out: augmentation → preprocessing → backbone → pooling → head.

    The backbone is called with ``training=False`` so its BatchNormalization layers keep using their
    ImageNet statistics even once unfrozen: updating them on a small dataset would wreck what the
    head was trained on.
    """
    images = keras.Input((size, size, 3), name="images")
    x = augmentation(images)
    x = backbones.preprocessing_layers(backbone.preprocessing)(x)
    x = core(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(images, head(x), name=f"{backbone.name}_classifier")


def with_probabilities(model: keras.Model) -> keras.Model:
    """The classifier handed on: the same layers, with a softmax turning logits into probabilities."""
    probabilities = keras.layers.Softmax(name="probabilities")(model.output)
    return keras.Model(model.input, probabilities, name=model.name)


def unfreeze(core: keras.Model, backbone: backbones.Backbone, params: FinetuneParams) -> list[str]:
    """Make the top of the backbone trainable: from a named cut point, or the last N layers.

    Cut points are block names, not layer counts, so the same setting means the same block on
    every run. BatchNormalization layers stay frozen (see ``assemble``).

    Returns:
        The names of the backbone layers that now train (those with weights).
    """
    if params.unfreeze_from is not None:
        start = backbones.cut_index(core.layers, backbone, params.unfreeze_from)
    else:
        assert params.unfreeze_top is not None  # the params allow one of the two, never neither
        if params.unfreeze_top > len(core.layers):
            raise UserError(
                f"finetune.unfreeze_top: {backbone.name} has {len(core.layers)} layers; found {params.unfreeze_top}"
            )
        start = len(core.layers) - params.unfreeze_top
    core.trainable = True
    for index, layer in enumerate(core.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in core.layers if layer.trainable and layer.weights]


@dataclass(frozen=True)
class Batches:
    """The datasets fine-tuning reads, and how many steps make an epoch."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    steps_per_epoch: int | None  # None: one pass over the train split
    steps: int  # train steps in an epoch either way


def make_batches(
    train: split.SplitFiles, val: split.SplitFiles, size: int, crop: inputs.Crop, params: FinetuneParams, seed: int
) -> Batches:
    """Shuffled train batches (a fresh seeded order every pass) and val batches in file order.

    With ``images_per_epoch`` below the train split's size, an epoch is that many images and the
    next epoch goes on where the last stopped.
    """
    train_batches = inputs.image_dataset(
        train.paths, size, crop, params.batch_size, labels=train.labels, shuffle_seed=seed
    )
    val_batches = inputs.image_dataset(val.paths, size, crop, params.batch_size, labels=val.labels)
    if params.images_per_epoch is None or params.images_per_epoch >= len(train.paths):
        return Batches(train_batches, val_batches, None, math.ceil(len(train.paths) / params.batch_size))
    steps = math.ceil(params.images_per_epoch / params.batch_size)
    return Batches(train_batches.repeat(), val_batches, steps, steps)


def choose_schedule(rate: float | str, epochs: int | str, train_images: int) -> tuple[float, int, str]:
    """The peak learning rate and the epochs, with the reason in words: the numbers set, or ``auto``'s
    choice by the train split's size.

    Example: ``choose_schedule("auto", "auto", 3453)`` →
    ``(2e-4, 6, "auto: 3,453 train images (under 20,000) → peak 0.0002, 6 epochs")``.
    """
    large = train_images >= LARGE_SET
    chosen_rate = (LARGE_SET_RATE if large else SMALL_SET_RATE) if rate == AUTO else float(rate)
    chosen_epochs = (LARGE_SET_EPOCHS if large else SMALL_SET_EPOCHS) if epochs == AUTO else int(epochs)
    parts = (
        f"peak {chosen_rate:g}" + ("" if rate == AUTO else " (params.yaml)"),
        f"{chosen_epochs} epochs" + ("" if epochs == AUTO else " (params.yaml)"),
    )
    if AUTO not in (rate, epochs):
        return chosen_rate, chosen_epochs, ", ".join(parts)
    size = f"{LARGE_SET:,} or more" if large else f"under {LARGE_SET:,}"
    return chosen_rate, chosen_epochs, f"auto: {train_images:,} train images ({size}) → {', '.join(parts)}"


def resolve_schedule(params: FinetuneParams, train_images: int) -> tuple[FinetuneParams, str]:
    """``params`` with ``learning_rate`` and ``epochs`` numbers (``auto`` decided by ``choose_schedule``),
    and the reason."""
    rate, epochs, reason = choose_schedule(params.learning_rate, params.epochs, train_images)
    return dataclasses.replace(params, learning_rate=rate, epochs=epochs), reason


def learning_rate(params: FinetuneParams, steps_per_epoch: int) -> fitting.LearningRate:
    """The rate fine-tuning trains at: constant, or warm-up then cosine decay over all its epochs.

    Raises:
        ValueError: ``learning_rate`` or ``epochs`` is still ``auto`` (``resolve_schedule`` decides them).
    """
    peak, epochs = params.learning_rate, params.epochs
    if isinstance(peak, str) or isinstance(epochs, str):
        raise ValueError(
            "finetune.learning_rate and finetune.epochs: auto must be resolved first (finetune.resolve_schedule)"
        )
    if params.schedule == "constant":
        return peak
    return fitting.warmup_cosine(peak, steps_per_epoch * epochs, params.warmup)


def fine_tune(
    model: keras.Model,
    batches: Batches,
    params: FinetuneParams,
    objective: str,
    class_weight: dict[int, float] | None,
    initial_epoch: int,
    callbacks: list[keras.callbacks.Callback],
) -> tuple[dict[str, list[float]], float, int | None]:
    """Recompile at the fine-tuning rate and train; keep the best weights on val, the starting ones included.

    With ``val_accuracy`` as the objective, an epoch that ties the best accuracy wins when its val loss
    is lower (``fitting.KeepBest``'s tie-break).

    Args:
        model: the assembled classifier (logits), with the top of the backbone unfrozen.
        batches: from ``make_batches``.
        params: learning rate and its schedule, optimizer, label smoothing, epochs, patience.
        objective: the monitored val metric (``val_accuracy`` or ``val_loss``).
        class_weight: per-class loss weights, or None.
        initial_epoch: epochs the head already trained; fine-tuning's epochs are numbered after them.
        callbacks: more callbacks (per-epoch logging).

    Returns:
        The history, the objective of the starting weights, and the kept epoch's index (None
        when no epoch beat the starting weights, which are then kept).
    """
    # Changing ``trainable`` takes effect only once the model is compiled again.
    fitting.compile_classifier(model, params.optimizer, learning_rate(params, batches.steps), params.label_smoothing)
    scores = model.evaluate(batches.val, return_dict=True, verbose=0)
    start = scores[objective.removeprefix("val_")]
    tie_break = "val_loss" if objective == "val_accuracy" else None
    keep = fitting.KeepBest(
        objective, params.patience, start_score=start, tie_break=tie_break, start_tie=scores["loss"]
    )
    history = model.fit(
        batches.train,
        validation_data=batches.val,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + int(params.epochs),  # a number: learning_rate() refused auto above
        steps_per_epoch=batches.steps_per_epoch,
        shuffle=False,  # the dataset shuffles its files itself, before decoding
        class_weight=class_weight,
        callbacks=[keep, *callbacks],
        verbose=progress.keras_verbosity(),
    )
    return history.history, float(start), keep.best_epoch


def describe_result(numbers: dict[str, float], objective: str) -> str:
    """The console's account of fine-tuning from ``summarize``'s numbers (or the head's epochs alone when it is off).

    Example: ``val_accuracy 0.9018 → 0.9025, kept epoch 15 (3 trained), 16 layers / 3.57M parameters trainable, 276 s``.
    """
    if f"{objective}_before" not in numbers:
        return "off (finetune.enabled: false): the head on the frozen backbone"
    before, best = numbers[f"{objective}_before"], numbers[f"best_{objective}"]
    kept = (
        f"kept epoch {int(numbers['kept_epoch'])}"
        if numbers["kept_epoch"]
        else "kept the starting weights (no epoch beat them)"
    )
    return (
        f"{objective} {before:.4f} → {best:.4f}, {kept} ({int(numbers['epochs_trained'])} trained), "
        f"{int(numbers['trainable_layers'])} layers / {numbers['trainable_params'] / 1e6:.2f}M parameters "
        f"trainable, {numbers['seconds']:.0f} s"
    )


def summarize(
    history: pd.DataFrame,
    objective: str,
    start: float,
    kept: int | None,
    trainable: list[str],
    model: keras.Model,
    seconds: float,
) -> dict[str, float]:
    """The numbers for metrics/finetune.json: the kept epoch's metrics (``best_`` prefixed; the plain
    names are the per-epoch series in MLflow) against the starting point.

    Args:
        history: from ``fitting.history_frame`` (epochs numbered after the head's).
        objective: the monitored val metric.
        start: its value before fine-tuning (the head on the frozen backbone).
        kept: the kept epoch's index from ``fine_tune``; None when the starting weights were kept.
        trainable: the unfrozen layer names.
        model: the classifier (for its trainable parameter count).
        seconds: the time fine-tuning took.
    """
    numbers: dict[str, float] = {
        f"{objective}_before": start,
        f"best_{objective}": start,
        "epochs_trained": len(history),
        "kept_epoch": 0,  # 0: no fine-tuning epoch beat the starting weights, which were kept
        "trainable_layers": len(trainable),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "seconds": seconds,
    }
    if kept is not None:
        row = history.loc[history["epoch"] == kept + 1].iloc[0]
        numbers.update(
            {f"best_{name}": float(row[name]) for name in history.columns if name not in ("epoch", "learning_rate")}
        )
        numbers["kept_epoch"] = kept + 1
    return numbers


def empty_history() -> pd.DataFrame:
    """The history of a run that did not fine-tune (the plots file must exist all the same)."""
    return pd.DataFrame(columns=["epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate"])


@dataclass(frozen=True)
class FineTuned:
    """What fine-tuning made: the classifier handed on, its history and numbers."""

    classifier: keras.Model  # raw 0-255 RGB images in, probabilities out
    history: pd.DataFrame  # one row per fine-tuning epoch (``empty_history`` when it is off)
    metrics: dict[str, float]  # for metrics/finetune.json (``summarize``, plus the head's epochs and the schedule)
    steps: int  # the training steps this process took


def train_classifier(params: Params, spread: strategy.Spread, run: runs.StageRun | None) -> FineTuned:
    """Put the best head back on the backbone under the strategy and, with ``finetune.enabled``, fine-tune it.

    ``run`` is None on a multi-worker worker, which trains in step with the chief and logs nothing.
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
        head = classifier.load_head(params.path("head_model"))
        model = assemble(backbone, core, head, size, augmentation_layers(params.augment, params.seed))
        metrics: dict[str, float] = {"head_epochs": head_epochs}
        frame = empty_history()
        if params.finetune.enabled:
            frame, numbers = _train_from_images(model, core, backbone, params, spread, run, [steps], head_epochs)
            metrics.update(numbers)
    return FineTuned(with_probabilities(model), frame, metrics, steps.steps)


def _train_from_images(
    model: keras.Model,
    core: keras.Model,
    backbone: backbones.Backbone,
    params: Params,
    spread: strategy.Spread,
    run: runs.StageRun | None,
    callbacks: list[keras.callbacks.Callback],
    head_epochs: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Unfreeze the top of the backbone and fine-tune from the train images; the history and its numbers."""
    train, val = (split.read_split_files(params.path("splits"), name, params.root) for name in ("train", "val"))
    trainable = unfreeze(core, backbone, params.finetune)
    settings, reason, effective = _schedule(params.finetune, len(train.paths), spread.replicas)
    print(f"finetune: schedule {reason}")
    metrics: dict[str, float] = {
        "learning_rate_peak": float(settings.learning_rate),
        "epochs_planned": int(settings.epochs),
    }
    batches = make_batches(
        train, val, size=classifier.input_size(model), crop=params.backbone.crop, params=settings, seed=params.seed
    )
    if spread.strategy is not None:
        batches = dataclasses.replace(batches, train=strategy.shard(batches.train), val=strategy.shard(batches.val))
    if run is not None:
        run.set_tags({"schedule_rule": reason})
        run.log_params({f"distribution.{k}": v for k, v in effective.items()})
        callbacks = [*callbacks, fitting.EpochLog(run.log_metrics)]
    started = time.perf_counter()
    weights = fitting.class_weights(train.labels, len(train.classes), params.train_head.class_weight)
    history, start, kept = fine_tune(
        model, batches, settings, params.tune.objective, weights, initial_epoch=head_epochs, callbacks=callbacks
    )
    frame = fitting.history_frame(history, first_epoch=head_epochs + 1)
    if run is not None:
        run.log_dict({"trainable_layers": trainable}, "trainable_layers.json")
    seconds = time.perf_counter() - started
    metrics.update(summarize(frame, params.tune.objective, start, kept, trainable, model, seconds))
    return frame, metrics


def _schedule(params: FinetuneParams, train_images: int, replicas: int) -> tuple[FinetuneParams, str, dict[str, Any]]:
    """The resolved schedule (``resolve_schedule``) scaled to the replicas, its reason in words, and the
    effective distributed settings (``strategy.scale``)."""
    settings, reason = resolve_schedule(params, train_images)
    settings, effective = strategy.scale(settings, replicas)
    if replicas > 1:
        reason += f"; × {replicas} replicas (linear scaling)"
    return settings, reason, effective
