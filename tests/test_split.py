"""The split: verified, stratified, seeded, duplicate-aware, and explicit about every exclusion."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.data import images
from pipeline.data.split import Item, split_images
from samples import write_image


def split_params(**overrides: object) -> config.SplitParams:
    values = {"val": 0.25, "test": 0.25, "use_existing": False, "max_image_pixels": 10_000_000, **overrides}
    return config.SplitParams(**values)


def make_items(counts: dict[str, int], existing: str | None = None) -> list[Item]:
    return [
        Item(f"raw/{label}/{i}.png", label, f"{label}-{existing}-{i}", existing)
        for label, n in counts.items()
        for i in range(n)
    ]


def test_same_seed_gives_identical_splits_and_another_seed_differs() -> None:
    items = make_items({"a": 40, "b": 40})
    first = split_images(items, split_params(), seed=1, presplit=False)
    again = split_images(list(reversed(items)), split_params(), seed=1, presplit=False)
    other = split_images(items, split_params(), seed=2, presplit=False)
    assert first.items == again.items
    assert first.items["test"] != other.items["test"]


def test_each_class_is_split_in_the_requested_proportions() -> None:
    result = split_images(make_items({"a": 20, "b": 40, "c": 8}), split_params(), seed=0, presplit=False)
    counts = result.counts()
    assert counts["test"] == {"a": 5, "b": 10, "c": 2}
    assert counts["val"] == {"a": 5, "b": 10, "c": 2}
    assert counts["train"] == {"a": 10, "b": 20, "c": 4}


def test_exact_duplicates_never_straddle_splits_and_are_counted() -> None:
    items = make_items({"a": 30, "b": 30})
    copies = [Item(f"raw/a/copy{i}.png", "a", items[i].sha256) for i in range(0, 30, 3)]
    result = split_images(items + copies, split_params(), seed=3, presplit=False)
    split_of = {}
    for name, members in result.items.items():
        for item in members:
            assert split_of.setdefault(item.sha256, name) == name, f"{item.path} straddles splits"
    assert result.duplicate_groups == 10
    assert result.duplicate_copies == 10
    assert sum(len(m) for m in result.items.values()) == 70


def test_same_image_under_two_classes_is_excluded_with_reason() -> None:
    items = make_items({"a": 10, "b": 10})
    clash = Item("raw/b/clash.png", "b", items[0].sha256)
    result = split_images(items + [clash], split_params(), seed=0, presplit=False)
    reasons = {e["path"]: e["reason"] for e in result.excluded}
    assert reasons[clash.path] == "same image is also filed under class a"
    assert reasons[items[0].path] == "same image is also filed under class b"
    assert all(i.sha256 != clash.sha256 for members in result.items.values() for i in members)


def test_class_with_too_few_images_is_named_with_its_count() -> None:
    with pytest.raises(UserError) as caught:
        split_images(make_items({"a": 10, "tiny": 2, "one": 1}), split_params(), seed=0, presplit=False)
    assert "'tiny' (2 image(s), 2 distinct)" in str(caught.value)
    assert "'one' (1 image(s), 1 distinct)" in str(caught.value)


def test_a_single_class_is_refused() -> None:
    with pytest.raises(UserError, match="at least two classes.*only 'a'"):
        split_images(make_items({"a": 10}), split_params(), seed=0, presplit=False)


def test_use_existing_keeps_folders_and_carves_the_missing_split_from_train() -> None:
    train, val = make_items({"a": 20, "b": 20}, "train"), make_items({"a": 6, "b": 6}, "val")
    result = split_images(train + val, split_params(use_existing=True), seed=0, presplit=True)
    assert result.carved == ["test"]
    assert set(result.items["val"]) == set(val)
    assert result.counts()["test"] == {"a": 5, "b": 5}
    assert set(result.items["train"]) | set(result.items["test"]) == set(train)


def test_use_existing_keeps_a_cross_split_duplicate_in_the_held_out_split() -> None:
    train, test = make_items({"a": 10, "b": 10}, "train"), make_items({"a": 3, "b": 3}, "test")
    leaked = Item("raw/train/a/leak.png", "a", test[0].sha256, "train")
    result = split_images(train + test + [leaked], split_params(use_existing=True), seed=0, presplit=True)
    assert {"path": leaked.path, "reason": "duplicate of an image in test"} in result.excluded
    assert leaked not in result.items["train"]
    assert test[0] in result.items["test"]


def test_use_existing_without_split_folders_explains_the_fix() -> None:
    with pytest.raises(UserError, match="set split.use_existing: false"):
        split_images(make_items({"a": 10, "b": 10}), split_params(use_existing=True), seed=0, presplit=False)


def test_inspect_image_gives_a_reason_for_every_bad_file(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png", "good")
    truncated = tmp_path / "truncated.jpg"
    write_image(tmp_path / "full.jpg", "full", size=(64, 64), fmt="JPEG")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image", encoding="utf-8")
    ppm = write_image(tmp_path / "photo.ppm", "ppm", fmt="PPM")
    heic = tmp_path / "phone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))  # an iPhone photo's first box
    big = write_image(tmp_path / "big.png", "big", size=(200, 200))
    checked = (good, truncated, empty, text, ppm, heic, big)
    reasons = {p.name: images.inspect_image(p, max_pixels=100 * 100)[1] for p in checked}
    assert reasons["good.png"] is None
    assert reasons["truncated.jpg"].startswith("corrupt or truncated image")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["notes.jpg"] == "not an image (content not recognised)"
    assert reasons["photo.ppm"].startswith("unsupported format PPM (supported: JPEG, PNG, BMP, GIF, WEBP, TIFF, AVIF)")
    assert reasons["phone.heic"].startswith("unsupported format HEIF/HEIC")
    assert "convert it to JPEG" in reasons["phone.heic"]
    assert reasons["big.png"].startswith("too large: 200x200 pixels")
    assert images.inspect_image(good, 10**6)[0] == images.inspect_image(tmp_path / "good.png", 10**6)[0]


@pytest.mark.slow
def test_split_stage_on_unicode_names_with_bad_files(project, image_tree) -> None:
    source = Path(project.params["data"]["folder"])
    image_tree(source, {"猫": 8, "sea lion": 8, "dog": 8})
    (source / "dog" / "broken.png").write_bytes((source / "dog" / "img000.png").read_bytes()[:300])
    (source / "sea lion" / "copy.png").write_bytes((source / "sea lion" / "img000.png").read_bytes())
    project.stage("download")
    result = project.stage("split")
    splits = project.root / "data" / "splits"
    frames = {name: pd.read_csv(splits / f"{name}.csv") for name in ("train", "val", "test")}
    assert json.loads((splits / "classes.json").read_text(encoding="utf-8")) == ["dog", "sea lion", "猫"]
    assert set(frames["train"]["label"]) == {"dog", "sea lion", "猫"}
    assert sum(len(f) for f in frames.values()) == 25
    for frame in frames.values():
        for path in frame["path"]:
            assert (project.root / path).is_file()
            with Image.open(project.root / path) as image:
                image.load()
    report = json.loads((splits / "report.json").read_text(encoding="utf-8"))
    assert report["excluded"] == [{"path": "data/raw/dog/broken.png", "reason": report["excluded"][0]["reason"]}]
    assert report["excluded"][0]["reason"].startswith("corrupt or truncated image")
    assert report["duplicates"] == {"groups": 1, "extra_copies": 1}
    assert "excluded data/raw/dog/broken.png" in result.stdout
    hashes = Counter(h for f in frames.values() for h in set(f["sha256"]))
    assert max(hashes.values()) == 1
    assert (project.root / "plots" / "split" / "class_counts.png").stat().st_size > 1000
