"""The tf.data input pipeline: formats, EXIF orientation, grayscale, crop policies, order."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from pipeline import inputs


def _pattern(height: int, width: int) -> np.ndarray:
    """An asymmetric RGB image: every pixel different, so any flip or turn shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 10 % 256, cols * 10 % 256, (rows * width + cols) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(orientation):
    pixels = _pattern(5, 7)
    image = Image.fromarray(pixels)
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    turned = inputs.orient(tf.constant(pixels), tf.constant(orientation, tf.int32)).numpy()
    np.testing.assert_array_equal(turned, expected)


def test_exif_rotated_jpeg_is_loaded_upright(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer rotates 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "plain.png")

    assert list(inputs.read_orientations([tmp_path / "turned.jpg", tmp_path / "plain.png"])) == [6, 1]
    (batch,) = inputs.image_dataset([tmp_path / "turned.jpg"], 40, "pad", 1)
    upright = batch.numpy()[0]
    # Turned clockwise the image is 40 tall and 20 wide, the white half on top; padded to 40 x 40.
    assert upright[10, 20].mean() > 200 and upright[30, 20].mean() < 50
    assert upright[20, 2].max() < 1 and upright[20, 37].max() < 1  # bars left and right


def test_formats_and_grayscale_become_three_channel_pixels(tmp_path):
    pixels = _pattern(12, 12)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.bmp")
    Image.fromarray(pixels).save(tmp_path / "c.jpg", quality=100)
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(tmp_path / "d.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "e.png")  # grayscale
    Image.fromarray((pixels[:, :, 0].astype(np.uint16) * 257)).save(tmp_path / "f.png")  # 16-bit grayscale
    names = ["a.png", "b.bmp", "c.jpg", "d.gif", "e.png", "f.png"]

    (batch,) = inputs.image_dataset([tmp_path / n for n in names], 12, "stretch", 8)
    batch = batch.numpy()
    assert batch.shape == (6, 12, 12, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], pixels)
    np.testing.assert_array_equal(batch[1], pixels)
    assert np.abs(batch[2] - pixels).mean() < 3  # JPEG is lossy
    assert np.abs(batch[3] - pixels).mean() < 40  # GIF: first frame, 256-colour palette
    for gray in (batch[4], batch[5]):
        np.testing.assert_array_equal(gray[..., 0], pixels[..., 0])
        np.testing.assert_array_equal(gray[..., 1], gray[..., 2])


def test_crop_policies(tmp_path):
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, 20:40] = 255  # a white square in the middle of a wide black image
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    path = [tmp_path / "wide.png"]

    (center,) = inputs.image_dataset(path, 20, "center", 1)
    (pad,) = inputs.image_dataset(path, 30, "pad", 1)
    (stretch,) = inputs.image_dataset(path, 30, "stretch", 1)
    assert center.numpy()[0].min() > 250  # only the middle square is kept
    pad = pad.numpy()[0]
    assert pad[:9].max() < 1 and pad[21:].max() < 1 and pad[15, 15].min() > 250  # whole image, black bars
    stretch = stretch.numpy()[0]
    assert stretch[:, 15].min() > 250 and stretch[:, 2].max() < 1  # full height, squashed width


def test_order_labels_and_last_partial_batch(tmp_path):
    paths = []
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    batches = list(inputs.image_dataset(paths, 8, "center", 2, labels=[4, 3, 2, 1, 0]))
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    values = np.concatenate([images.numpy()[:, 0, 0, 0] for images, _ in batches])
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    np.testing.assert_array_equal(values, [0, 40, 80, 120, 160])
    np.testing.assert_array_equal(labels, [4, 3, 2, 1, 0])


def test_strong_downscaling_is_antialiased(tmp_path):
    checkerboard = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checkerboard).save(tmp_path / "fine.png")
    (batch,) = inputs.image_dataset([tmp_path / "fine.png"], 8, "stretch", 1)
    # Averaged, a one-pixel checkerboard is mid-grey everywhere; sampled without a filter it aliases.
    assert np.abs(batch.numpy()[0] - 127.5).max() < 10
