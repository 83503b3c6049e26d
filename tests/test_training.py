"""What both training phases share: keeping the best epoch (with the loss breaking accuracy ties), the
warm-up + cosine learning rate, and the label-smoothed loss."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline.training import fitting


def _tiny_model() -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def _kept(keep: fitting.KeepBest, model: keras.Model, logs: list[dict[str, float]]) -> float:
    """Run the callback over epochs whose logs are given, as ``fit`` would; epoch i's weights are all i + 1
    and the starting weights 0. Returns the weight the model ends with: which epoch was kept (0: the start)."""
    model.layers[-1].kernel.assign(np.zeros((2, 2), np.float32))
    model.stop_training = False
    keep.set_model(model)
    keep.on_train_begin()
    for epoch, values in enumerate(logs):
        model.layers[-1].kernel.assign(np.full((2, 2), float(epoch + 1), np.float32))
        keep.on_epoch_end(epoch, values)
        if model.stop_training:
            break
    keep.on_train_end()
    return float(model.layers[-1].kernel.numpy()[0, 0])


def test_an_accuracy_tie_goes_to_the_lower_loss():
    model = _tiny_model()
    logs = [
        {"val_accuracy": 0.9, "val_loss": 0.30},
        {"val_accuracy": 0.9, "val_loss": 0.20},
        {"val_accuracy": 0.9, "val_loss": 0.25},
    ]
    keep = fitting.KeepBest("val_accuracy", patience=5, start_score=0.9, tie_break="val_loss", start_tie=0.4)
    assert _kept(keep, model, logs) == 2.0 and keep.best_epoch == 1
    # Without the tie-break, equal accuracy never beats the start: the starting weights stay.
    plain = fitting.KeepBest("val_accuracy", patience=5, start_score=0.9)
    assert _kept(plain, model, logs) == 0.0 and plain.best_epoch is None


def test_higher_accuracy_beats_a_lower_loss_and_a_tie_with_a_higher_loss_is_no_gain():
    model = _tiny_model()
    logs = [
        {"val_accuracy": 0.95, "val_loss": 0.5},
        {"val_accuracy": 0.9, "val_loss": 0.1},
        {"val_accuracy": 0.95, "val_loss": 0.6},
        {"val_accuracy": 0.95, "val_loss": 0.7},
    ]
    keep = fitting.KeepBest("val_accuracy", patience=2, start_score=0.9, tie_break="val_loss", start_tie=0.2)
    assert _kept(keep, model, logs) == 1.0 and keep.best_epoch == 0
    assert model.stop_training  # two epochs without a gain after epoch 0 (the tie at a higher loss is none)


def test_warmup_then_cosine_down_to_zero():
    schedule = fitting.warmup_cosine(1e-3, total_steps=100, warmup_fraction=0.1)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates[0] == pytest.approx(0.0, abs=1e-12)
    assert rates[1] == pytest.approx(0.5e-3)  # halfway up the linear warm-up
    assert rates[2] == pytest.approx(1e-3)  # the peak
    assert rates[3] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))  # halfway down the cosine
    assert rates[4] == pytest.approx(0.0, abs=1e-9)
    short = fitting.warmup_cosine(1e-3, total_steps=2, warmup_fraction=0.1)  # no step to warm up in
    assert float(short(0)) == pytest.approx(1e-3) and float(short(1)) == pytest.approx(0.5e-3)


def test_the_smoothed_loss_is_cross_entropy_against_smoothed_targets():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    smoothing = 0.1
    expected = []
    for row, label in zip(logits, labels, strict=True):
        log_p = row - np.log(np.exp(row).sum())
        target = np.full(3, smoothing / 3)
        target[label] += 1 - smoothing
        expected.append(-(target * log_p).sum())
    loss = fitting.SmoothedSparseCrossentropy(smoothing)
    assert float(loss(labels, logits)) == pytest.approx(np.mean(expected), rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(fitting.SmoothedSparseCrossentropy(1e-9)(labels, logits)) == pytest.approx(
        float(plain(labels, logits)), rel=1e-5
    )
