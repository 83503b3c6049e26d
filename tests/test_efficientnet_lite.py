"""EfficientNet-Lite0, -Lite1 and -Lite2: the torch-free .pth reader, the conversion and its cache, the Keras models."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.features import torch_legacy
from pipeline.features.efficientnet_lite import (
    CUT_POINTS,
    FEATURE_WIDTH,
    LITE0,
    LITE1,
    LITE2,
    VARIANTS,
    Variant,
    build,
    convert_state_dict,
    load_weights,
    packaged_weights,
)

ESPRESSO, CUP = 967, 968
DOMESTIC_CATS = range(281, 286)


class Expected(NamedTuple):
    """What each packaged .pth holds, read off its tensor shapes."""

    tensors: int  # all of them, num_batches_tracked counters included
    floats: int
    blocks: int  # MBConv blocks, _blocks.0 ... _blocks.{n-1}
    block6a: int  # PyTorch index of the first block of stage 6
    last_width: int  # channels into the head
    keras_twin: str  # the keras.applications EfficientNet with the same width and depth coefficients


EXPECTED = {
    "efficientnet_lite0": Expected(296, 247, 16, 11, 320, "EfficientNetB0"),
    "efficientnet_lite1": Expected(386, 322, 21, 15, 320, "EfficientNetB1"),
    "efficientnet_lite2": Expected(386, 322, 21, 15, 352, "EfficientNetB2"),
}


@pytest.fixture(scope="module", params=list(VARIANTS.values()), ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Variant:
    return request.param


@pytest.fixture(scope="module")
def state(variant: Variant) -> dict[str, np.ndarray]:
    return torch_legacy.read_state_dict(packaged_weights(variant))


def legacy_prefix() -> bytes:
    """The three pickles that open a legacy .pth: magic number, protocol version, system info."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(value, protocol=2) for value in (torch_legacy.MAGIC_NUMBER, 1001, sys_info))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square, resized to size x size, as float pixels in [0, 255]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32)


# -- torch_legacy ---------------------------------------------------------------------------------


def test_packaged_file_reads_every_tensor(variant: Variant, state: dict[str, np.ndarray]) -> None:
    expected = EXPECTED[variant.name]
    assert len(state) == expected.tensors
    assert sum(array.dtype == np.float32 for array in state.values()) == expected.floats
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)  # the stem is never scaled
    assert state["_conv_stem.weight"].flags.c_contiguous  # stored with permuted strides in the file
    assert state["_conv_head.weight"].shape == (FEATURE_WIDTH, expected.last_width, 1, 1)
    assert state["_fc.weight"].shape == (1000, FEATURE_WIDTH)


def test_forbidden_global_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_prefix() + evil)
    with pytest.raises(UserError, match=r"evil\.pth.*refusing to load the global 'os\.system'"):
        torch_legacy.read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_file_is_a_user_error(tmp_path: Path, keep: float) -> None:
    data = packaged_weights(LITE0).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match=r"truncated\.pth: truncated"):
        torch_legacy.read_state_dict(path)


def test_random_bytes_are_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"cannot read PyTorch weights from .*noise\.pth"):
        torch_legacy.read_state_dict(path)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="absent.pth"):
        torch_legacy.read_state_dict(tmp_path / "absent.pth")


# -- conversion and loading -----------------------------------------------------------------------


def test_conversion_uses_every_tensor_in_keras_layout(variant: Variant, state: dict[str, np.ndarray]) -> None:
    expected = EXPECTED[variant.name]
    weights = convert_state_dict(state, variant)
    assert sum(len(arrays) for arrays in weights.values()) == expected.floats  # every float tensor, once
    np.testing.assert_array_equal(weights["stem_conv"][0], state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    depthwise = state["_blocks.1._depthwise_conv.weight"]
    np.testing.assert_array_equal(weights["block2a_dwconv"][0][:, :, 5, 0], depthwise[5, 0])
    # Depth scaling shifts the PyTorch index of every later block: stage 6 and the last block.
    np.testing.assert_array_equal(
        weights["block6a_expand_bn"][2], state[f"_blocks.{expected.block6a}._bn0.running_mean"]
    )
    np.testing.assert_array_equal(
        weights["block7a_project_conv"][0],
        state[f"_blocks.{expected.blocks - 1}._project_conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(weights["predictions"][0], state["_fc.weight"].T)
    np.testing.assert_array_equal(weights["top_bn"][3], state["_bn1.running_var"])


def test_conversion_rejects_a_state_dict_that_does_not_fit(variant: Variant, state: dict[str, np.ndarray]) -> None:
    with pytest.raises(UserError, match=f"not {variant.title} weights: tensor '_bn0.bias' is missing"):
        convert_state_dict({key: value for key, value in state.items() if key != "_bn0.bias"}, variant)
    with pytest.raises(UserError, match="unexpected tensors"):
        convert_state_dict({**state, "_extra.weight": np.zeros(3, np.float32)}, variant)
    with pytest.raises(UserError, match="'_fc.bias' has shape"):
        convert_state_dict({**state, "_fc.bias": np.zeros(10, np.float32)}, variant)


@pytest.mark.parametrize(
    ("model_variant", "weights_variant"),
    [(LITE0, LITE1), (LITE1, LITE2), (LITE2, LITE0)],
    ids=["lite1_into_lite0", "lite2_into_lite1", "lite0_into_lite2"],
)
def test_another_variants_weights_are_refused(tmp_path: Path, model_variant: Variant, weights_variant: Variant) -> None:
    with pytest.raises(
        UserError,
        match=f"cannot load {model_variant.title} weights from "
        f".*{weights_variant.weights_file}: not {model_variant.title} weights",
    ):
        load_weights(build(model_variant, (32, 32, 3)), model_variant, packaged_weights(weights_variant), tmp_path)


def test_photos_are_classified(tmp_path: Path, variant: Variant) -> None:
    model = build(variant, (variant.size, variant.size, 3), include_top=True)  # the size it was trained at
    assert load_weights(model, variant, packaged_weights(variant), tmp_path) == variant.weights_sha256
    photos = np.stack(
        [center_crop(skimage.data.chelsea(), variant.size), center_crop(skimage.data.coffee(), variant.size)]
    )
    cat, coffee = np.argsort(-np.asarray(model(photos)), axis=1)[:, :5]
    assert set(cat) & set(DOMESTIC_CATS), cat
    assert {ESPRESSO, CUP} & set(coffee), coffee


def test_converted_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    first = build(LITE0, (32, 32, 3))
    load_weights(first, LITE0, packaged_weights(LITE0), tmp_path)
    [cache] = tmp_path.iterdir()  # no temporary file left beside it
    assert cache.name == f"efficientnet_lite0_{LITE0.weights_sha256[:16]}.npz"
    written = cache.stat()
    second = build(LITE0, (32, 32, 3))
    load_weights(second, LITE0, packaged_weights(LITE0), tmp_path)
    reused = cache.stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["garbage", "half"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    reference = build(LITE0, (32, 32, 3))
    load_weights(reference, LITE0, packaged_weights(LITE0), tmp_path)
    [cache] = tmp_path.iterdir()
    data = cache.read_bytes()
    cache.write_bytes(b"not a zip file" if damage == "garbage" else data[: len(data) // 2])
    model = build(LITE0, (32, 32, 3))
    load_weights(model, LITE0, packaged_weights(LITE0), tmp_path)
    assert cache.read_bytes() == data
    for a, b in zip(reference.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_converted_npz_is_accepted_as_source(tmp_path: Path) -> None:
    load_weights(build(LITE0, (32, 32, 3)), LITE0, packaged_weights(LITE0), tmp_path / "cache")
    [cache] = (tmp_path / "cache").iterdir()
    model = build(LITE0, (32, 32, 3), include_top=True)
    assert load_weights(model, LITE0, cache, tmp_path / "unused") == LITE0.weights_sha256
    assert not (tmp_path / "unused").exists()


def test_damaged_packaged_file_is_refused(tmp_path: Path) -> None:
    data = bytearray(packaged_weights(LITE0).read_bytes())
    data[-1] ^= 0xFF
    flipped = tmp_path / "flipped" / LITE0.weights_file
    flipped.parent.mkdir()
    flipped.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"cannot load EfficientNet-Lite0 weights from .*{LITE0.weights_file}: sha256"):
        load_weights(build(LITE0, (32, 32, 3)), LITE0, flipped, tmp_path)
    short = tmp_path / LITE0.weights_file
    short.write_bytes(bytes(data[:1000]))
    with pytest.raises(UserError, match="1000 bytes, expected 18826032"):
        load_weights(build(LITE0, (32, 32, 3)), LITE0, short, tmp_path)


def test_any_other_pth_is_loaded_with_its_own_hash_or_refused(tmp_path: Path) -> None:
    renamed = tmp_path / "mine.pth"
    shutil.copy(packaged_weights(LITE0), renamed)
    assert load_weights(build(LITE0, (32, 32, 3)), LITE0, renamed, tmp_path) == LITE0.weights_sha256
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x80\x02" + bytes(100))
    with pytest.raises(UserError, match=r"cannot load EfficientNet-Lite0 weights from .*noise\.pth"):
        load_weights(build(LITE0, (32, 32, 3)), LITE0, noise, tmp_path)


def test_head_of_another_width_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="predictions"):
        load_weights(build(LITE0, (32, 32, 3), include_top=True, classes=5), LITE0, packaged_weights(LITE0), tmp_path)


# -- the models -----------------------------------------------------------------------------------


def test_architecture_is_lite(variant: Variant) -> None:
    blocks = EXPECTED[variant.name].blocks
    model = build(variant, (64, 64, 3), include_top=True)
    names = [layer.name for layer in model.layers]
    assert model.get_layer("top_activation").output.shape == (None, 2, 2, FEATURE_WIDTH)
    assert model.get_layer("top_dropout").rate == variant.dropout
    rescaling = model.get_layer("rescaling")  # raw pixels in: (x - 127) / 128 inside the graph
    assert (rescaling.scale, rescaling.offset) == (1 / 128, -127 / 128)
    assert not [name for name in names if "se_" in name or "squeeze" in name]
    assert not [layer for layer in model.layers if isinstance(layer, (keras.layers.Multiply, keras.layers.Activation))]
    activations = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert len(activations) == 1 + 1 + (blocks - 1) * 2 + 1 and all(layer.max_value == 6 for layer in activations)
    # Every block but the first of each of the 7 stages keeps its shape and adds its input.
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.Add)]) == blocks - 7
    assert all(layer.epsilon == 1e-3 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    firsts = [next(i for i, name in enumerate(names) if name.startswith(cut)) for cut in CUT_POINTS]
    assert firsts == sorted(firsts)


def test_blocks_are_named_and_scaled_as_in_keras_applications(variant: Variant) -> None:
    """Keras' EfficientNet-B of the same coefficients, less what Lite leaves out or fixes."""
    lite = build(variant, (32, 32, 3))
    twin = getattr(keras.applications, EXPECTED[variant.name].keras_twin)(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    twin_layers = {layer.name: layer for layer in twin.layers}
    # Keras numbers the input and rescaling layers of later models ("rescaling_1"); the rest must match.
    assert {layer.name for layer in lite.layers} - {"image", "rescaling"} <= set(twin_layers)
    # B1 and B2 scale the repeats of the first and last stage too (block1b, block7b); Lite does not.
    lite_blocks = {layer.name.split("_")[0] for layer in lite.layers if layer.name.startswith("block")}
    twin_blocks = {name.split("_")[0] for name in twin_layers if name.startswith("block")}
    assert twin_blocks - lite_blocks <= {"block1b", "block7b"}
    assert len(lite_blocks) == EXPECTED[variant.name].blocks
    for layer in lite.layers:  # the same channels everywhere but the head, which Lite keeps at 1280
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and layer.name != "top_conv":
            assert layer.kernel.shape == twin_layers[layer.name].kernel.shape, layer.name


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras's save
def test_saved_model_reloads_without_custom_objects(tmp_path: Path) -> None:
    model = build(LITE1, (32, 32, 3), include_top=True, classes=5)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "lite1.keras")
    reloaded = keras.saving.load_model(tmp_path / "lite1.keras")  # safe_mode: no Lambda, no custom class
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(reloaded(images)))
