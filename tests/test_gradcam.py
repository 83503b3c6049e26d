"""Grad-CAM: a hand-built classifier whose heatmaps are known, every registry backbone, the layer
contract, and the overlay."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.core import config
from pipeline.evaluation import gradcam
from pipeline.features import backbones
from pipeline.training import finetune, head

SIZE = 32
HALF = SIZE // 2


def _no_augmentation() -> keras.Sequential:
    return finetune.augmentation_layers(config.AugmentParams("none", 0.0, 0.0, 0.0), seed=0)


def _colour_detector() -> keras.Model:
    """Assembled like finetune.assemble: feature 0 is the red channel, feature 1 the green one (fixed
    weights), pooled 4x4 to an 8x8 map so the heatmap goes through a real resize. Logit 0 is red minus
    green, logit 1 green minus red: the other colour counts against a class, which the ReLU must drop."""
    images = keras.Input((SIZE, SIZE, 3))
    colours = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", trainable=False)
    x = keras.layers.AveragePooling2D(4)(colours(images))
    core = keras.Model(images, x, name="backbone")
    colours.set_weights([np.eye(3, 2, dtype="float32").reshape(1, 1, 3, 2)])
    features = keras.Input((2,))
    logits = keras.layers.Dense(2, trainable=False)
    head_model = keras.Model(features, logits(features), name="head")
    logits.set_weights([np.array([[1, -1], [-1, 1]], dtype="float32"), np.zeros(2, dtype="float32")])
    return finetune.assemble(backbones.get("efficientnet_lite0"), core, head_model, SIZE, _no_augmentation())


def _red_top_left_green_bottom_right() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[:HALF, :HALF, 0] = 255
    image[HALF:, HALF:, 1] = 255
    return image


def test_heatmaps_point_at_the_evidence_for_each_class_and_survive_saving(tmp_path):
    model = _colour_detector()
    image = _red_top_left_green_bottom_right()
    maps = gradcam.grad_cam(model, np.stack([image, image]), np.array([0, 1]))
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    red, green = maps
    assert np.unravel_index(red.argmax(), red.shape) < (HALF, HALF)
    assert min(np.unravel_index(green.argmax(), green.shape)) >= HALF
    assert red[:HALF, :HALF].sum() / red.sum() > 0.85
    assert green[HALF:, HALF:].sum() / green.sum() > 0.85
    np.testing.assert_array_equal(red[-8:, -8:], 0)  # far from any red: nothing, not just little
    np.testing.assert_array_equal(green[:8, :8], 0)

    path = tmp_path / "model.keras"
    finetune.with_probabilities(model).save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        gradcam.grad_cam(loaded, np.stack([image, image]), [0, 1], batch_size=1), maps, atol=1e-6
    )


def test_an_image_without_evidence_gets_an_all_zero_map_not_nan():
    image = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    image[0, :HALF, :HALF, 0] = 255  # red only: no evidence for class 1 (green)
    maps = gradcam.grad_cam(_colour_detector(), np.concatenate([image, image * 0]), np.array([1, 0]))
    np.testing.assert_array_equal(maps, 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(backbones.REGISTRY))
def test_every_registry_backbone_gives_bounded_heatmaps_at_the_input_size(name):
    entry = backbones.get(name)
    size = max(SIZE, entry.min_size)
    core, _ = backbones.build_backbone(entry, size, "none", None, None)
    head_model = head.build_head(entry.feature_width, 3, head.HeadSettings(0, 8, "relu", 0.0, "adam", 1e-3, 8))
    model = finetune.assemble(entry, core, head_model, size, _no_augmentation())
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    maps = gradcam.grad_cam(model, images, np.array([0, 2]))
    assert maps.shape == (2, size, size) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_a_model_without_a_backbone_layer_is_refused_by_name():
    images = keras.Input((SIZE, SIZE, 3), name="images")
    x = backbones.preprocessing_layers("builtin")(images)
    x = keras.layers.Conv2D(2, 1, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(images, keras.layers.Dense(2, name="head")(x))
    with pytest.raises(ValueError, match="no layer named 'backbone'"):
        gradcam.grad_cam(model, np.zeros((1, SIZE, SIZE, 3)), np.array([0]))


def test_overlay_blends_the_jet_heatmap_over_the_image():
    image = _red_top_left_green_bottom_right()
    heatmap = np.tile(np.linspace(0, 1, SIZE, dtype=np.float32), (SIZE, 1))
    np.testing.assert_array_equal(gradcam.overlay(image, heatmap, alpha=0.0), image)
    blended = gradcam.overlay(image, heatmap)
    assert blended.dtype == np.uint8 and blended.shape == image.shape
    assert (blended != image).any(axis=-1).mean() > 0.9
    only_heatmap = gradcam.overlay(image, heatmap, alpha=1.0)
    assert tuple(only_heatmap[0, 0]) == (0, 0, 128) and tuple(only_heatmap[0, -1]) == (128, 0, 0)  # jet: blue to red
