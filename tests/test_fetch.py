"""Verified, retried downloads (pipeline/data/fetch.py) from a real HTTP server on 127.0.0.1 (conftest's
``server``) that breaks transfers off or answers 404."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from file_server import LocalServer
from pipeline.core.errors import UserError
from pipeline.data import fetch
from samples import sha256


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
