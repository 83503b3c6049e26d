"""Grad-CAM heatmaps: where in an image the classifier found the evidence for a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional feature map by how much
the class's logit rises with it (the spatial mean of the logit's gradient), sums the weighted
channels and keeps the positive part: the regions that speak *for* the class. The logit is taken
before the softmax, as in the paper, so the map does not depend on the other classes' scores.

The feature map is the backbone's output. Every registry backbone is built with
``include_top=False`` and no pooling, so that output is the last convolutional block's map for
all of them, with no per-network layer name to look up: the last layer that still knows *where*
(the pooling after it throws that away) and the one with the most class-specific features. Its
resolution is coarse (about input/32), so maps are resized bilinearly to the image and normalised
to [0, 1] per image.
"""

from __future__ import annotations

import keras
import matplotlib
import numpy as np
import tensorflow as tf

REQUIRED_LAYERS = ("preprocessing", "backbone", "features", "head")


def grad_cam(model: keras.Model, images: np.ndarray, class_indices: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM heatmaps from the backbone's last convolutional block, one per image.

    Args:
        model: a classifier laid out as ``finetune.assemble`` builds it (logits or probabilities out), with
            layers named ``preprocessing``, ``backbone``, ``features`` and ``head`` (the saved
            ``models/model.keras`` keeps these names).
        images: raw 0-255 RGB images at the model's input size, shape ``(n, H, W, 3)``.
        class_indices: the class to explain for each image (predicted or true), shape ``(n,)``.
        batch_size: images per gradient pass (bounds memory).

    Returns:
        float32 maps of shape ``(n, H, W)`` in [0, 1], each scaled by its own maximum; a map with
        no positive evidence is all zeros.

    Raises:
        ValueError: the model lacks one of the named layers, or the inputs do not fit.
    """
    layers = [_layer(model, name) for name in REQUIRED_LAYERS]
    images = np.asarray(images, dtype=np.float32)
    classes = np.asarray(class_indices, dtype=np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"grad_cam: images must be (n, H, W, 3) RGB; found shape {images.shape}")
    if len(classes) != len(images):
        raise ValueError(f"grad_cam: {len(images)} images but {len(classes)} class indices")
    if batch_size < 1:
        raise ValueError(f"grad_cam: batch_size must be at least 1; found {batch_size}")
    maps = [
        _batch_cams(layers, images[start : start + batch_size], classes[start : start + batch_size])
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(maps) if maps else np.zeros(images.shape[:3], dtype=np.float32)


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"grad_cam: model {model.name!r} has no layer named {name!r}; it needs the layers "
            f"{', '.join(REQUIRED_LAYERS)} as finetune.assemble names them"
        ) from None


def _batch_cams(layers: list[keras.layers.Layer], images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    preprocessing, backbone, features, head = layers
    with tf.GradientTape() as tape:
        # training=False as in finetune.assemble: BatchNormalization and dropout behave as at inference.
        conv = tf.cast(backbone(preprocessing(tf.constant(images)), training=False), tf.float32)
        if conv.shape.rank != 4:
            raise ValueError(f"grad_cam: the backbone must output a (n, h, w, c) feature map; found {conv.shape}")
        tape.watch(conv)  # a frozen backbone has no watched variables, so watch its output itself
        logits = tf.cast(head(features(conv), training=False), tf.float32)
        # Images do not interact at inference, so the gradient of the sum is each image's own gradient.
        scores = tf.gather(logits, tf.constant(classes), axis=1, batch_dims=1)
    gradients = tape.gradient(scores, conv)
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    cams = tf.nn.relu(tf.einsum("nhwc,nc->nhw", conv, weights))
    cams = tf.image.resize(cams[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy()
    peaks = cams.max(axis=(1, 2), keepdims=True)
    cams = np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0)
    return np.clip(cams, 0.0, 1.0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An image with a heatmap drawn over it in matplotlib's "jet" colours (blue low, red high).

    Args:
        image: RGB, shape ``(H, W, 3)``, uint8 or float 0-255.
        heatmap: values in [0, 1], shape ``(H, W)`` (as ``grad_cam`` returns them).
        alpha: the heatmap's weight in the blend: 0 leaves the image as it is, 1 shows only the heatmap.

    Returns:
        The blend as uint8 RGB, shape ``(H, W, 3)``.
    """
    image = np.asarray(image, dtype=np.float32)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or heatmap.shape != image.shape[:2]:
        raise ValueError(
            f"overlay: needs an (H, W, 3) image and an (H, W) heatmap; found {image.shape} and {heatmap.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1]; found {alpha}")
    colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blend = (1.0 - alpha) * image + alpha * colours
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
