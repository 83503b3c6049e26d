"""EfficientNet-Lite0: the torch-free .pth reader, the conversion and its cache, the Keras model."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline import torch_legacy
from pipeline.efficientnet_lite import (
    CUT_POINTS,
    FEATURE_WIDTH,
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    build_lite0,
    convert_state_dict,
    load_weights,
    packaged_weights,
)
from pipeline.errors import UserError

ESPRESSO, CUP = 967, 968
DOMESTIC_CATS = range(281, 286)


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return torch_legacy.read_state_dict(packaged_weights())


def legacy_prefix() -> bytes:
    """The three pickles that open a legacy .pth: magic number, protocol version, system info."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(value, protocol=2) for value in (torch_legacy.MAGIC_NUMBER, 1001, sys_info))


def center_crop_224(image: np.ndarray) -> np.ndarray:
    """The largest centred square, resized to 224 x 224, as float pixels in [0, 255]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(square.resize((224, 224), Image.BICUBIC), dtype=np.float32)


# -- torch_legacy ---------------------------------------------------------------------------------


def test_packaged_file_reads_296_tensors(state: dict[str, np.ndarray]) -> None:
    assert len(state) == 296
    assert sum(array.dtype == np.float32 for array in state.values()) == 247
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].flags.c_contiguous  # stored with permuted strides in the file
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
    data = packaged_weights().read_bytes()
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


def test_conversion_uses_every_tensor_in_keras_layout(state: dict[str, np.ndarray]) -> None:
    weights = convert_state_dict(state)
    assert sum(len(arrays) for arrays in weights.values()) == 247  # every float tensor, once
    np.testing.assert_array_equal(weights["stem_conv"][0], state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    depthwise = state["_blocks.1._depthwise_conv.weight"]
    np.testing.assert_array_equal(weights["block2a_dwconv"][0][:, :, 5, 0], depthwise[5, 0])
    np.testing.assert_array_equal(weights["predictions"][0], state["_fc.weight"].T)
    np.testing.assert_array_equal(weights["top_bn"][3], state["_bn1.running_var"])


def test_conversion_rejects_a_state_dict_that_does_not_fit(state: dict[str, np.ndarray]) -> None:
    with pytest.raises(UserError, match="'_bn0.bias' is missing"):
        convert_state_dict({key: value for key, value in state.items() if key != "_bn0.bias"})
    with pytest.raises(UserError, match="unexpected tensors"):
        convert_state_dict({**state, "_extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match="'_fc.bias' has shape"):
        convert_state_dict({**state, "_fc.bias": np.zeros(10, np.float32)})


def test_photos_are_classified(tmp_path: Path) -> None:
    model = build_lite0((224, 224, 3), include_top=True)
    assert load_weights(model, packaged_weights(), tmp_path) == WEIGHTS_SHA256
    photos = np.stack([center_crop_224(skimage.data.chelsea()), center_crop_224(skimage.data.coffee())])
    cat, coffee = np.argsort(-np.asarray(model(photos)), axis=1)[:, :5]
    assert set(cat) & set(DOMESTIC_CATS), cat
    assert {ESPRESSO, CUP} & set(coffee), coffee


def test_converted_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    first = build_lite0((32, 32, 3))
    load_weights(first, packaged_weights(), tmp_path)
    [cache] = tmp_path.iterdir()  # no temporary file left beside it
    assert cache.name == f"efficientnet_lite0_{WEIGHTS_SHA256[:16]}.npz"
    written = cache.stat()
    second = build_lite0((32, 32, 3))
    load_weights(second, packaged_weights(), tmp_path)
    reused = cache.stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["garbage", "half"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    reference = build_lite0((32, 32, 3))
    load_weights(reference, packaged_weights(), tmp_path)
    [cache] = tmp_path.iterdir()
    data = cache.read_bytes()
    cache.write_bytes(b"not a zip file" if damage == "garbage" else data[: len(data) // 2])
    model = build_lite0((32, 32, 3))
    load_weights(model, packaged_weights(), tmp_path)
    assert cache.read_bytes() == data
    for a, b in zip(reference.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_converted_npz_is_accepted_as_source(tmp_path: Path) -> None:
    load_weights(build_lite0((32, 32, 3)), packaged_weights(), tmp_path / "cache")
    [cache] = (tmp_path / "cache").iterdir()
    assert load_weights(build_lite0((32, 32, 3), include_top=True), cache, tmp_path / "unused") == WEIGHTS_SHA256
    assert not (tmp_path / "unused").exists()


def test_damaged_packaged_file_is_refused(tmp_path: Path) -> None:
    data = bytearray(packaged_weights().read_bytes())
    data[-1] ^= 0xFF
    flipped = tmp_path / "flipped" / WEIGHTS_FILE
    flipped.parent.mkdir()
    flipped.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"cannot load EfficientNet-Lite0 weights from .*{WEIGHTS_FILE}: sha256"):
        load_weights(build_lite0((32, 32, 3)), flipped, tmp_path)
    short = tmp_path / WEIGHTS_FILE
    short.write_bytes(bytes(data[:1000]))
    with pytest.raises(UserError, match="1000 bytes, expected 18826032"):
        load_weights(build_lite0((32, 32, 3)), short, tmp_path)


def test_any_other_pth_is_loaded_with_its_own_hash_or_refused(tmp_path: Path) -> None:
    renamed = tmp_path / "mine.pth"
    shutil.copy(packaged_weights(), renamed)
    assert load_weights(build_lite0((32, 32, 3)), renamed, tmp_path) == WEIGHTS_SHA256
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x80\x02" + bytes(100))
    with pytest.raises(UserError, match=r"cannot load EfficientNet-Lite0 weights from .*noise\.pth"):
        load_weights(build_lite0((32, 32, 3)), noise, tmp_path)


def test_head_of_another_width_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="predictions"):
        load_weights(build_lite0((32, 32, 3), include_top=True, classes=5), packaged_weights(), tmp_path)


# -- the model ------------------------------------------------------------------------------------


def test_architecture_is_lite0() -> None:
    model = build_lite0((64, 64, 3))
    names = [layer.name for layer in model.layers]
    assert model.output_shape == (None, 2, 2, FEATURE_WIDTH)
    rescaling = model.get_layer("rescaling")  # raw pixels in: (x - 127) / 128 inside the graph
    assert (rescaling.scale, rescaling.offset) == (1 / 128, -127 / 128)
    assert not [name for name in names if "se_" in name or "squeeze" in name]
    assert not [layer for layer in model.layers if isinstance(layer, (keras.layers.Multiply, keras.layers.Activation))]
    activations = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert len(activations) == 1 + 1 + 15 * 2 + 1 and all(layer.max_value == 6 for layer in activations)
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.Add)]) == 9
    assert all(layer.epsilon == 1e-3 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    firsts = [next(i for i, name in enumerate(names) if name.startswith(cut)) for cut in CUT_POINTS]
    assert firsts == sorted(firsts)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras's save
def test_saved_model_reloads_without_custom_objects(tmp_path: Path) -> None:
    model = build_lite0((32, 32, 3), include_top=True, classes=5)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "lite0.keras")
    reloaded = keras.saving.load_model(tmp_path / "lite0.keras")  # safe_mode: no Lambda, no custom class
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(reloaded(images)))
