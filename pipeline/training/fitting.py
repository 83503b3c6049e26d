"""What both training phases (the head on cached features, then fine-tuning) share: seeding,
optimizers, class weights, keeping the best epoch, and per-epoch histories as tables."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import keras
import numpy as np
import pandas as pd

Mode = Literal["max", "min"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the backend, so weight initialisation, dropout and shuffling repeat."""
    keras.utils.set_random_seed(seed)


LearningRate: TypeAlias = float | keras.optimizers.schedules.LearningRateSchedule


def make_optimizer(name: str, learning_rate: LearningRate) -> keras.optimizers.Optimizer:
    """An optimizer by name; SGD gets Nesterov momentum 0.9, without which it barely moves at low rates.
    AdamW keeps Keras's weight decay (0.004, decoupled from the gradient)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine(peak: float, total_steps: int, warmup_fraction: float) -> keras.optimizers.schedules.CosineDecay:
    """A learning rate that rises linearly from 0 to ``peak`` over the first ``warmup_fraction`` of the
    steps, then falls along a half cosine to 0 at ``total_steps``.

    The warm-up lets a freshly unfrozen backbone adjust to the head's gradients before the rate is high
    enough to wreck its features; the decay ends training at a low rate, where the weights settle.
    """
    warmup = int(round(total_steps * warmup_fraction))
    if warmup == 0:  # Keras's schedule would start at its initial rate, 0, and stay there
        return keras.optimizers.schedules.CosineDecay(peak, max(total_steps, 1), alpha=0.0)
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(total_steps - warmup, 1), alpha=0.0, warmup_target=peak, warmup_steps=warmup
    )


@keras.saving.register_keras_serializable(package="headstart")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits against integer labels with label smoothing (Keras's sparse loss has none):
    the target is ``1 - smoothing`` on the true class and ``smoothing / classes`` spread over all."""

    def __init__(self, smoothing: float, name: str = "smoothed_sparse_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        classes = keras.ops.shape(y_pred)[-1]
        targets = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(targets, y_pred, from_logits=True, label_smoothing=self.smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smoothing": self.smoothing}


def compile_classifier(
    model: keras.Model,
    optimizer: str,
    learning_rate: LearningRate,
    label_smoothing: float = 0.0,
    steps_per_execution: int = 1,
) -> None:
    """Compile a model that outputs logits: cross-entropy from logits (label-smoothed when asked), accuracy
    by label index.

    ``steps_per_execution`` training steps run in one call of the compiled graph: the same steps in the
    same order (the same weights, bit for bit), with Python's per-step overhead paid once per call. It pays
    where a step is short (a head on cached features, 16 steps per call); batch-level callbacks and the
    progress bar then see one call as one batch. XLA (``jit_compile``) stays off: on CPU it made both the
    head and the fine-tuning step several times slower, and Keras refuses it for the fine-tuning model as
    built (RandomRotation and RandomZoom have no XLA kernel). Figures: docs/scale.md, "Faster training on CPU".
    """
    loss = (
        SmoothedSparseCrossentropy(label_smoothing)
        if label_smoothing
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
    # Built now, eagerly, rather than inside the first traced training step: variables created while
    # tracing leave one uncollectable TensorFlow graph per optimizer behind, which a tuner building a
    # model per trial would pile up (about half of what a trial left behind: docs/benchmarks.md, "Head search speed").
    model.optimizer.build(model.trainable_variables)


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """Per-class loss weights: ``balanced`` weighs each class by ``n / (classes * count)``, ``none`` by 1.

    Args:
        labels: training labels (class indices).
        num_classes: the number of classes.
        mode: ``balanced`` or ``none``.

    Returns:
        The weights for ``model.fit(class_weight=...)``, or None for ``none``.
    """
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    return {int(c): float(len(labels) / (present.sum() * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}


def objective_mode(objective: str) -> Mode:
    """Whether an objective improves upwards (accuracy) or downwards (loss)."""
    return "min" if objective.endswith("loss") else "max"


class KeepBest(keras.callbacks.Callback):
    """Early stopping that restores the best epoch's weights, where the weights training started from
    can count as a candidate (``start_score``), so fine-tuning never hands on a model worse on val
    than the one it started from.

    With ``tie_break`` (a loss, e.g. ``val_loss``), an epoch that equals the best accuracy is better
    when it has the lower loss: on a small val set, accuracy moves in steps of one image and often
    ties, while the loss still tells a more confident model from a less confident one.

    Args:
        monitor: the logged metric to watch, e.g. ``val_accuracy``.
        patience: epochs without improvement before training stops.
        start_score: the monitored value of the starting weights, or None when they do not count.
        tie_break: the logged loss that decides between equal values of ``monitor``, or None.
        start_tie: the tie-break's value for the starting weights.
    """

    def __init__(
        self,
        monitor: str,
        patience: int,
        start_score: float | None = None,
        tie_break: str | None = None,
        start_tie: float | None = None,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.mode = objective_mode(monitor)
        self.patience = patience
        self.start_score = start_score
        self.tie_break, self.start_tie = tie_break, start_tie
        self.best_epoch: int | None = None  # None: the starting weights were never beaten

    def on_train_begin(self, logs: dict | None = None) -> None:
        worst = -math.inf if self.mode == "max" else math.inf
        self.best = worst if self.start_score is None else self.start_score
        self.best_tie = math.inf if self.start_tie is None or self.start_score is None else self.start_tie
        self.best_weights = None if self.start_score is None else self.model.get_weights()
        self.best_epoch, self.wait = None, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"{self.monitor} is not among the logged metrics: {sorted(logs or {})}")
        tie = math.inf if self.tie_break is None else float((logs or {}).get(self.tie_break, math.inf))
        better = (value > self.best) if self.mode == "max" else (value < self.best)
        if better or (value == self.best and tie < self.best_tie):
            self.best, self.best_tie, self.best_epoch, self.wait = float(value), tie, epoch, 0
            self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class EpochLog(keras.callbacks.Callback):
    """Hands each epoch's metrics and the optimizer's learning rate to ``log(metrics, step)``.

    Steps are 1-based epoch numbers; with ``fit(initial_epoch=k)`` they continue at k + 1, so the
    fine-tuning epochs follow the head's in MLflow's charts.
    """

    def __init__(self, log: Callable[[dict[str, float], int], None]) -> None:
        super().__init__()
        self.log = log

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        metrics.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self.log(metrics, epoch + 1)


def history_frame(history: dict[str, list[float]], first_epoch: int = 1) -> pd.DataFrame:
    """A Keras history as a table with an ``epoch`` column (1-based, continuing from ``first_epoch``).

    Args:
        history: ``History.history``: metric name → one value per epoch.
        first_epoch: the number of the first epoch in this history.
    """
    frame = pd.DataFrame({name: [float(v) for v in values] for name, values in history.items()})
    frame.insert(0, "epoch", range(first_epoch, first_epoch + len(frame)))
    return frame
