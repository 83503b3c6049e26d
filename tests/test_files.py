"""Atomic writes: outputs appear whole or not at all, with the permissions of ordinary files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.core import files


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_outputs_get_ordinary_permissions(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": 1})
    files.write_bytes(tmp_path / "b.bin", b"\x00")
    files.write_npz(tmp_path / "c.npz", x=np.arange(3))
    with files.staged_dir(tmp_path / "folder") as staging:
        files.write_text(staging / "d.txt", "d")
    for name in ("a.json", "b.bin", "c.npz", "folder/d.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_a_failed_block_leaves_the_previous_folder(tmp_path):
    with files.staged_dir(tmp_path / "out") as staging:
        files.write_text(staging / "old.txt", "old")
    with pytest.raises(RuntimeError), files.staged_dir(tmp_path / "out") as staging:
        files.write_text(staging / "new.txt", "new")
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_npz_bytes_do_not_depend_on_when_they_were_written(tmp_path, monkeypatch):
    files.write_npz(tmp_path / "a.npz", x=np.arange(5.0))
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)  # 2033: a zip member stamped "now" would differ
    files.write_npz(tmp_path / "b.npz", x=np.arange(5.0))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
