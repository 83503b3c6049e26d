"""The tf.data input pipeline: formats, EXIF orientation, grayscale, crop policies, order."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from pipeline.core.errors import UserError
from pipeline.data import images
from pipeline.features import inputs


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
    turned = inputs.orient(tf.constant(pixels), orientation).numpy()
    np.testing.assert_array_equal(turned, expected)


def test_exif_rotated_jpeg_is_loaded_upright(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer rotates 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "plain.png")

    assert images.read_header(tmp_path / "turned.jpg") == images.Header("JPEG", 40, 20, 6)
    assert images.read_header(tmp_path / "plain.png") == images.Header("PNG", 40, 20, 1)
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
    Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257).save(tmp_path / "f.png")  # 16-bit grayscale
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


def _tiff(path, pixels: np.ndarray, **options) -> None:
    import tifffile  # comes with scikit-image, a test dependency

    tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack", **options)


def test_webp_tiff_and_avif_give_the_pixels_of_the_same_picture_as_png(tmp_path):
    pixels = _pattern(12, 16)
    alpha = np.dstack([pixels, np.full((12, 16, 1), 128, np.uint8)])
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    Image.fromarray(pixels).save(tmp_path / "lossless.webp", lossless=True)
    Image.fromarray(alpha).save(tmp_path / "rgba.webp", lossless=True, exact=True)  # alpha dropped, as PNG's
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(tmp_path / "animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    Image.fromarray(pixels).save(tmp_path / "rgb8.tif")
    Image.fromarray(alpha).save(tmp_path / "rgba8.tif", compression="tiff_deflate")
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])  # first page
    _tiff(tmp_path / "rgb16.tif", pixels.astype(np.uint16) * 257)
    _tiff(tmp_path / "rgba16.tif", alpha.astype(np.uint16) * 257, extrasamples=["unassalpha"])
    _tiff(tmp_path / "rgb16be.tif", pixels.astype(np.uint16) * 257 + 7, byteorder=">")  # low byte ignored
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray8.tif")
    _tiff(tmp_path / "gray16.tif", pixels[..., 0].astype(np.uint16) * 257)
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16 png.png")  # TensorFlow's decoder
    exact = [
        "lossless.webp",
        "rgba.webp",
        "animated.webp",
        "rgb8.tif",
        "rgba8.tif",
        "pages.tif",
        "rgb16.tif",
        "rgba16.tif",
        "rgb16be.tif",
    ]
    gray = ["gray8.tif", "gray16.tif", "gray16 png.png"]
    names = ["plain.png", *exact, *gray]
    assert [images.read_header(tmp_path / n).format for n in names[1:4]] == ["WEBP"] * 3

    (batch,) = inputs.image_dataset([tmp_path / n for n in names], 12, "center", 16)
    decoded = dict(zip(names, batch.numpy(), strict=True))
    for name in exact:
        np.testing.assert_array_equal(decoded[name], decoded["plain.png"], err_msg=name)
    for name in gray:
        np.testing.assert_array_equal(decoded[name], np.repeat(decoded["plain.png"][..., :1], 3, axis=2), err_msg=name)


def test_lossy_webp_and_avif_decode_close_to_the_picture(tmp_path):
    pixels = np.asarray(Image.fromarray(_pattern(4, 4)).resize((48, 32), Image.Resampling.BICUBIC))
    Image.fromarray(pixels).save(tmp_path / "photo.webp", quality=95)
    Image.fromarray(pixels).save(tmp_path / "photo.avif", quality=95)
    (batch,) = inputs.image_dataset([tmp_path / "photo.webp", tmp_path / "photo.avif"], 32, "center", 2)
    centre = pixels[:, 8:40].astype(np.float32)
    for name, image in zip(("webp", "avif"), batch.numpy(), strict=True):
        assert np.abs(image - centre).mean() < 4, name


def test_webp_exif_orientation_is_applied_and_tiff_comes_upright_from_pillow(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer rotates 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.webp", exif=exif, lossless=True)
    Image.fromarray(pixels).save(tmp_path / "turned.tif", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)

    assert images.read_header(tmp_path / "turned.webp") == images.Header("WEBP", 40, 20, 6)
    assert images.read_header(tmp_path / "turned.tif") == images.Header("TIFF", 20, 40, 1)
    names = ["turned.jpg", "turned.webp", "turned.tif"]
    (batch,) = inputs.image_dataset([tmp_path / n for n in names], 40, "pad", 3)
    upright = batch.numpy()
    for name, image in zip(names, upright, strict=True):
        assert image[10, 20].mean() > 200 and image[30, 20].mean() < 50, name  # the white half on top
        np.testing.assert_allclose(image, upright[1], atol=12, err_msg=name)  # JPEG is lossy
    thumbnails = [images.load_thumbnail(tmp_path / n, 40) for n in names]
    assert [t.shape for t in thumbnails] == [(40, 20, 3)] * 3  # upright, as the models see them


def test_a_16_bit_tiff_thumbnail_is_the_picture_not_white(tmp_path):
    gray = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(gray).save(tmp_path / "scan.tif")
    thumbnail = images.load_thumbnail(tmp_path / "scan.tif", 8)
    np.testing.assert_array_equal(thumbnail[..., 0], (gray >> 8).astype(np.uint8))


def test_tiff_samples_no_decoder_reads_are_refused_with_a_reason(tmp_path):
    _tiff(tmp_path / "float.tif", np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    _tiff(tmp_path / "int32.tif", np.arange(64, dtype=np.int32).reshape(8, 8))
    reasons = dict(
        zip(
            ("float", "int32"),
            (r for _, r in images.inspect_images([tmp_path / "float.tif", tmp_path / "int32.tif"], 10**6)),
            strict=True,
        )
    )
    assert reasons == {
        "float": "unsupported pixel type: floating-point samples (supported: 8- and 16-bit images)",
        "int32": "unsupported pixel type: 32-bit integer samples (supported: 8- and 16-bit images)",
    }
    truncated = tmp_path / "truncated.webp"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.webp", lossless=True)
    truncated.write_bytes((tmp_path / "full.webp").read_bytes()[:6000])
    assert images.inspect_image(truncated, 10**6)[1].startswith("corrupt or truncated image")


def test_a_phone_jpeg_with_a_second_picture_is_a_jpeg(tmp_path):
    pixels = _pattern(16, 16)
    Image.fromarray(pixels).save(
        tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[Image.fromarray(255 - pixels)], quality=95
    )
    with Image.open(tmp_path / "phone.jpg") as image:
        assert image.format == "MPO"  # what Pillow calls it, and the split refused before
    assert images.inspect_image(tmp_path / "phone.jpg", 10**6)[1] is None
    (batch,) = inputs.image_dataset([tmp_path / "phone.jpg"], 16, "center", 1)
    assert np.abs(batch.numpy()[0] - pixels).mean() < 4  # the first picture


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


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("stored", [(9, 14), (14, 9), (10, 13)])
def test_center_box_of_the_stored_image_equals_cropping_the_upright_one(orientation, stored):
    pixels = _pattern(*stored)
    upright = inputs.orient(tf.constant(pixels), orientation).numpy()
    side = min(upright.shape[:2])
    top, left = (upright.shape[0] - side) // 2, (upright.shape[1] - side) // 2
    expected = upright[top : top + side, left : left + side]

    header = images.Header("JPEG", width=stored[1], height=stored[0], orientation=orientation)
    plan = inputs.plan_image(header, side, "center")
    row, col, h, w = plan.box
    turned = inputs.orient(tf.constant(pixels[row : row + h, col : col + w]), orientation).numpy()
    np.testing.assert_array_equal(turned, expected)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_headers_agree_with_pillow(tmp_path):
    pixels = _pattern(30, 50)
    image = Image.fromarray(pixels)
    image.save(tmp_path / "plain.jpg")
    image.save(tmp_path / "turned.jpg", exif=_exif(3))
    image.save(tmp_path / "progressive.jpg", progressive=True, exif=_exif(8))
    image.convert("CMYK").save(tmp_path / "cmyk.jpg")
    image.convert("L").save(tmp_path / "gray.jpg")
    image.save(tmp_path / "a.png")
    image.save(tmp_path / "a.gif")
    image.save(tmp_path / "a.bmp")
    (tmp_path / "named.png").write_bytes((tmp_path / "plain.jpg").read_bytes())  # the content decides, not the name
    for path in sorted(tmp_path.iterdir()):
        with Image.open(path) as reference:
            orientation = reference.getexif().get(0x0112, 1) if reference.format == "JPEG" else 1
            expected = images.Header(reference.format, reference.width, reference.height, orientation)
        assert images.read_header(path) == expected, path.name


def test_big_endian_exif_orientation():
    # A TIFF block as big-endian cameras write it: "MM", IFD at 8, one entry: tag 0x0112, SHORT, 1, value 6.
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
    assert images._exif_orientation(tiff) == 6
    assert images._exif_orientation(tiff[:-6]) == 1  # cut short: no guess


def test_not_an_image_is_a_clear_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(UserError, match="notes.jpg"):
        inputs.image_dataset([tmp_path / "notes.jpg"], 8, "center", 1)


@pytest.mark.parametrize(
    ("crop", "stored", "ratio", "antialias"),
    [
        ("center", (600, 800), 4, False),  # 600 / 4 = 150 >= 96 (/ 8 would be 75); 150 -> 96 is a mild shrink
        ("center", (100, 800), 1, False),  # the short side decides
        ("pad", (600, 800), 8, False),  # the longer side decides: 800 / 8 = 100
        ("stretch", (200, 1600), 2, True),  # 100 x 800 -> 96 x 96 still squeezes the width 8 times
    ],
)
def test_large_jpegs_are_shrunk_while_decoding(crop, stored, ratio, antialias):
    plan = inputs.plan_image(images.Header("JPEG", width=stored[1], height=stored[0]), 96, crop)
    assert (plan.shape.ratio, plan.shape.antialias) == (ratio, antialias)
    png = inputs.plan_image(images.Header("PNG", width=stored[1], height=stored[0]), 96, crop)
    assert png.shape.ratio == 1 and png.shape.antialias == (crop != "center" or min(stored) > 2 * 96)


def test_dct_scaled_decoding_matches_a_full_decode(tmp_path):
    rows, cols = np.mgrid[0:600, 0:800]
    smooth = np.stack([rows * 255 // 600, cols * 255 // 800, (rows + cols) * 255 // 1400], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95)
    (batch,) = inputs.image_dataset([tmp_path / "photo.jpg"], 96, "center", 1)
    with Image.open(tmp_path / "photo.jpg") as full:
        reference = np.asarray(full.crop((100, 0, 700, 600)).resize((96, 96), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(batch.numpy()[0] - reference).mean() < 2


def test_mixed_files_keep_their_order_and_pixels(tmp_path):
    pixels = _pattern(24, 40)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.jpg", quality=95, exif=_exif(6))
    Image.fromarray(pixels[:20, :20]).save(tmp_path / "c.bmp")
    Image.fromarray(_pattern(400, 300)).save(tmp_path / "d.jpg", quality=95)
    paths = [tmp_path / n for n in ("a.png", "b.jpg", "c.bmp", "d.jpg", "a.png")]
    (together,) = inputs.image_dataset(paths, 16, "center", 8)
    for row, path in zip(together.numpy(), paths, strict=True):
        (alone,) = inputs.image_dataset([path], 16, "center", 1)
        np.testing.assert_array_equal(row, alone.numpy()[0])


def test_shuffled_files_keep_labels_with_their_images(tmp_path):
    paths = []
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    dataset = inputs.image_dataset(paths, 8, "center", 4, labels=list(range(12)), shuffle_seed=3)
    epochs = [
        [
            (int(x[0, 0, 0]), int(y))
            for images, labels in dataset
            for x, y in zip(images.numpy(), labels.numpy(), strict=True)
        ]
        for _ in range(2)
    ]
    for epoch in epochs:
        assert sorted(epoch) == [(i * 20, i) for i in range(12)]
    assert [y for _, y in epochs[0]] != list(range(12)) and epochs[0] != epochs[1]
