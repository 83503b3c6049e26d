"""The from-scratch baseline: a small CNN in the lecture notes' style, no pretrained weights.

The network is the small-data convnet of the notes (Chollet, *Deep Learning with Python*, listing 5.13): a stack
of 3x3 Conv2D + ReLU + 2x2 MaxPooling2D blocks (32, 64, 128, 128 filters; as many blocks as the input size
allows), Flatten, Dropout(0.5), Dense(512, ReLU) and the class logits, behind augmentation layers (flips, small
turns, zooms and shifts, active only in training) and a Rescaling(1/255). Adam at 1e-3, the pipeline's
balanced class weights, and the pipeline's early stopping: the epoch best on val accuracy is kept.

Images are decoded once, by the pipeline's own input pipeline (``inputs.image_dataset``, centre crop) at a
small size, and held in memory as uint8: a CNN from scratch needs many epochs, and decoding the files on
every epoch would cost more than training on 64 px images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import progress
from pipeline.data.split import SplitFiles
from pipeline.features import inputs
from pipeline.training import fitting

FILTERS = (32, 64, 128, 128)
LEARNING_RATE = 1e-3
PATIENCE = 5  # epochs without a better val accuracy before training stops
DECODE_BATCH = 256


@dataclass(frozen=True)
class Images:
    """One split decoded into memory."""

    pixels: np.ndarray  # uint8, (n, size, size, 3)
    labels: np.ndarray  # int32 class indices


def load_images(split: SplitFiles, size: int) -> Images:
    """Decode a split's files at ``size`` x ``size`` (centre crop) with the pipeline's input pipeline.

    Args:
        split: the files and labels of one split (``split.read_split_files``).
        size: the square side in pixels.

    Returns:
        The pixels as uint8 and the labels.
    """
    batches = inputs.image_dataset(split.paths, size, "center", DECODE_BATCH)
    pixels = [np.clip(np.rint(batch.numpy()), 0, 255).astype(np.uint8) for batch in batches]
    return Images(np.concatenate(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8), split.labels)


def conv_blocks(size: int) -> int:
    """How many conv/pool blocks fit: each halves the side; stop before it would drop below 3 pixels."""
    return max(1, min(len(FILTERS), int(math.log2(size / 3))))


def build_model(size: int, num_classes: int, seed: int) -> keras.Model:
    """The CNN, logits out, for raw 0-255 RGB images of ``size`` x ``size``.

    Args:
        size: the input side in pixels.
        num_classes: the number of classes.
        seed: the augmentation layers' seed (weights are seeded by ``fitting.seed_everything``).
    """
    layers: list[keras.layers.Layer] = [
        keras.Input((size, size, 3), name="images"),
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 3),
        keras.layers.Rescaling(1.0 / 255),
    ]
    for filters in FILTERS[: conv_blocks(size)]:
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(2)]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(num_classes),
    ]
    return keras.Sequential(layers, name="scratch_cnn")


def batches(images: Images, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(float32 pixels, labels) batches from memory; shuffled anew every epoch when a seed is given."""
    data = tf.data.Dataset.from_tensor_slices((images.pixels, images.labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(images.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


def train_and_score(
    train: SplitFiles,
    val: SplitFiles,
    test: SplitFiles,
    size: int,
    epochs: int,
    patience: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Train the CNN on train, keep its best epoch on val, and score it on test.

    Args:
        train: the train split's files.
        val: the val split's files (early stopping).
        test: the test split's files (scored once, at the end).
        size: the input side in pixels.
        epochs: the most epochs to train.
        patience: epochs without a better val accuracy before stopping.
        batch_size: images per step.
        seed: seeds the weights, the shuffling and the augmentation.

    Returns:
        Test accuracy, the predicted class of each test image (``predicted``), the kept epoch, epochs trained,
        the parameter count and seconds per phase.
    """
    started = time.perf_counter()
    decoded = {name: load_images(split, size) for name, split in (("train", train), ("val", val), ("test", test))}
    decoded_at = time.perf_counter()
    fitting.seed_everything(seed)
    model = build_model(size, len(train.classes), seed)
    fitting.compile_classifier(model, "adam", LEARNING_RATE)
    keep = fitting.KeepBest("val_accuracy", patience)
    history = model.fit(
        batches(decoded["train"], batch_size, shuffle_seed=seed),
        validation_data=batches(decoded["val"], batch_size),
        epochs=epochs,
        shuffle=False,  # the dataset shuffles itself
        class_weight=fitting.class_weights(train.labels, len(train.classes), "balanced"),
        callbacks=[keep],
        verbose=progress.keras_verbosity(),
    )
    trained_at = time.perf_counter()
    predicted = model.predict(batches(decoded["test"], batch_size), verbose=0).argmax(axis=1)
    return {
        "accuracy": float(np.mean(predicted == test.labels)),
        "predicted": predicted,
        "best_val_accuracy": float(keep.best),
        "kept_epoch": (keep.best_epoch or 0) + 1,
        "epochs_trained": len(history.history["loss"]),
        "params": int(model.count_params()),
        "conv_blocks": conv_blocks(size),
        "decode_s": round(decoded_at - started, 1),
        "train_s": round(trained_at - decoded_at, 1),
        "test_s": round(time.perf_counter() - trained_at, 1),
    }
