"""The reference on frozen features: a plain multinomial logistic regression.

The datasets' README quotes "a logistic regression on EfficientNet-Lite0 ImageNet features" on its own
80/20 split (docs/benchmarks.md, "Test accuracy"). This is that model on the *same* cached features, split
and test images as the pipeline's tuned head, so the two compare directly: one Dense softmax layer, no hidden layer, no
dropout, an L2 penalty of ``1 / (2 n)`` per weight (scikit-learn's default ``C=1`` written as a mean loss), Adam
at 1e-3, and the pipeline's early stopping (the epoch best on val accuracy is kept).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.features import extraction
from pipeline.training import fitting

LEARNING_RATE = 1e-3
EPOCHS = 200  # at most; early stopping on val ends sooner
PATIENCE = 10
BATCH_SIZE = 64


def build_model(width: int, num_classes: int, train_size: int) -> keras.Model:
    """Features in, class logits out: one Dense layer with scikit-learn's default L2 penalty."""
    inputs = keras.Input((width,), name="features")
    logits = keras.layers.Dense(
        num_classes, kernel_regularizer=keras.regularizers.L2(1 / (2 * train_size)), name="logits"
    )(inputs)
    return keras.Model(inputs, logits, name="logistic_regression")


def train_and_score(features_dir: Path, seed: int) -> dict[str, Any]:
    """Fit on the cached train features, keep the best epoch on val, score the test features once.

    Args:
        features_dir: the extract stage's output (``train.npz``, ``val.npz``, ``test.npz``).
        seed: seeds the weights and the batch order.

    Returns:
        Test accuracy, the predicted class of each test image (``predicted``), the best val accuracy, the
        kept epoch, epochs trained and seconds.
    """
    started = time.perf_counter()
    train, val, test = (extraction.read_feature_set(features_dir / f"{name}.npz") for name in ("train", "val", "test"))
    fitting.seed_everything(seed)
    model = build_model(train.features.shape[1], len(train.classes), len(train.labels))
    fitting.compile_classifier(model, "adam", LEARNING_RATE)
    keep = fitting.KeepBest("val_accuracy", PATIENCE)
    history = model.fit(
        train.features,
        train.labels,
        validation_data=(val.features, val.labels),
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        callbacks=[keep],
        verbose=0,
    )
    predicted = model.predict(test.features, verbose=0).argmax(axis=1)
    return {
        "accuracy": float(np.mean(predicted == test.labels)),
        "predicted": predicted,
        "best_val_accuracy": float(keep.best),
        "kept_epoch": (keep.best_epoch or 0) + 1,
        "epochs_trained": len(history.history["loss"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
