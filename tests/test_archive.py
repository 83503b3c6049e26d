"""Safe extraction of zip and tar archives (pipeline/data/archive.py): a member or link that would land outside the
extraction folder is refused by name before anything is written."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from file_server import LocalServer
from pipeline.core.errors import UserError
from pipeline.data import archive, sources
from projects import data_params
from samples import make_empty, make_tar, make_zip, png_bytes, sha256, tree_files


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
