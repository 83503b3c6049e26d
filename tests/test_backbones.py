"""The backbone registry: every network builds, takes raw pixels, and fails clearly on bad weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.features import backbones, efficientnet_lite
from processes import free_port

# keras.applications' own input conventions, the reference our in-graph preprocessing must match.
KERAS_PREPROCESS = {
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "resnet50_v2": keras.applications.resnet_v2.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
    "xception": keras.applications.xception.preprocess_input,
    "inception_v3": keras.applications.inception_v3.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
}


def test_registry_matches_the_names_params_accept():
    assert tuple(backbones.REGISTRY) == config.BACKBONE_NAMES


@pytest.mark.parametrize("name", config.BACKBONE_NAMES)
def test_backbone_builds_without_weights_and_preprocesses_inside(name, tmp_path):
    backbone = backbones.get(name)
    size = max(backbone.min_size, 32)
    extractor, weights = backbones.build_extractor(backbone, size, "none", tmp_path, tmp_path / "cache")
    assert weights.sha256 == "none" and weights.file is None
    assert extractor.output_shape == (None, backbone.feature_width)
    assert extractor.input_shape == (None, size, size, 3)
    core = extractor.get_layer("backbone")
    assert not core.trainable

    raw = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = keras.ops.convert_to_numpy(extractor(raw, training=False))
    if backbone.preprocessing == "builtin":
        # The network rescales raw pixels itself: its first layers are fixed rescaling layers.
        kinds = {type(layer).__name__ for layer in core.layers[:4]}
        assert kinds & {"Rescaling", "Normalization"}, kinds
        reference_input = raw
    else:
        reference_input = KERAS_PREPROCESS[name](raw.copy())
    pooled = keras.ops.convert_to_numpy(keras.ops.mean(core(reference_input, training=False), axis=(1, 2)))
    np.testing.assert_allclose(features, pooled, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name",
    ["mobilenet_v2", "inception_v3", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "densenet121"],
)
def test_cut_points_name_increasing_positions(name, tmp_path):
    backbone = backbones.get(name)
    core, _ = backbones.build_backbone(backbone, max(backbone.min_size, 32), "none", tmp_path, tmp_path)
    positions = [backbones.cut_index(core.layers, backbone, cut) for cut in backbone.cut_points]
    assert positions == sorted(set(positions))
    assert positions[0] > 0 and positions[-1] < len(core.layers)
    with pytest.raises(UserError, match="not a cut point"):
        backbones.cut_index(core.layers, backbone, "no_such_block")


@pytest.mark.parametrize(
    ("name", "native_size"), [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_lite_imagenet_weights_come_from_their_own_package(name, native_size, tmp_path):
    variant = efficientnet_lite.VARIANTS[name]
    backbone = backbones.get(name)
    assert (backbone.default_size, backbone.feature_width, backbone.preprocessing) == (native_size, 1280, "builtin")
    extractor, weights = backbones.build_extractor(backbone, 32, "imagenet", tmp_path, tmp_path / "cache")
    assert weights.file.name == variant.weights_file and weights.sha256 == variant.weights_sha256
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [f"{name}_{variant.weights_sha256[:16]}.npz"]
    assert extractor.output_shape == (None, 1280)


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(UserError, match=r"cannot load mobilenet_v2 weights from .*weights\.h5"):
        backbones.build_extractor(backbones.get("mobilenet_v2"), 32, "weights.h5", tmp_path, tmp_path)
    with pytest.raises(UserError, match=r"EfficientNet-Lite0 weights from .*weights\.h5"):
        backbones.build_extractor(backbones.get("efficientnet_lite0"), 32, str(bad), tmp_path, tmp_path)


def test_missing_weights_path_names_the_choices(tmp_path):
    with pytest.raises(UserError, match=r"'imagenet', 'none' or an existing weights file"):
        backbones.build_extractor(backbones.get("vgg16"), 32, "nowhere.h5", tmp_path, tmp_path)


def test_too_small_an_input_is_refused(tmp_path):
    with pytest.raises(UserError, match="xception needs at least 71 px"):
        backbones.build_extractor(backbones.get("xception"), 64, "none", tmp_path, tmp_path)


def test_failed_imagenet_download_says_which_file_where_and_what_else(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    backbone = backbones.get("mobilenet_v2")
    origin = f"http://127.0.0.1:{free_port()}/weights.h5"
    with pytest.raises(UserError) as caught:
        backbones.fetch_keras_weights(backbone, 96, origin=origin)
    message = str(caught.value)
    expected_file = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    assert expected_file in message
    assert str(tmp_path / "keras" / "models" / expected_file) in message
    assert "backbone.weights: none" in message and "efficientnet_lite0" in message and "local weights file" in message
    assert not (tmp_path / "keras" / "models" / expected_file).exists()


def test_keras_file_without_a_keras_hash_is_pinned_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    backbone = backbones.get("mobilenet_v2")
    assert backbone.imagenet.keras_hash is None  # the case Keras itself does not verify
    cached = backbones.keras_cache_file(backbone.imagenet, 224)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights as first downloaded")
    origin = f"http://127.0.0.1:{free_port()}/unused.h5"

    assert backbones.fetch_keras_weights(backbone, 224, origin=origin) == cached
    assert Path(f"{cached}.sha256").read_text().strip() == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert backbones.fetch_keras_weights(backbone, 224, origin=origin) == cached

    cached.write_bytes(b"weights changed later")
    with pytest.raises(UserError, match="changed since it was downloaded"):
        backbones.fetch_keras_weights(backbone, 224, origin=origin)


def test_mobilenet_v2_weights_follow_the_input_size():
    weights = backbones.get("mobilenet_v2").imagenet
    assert backbones.keras_cache_file(weights, 160).name.endswith("_1.0_160_no_top.h5")
    assert backbones.keras_cache_file(weights, 100).name.endswith("_1.0_224_no_top.h5")


def test_caffe_preprocessing_is_exact():
    layers = backbones.preprocessing_layers("caffe")
    raw = np.random.default_rng(1).integers(0, 256, (1, 4, 4, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(raw.copy())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layers(raw)), expected)
