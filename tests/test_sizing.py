"""backbone.image_size: a number, the backbone's own size, or auto from the train images' sizes."""

from __future__ import annotations

import pytest

from pipeline.core import config
from pipeline.features import inputs, sizing
from samples import write_image


def test_a_number_is_that_number_and_null_the_native_size():
    assert sizing.choose_image_size(96, 224, 32, []) == 96
    assert sizing.choose_image_size(None, 240, 32, []) == 240


@pytest.mark.parametrize(
    ("short_side", "native", "expected"),
    [
        (28, 224, 64),  # Fashion-MNIST: the floor
        (32, 224, 64),
        (60, 224, 80),  # 75 → the next multiple of 16
        (128, 224, 160),  # small photos: a little upscaled
        (179, 224, 224),
        (500, 224, 224),  # photos: the backbone's own size
        (500, 260, 260),
    ],
)
def test_auto_upscales_a_little_and_stays_between_the_floor_and_the_native_size(short_side, native, expected):
    assert sizing.auto_size(short_side, native, 32) == expected


def test_auto_never_goes_below_what_the_backbone_takes():
    assert sizing.auto_size(28, 299, 75) == 75


def test_auto_reads_the_median_short_side_so_a_few_odd_images_do_not_decide(tmp_path):
    sizes = [(640, 480)] * 5 + [(28, 28)] * 2 + [(30, 4000)]
    assert sizing.median_short_side(sizes) == 480
    assert sizing.median_short_side([(10, 20), (40, 30)]) == 10  # ties: the lower middle, the same every run
    paths = [write_image(tmp_path / f"{i}.png", i, size) for i, size in enumerate([(300, 200), (28, 28), (250, 400)])]
    assert inputs.read_sizes(paths) == [(300, 200), (28, 28), (250, 400)]
    assert sizing.choose_image_size("auto", 224, 32, inputs.read_sizes(paths)) == 224  # median short side 200
    assert sizing.describe_choice("auto", 224, 200) == "auto: median short side 200 px → 224 px"
    with pytest.raises(ValueError, match="no images"):
        sizing.choose_image_size("auto", 224, 32, [])


def test_params_take_auto_a_number_or_null_and_name_all_three_otherwise(base_params):
    for value in ("auto", 96, None):
        base_params["backbone"]["image_size"] = value
        assert config.parse(base_params).backbone.image_size == value
    base_params["backbone"]["image_size"] = "big"
    with pytest.raises(
        config.ConfigError,
        match=r"backbone.image_size: found 'big'; allowed: 'auto', or an integer "
        r"in \[16, 1024\], or null",
    ):
        config.parse(base_params)
