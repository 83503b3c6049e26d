"""Tiny Keras-side data the tests make: cached features of three separable classes, and a small saved classifier.

Kept apart from ``samples.py`` because it loads TensorFlow, which ``conftest.py`` must not pay for.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.core import files
from pipeline.features.extraction import FeatureSet

#: The classes of :func:`tiny_features`.
FEATURE_CLASSES = ("ant", "bee", "wasp")


def tiny_features(per_class: int, seed: int, width: int = 12) -> FeatureSet:
    """Three Gaussian clusters: separable enough for a head to learn in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(len(FEATURE_CLASSES), width))
    labels = np.repeat(np.arange(len(FEATURE_CLASSES)), per_class).astype(np.int32)
    values = (centres[labels] + rng.normal(0, 1, size=(len(labels), width))).astype(np.float32)
    names = np.array([f"img{i}.png" for i in range(len(labels))])
    return FeatureSet(values, labels, names, names, FEATURE_CLASSES)


def build_model(path: Path, classes: int) -> Path:
    """A small classifier of raw 0-255 images whose probabilities clearly differ from image to image."""
    keras.utils.set_random_seed(7)
    images = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        classes, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=20.0, seed=3)
    )(x)
    files.save_model(keras.Model(images, outputs), path)
    return path
