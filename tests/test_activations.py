"""Activations and first-layer filters: stage outputs of a hand-built backbone with known maps, the real
EfficientNet-Lite0 layout (saved and loaded), the filters, the figures and the report section."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.core import config, figures
from pipeline.core.errors import UserError
from pipeline.evaluation import activations, analysis_report
from pipeline.features import backbones
from pipeline.training import finetune, head
from samples import write_image

SIZE = 32
PNG = b"\x89PNG\r\n\x1a\n"


def _no_augmentation() -> keras.Sequential:
    return finetune.augmentation_layers(config.AugmentParams("none", 0.0, 0.0, 0.0), seed=0)


def _classifier(core: keras.Model, preprocessing: str, width: int, size: int = SIZE) -> keras.Model:
    """``core`` under a two-class head, assembled as finetune.assemble does (with ``preprocessing``'s convention)."""
    entry = next(b for b in backbones.REGISTRY.values() if b.preprocessing == preprocessing)
    head_model = head.build_head(width, 2, head.HeadSettings(0, 4, "relu", 0.0, "adam", 1e-3, 4))
    return finetune.assemble(entry, core, head_model, size, _no_augmentation())


def _three_stage_backbone() -> keras.Model:
    """32 px: a Rescaling (the image, no stage), a stride-2 3x3 convolution whose centre tap copies the
    three colours into channels 0-2 (channel 3 is zero) → 16 px, pooling → 8 px with a squeeze-and-
    excitation branch through 1x1 (no stage of its own), then padding (skipped) and a stride-2 unpadded
    convolution → 4 px. Stage outputs: relu_a, se_excite, relu_c."""
    images = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0, name="rescaling")(images)
    conv_a = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv_a")
    x = keras.layers.ReLU(name="relu_a")(conv_a(x))
    x = keras.layers.MaxPooling2D(2, name="pool_b")(x)
    x = keras.layers.ReLU(name="relu_b")(keras.layers.Conv2D(6, 3, padding="same", name="conv_b")(x))
    squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(x)
    scale = keras.layers.Conv2D(6, 1, activation="sigmoid", name="se_expand")(squeeze)
    x = keras.layers.Multiply(name="se_excite")([x, scale])
    x = keras.layers.ZeroPadding2D(1, name="pad_c")(x)
    x = keras.layers.ReLU(name="relu_c")(keras.layers.Conv2D(5, 3, strides=2, name="conv_c")(x))
    core = keras.Model(images, x, name="backbone")
    kernel = np.zeros((3, 3, 3, 4), dtype="float32")
    kernel[1, 1, :, :3] = np.eye(3)
    conv_a.set_weights([kernel, np.zeros(4, dtype="float32")])
    return core


def _images(count: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.float32)


def test_stage_outputs_follow_resolution_drops_not_side_branches_padding_or_the_image():
    core = _three_stage_backbone()
    assert activations.stage_outputs(core) == ["relu_a", "se_excite", "relu_c"]
    assert activations.block_depths(core) == ["relu_a", "se_excite", "relu_c"]
    assert activations.block_depths(core, count=2) == ["relu_a", "relu_c"]
    assert activations.block_depths(core, count=1) == ["relu_c"]
    with pytest.raises(ValueError, match="at least 1"):
        activations.block_depths(core, count=0)


def test_activations_are_the_known_maps_after_the_classifier_preprocessing():
    model = _classifier(_three_stage_backbone(), "tf", 5)
    images = _images(3)
    relu_a, se_excite = activations.block_activations(model, images, ["relu_a", "se_excite"], batch_size=2)
    assert relu_a.shape == (3, 16, 16, 4) and se_excite.shape == (3, 8, 8, 6)
    assert relu_a.dtype == np.float32
    # 'tf' preprocessing is x / 127.5 - 1; the centre tap of output pixel i is input pixel 2i + 1
    expected = np.maximum(images[:, 1::2, 1::2] / 127.5 - 1.0, 0.0)
    np.testing.assert_allclose(relu_a[..., :3], expected, atol=1e-5)
    np.testing.assert_array_equal(relu_a[..., 3], 0)


def test_a_lite0_classifier_gets_spread_depths_and_the_sub_models_maps_also_once_saved(tmp_path):
    core, _ = backbones.build_backbone(backbones.get("efficientnet_lite0"), SIZE, "none", None, None)
    model = _classifier(core, "builtin", 1280)
    names = activations.block_depths(model.get_layer("backbone"))
    assert names == [
        "block2a_expand_activation",
        "block3a_expand_activation",
        "block6a_expand_activation",
        "top_activation",
    ]
    sides = [core.get_layer(name).output.shape[1] for name in names]
    assert sides == [16, 8, 2, 1]  # 32 px: halved at each stage, 4 px (block4a) left out to keep four

    images = _images(2, seed=1)
    maps = activations.block_activations(model, images, names)
    for name, found in zip(names, maps, strict=True):
        assert found.shape == (2, *core.get_layer(name).output.shape[1:])
        direct = keras.Model(core.input, core.get_layer(name).output)(images, training=False)
        np.testing.assert_allclose(found, keras.ops.convert_to_numpy(direct), rtol=1e-5, atol=1e-5)
    assert np.abs(maps[0]).max() > 0

    path = tmp_path / "model.keras"
    finetune.with_probabilities(model).save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert activations.block_depths(loaded.get_layer("backbone")) == names
    for before, after in zip(maps, activations.block_activations(loaded, images, names), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    kernel = activations.first_conv_filters(loaded.get_layer("backbone"))
    np.testing.assert_array_equal(kernel, keras.ops.convert_to_numpy(core.get_layer("stem_conv").kernel))
    assert kernel.shape == (3, 3, 3, 32)


def test_activations_refuse_a_model_without_the_layers_an_unknown_layer_and_other_sizes():
    images = keras.Input((SIZE, SIZE, 3), name="images")
    x = keras.layers.Conv2D(2, 1, name="conv")(images)
    bare = keras.Model(images, keras.layers.GlobalAveragePooling2D(name="features")(x))
    with pytest.raises(ValueError, match="no layer named 'preprocessing'"):
        activations.block_activations(bare, _images(1), ["conv"])
    model = _classifier(_three_stage_backbone(), "tf", 5)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        activations.block_activations(model, _images(1), ["nope"])
    with pytest.raises(ValueError, match="takes"):
        activations.block_activations(model, _images(1, size=SIZE * 2), ["relu_a"])


def test_first_conv_filters_are_the_first_conv2d_kernel_and_need_one():
    core = _three_stage_backbone()
    np.testing.assert_array_equal(
        activations.first_conv_filters(core), keras.ops.convert_to_numpy(core.get_layer("conv_a").kernel)
    )
    images = keras.Input((8, 8, 3))
    depthwise_only = keras.Model(images, keras.layers.DepthwiseConv2D(3)(images), name="backbone")
    with pytest.raises(ValueError, match="no Conv2D"):
        activations.first_conv_filters(depthwise_only)
    pooled_only = keras.Model(images, keras.layers.MaxPooling2D(2)(images), name="backbone")
    with pytest.raises(ValueError, match="no convolution"):
        activations.block_depths(pooled_only)


@pytest.mark.parametrize(("kind", "order"), [("builtin", [0, 1, 2]), ("tf", [0, 1, 2]), ("caffe", [2, 1, 0])])
def test_rgb_channels_find_where_the_preprocessing_puts_each_colour(kind, order):
    images = keras.Input((SIZE, SIZE, 3), name="images")
    x = backbones.preprocessing_layers(kind)(images)
    model = keras.Model(images, keras.layers.Conv2D(2, 1, name="conv")(x))
    assert activations.rgb_channels(model) == order


def test_the_most_active_channels_come_first_ties_in_channel_order_flat_maps_last():
    activation = np.zeros((2, 2, 5), dtype=np.float32)
    activation[..., 1] = 3.0
    activation[0, 0, 1] = 4.0  # mean 3.25
    activation[0, 0, 2] = 8.0  # mean 2
    activation[..., 3] = 3.0
    activation[0, 0, 3] = 4.0  # mean 3.25, a tie with channel 1
    activation[..., 4] = 6.0  # the highest mean, but the same everywhere: nothing to see
    assert activations.most_active_channels(activation, 3).tolist() == [1, 3, 2]
    assert activations.most_active_channels(activation, 10).tolist() == [1, 3, 2, 4, 0]


def test_filter_tiles_are_min_max_normalised_per_filter():
    kernel = np.zeros((2, 2, 3, 3), dtype=np.float32)
    kernel[..., 0] = np.arange(12, dtype=np.float32).reshape(2, 2, 3) * 10.0 - 50.0
    kernel[..., 1] = 7.0  # constant: mid grey
    kernel[0, 0, 0, 2], kernel[1, 1, 2, 2] = -1.0, 1.0
    tiles = activations.filter_tiles(kernel)
    assert tiles.shape == (3, 2, 2, 3) and tiles.dtype == np.float32
    np.testing.assert_allclose(tiles[0], np.arange(12).reshape(2, 2, 3) / 11.0, atol=1e-6)
    np.testing.assert_array_equal(tiles[1], 0.5)
    assert tiles[2, 0, 0, 0] == 0.0 and tiles[2, 1, 1, 2] == 1.0 and tiles[2, 0, 1, 1] == 0.5
    grey = activations.filter_tiles(np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1))
    assert grey.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def _drawn(figure) -> list:  # noqa: ANN001 - a matplotlib Figure
    """Every axes of a figure and its subfigures that shows an image, each once (the root may list them all)."""
    stack, found = [figure], {}
    while stack:
        part = stack.pop()
        found.update({id(axes): axes for axes in part.axes if axes.images})
        stack.extend(part.subfigs)
    return list(found.values())


def test_the_activation_grid_shows_the_image_and_the_most_active_maps_of_each_depth():
    image = _images(1)[0].astype(np.uint8)
    shallow = np.zeros((16, 16, 4), dtype=np.float32)
    shallow[..., 2] = 1.0
    deep = np.arange(4 * 4 * 12, dtype=np.float32).reshape(4, 4, 12)
    figure = activations.activation_grid(image, {"relu_a": shallow, "relu_c": deep}, channels=3, title="true: cat")
    drawn = _drawn(figure)
    assert len(drawn) == 1 + 3 + 3
    titles = {axes.get_title() for axes in drawn}
    assert {"image", "#2", "#11", "#10", "#9"} <= titles and "#0" in titles  # channel 2, then ties in order
    png, missing = figures.to_png(figure, dpi=40)
    assert png.startswith(PNG) and not missing


def test_the_filter_grid_draws_one_tile_per_filter():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 10)).astype(np.float32)
    figure = activations.filter_grid(kernel)
    assert len(_drawn(figure)) == 10
    png, _ = figures.to_png(figure, dpi=40)
    assert png.startswith(PNG)


def test_the_section_renders_one_grid_per_view_and_the_filters():
    model = _classifier(_three_stage_backbone(), "caffe", 5)
    views = list(_images(2, seed=2).astype(np.uint8))
    rendered = analysis_report.Rendered()
    section = analysis_report.activation_section(model, views, ["a: 1", "b: 2"], rendered, depths=2, channels=2)
    assert section.id == "activations" and section.title == "Activations and filters"
    assert set(rendered.pngs) == {"activations_0", "activations_1", "first_conv_filters"}
    assert len(section.images) == 3 and all(image.png.startswith(PNG) for image in section.images)
    assert "edges" in section.text and "first convolution" in section.text

    empty = analysis_report.Rendered()
    filters_only = analysis_report.activation_section(model, [], [], empty)
    assert set(empty.pngs) == {"first_conv_filters"} and len(filters_only.images) == 1

    images = keras.Input((SIZE, SIZE, 3), name="images")
    bare = keras.Model(images, keras.layers.Conv2D(2, 1, name="conv")(images))
    with pytest.raises(UserError, match="activations: .*'backbone'"):
        analysis_report.activation_section(bare, views, ["a", "b"], analysis_report.Rendered())


def test_activation_examples_are_the_most_confident_right_answers_one_per_class():
    predictions = pd.DataFrame(
        {
            "path": ["a.png", "b.png", "c.png", "d.png", "e.png"],
            "label": ["cat", "cat", "dog", "dog", "owl"],
            "predicted": ["cat", "cat", "dog", "cat", "owl"],
            "confidence": [0.7, 0.9, 0.8, 0.99, 0.8],
            "loss": [0.36, 0.1, 0.22, 4.6, 0.22],
            "correct": [True, True, True, False, True],
        }
    )
    chosen = analysis_report.activation_examples(predictions, 2)
    assert chosen["path"].tolist() == ["b.png", "c.png"]  # d is wrong; c and e tie, c comes first
    assert analysis_report.activation_examples(predictions, 5)["path"].tolist() == ["b.png", "c.png", "e.png"]


def test_model_views_are_uint8_images_at_the_model_input_size(tmp_path):
    model = _classifier(_three_stage_backbone(), "tf", 5)
    paths = [write_image(tmp_path / "wide.png", 0, size=(48, 20)), write_image(tmp_path / "small.png", 1)]
    views = analysis_report.model_views(model, paths, "center")
    assert [view.shape for view in views] == [(SIZE, SIZE, 3)] * 2 and views[0].dtype == np.uint8
    assert analysis_report.model_views(model, [], "center") == []
