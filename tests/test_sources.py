"""The download stage's logic: folder, url and Fashion-MNIST sources, safe extraction, verified downloads.

Everything runs on tiny data made in ``tmp_path``; the only network is a real HTTP server on
127.0.0.1 that the tests start themselves (no mocks of the HTTP layer).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.core import config, files
from pipeline.core.config import DataParams
from pipeline.core.errors import UserError
from pipeline.data import archive, dataset, fashion_mnist, fetch, sources
from samples import write_image

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
UNREACHABLE = "http://127.0.0.1:9/"  # discard port: nothing listens, a request would fail at once


# --------------------------------------------------------------------------------------------
# A real HTTP server on 127.0.0.1
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """Serves ``files`` by name; the first ``truncate_first[name]`` requests break off halfway."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.truncate_first: dict[str, int] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        with self.server.lock:
            self.server.hits[name] += 1
            hit = self.server.hits[name]
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404, "not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if hit <= self.server.truncate_first.get(name, 0):
            self.wfile.write(body[: len(body) // 2])  # promise len(body), send half, then close
        else:
            self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        """Keep the test output quiet."""


class LocalServer:
    """A ThreadingHTTPServer in a background thread, stoppable from a test."""

    def __init__(self) -> None:
        self.httpd = _Server()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def files(self) -> dict[str, bytes]:
        return self.httpd.files

    @property
    def truncate_first(self) -> dict[str, int]:
        return self.httpd.truncate_first

    @property
    def hits(self) -> Counter[str]:
        return self.httpd.hits

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def url(self, name: str) -> str:
        return self.base_url + name

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A local HTTP server, shut down when the test ends."""
    local = LocalServer()
    try:
        yield local
    finally:
        local.stop()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_params(base: dict[str, Any], **data: Any) -> DataParams:
    """The ``data`` section of the repository's params with ``data`` overrides, validated by config.parse."""
    raw = copy.deepcopy(base)
    raw["data"].update({"retries": 0, "timeout_s": 5, **data})
    return config.parse(raw).data


def tree_files(root: Path) -> set[str]:
    """Relative POSIX paths of every file (and symlink) under ``root``."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def png_bytes(seed: str, tmp: Path) -> bytes:
    """The bytes of a small distinct PNG."""
    path = write_image(tmp / f"{uuid.uuid4().hex}.png", seed, size=(8, 8))
    data = path.read_bytes()
    path.unlink()
    return data


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip holding ``members`` under exactly the given names (absolute and ``..`` names kept)."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | str]], mode: str = "w:gz") -> Path:
    """A tar: ``(name, bytes)`` is a file, ``(name, "->target")`` a symlink, ``(name, "=>target")`` a hard link."""
    with tarfile.open(path, mode) as bundle:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                bundle.addfile(info)
            elif isinstance(content, str) and content.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, content[2:]
                bundle.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size = len(content)
                bundle.addfile(info, io.BytesIO(content))
    return path


def make_empty(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------------------------
# 1. folder source
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
# 2. max_per_class
# --------------------------------------------------------------------------------------------


def _tree_in_order(root: Path, counts: dict[str, int], reverse: bool) -> Path:
    """The same files as ``image_tree`` would write, created in forward or reverse order."""
    labels = sorted(counts, reverse=reverse)
    for label in labels:
        indices = sorted(range(counts[label]), reverse=reverse)
        for index in indices:
            write_image(root / label / f"img{index:03d}.png", f"{label}/{index}", size=(4, 4))
    return root


def test_max_per_class_choice_is_deterministic_and_independent_of_creation_order(
    tmp_path: Path, base_params: dict[str, Any]
) -> None:
    """The cap keeps the same files on every run, whatever order the files were created in; small classes keep all."""
    counts = {"cat": 9, "dog": 7, "owl": 2}
    forward = _tree_in_order(tmp_path / "forward", counts, reverse=False)
    backward = _tree_in_order(tmp_path / "backward", counts, reverse=True)
    chosen = []
    for index, source in enumerate((forward, backward, forward)):
        target = make_empty(tmp_path / f"target{index}")
        result = sources.acquire(
            data_params(base_params, source="folder", folder=str(source), max_per_class=3), target, tmp_path / "dl"
        )
        assert result.images == 3 + 3 + 2
        chosen.append(tree_files(target))
    per_class = Counter(rel.split("/")[0] for rel in chosen[0])
    assert per_class == {"cat": 3, "dog": 3, "owl": 2}
    assert chosen[0] == chosen[1] == chosen[2]
    # The pure function agrees, whatever order the entries come in.
    entries = dataset.scan_dataset(forward).entries
    kept = {e.rel for e in dataset.cap_per_class(entries, 3)}
    assert kept == chosen[0]
    assert {e.rel for e in dataset.cap_per_class(tuple(reversed(entries)), 3)} == kept
    assert dataset.cap_per_class(entries, None) == list(entries)


def test_max_per_class_counts_a_class_across_train_and_test_folders(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    """In a pre-split layout the cap is per class over all splits, and the split folders are kept."""
    source = tmp_path / "source"
    image_tree(source / "train", {"cat": 6, "dog": 3}, prefix="tr")
    image_tree(source / "test", {"cat": 4, "dog": 1}, prefix="te")
    target = make_empty(tmp_path / "target")

    result = sources.acquire(
        data_params(base_params, source="folder", folder=str(source), max_per_class=4), target, tmp_path / "dl"
    )

    assert result.presplit is True
    kept = tree_files(target)
    assert Counter(rel.split("/")[1] for rel in kept) == {"cat": 4, "dog": 4}
    assert {rel.split("/")[0] for rel in kept} <= {"train", "test"}
    assert {rel for rel in kept if rel.split("/")[1] == "dog"} == {
        "train/dog/trimg000.png",
        "train/dog/trimg001.png",
        "train/dog/trimg002.png",
        "test/dog/teimg000.png",
    }
    assert result.images == 8


# --------------------------------------------------------------------------------------------
# 3. select_root
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
# 4. url source: zip and tar.gz, verified and cached
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


# --------------------------------------------------------------------------------------------
# 5. checksum mismatch
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# 6. unsafe archives
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """``tmp_path/a/b/dest``: an empty extraction folder two levels below ``tmp_path``."""
    return make_empty(tmp_path / "a" / "b" / "dest")


def test_zip_member_with_dotdot_is_refused_and_nothing_extracted(tmp_path: Path, sandbox: Path) -> None:
    """A "../evil.png" member is named in the error; neither it nor the safe member before it is written."""
    bundle = make_zip(tmp_path / "slip.zip", {"cat/ok.png": b"fine", "../evil.png": b"evil"})
    with pytest.raises(archive.UnsafeArchive, match=r"'\.\./evil\.png'"):
        archive.extract_archive(bundle, sandbox)
    assert list(sandbox.iterdir()) == []
    assert not (sandbox.parent / "evil.png").exists()


def test_zip_member_with_absolute_name_is_refused(tmp_path: Path, sandbox: Path) -> None:
    """An absolute member name is refused by name and no file appears at that absolute path."""
    outside = f"/tmp/headstart-zipslip-{uuid.uuid4().hex}"
    bundle = make_zip(tmp_path / "abs.zip", {"cat/ok.png": b"fine", outside: b"evil"})
    with pytest.raises(archive.UnsafeArchive, match=outside):
        archive.extract_archive(bundle, sandbox)
    assert list(sandbox.iterdir()) == []
    assert not Path(outside).exists()
    assert not (sandbox / outside.lstrip("/")).exists()


def test_tar_symlink_pointing_outside_is_refused(tmp_path: Path, sandbox: Path) -> None:
    """A symlink member whose target leaves the extraction folder is refused by name; nothing is written."""
    bundle = make_tar(tmp_path / "link.tar.gz", [("cat/ok.png", b"fine"), ("link", "->../../outside")])
    with pytest.raises(archive.UnsafeArchive, match=r"'link'"):
        archive.extract_archive(bundle, sandbox)
    assert list(sandbox.iterdir()) == []


def test_tar_hard_link_pointing_outside_is_refused(tmp_path: Path, sandbox: Path) -> None:
    """A hard link to a path above the archive root is refused by name."""
    bundle = make_tar(tmp_path / "hard.tar.gz", [("cat/ok.png", b"fine"), ("cat/h.png", "=>../secret")])
    with pytest.raises(archive.UnsafeArchive, match=r"'cat/h\.png'"):
        archive.extract_archive(bundle, sandbox)
    assert list(sandbox.iterdir()) == []


def test_tar_link_chain_escaping_through_another_link_is_refused(tmp_path: Path, sandbox: Path) -> None:
    """ "s/b" -> ".." stays inside on its own, but "a" -> "s/b/.." escapes through it and is refused."""
    alone = make_tar(tmp_path / "alone.tar", [("s/f.png", b"x"), ("s/b", "->..")], mode="w")
    archive.extract_archive(alone, sandbox)
    assert (sandbox / "s" / "b").is_symlink()
    assert (sandbox / "s" / "b").resolve() == sandbox.resolve()

    fresh = make_empty(tmp_path / "fresh")
    chained = make_tar(tmp_path / "chain.tar", [("s/f.png", b"x"), ("s/b", "->.."), ("a", "->s/b/..")], mode="w")
    with pytest.raises(archive.UnsafeArchive, match=r"'a'"):
        archive.extract_archive(chained, fresh)
    assert list(fresh.iterdir()) == []


def test_tar_symlink_inside_the_archive_is_accepted_and_copied(
    tmp_path: Path, server: LocalServer, base_params: dict[str, Any]
) -> None:
    """A symlink to a sibling image ("cat/alias.png" -> "img000.png") is extracted and its content copied."""
    cat = png_bytes("cat", tmp_path)
    data = make_tar(
        tmp_path / "alias.tar.gz",
        [("cat/img000.png", cat), ("cat/alias.png", "->img000.png"), ("dog/img000.png", png_bytes("dog", tmp_path))],
    ).read_bytes()
    server.files["alias.tar.gz"] = data
    target = make_empty(tmp_path / "target")

    result = sources.acquire(
        data_params(base_params, source="url", url=server.url("alias.tar.gz"), sha256=sha256(data)),
        target,
        tmp_path / "dl",
    )

    assert result.images == 3
    assert tree_files(target) == {"cat/img000.png", "cat/alias.png", "dog/img000.png"}
    assert (target / "cat" / "alias.png").read_bytes() == cat  # survives the removal of the extraction folder


def test_non_archive_is_a_user_error(tmp_path: Path, sandbox: Path) -> None:
    """A file that is neither zip nor tar is reported as such."""
    bogus = tmp_path / "x.zip"
    bogus.write_bytes(b"this is not an archive at all" * 20)
    with pytest.raises(UserError, match="neither a .zip nor a .tar"):
        archive.extract_archive(bogus, sandbox)


# --------------------------------------------------------------------------------------------
# 7. broken transfers and retries
# --------------------------------------------------------------------------------------------


def test_download_retries_after_connection_closed_midway(tmp_path: Path, server: LocalServer) -> None:
    """A transfer that stops short of its Content-Length is retried; the second attempt delivers the file."""
    body = os.urandom(150_000)
    server.files["blob.bin"] = body
    server.truncate_first["blob.bin"] = 1
    target = tmp_path / "dl" / "blob.bin"

    result = fetch.download(server.url("blob.bin"), target, sha256=sha256(body), retries=2, timeout_s=5)

    assert result == target
    assert target.read_bytes() == body
    assert server.hits["blob.bin"] == 2
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]


def test_download_without_retries_fails_and_leaves_no_partial_file(tmp_path: Path, server: LocalServer) -> None:
    """With retries=0 the short transfer is a UserError naming the URL, and no partial file remains."""
    body = os.urandom(150_000)
    server.files["blob.bin"] = body
    server.truncate_first["blob.bin"] = 1
    folder = tmp_path / "dl"

    with pytest.raises(UserError, match=r"blob\.bin failed after 1 attempt"):
        fetch.download(server.url("blob.bin"), folder / "blob.bin", sha256=None, retries=0, timeout_s=5)

    assert server.hits["blob.bin"] == 1
    assert list(folder.iterdir()) == []


def test_download_http_404_is_not_retried(tmp_path: Path, server: LocalServer) -> None:
    """A client error (404) is reported at once, without retries or their waits."""
    with pytest.raises(UserError, match="HTTP 404"):
        fetch.download(server.url("missing.zip"), tmp_path / "dl" / "m.zip", sha256=None, retries=3, timeout_s=5)
    assert server.hits["missing.zip"] == 1
    assert list((tmp_path / "dl").iterdir()) == []


# --------------------------------------------------------------------------------------------
# 8. Fashion-MNIST with tiny synthetic IDX files
# --------------------------------------------------------------------------------------------


def idx_images(images: np.ndarray) -> bytes:
    """IDX bytes for uint8 images N×28×28 (magic 0x00000803)."""
    n, rows, cols = images.shape
    header = b"\x00\x00\x08\x03" + b"".join(x.to_bytes(4, "big") for x in (n, rows, cols))
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """IDX bytes for uint8 labels (magic 0x00000801)."""
    return b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_mnist() -> dict[str, Any]:
    """12 train and 5 test images with their labels; ``raw`` holds the four IDX files' bytes, ``sha`` their digests."""
    rng = np.random.default_rng(7)
    train_x = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    train_y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 9], dtype=np.uint8)
    test_y = np.array([9, 0, 3, 3, 1], dtype=np.uint8)
    raw = {
        "train-images-idx3-ubyte": idx_images(train_x),
        "train-labels-idx1-ubyte": idx_labels(train_y),
        "t10k-images-idx3-ubyte": idx_images(test_x),
        "t10k-labels-idx1-ubyte": idx_labels(test_y),
    }
    return {
        "raw": raw,
        "sha": {name: sha256(data) for name, data in raw.items()},
        "train": (train_x, train_y),
        "test": (test_x, test_y),
    }


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_local_files_become_named_class_folders(
    tmp_path: Path, tiny_mnist: dict[str, Any], compressed: bool
) -> None:
    """Local IDX files (gzip or plain) are read without network and written as split/class/split-NNNNN.png."""
    local = make_empty(tmp_path / "local")
    for name, data in tiny_mnist["raw"].items():
        if compressed:
            (local / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (local / name).write_bytes(data)
    downloads = tmp_path / "dl"

    contents = fashion_mnist.read_idx_files(
        local, downloads, retries=0, timeout_s=1, sha256=tiny_mnist["sha"], base_url=UNREACHABLE
    )
    assert contents == tiny_mnist["raw"]
    assert not downloads.exists() or list(downloads.iterdir()) == []

    target = make_empty(tmp_path / "target")
    assert fashion_mnist.write_images(contents, target, None) == 17
    assert len(tree_files(target)) == 17
    # Human-readable class names: label 0 and label 9 of the official list.
    train_x, _ = tiny_mnist["train"]
    first = np.asarray(Image.open(target / "train" / "T-shirt or top" / "train-00000.png"))
    last = np.asarray(Image.open(target / "train" / "Ankle boot" / "train-00011.png"))
    np.testing.assert_array_equal(first, train_x[0])
    np.testing.assert_array_equal(last, train_x[11])
    for split in ("train", "test"):
        images, labels = tiny_mnist[split]
        for index, label in enumerate(labels):
            path = target / split / fashion_mnist.CLASSES[label] / f"{split}-{index:05d}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(path)), images[index])
    scan = dataset.scan_dataset(target)
    assert scan.presplit is True
    assert len(scan.classes) == 10


def test_fashion_mnist_cap_applies_per_class_over_both_parts(tmp_path: Path, tiny_mnist: dict[str, Any]) -> None:
    """max_per_class=1 keeps exactly one image of each of the ten classes, counting train and test together."""
    target = make_empty(tmp_path / "target")
    assert fashion_mnist.write_images(tiny_mnist["raw"], target, 1) == 10
    written = tree_files(target)
    assert Counter(rel.split("/")[1] for rel in written) == {name: 1 for name in fashion_mnist.CLASSES}


def test_fashion_mnist_downloads_from_base_url_and_verifies_decompressed_content(
    tmp_path: Path, server: LocalServer, tiny_mnist: dict[str, Any]
) -> None:
    """Without a local copy the .gz files come from base_url; the decompressed bytes are what is checked."""
    for name, data in tiny_mnist["raw"].items():
        server.files[f"mnist/{name}.gz"] = gzip.compress(data, compresslevel=1, mtime=12345)
    downloads = tmp_path / "dl"

    contents = fashion_mnist.read_idx_files(
        tmp_path / "absent", downloads, retries=0, timeout_s=5, sha256=tiny_mnist["sha"], base_url=server.url("mnist/")
    )

    assert contents == tiny_mnist["raw"]
    assert {p.name for p in downloads.iterdir()} == {f"{name}.gz" for name in tiny_mnist["raw"]}
    assert all(server.hits[f"mnist/{name}.gz"] == 1 for name in tiny_mnist["raw"])

    again = fashion_mnist.read_idx_files(
        tmp_path / "absent", downloads, retries=0, timeout_s=5, sha256=tiny_mnist["sha"], base_url=server.url("mnist/")
    )
    assert again == tiny_mnist["raw"]
    assert all(server.hits[f"mnist/{name}.gz"] == 1 for name in tiny_mnist["raw"]), "verified downloads are reused"


def test_fashion_mnist_wrong_digest_removes_the_downloaded_file(
    tmp_path: Path, server: LocalServer, tiny_mnist: dict[str, Any]
) -> None:
    """A downloaded file whose content does not match is a UserError and is deleted from downloads."""
    for name, data in tiny_mnist["raw"].items():
        server.files[f"{name}.gz"] = gzip.compress(data)
    wrong = {**tiny_mnist["sha"], "train-images-idx3-ubyte": "0" * 64}
    downloads = tmp_path / "dl"

    with pytest.raises(UserError, match="expected 0{64}"):
        fashion_mnist.read_idx_files(
            tmp_path / "absent", downloads, retries=0, timeout_s=5, sha256=wrong, base_url=server.base_url
        )

    assert server.hits["train-images-idx3-ubyte.gz"] == 1
    assert list(downloads.iterdir()) == []


def test_fashion_mnist_wrong_digest_of_a_local_file_keeps_the_file(tmp_path: Path, tiny_mnist: dict[str, Any]) -> None:
    """A mismatching local copy is refused but never deleted (it is not the pipeline's to remove)."""
    local = make_empty(tmp_path / "local")
    for name, data in tiny_mnist["raw"].items():
        (local / f"{name}.gz").write_bytes(gzip.compress(data))
    wrong = {**tiny_mnist["sha"], "t10k-labels-idx1-ubyte": "f" * 64}
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        fashion_mnist.read_idx_files(local, tmp_path / "dl", retries=0, timeout_s=1, sha256=wrong, base_url=UNREACHABLE)
    assert len(list(local.iterdir())) == 4


def test_fashion_mnist_damaged_gzip_is_a_user_error(tmp_path: Path, tiny_mnist: dict[str, Any]) -> None:
    """A local .gz that does not decompress is reported as damaged."""
    local = make_empty(tmp_path / "local")
    (local / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(UserError, match="damaged"):
        fashion_mnist.read_idx_files(
            local, tmp_path / "dl", retries=0, timeout_s=1, sha256=tiny_mnist["sha"], base_url=UNREACHABLE
        )


def test_parse_idx_decodes_shape_and_values(tiny_mnist: dict[str, Any]) -> None:
    """A well-formed IDX file decodes to the array it was written from."""
    images, labels = tiny_mnist["train"]
    np.testing.assert_array_equal(fashion_mnist.parse_idx(tiny_mnist["raw"]["train-images-idx3-ubyte"]), images)
    np.testing.assert_array_equal(fashion_mnist.parse_idx(tiny_mnist["raw"]["train-labels-idx1-ubyte"]), labels)


def test_parse_idx_rejects_header_promising_more_data_than_present() -> None:
    """A header for 3 images over a body of 2 (or with extra bytes) is a UserError, not a silent reshape."""
    body = np.zeros((2, 28, 28), dtype=np.uint8).tobytes()
    short = b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") + body
    with pytest.raises(UserError, match="promises"):
        fashion_mnist.parse_idx(short)
    long = idx_labels(np.arange(5)) + b"\x00"
    with pytest.raises(UserError, match="promises"):
        fashion_mnist.parse_idx(long)
    with pytest.raises(UserError, match="not an IDX file"):
        fashion_mnist.parse_idx(b"\x1f\x8b\x08\x00" + bytes(16))


def test_parse_idx_rejects_truncated_header_as_user_error() -> None:
    """An IDX file whose dimension header is cut off is a UserError like any other damaged file."""
    with pytest.raises(UserError):
        fashion_mnist.parse_idx(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian package dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_files_match_pinned_digests(tmp_path: Path, base_params: dict[str, Any]) -> None:
    """The packaged files decompress to the pinned upstream content, and acquire uses them without any download."""
    downloads = tmp_path / "dl"
    contents = fashion_mnist.read_idx_files(
        DEBIAN_FASHION_MNIST, downloads, retries=0, timeout_s=1, base_url=UNREACHABLE
    )
    assert {name: sha256(data) for name, data in contents.items()} == fashion_mnist.IDX_SHA256
    assert fashion_mnist.parse_idx(contents["train-images-idx3-ubyte"]).shape == (60000, 28, 28)
    assert fashion_mnist.parse_idx(contents["t10k-labels-idx1-ubyte"]).shape == (10000,)

    target = make_empty(tmp_path / "target")
    params = data_params(
        base_params, source="fashion_mnist", fashion_mnist_dir=str(DEBIAN_FASHION_MNIST), max_per_class=2
    )
    result = sources.acquire(params, target, downloads)
    assert (result.images, result.classes, result.presplit) == (20, 10, True)
    assert not downloads.exists() or list(downloads.iterdir()) == []
