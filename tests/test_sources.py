"""The download stage's sources (pipeline/data/sources.py): a folder, a url and how a source's root is chosen.

Everything runs on tiny data made in ``tmp_path``; the only network is a real HTTP server on
127.0.0.1 that the tests start themselves (conftest's ``server``; no mocks of the HTTP layer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from file_server import LocalServer
from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.data import fetch, sources
from projects import data_params
from samples import make_empty, make_tar, make_zip, png_bytes, sha256, tree_files, write_image

# --------------------------------------------------------------------------------------------
# folder source
# --------------------------------------------------------------------------------------------


def test_folder_source_hard_links_class_folders_keeping_unicode_and_spaces(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    """Class folders are reproduced in the target by hard links; "猫" and "sea lion" stay as they are."""
    source = image_tree(tmp_path / "source", {"猫": 3, "sea lion": 2, "dog": 1})
    target = make_empty(tmp_path / "target")

    result = sources.acquire(data_params(base_params, source="folder", folder=str(source)), target, tmp_path / "dl")

    assert (result.images, result.classes, result.presplit, result.ignored) == (6, 3, False, ())
    assert {p.name for p in target.iterdir()} == {"猫", "sea lion", "dog"}
    expected = {f"猫/img{i:03d}.png" for i in range(3)}
    expected |= {"sea lion/img000.png", "sea lion/img001.png", "dog/img000.png"}
    assert tree_files(target) == expected
    for rel in expected:
        assert os.stat(target / rel).st_ino == os.stat(source / rel).st_ino, rel
        assert (target / rel).read_bytes() == (source / rel).read_bytes()


def test_folder_source_reports_hidden_and_loose_files_without_copying_them(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    """Hidden files/folders and files outside class folders are listed as ignored, with the reason, and not copied."""
    source = image_tree(tmp_path / "source", {"cat": 2, "dog": 2})
    (source / ".DS_Store").write_bytes(b"junk")
    (source / "README.txt").write_text("about the data")
    write_image(source / "cat" / ".hidden.png", "hidden")
    write_image(source / "dog" / ".thumbs" / "t.png", "thumb")
    target = make_empty(tmp_path / "target")

    result = sources.acquire(data_params(base_params, source="folder", folder=str(source)), target, tmp_path / "dl")

    ignored = dict(result.ignored)
    assert ignored == {
        ".DS_Store": "hidden or system file",
        "README.txt": "not inside a class folder",
        "cat/.hidden.png": "hidden or system file",
        "dog/.thumbs": "hidden or system folder",
    }
    assert tree_files(target) == {"cat/img000.png", "cat/img001.png", "dog/img000.png", "dog/img001.png"}
    assert result.images == 4


def test_folder_source_names_empty_class_folders_without_creating_them(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    """A class folder with no files (or only hidden ones) is not a class: listed, not copied, in either layout."""
    flat = image_tree(tmp_path / "flat", {"cat": 2, "dog": 2})
    (flat / "owl").mkdir()
    (flat / "hare" / "sub").mkdir(parents=True)
    (flat / "hare" / ".DS_Store").write_bytes(b"junk")
    presplit = image_tree(tmp_path / "presplit" / "train", {"cat": 2, "dog": 2})
    image_tree(presplit.parent / "test", {"cat": 1})
    (presplit.parent / "test" / "dog").mkdir()

    results = {}
    for name, source in (("flat", flat), ("presplit", presplit.parent)):
        target = make_empty(tmp_path / f"target-{name}")
        results[name] = sources.acquire(
            data_params(base_params, source="folder", folder=str(source)), target, tmp_path / "dl"
        )
        assert not any(p.is_dir() and not any(p.iterdir()) for p in target.rglob("*")), name  # no empty folder made

    assert results["flat"].empty_classes == ("hare", "owl")
    assert (results["flat"].classes, results["flat"].images) == (2, 4)
    assert dict(results["flat"].ignored) == {"hare/.DS_Store": "hidden or system file"}
    assert results["presplit"].empty_classes == ("test/dog",)
    assert (results["presplit"].classes, results["presplit"].images) == (2, 5)


SECRET = b"root:x:0:0:a file from outside the source folder\n"


def _tree_with_links(tmp_path: Path, image_tree: Callable[..., Path]) -> tuple[Path, Path]:
    """A source folder holding a link to a file outside, a link to a folder outside, a link to an
    image inside, a text file named .jpg, a Thumbs.db and a broken link; returns (source, outside folder)."""
    source = image_tree(tmp_path / "source", {"cat": 2, "dog": 2})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    write_image(outside / "photos" / "far.png", "far away")
    (source / "cat" / "passwd_link.jpg").symlink_to(outside / "passwd")
    (source / "dog" / "far").symlink_to(outside / "photos", target_is_directory=True)
    (source / "dog" / "best.png").symlink_to(Path("..") / "cat" / "img000.png")  # a relative link inside
    (source / "cat" / "notes.jpg").write_text("<html><body>not a photo</body></html>", encoding="utf-8")
    (source / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    (source / "dog" / "gone.png").symlink_to(tmp_path / "deleted.png")
    return source, outside


def test_links_out_of_a_source_folder_and_non_images_are_left_out_and_listed(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    source, outside = _tree_with_links(tmp_path, image_tree)
    target = make_empty(tmp_path / "target")

    result = sources.acquire(data_params(base_params, source="folder", folder=str(source)), target, tmp_path / "dl")

    assert tree_files(target) == {
        "cat/img000.png",
        "cat/img001.png",
        "dog/img000.png",
        "dog/img001.png",
        "dog/best.png",
    }
    assert (target / "dog" / "best.png").read_bytes() == (source / "cat" / "img000.png").read_bytes()
    assert not any(SECRET in p.read_bytes() for p in target.rglob("*") if p.is_file())
    ignored = dict(result.ignored)
    assert ignored == {
        "cat/passwd_link.jpg": f"link to a file outside the source folder ({outside / 'passwd'}); "
        "set data.follow_links: true to follow it",
        "dog/far": f"link to a folder outside the source folder ({outside / 'photos'}); "
        "set data.follow_links: true to follow it",
        "cat/notes.jpg": "not an image (content not recognised)",
        "cat/Thumbs.db": "hidden or system file",
        "dog/gone.png": "broken link (its target does not exist)",
    }
    assert sources.count_reasons(result.ignored) == {
        "broken link": 1,
        "hidden or system file": 1,
        "link to a file outside the source folder": 1,
        "link to a folder outside the source folder": 1,
        "not an image": 1,
    }
    assert result.images == 5


def test_follow_links_copies_the_images_a_link_points_to_outside(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    source, outside = _tree_with_links(tmp_path, image_tree)
    target = make_empty(tmp_path / "target")

    params = data_params(base_params, source="folder", folder=str(source), follow_links=True)
    result = sources.acquire(params, target, tmp_path / "dl")

    assert (target / "dog" / "far" / "far.png").read_bytes() == (outside / "photos" / "far.png").read_bytes()
    assert not (target / "cat" / "passwd_link.jpg").exists()  # followed, but not an image: still not copied
    assert dict(result.ignored)["cat/passwd_link.jpg"] == "not an image (content not recognised)"
    assert result.images == 6


def test_a_link_loop_inside_a_class_folder_lists_each_folder_once(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    source = image_tree(tmp_path / "source", {"cat": 2, "dog": 2})
    (source / "cat" / "again").symlink_to(Path(".."), target_is_directory=True)  # cat/again → the source itself
    target = make_empty(tmp_path / "target")

    result = sources.acquire(data_params(base_params, source="folder", folder=str(source)), target, tmp_path / "dl")

    assert result.images == 4  # not dog's images again, as cats, through cat/again/dog
    assert dict(result.ignored) == {"cat/again": "link to a folder that holds it (a loop)"}
    assert tree_files(target) == {"cat/img000.png", "cat/img001.png", "dog/img000.png", "dog/img001.png"}


def test_a_class_folder_of_non_images_only_is_reported_empty(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    source = image_tree(tmp_path / "source", {"cat": 2, "dog": 2})
    (source / "notes").mkdir()
    (source / "notes" / "todo.txt").write_text("buy milk", encoding="utf-8")
    target = make_empty(tmp_path / "target")

    result = sources.acquire(data_params(base_params, source="folder", folder=str(source)), target, tmp_path / "dl")

    assert result.empty_classes == ("notes",)
    assert dict(result.ignored) == {"notes/todo.txt": "not an image (content not recognised)"}
    assert not (target / "notes").exists()


def test_a_source_of_non_images_only_is_refused_with_the_reasons(tmp_path: Path, base_params: dict[str, Any]) -> None:
    source = tmp_path / "source"
    for name in ("a/1.jpg", "b/2.jpg"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("text", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"no images in .*: all 2 file\(s\) in its class folders are left out \(2 not an image\)"
    ):
        sources.acquire(
            data_params(base_params, source="folder", folder=str(source)), make_empty(tmp_path / "t"), tmp_path / "dl"
        )


@pytest.mark.slow
def test_dvc_repro_download_leaves_no_trace_of_a_linked_outside_file(project, image_tree) -> None:
    source, outside = _tree_with_links(project.root.parent, image_tree)
    assert str(source) == project.params["data"]["folder"]

    result = project.run("dvc", "repro", "download")

    leaked = [
        p
        for folder in ("data/raw", ".dvc/cache")
        for p in (project.root / folder).rglob("*")
        if p.is_file() and SECRET in p.read_bytes()
    ]
    assert leaked == []
    assert "download: left out 5 file(s): " in result.stdout
    assert (
        f"left out cat/passwd_link.jpg: link to a file outside the source folder ({outside / 'passwd'})"
        in result.stdout
    )
    metrics = json.loads((project.root / "metrics" / "download.json").read_text(encoding="utf-8"))
    assert metrics["ignored_files"] == 5
    assert metrics["ignored_by_reason"]["link to a file outside the source folder"] == 1
    assert metrics["ignored_by_reason"]["not an image"] == 1
    assert (project.root / "data" / "raw" / "dog" / "best.png").is_file()


# --------------------------------------------------------------------------------------------
# select_root
# --------------------------------------------------------------------------------------------


def test_select_root_descends_through_single_wrapper_folders(tmp_path: Path, image_tree: Callable[..., Path]) -> None:
    """Folders that hold only one folder are unwrapped down to the class folders."""
    inner = image_tree(tmp_path / "root" / "outer" / "inner", {"cat": 1, "dog": 1})
    assert sources.select_root(tmp_path / "root", None) == inner


def test_select_root_keeps_a_lone_class_folder_of_images(tmp_path: Path, image_tree: Callable[..., Path]) -> None:
    """A single folder of images is a (single) class, not a wrapper: the split stage then names the problem."""
    image_tree(tmp_path / "root", {"cat": 2})
    assert sources.select_root(tmp_path / "root", None) == tmp_path / "root"


def test_select_root_stops_above_split_folders(tmp_path: Path, image_tree: Callable[..., Path]) -> None:
    """A wrapper holding only ``train/`` is the root: the split folder is not mistaken for a wrapper."""
    image_tree(tmp_path / "root" / "wrapper" / "train", {"cat": 1, "dog": 1})
    assert sources.select_root(tmp_path / "root", None) == tmp_path / "root" / "wrapper"


def test_select_root_subdir_picks_the_named_folder(tmp_path: Path, image_tree: Callable[..., Path]) -> None:
    """``subdir`` chooses one folder inside the source."""
    image_tree(tmp_path / "root" / "images_v1", {"cat": 1, "dog": 1})
    chosen = image_tree(tmp_path / "root" / "images_v2", {"owl": 1, "bat": 1})
    assert sources.select_root(tmp_path / "root", "images_v2") == chosen.resolve()
    assert sources.select_root(tmp_path / "root", "images_v2/owl") == (chosen / "owl").resolve()


def test_select_root_missing_subdir_lists_top_level_folders(tmp_path: Path, image_tree: Callable[..., Path]) -> None:
    """A subdir that does not exist is a UserError naming the folders that do."""
    image_tree(tmp_path / "root" / "images_v1", {"cat": 1})
    image_tree(tmp_path / "root" / "extras", {"dog": 1})
    with pytest.raises(UserError, match=r"'photos' not found.*top-level folders: extras, images_v1"):
        sources.select_root(tmp_path / "root", "photos")


@pytest.mark.parametrize("subdir", ["../outside", "inner/../../outside", "/tmp"])
def test_select_root_refuses_subdir_leaving_the_source(
    tmp_path: Path, image_tree: Callable[..., Path], subdir: str
) -> None:
    """A subdir that resolves outside the source is refused, even when that folder exists."""
    image_tree(tmp_path / "outside", {"cat": 1})
    image_tree(tmp_path / "root" / "inner", {"cat": 1})
    with pytest.raises(UserError, match="points outside the source"):
        sources.select_root(tmp_path / "root", subdir)


def test_select_root_missing_source_folder_is_a_user_error(tmp_path: Path) -> None:
    """A source folder that does not exist is reported, not a traceback."""
    with pytest.raises(UserError, match="does not exist"):
        sources.select_root(tmp_path / "nowhere", None)


def test_select_root_descends_through_wrapper_holding_a_hidden_file(
    tmp_path: Path, image_tree: Callable[..., Path]
) -> None:
    """A macOS-made archive (``dataset/.DS_Store`` beside the class folders) still unwraps to ``dataset/``."""
    wrapper = image_tree(tmp_path / "root" / "dataset", {"cat": 1, "dog": 1})
    (wrapper / ".DS_Store").write_bytes(b"junk")
    assert sources.select_root(tmp_path / "root", None) == wrapper


def test_url_source_unwraps_flower_photos_layout_with_license_file(
    tmp_path: Path, server: LocalServer, base_params: dict[str, Any]
) -> None:
    """The flower_photos.tgz layout (wrapper with class folders and LICENSE.txt) yields the class folders."""
    members: list[tuple[str, bytes | str]] = [
        ("flower_photos/LICENSE.txt", b"daisy/1.jpg CC-BY by someone\n"),
        *[
            (f"flower_photos/{label}/{i}.png", png_bytes(f"{label}{i}", tmp_path))
            for label in ("daisy", "roses")
            for i in range(2)
        ],
    ]
    data = make_tar(tmp_path / "flower_photos.tgz", members).read_bytes()
    server.files["flower_photos.tgz"] = data
    target = make_empty(tmp_path / "target")

    result = sources.acquire(
        data_params(base_params, source="url", url=server.url("flower_photos.tgz"), sha256=sha256(data)),
        target,
        tmp_path / "dl",
    )

    assert result.classes == 2
    assert {p.name for p in target.iterdir()} == {"daisy", "roses"}
    assert ("LICENSE.txt", "not inside a class folder") in result.ignored


# --------------------------------------------------------------------------------------------
# url source: zip and tar.gz, verified and cached
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_url_source_extracts_classes_and_reuses_verified_cache(
    tmp_path: Path, server: LocalServer, base_params: dict[str, Any], kind: str
) -> None:
    """A served archive with the right sha256 lands as class folders; it is cached by sha256 and reused offline."""
    images = {
        f"pets/{label}/img{i}.png": png_bytes(f"{label}/{i}", tmp_path) for label in ("cat", "dog") for i in range(3)
    }
    if kind == "zip":
        data = make_zip(tmp_path / "pets.zip", {**images, "__MACOSX/pets/._cat": b"resource fork"}).read_bytes()
    else:
        data = make_tar(tmp_path / "pets.tar.gz", list(images.items())).read_bytes()
    server.files[f"pets.{kind}"] = data
    digest = sha256(data)
    params = data_params(base_params, source="url", url=server.url(f"pets.{kind}"), sha256=digest)
    downloads = tmp_path / "dl"
    expected = {rel.removeprefix("pets/"): content for rel, content in images.items()}

    first = sources.acquire(params, make_empty(tmp_path / "target1"), downloads)

    assert (first.images, first.classes, first.presplit) == (6, 2, False)
    assert {rel: (tmp_path / "target1" / rel).read_bytes() for rel in tree_files(tmp_path / "target1")} == expected
    cached = downloads / f"{digest}.archive"
    assert [p.name for p in downloads.iterdir()] == [cached.name]  # no extraction folder or partial file left
    assert files.sha256_file(cached) == digest
    assert server.hits[f"pets.{kind}"] == 1

    server.stop()
    second = sources.acquire(params, make_empty(tmp_path / "target2"), downloads)

    assert second == first
    assert tree_files(tmp_path / "target2") == set(expected)


def test_url_source_accepts_uppercase_sha256_and_caches_under_lowercase(
    tmp_path: Path, server: LocalServer, base_params: dict[str, Any]
) -> None:
    """The digest in params is case-insensitive; the cache file is named by its lower-case form."""
    members = {"cat/x.png": png_bytes("c", tmp_path), "dog/y.png": png_bytes("d", tmp_path)}
    data = make_zip(tmp_path / "a.zip", members).read_bytes()
    server.files["a.zip"] = data
    params = data_params(base_params, source="url", url=server.url("a.zip"), sha256=sha256(data).upper())
    result = sources.acquire(params, make_empty(tmp_path / "target"), tmp_path / "dl")
    assert result.images == 2
    assert (tmp_path / "dl" / f"{sha256(data)}.archive").is_file()


def test_url_checksum_mismatch_raises_and_leaves_nothing_behind(
    tmp_path: Path, server: LocalServer, base_params: dict[str, Any]
) -> None:
    """Wrong bytes: ChecksumMismatch (a UserError), not retried, no file in downloads, target still empty."""
    members = {"cat/x.png": png_bytes("c", tmp_path), "dog/y.png": png_bytes("d", tmp_path)}
    data = make_zip(tmp_path / "a.zip", members).read_bytes()
    server.files["a.zip"] = data
    params = data_params(base_params, source="url", url=server.url("a.zip"), sha256="ab" * 32, retries=2)
    target = make_empty(tmp_path / "target")
    downloads = tmp_path / "dl"

    with pytest.raises(fetch.ChecksumMismatch, match=sha256(data)) as raised:
        sources.acquire(params, target, downloads)

    assert isinstance(raised.value, UserError)
    assert server.hits["a.zip"] == 1
    assert list(downloads.rglob("*")) == []
    assert list(target.iterdir()) == []
