"""The classifier head: trained on cached backbone features, later put back on the backbone.

The head is ``Normalization → Dropout → [Dense(units, activation) → Dropout] × n → Dense(classes)``
(every Dense kernel with an L2 penalty of ``l2``) and outputs logits (the loss is computed from logits,
which is numerically safer than from probabilities); the softmax is added only where a full model hands
out probabilities.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.config import TrainHeadParams
from pipeline.features import store
from pipeline.features.extraction import FeatureSet
from pipeline.training import fitting

HEAD_NAME = "head"
STEPS_PER_EXECUTION = 16  # training steps per call of the compiled graph: same weights, less overhead (fitting)


@dataclass(frozen=True)
class HeadSettings:
    """One point of the head's search space: everything that shapes and trains a head."""

    hidden_layers: int
    units: int
    activation: str
    dropout: float
    optimizer: str
    learning_rate: float
    batch_size: int
    l2: float = 0.0  # penalty on every Dense kernel, per weight, added to the mean loss

    @classmethod
    def from_params(cls, params: TrainHeadParams) -> HeadSettings:
        """The fixed values under ``train_head`` in params.yaml."""
        return cls(**{f.name: getattr(params, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> HeadSettings:
        """Settings from a mapping such as ``best_hparams.yaml`` or a tuner trial (other keys ignored)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for YAML and MLflow."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FeatureScale:
    """Per-feature mean and variance of the train split: the head standardises its input with them."""

    mean: np.ndarray
    variance: np.ndarray


def feature_scale(features: np.ndarray) -> FeatureScale:
    """The train features' per-feature mean and variance, in two passes over blocks of rows.

    Float64 accumulators (the mean first, then the squared deviations from it), so the result is the
    same on every run and as exact as NumPy's over the whole array, without holding more than a
    block in memory (``features`` may be memory-mapped and larger than memory).
    """
    total = np.zeros(features.shape[1], dtype=np.float64)
    for block in store.iter_blocks(features):
        total += block.sum(axis=0, dtype=np.float64)
    mean = total / len(features)
    squares = np.zeros_like(total)
    for block in store.iter_blocks(features):
        squares += np.square(block.astype(np.float64) - mean).sum(axis=0)
    return FeatureScale(mean, squares / len(features))


def build_head(
    feature_width: int, num_classes: int, settings: HeadSettings, scale: FeatureScale | None = None
) -> keras.Model:
    """A compiled head: pooled features in, class logits out.

    Args:
        feature_width: the backbone's pooled feature width.
        num_classes: the number of classes.
        settings: layers, widths, dropout, L2 penalty and optimizer.
        scale: the train features' statistics: the head standardises its input (a ``Normalization``
            layer, saved with it), so that one L2 penalty and one learning rate mean the same for every
            feature. None: no standardisation.
    """
    features = keras.Input((feature_width,), name="features")
    x = features
    if scale is not None:
        x = keras.layers.Normalization(mean=scale.mean, variance=scale.variance, name="standardize")(x)
    x = keras.layers.Dropout(settings.dropout, name="dropout_0")(x)
    penalty = keras.regularizers.L2(settings.l2) if settings.l2 else None
    for index in range(1, settings.hidden_layers + 1):
        x = keras.layers.Dense(
            settings.units, activation=settings.activation, kernel_regularizer=penalty, name=f"dense_{index}"
        )(x)
        x = keras.layers.Dropout(settings.dropout, name=f"dropout_{index}")(x)
    logits = keras.layers.Dense(num_classes, kernel_regularizer=penalty, name="logits")(x)
    model = keras.Model(features, logits, name=HEAD_NAME)
    fitting.compile_classifier(
        model, settings.optimizer, settings.learning_rate, steps_per_execution=STEPS_PER_EXECUTION
    )
    return model


def fit_head(
    model: keras.Model,
    train: FeatureSet,
    val: FeatureSet,
    settings: HeadSettings,
    params: TrainHeadParams,
    objective: str,
    callbacks: list[keras.callbacks.Callback] | None = None,
    seed: int = 0,
    **fit_options: Any,
) -> keras.callbacks.History:
    """Train a head on cached features; stops early on ``objective`` and keeps the best epoch.

    Args:
        model: from ``build_head``.
        train: the train split's features.
        val: the val split's features.
        settings: the batch size is taken from here.
        params: epochs, patience and class weighting.
        objective: the monitored val metric.
        callbacks: more callbacks (the tuner's, logging).
        seed: the seed of the train rows' order (a new order each epoch; ``stream_batches``).
        **fit_options: passed to ``model.fit`` (the tuner sets ``epochs`` and ``initial_epoch``).

    Returns:
        The training history.
    """
    fit_options.setdefault("epochs", params.epochs)
    fit_options.setdefault("verbose", 0)
    return model.fit(
        stream_batches(train.features, train.labels, settings.batch_size, seed),
        validation_data=stream_batches(val.features, val.labels, settings.batch_size),
        shuffle=False,  # stream_batches shuffles the rows itself (Keras would warn that it ignores shuffle=True)
        class_weight=fitting.class_weights(train.labels, len(train.classes), params.class_weight),
        callbacks=[fitting.KeepBest(objective, params.patience), *(callbacks or [])],
        **fit_options,
    )


def stream_batches(
    features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | None = None
) -> tf.data.Dataset:
    """Features and labels as a ``tf.data`` stream of batches read window by window (``store.iter_windows``).

    With a seed, each pass over the dataset (each epoch of ``fit``) visits the rows in a new order,
    the same for the same seed and epoch; without one, in row order (validation). Memory holds a
    shuffle window, never the whole set, whether ``features`` is memory-mapped or in memory.

    Args:
        features: ``(n, width)`` features.
        labels: their labels.
        batch_size: rows per batch.
        seed: shuffles with this seed; None: no shuffling.
    """
    epochs = itertools.count()

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = next(epochs)
        for values, targets in store.iter_windows(features, labels, seed, epoch):
            yield as_inputs(values), targets.astype(np.int64)

    signature = (
        tf.TensorSpec((None, features.shape[1]), tf.float32),
        tf.TensorSpec((None,), tf.int64),
    )
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    # Windows in, batches out: rebatch cuts them in TensorFlow (and carries a window's last rows into
    # the next batch), where a generator yielding every batch costs a Python call per step.
    batches = dataset.rebatch(batch_size).apply(
        tf.data.experimental.assert_cardinality(math.ceil(len(features) / batch_size))
    )
    return batches.prefetch(2)


def as_inputs(features: np.ndarray) -> np.ndarray:
    """Stored features (float16 or float32) as the float32 the head computes in."""
    return np.asarray(features, dtype=np.float32)
