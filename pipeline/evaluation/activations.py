"""What the backbone's blocks respond to: feature maps at a few depths, and the first convolution's filters.

As in the Keras material on visualising what convnets learn (Chollet, *Deep Learning with Python*,
"Visualizing intermediate activations"): a test image goes through the network, and the output of
a layer is drawn channel by channel, one small picture per feature map. Early layers keep the
image's layout and fire on edges and colours; deeper ones are coarser and more abstract. The first
convolution's kernels are drawn as colour patches, the network's detectors of oriented edges and
colour contrasts.

The depths are found from the backbone's output shapes, not from layer names, so they work for every
registry backbone, ``keras.applications`` networks and the EfficientNet-Lite port alike (``stage_outputs``,
``block_depths``); the deepest is the backbone's output, the map Grad-CAM explains. The model must follow
the layout of ``finetune.assemble`` (``backbone_of``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.core.figures import plain_text, unicode_fonts

REQUIRED_LAYERS = ("preprocessing", "backbone")
# Layers that look at neighbourhoods of pixels: a stage can only start at or after the first of them
# (the layers before it, such as a built-in Rescaling, still hold the image itself).
_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
# A new stage starts where the side shrinks by at least this factor: stride-2 steps halve it, while
# the unpadded 3x3 convolutions of Xception and InceptionV3 (149 -> 147 px) stay in their stage.
_STAGE_RATIO = 1.5
_TITLE_FONTSIZE = 9
_LABEL_FONTSIZE = 7
_MAP_INCHES = 1.15
_FILTER_INCHES = 0.55


def block_depths(backbone_model: keras.Model, count: int = 4) -> list[str]:
    """Names of up to ``count`` stage outputs of the backbone (``stage_outputs``), spread from the
    first stage to the backbone's output.

    A stage is a run of layers at one spatial resolution, and its last layer (in the backbone's order)
    before the resolution drops is the stage's output. With more stages than wanted, the depths are
    spread evenly from the first to the last.

    Args:
        backbone_model: the bare network (``model.get_layer("backbone")``), built for a fixed input size.
        count: the most depths wanted; the first and the last stage are among them (just the last for 1).

    Returns:
        Layer names from shallow to deep, evenly spaced over the stages; all of them when there are
        no more than ``count``. EfficientNet-Lite0 at 224 px gives ``block2a_expand_activation``
        (112 px), ``block3a_expand_activation`` (56 px), ``block6a_expand_activation`` (14 px) and
        ``top_activation`` (7 px).

    Raises:
        ValueError: ``count`` is below 1, or ``stage_outputs`` finds no stage.
    """
    if count < 1:
        raise ValueError(f"block_depths: count must be at least 1; found {count}")
    ends = stage_outputs(backbone_model)
    if count == 1:
        return ends[-1:]
    if len(ends) <= count:
        return ends
    # Steps of (n - 1) / (count - 1) >= 1 round to distinct indices, the first and the last included.
    return [ends[int(round(i))] for i in np.linspace(0, len(ends) - 1, count)]


def stage_outputs(backbone_model: keras.Model) -> list[str]:
    """The last layer of each stage of the backbone, where a stage is a run of layers at one resolution.

    The layers are taken in the backbone's order from its first convolution on (before it, a
    built-in Rescaling still holds the image). The trunk's side at a layer is the largest side of
    any map from there on, so a side branch that pools to 1x1 and comes back (squeeze-and-excitation)
    is no drop; a new stage starts where that side shrinks by 1.5 or more (stride-2 steps halve it,
    the unpadded 3x3 convolutions of Xception and InceptionV3 take 2 px off and stay in their stage).
    A stage's output is its last layer whose map is at the trunk's side; padding layers are skipped.

    Args:
        backbone_model: the bare network (``model.get_layer("backbone")``), built for a fixed input size.

    Returns:
        Layer names from shallow to deep; the last is the backbone's output layer.

    Raises:
        ValueError: the backbone has no convolution, or no 4-D map of a fixed size after it.
    """
    layers = list(backbone_model.layers)
    start = next((i for i, layer in enumerate(layers) if isinstance(layer, _CONVOLUTIONS)), None)
    if start is None:
        raise ValueError(f"block_depths: backbone {backbone_model.name!r} has no convolution layer")
    maps = [
        (layer.name, side)
        for layer in layers[start:]
        if not isinstance(layer, keras.layers.ZeroPadding2D) and (side := _spatial_side(layer)) is not None
    ]
    if not maps:
        raise ValueError(f"block_depths: backbone {backbone_model.name!r} has no feature map of a fixed size")
    trunk = np.maximum.accumulate([side for _, side in maps][::-1])[::-1]
    ends: list[str] = []
    stage_side, last = int(trunk[0]), maps[0][0]
    for (name, side), level in zip(maps, trunk, strict=True):
        if level * _STAGE_RATIO <= stage_side:
            ends.append(last)  # the layer before had the trunk's side, so it set ``last`` in this stage
            stage_side = int(level)
        if side == level:
            last = name
    ends.append(last)
    return ends


def _spatial_side(layer: keras.layers.Layer) -> int | None:
    """The shorter side of a layer's single 4-D output; None for other outputs or unknown sizes."""
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer never called on the backbone's graph
        return None
    shape = getattr(output, "shape", None)
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(min(shape[1], shape[2]))


def block_activations(
    model: keras.Model, images: np.ndarray, layer_names: Sequence[str], batch_size: int = 16
) -> list[np.ndarray]:
    """The outputs of backbone layers for each image, as the classifier computes them at inference.

    One Keras model with an output per layer is built from the nested backbone's graph; images go
    through the classifier's ``preprocessing`` and that model with ``training=False``
    (BatchNormalization as at inference; augmentation, active only in training, is left out).

    Args:
        model: a classifier laid out as ``finetune.assemble`` builds it.
        images: raw 0-255 RGB images at the model's input size, shape ``(n, H, W, 3)``.
        layer_names: layers of the backbone (``block_depths`` chooses some).
        batch_size: images per pass (bounds memory).

    Returns:
        One float32 array per layer, in the order of ``layer_names``, shape ``(n, h, w, channels)``.

    Raises:
        ValueError: the model lacks a named layer, a layer is not in the backbone or has no 4-D
            output, or the images do not fit.
    """
    preprocessing, backbone = (_layer(model, name) for name in REQUIRED_LAYERS)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"block_activations: images must be (n, H, W, 3) RGB; found shape {images.shape}")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and images.shape[1:3] != expected:
        raise ValueError(f"block_activations: the model takes {expected} images; found {images.shape[1:3]}")
    if batch_size < 1:
        raise ValueError(f"block_activations: batch_size must be at least 1; found {batch_size}")
    if not layer_names:
        raise ValueError("block_activations: no layer names given")
    outputs = [_map_output(backbone, name) for name in layer_names]
    probe = keras.Model(backbone.inputs, outputs, name="backbone_activations")
    batches: list[list[np.ndarray]] = []
    for begin in range(0, len(images), batch_size):
        results = probe(preprocessing(images[begin : begin + batch_size]), training=False)
        results = results if isinstance(results, list | tuple) else [results]
        batches.append([np.asarray(keras.ops.convert_to_numpy(r), dtype=np.float32) for r in results])
    if not batches:
        return [np.zeros((0, *tuple(o.shape[1:])), dtype=np.float32) for o in outputs]
    return [np.concatenate([batch[i] for batch in batches]) for i in range(len(outputs))]


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone of a classifier laid out as ``finetune.assemble`` builds it.

    That layout has layers named ``preprocessing`` and ``backbone`` (the saved ``models/model.keras`` keeps
    these names); ``backbone`` is a nested Keras model, whose graph gives the intermediate outputs.

    Raises:
        ValueError: the model has no layer named ``backbone``.
    """
    return _layer(model, "backbone")


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"activations: model {model.name!r} has no layer named {name!r}; it needs the layers "
            f"{', '.join(REQUIRED_LAYERS)} as finetune.assemble names them"
        ) from None


def _map_output(backbone: keras.Model, name: str) -> keras.KerasTensor:
    try:
        output = backbone.get_layer(name).output
    except ValueError:
        raise ValueError(f"block_activations: backbone {backbone.name!r} has no layer named {name!r}") from None
    if getattr(output, "shape", None) is None or len(output.shape) != 4:
        raise ValueError(f"block_activations: layer {name!r} has no (n, h, w, channels) output")
    return output


def first_conv_filters(backbone_model: keras.Model) -> np.ndarray:
    """The kernel of the backbone's first ``Conv2D`` layer, in the backbone's order (nested models searched).

    Args:
        backbone_model: the bare network (``model.get_layer("backbone")``).

    Returns:
        float32 weights of shape ``(kh, kw, in, out)``; ``in`` follows the backbone's input channels
        (BGR for the 'caffe' networks, see ``rgb_channels``).

    Raises:
        ValueError: the backbone has no ``Conv2D`` layer.
    """
    for layer in _flat_layers(backbone_model):
        if isinstance(layer, keras.layers.Conv2D):
            return np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float32)
    raise ValueError(f"first_conv_filters: backbone {backbone_model.name!r} has no Conv2D layer")


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for layer in model.layers:
        layers.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers


def rgb_channels(model: keras.Model) -> list[int]:
    """Which of the backbone's input channels carries red, green and blue, found from ``preprocessing``.

    A black pixel and a pure red, green and blue one go through the classifier's ``preprocessing``;
    each colour moves one channel most. ``first_conv_filters(...)[:, :, rgb_channels(model)]`` is
    the kernel in RGB order: unchanged for 'tf', 'torch' and built-in preprocessing, channels
    reversed for 'caffe' (RGB to BGR).

    Returns:
        ``[red, green, blue]`` channel indices, a permutation of ``[0, 1, 2]``.

    Raises:
        ValueError: no ``preprocessing`` layer, or it mixes the colours (no one channel per colour).
    """
    probes = np.zeros((4, 1, 1, 3), dtype=np.float32)
    probes[1:, 0, 0] = 255.0 * np.eye(3, dtype=np.float32)
    out = np.asarray(keras.ops.convert_to_numpy(_layer(model, "preprocessing")(probes)), dtype=np.float64)
    if out.shape != (4, 1, 1, 3):
        raise ValueError(f"rgb_channels: preprocessing must keep three channels; found {out.shape[1:]}")
    moves = np.abs(out[1:, 0, 0] - out[0, 0, 0])  # row: the colour, column: the backbone channel
    order = [int(i) for i in moves.argmax(axis=1)]
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"rgb_channels: preprocessing mixes the colour channels (colour to channel: {order})")
    return order


def most_active_channels(activation: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` channels of one feature map with the highest mean activation, highest first, among
    those that vary across the image: a map that is one value everywhere (a ReLU6 saturated at 6 over a
    2 x 2 map, say) shows nothing, so it comes after every map that varies.

    Args:
        activation: one image's map, shape ``(h, w, channels)``.
        count: channels wanted; all of them when the map has fewer.

    Returns:
        Channel indices (ties keep the lower index first).
    """
    activation = np.asarray(activation, dtype=np.float64)
    if activation.ndim != 3 or count < 1:
        raise ValueError(
            f"most_active_channels: needs an (h, w, channels) map and count >= 1; found {activation.shape}"
        )
    flat = np.ptp(activation, axis=(0, 1)) == 0
    return np.lexsort((-activation.mean(axis=(0, 1)), flat))[:count]


def activation_grid(
    image: np.ndarray,
    activations_by_layer: Mapping[str, np.ndarray],
    channels: int = 8,
    title: str = "Feature maps",
) -> Figure:
    """One image and, for each depth, a row of its most active feature maps.

    Args:
        image: the image as the model saw it, uint8 RGB ``(H, W, 3)``.
        activations_by_layer: layer name to that image's map ``(h, w, channels)``, shallow to deep
            (one row each, titled with the name and the shape).
        channels: feature maps per row, the most active by mean activation (``most_active_channels``),
            each drawn in "viridis" on its own scale (bright: fires most) and labelled with its index.
        title: the title above the grid (e.g. the image's caption).

    Returns:
        The figure; its height grows with the number of depths.
    """
    if not activations_by_layer:
        raise ValueError("activation_grid: no activations to show")
    if channels < 1:
        raise ValueError(f"activation_grid: channels must be at least 1; found {channels}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"activation_grid: the image must be (H, W, 3) RGB; found {image.shape}")
    if image.dtype != np.uint8:  # imshow reads floats as 0-1
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    with unicode_fonts():
        rows = 1 + len(activations_by_layer)
        figure = Figure(figsize=(0.3 + _MAP_INCHES * channels, 0.5 + rows * 1.45), layout="constrained")
        cells = figure.subfigures(rows, 1, squeeze=False)[:, 0]
        _show(cells[0].subplots(1, 1), image, "image")
        for cell, (name, activation) in zip(cells[1:], activations_by_layer.items(), strict=True):
            activation = np.asarray(activation, dtype=np.float32)
            chosen = most_active_channels(activation, channels)
            height, width, depth = activation.shape
            cell.suptitle(
                plain_text(f"{name}: {height}×{width}, {depth} channels (the {len(chosen)} most active)"),
                fontsize=_TITLE_FONTSIZE,
            )
            row = cell.subplots(1, channels, squeeze=False)[0]
            for axes, channel in zip(row, _padded(chosen, channels), strict=True):
                if channel is None:
                    axes.set_axis_off()
                    continue
                axes.imshow(activation[..., channel], cmap="viridis", interpolation="nearest")
                _ticks_off(axes)
                axes.set_title(f"#{channel}", fontsize=_LABEL_FONTSIZE)
        figure.suptitle(plain_text(title))
    return figure


def _padded(chosen: np.ndarray, length: int) -> list[int | None]:
    """The chosen channels, then None for the empty cells of a row longer than them."""
    return [int(c) for c in chosen] + [None] * (length - len(chosen))


def filter_tiles(kernel: np.ndarray) -> np.ndarray:
    """Each filter of a first convolution as an RGB tile, min-max normalised on its own.

    Args:
        kernel: ``(kh, kw, in, out)`` with the input channels in RGB order; a kernel with other
            than three inputs is drawn in grey (the mean over its inputs).

    Returns:
        float32 tiles in [0, 1], shape ``(out, kh, kw, 3)``: per filter, its lowest weight is 0 and
        its highest 1; a constant filter is mid grey (0.5).
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 4:
        raise ValueError(f"filter_tiles: the kernel must be (kh, kw, in, out); found shape {kernel.shape}")
    tiles = np.moveaxis(kernel, -1, 0)
    if tiles.shape[-1] != 3:
        tiles = np.repeat(tiles.mean(axis=-1, keepdims=True), 3, axis=-1)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    spread = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.divide(tiles - low, spread, out=np.full_like(tiles, 0.5), where=spread > 0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def filter_grid(kernel: np.ndarray, title: str = "Filters of the first convolution") -> Figure:
    """The first convolution's filters as small RGB tiles (``filter_tiles``) in a grid, numbered.

    Args:
        kernel: ``(kh, kw, in, out)``, input channels in RGB order (see ``rgb_channels``).
        title: the title above the grid; the kernel's shape is added under it.

    Returns:
        The figure: at least eight tiles a row, about square for many filters.
    """
    tiles = filter_tiles(kernel)
    count = len(tiles)
    if count == 0:
        raise ValueError("filter_grid: the kernel has no filters")
    columns = max(min(count, 8), math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    kh, kw, inputs, _ = np.shape(kernel)
    with unicode_fonts():
        figure = Figure(figsize=(0.3 + _FILTER_INCHES * columns, 0.8 + _FILTER_INCHES * rows), layout="constrained")
        for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
            if index >= count:
                axes.set_axis_off()
                continue
            axes.imshow(tiles[index], interpolation="nearest")
            _ticks_off(axes)
            axes.set_title(str(index), fontsize=_LABEL_FONTSIZE - 1, pad=1)
        figure.suptitle(plain_text(f"{title}\n{count} filters of {kh}×{kw}×{inputs}"), fontsize=_TITLE_FONTSIZE + 1)
    return figure


def _show(axes: Axes, image: np.ndarray, title: str) -> None:
    axes.imshow(image)
    _ticks_off(axes)
    axes.set_title(title, fontsize=_LABEL_FONTSIZE)


def _ticks_off(axes: Axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
