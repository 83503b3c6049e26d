"""Fine-tuning: the best head back on its backbone, the top of the backbone unfrozen and trained from
images with augmentation at a low learning rate (the Keras transfer-learning guide's second phase).

The assembled classifier takes raw 0-255 RGB images: augmentation layers (active only in training),
the backbone's own preprocessing, the backbone called with ``training=False``, global average
pooling, the head (logits), and a softmax for the model handed on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from pipeline.core import progress
from pipeline.core.config import AugmentParams, FinetuneParams
from pipeline.core.errors import UserError
from pipeline.data.split import SplitFiles
from pipeline.features import backbones, inputs
from pipeline.training import fitting

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
    train: SplitFiles, val: SplitFiles, size: int, crop: inputs.Crop, params: FinetuneParams, seed: int
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


def load_head(path: Path) -> keras.Model:
    """The head saved by train_head (compiled state not needed: it is recompiled inside the classifier)."""
    return keras.saving.load_model(path, compile=False)


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
