"""Faults read like errors: a full disk or an unwritable output folder stops a stage with one line.

The line names the output being written, the free space left on its filesystem and what to do; the
exit status is 2, as for every user error, with no traceback, and no temporary is left behind.

Every fault here is a real one from the kernel, on real files, whoever runs the tests (root included,
for whom permissions block nothing):

- an unwritable folder: an output under ``/sys``, where nobody may create files (EPERM or EACCES, EROFS
  where sysfs is mounted read-only), through the real download stage;
- a full disk, always available: the process's file-size limit (``RLIMIT_FSIZE``, with SIGXFSZ ignored),
  under which a write past the limit fails with EFBIG deep inside zipfile, Keras or numpy, naming no file;
- a full disk, where ``unshare`` may mount a tmpfs in a private namespace (skipped elsewhere): ENOSPC;
- a failed write that names no file at all: ``/dev/full`` (ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import errors

REPO = Path(__file__).resolve().parent.parent

# The child writes one output (its writer's ``write``) through ``run_cli``, then lists every file left under the
# output root.
# ``pipeline`` is imported first: it quiets TensorFlow's start-up lines, which would be more stderr.
_CHILD = """
import json, os, resource, signal, sys
from pathlib import Path
import pipeline
from pipeline.core import files
from pipeline.core.errors import run_cli
root, target, limit = Path(sys.argv[1]), Path(sys.argv[1]) / sys.argv[2], int(sys.argv[3])
{setup}
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG; else SIGXFSZ kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    run_cli(write)
finally:
    print(json.dumps(sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())))
"""

_WRITERS = {  # writer: (its output under the root, the code that defines ``write``)
    "npz": (
        "features/train.npz",
        """
import numpy as np
def write():
    files.write_npz(target, x=np.zeros((256, 256), "float32"))
""",
    ),
    "text": (
        "metrics/split.json",
        """
def write():
    files.write_text(target, "x" * 300_000)
""",
    ),
    "staged folder": (  # the fault names the staging folder's file; the user reads the final one
        "splits/train.csv",
        """
def write():
    with files.staged_dir(target.parent) as staging:
        files.write_csv(staging / target.name, __import__("pandas").DataFrame({"x": range(100_000)}))
""",
    ),
    "keras model": (  # the reported case: the disk filled while train_head saved the head
        "models/head.keras",
        """
import keras
model = keras.Sequential([keras.Input((128,)), keras.layers.Dense(256)])
def write():
    files.save_model(model, target)
""",
    ),
}
_FREE = r"\((\d+|\d\.\d) [kMGTP]?B free on /"  # "(81 GB free on /", "(1.5 kB free on /tmp/..."


def _child(writer: str, root: Path, limit: int = 0) -> list[str]:
    """The command that writes ``writer``'s output under ``root``, with a file-size limit when ``limit``."""
    name, setup = _WRITERS[writer]
    return [sys.executable, "-c", _CHILD.format(setup=setup), str(root), name, str(limit)]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _the_one_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a stage stopped by a fault (asserting there is exactly one and no traceback)."""
    assert result.returncode == errors.USER_ERROR_EXIT, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith("then run `dvc repro` again: finished stages are kept."), lines[0]
    return lines[0]


@pytest.mark.parametrize("writer", list(_WRITERS))
def test_a_full_disk_names_the_output_and_leaves_no_temporary(tmp_path, writer) -> None:
    root = tmp_path / "out"
    result = _run(_child(writer, root, limit=4096), cwd=tmp_path)
    line = _the_one_line(result)
    name = _WRITERS[writer][0]
    assert line.startswith(f"error: cannot write out/{name}: file too large for the filesystem or for the"), line
    assert re.search(_FREE, line), line
    assert json.loads(result.stdout) == []  # no temporary, no half-written output


def _tmpfs_available(mount_point: Path) -> bool:
    """Whether ``unshare`` can mount a tmpfs in a private user and mount namespace here (not on every machine)."""
    if shutil.which("unshare") is None:
        return False
    command = ["unshare", "--map-root-user", "--mount", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"']
    return subprocess.run([*command, str(mount_point)], capture_output=True).returncode == 0


@pytest.mark.parametrize("writer", ["npz", "keras model"])
def test_a_filled_filesystem_gives_the_free_space_left(tmp_path, writer) -> None:
    root = tmp_path / "out"
    root.mkdir()
    if not _tmpfs_available(root):
        pytest.skip("unshare cannot mount a tmpfs here (no user namespaces)")
    mount = ["unshare", "--map-root-user", "--mount", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"']
    result = _run([*mount, str(root), *_child(writer, root)], cwd=tmp_path)
    line = _the_one_line(result)
    name = _WRITERS[writer][0]
    assert line.startswith(f"error: cannot write out/{name}: no space left on the device ("), line
    assert f"kB free on {root}). Free some space or point params.yaml's paths at another disk" in line, line
    assert json.loads(result.stdout) == []


def test_a_write_that_names_no_file_gives_its_errno_and_the_current_folders_free_space(tmp_path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    code = "from pipeline.core.errors import run_cli\nrun_cli(lambda: open('/dev/full', 'wb', buffering=0).write(b'x'))"
    line = _the_one_line(_run([sys.executable, "-c", code], cwd=tmp_path))
    assert line.startswith("error: a write failed (ENOSPC, no file named): no space left on the device ("), line
    assert f"{errors.free_space(tmp_path)}, which holds the current folder)" in line, line


@pytest.mark.slow
@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux's /sys")
def test_a_stage_writing_into_an_unwritable_folder_stops_with_one_line(project, image_tree) -> None:
    image_tree(Path(project.params["data"]["folder"]), {"cat": 2, "dog": 2})
    project.params["paths"]["raw"] = "/sys/headstart-test/raw"  # nobody may create files there, root included
    project.write_params()
    line = _the_one_line(project.stage("download", check=False))
    assert line.startswith("error: cannot write /sys/headstart-test/raw: "), line
    assert " free on /sys). " in line, line
    assert not list(project.root.glob("**/.*.partial-*"))


def test_sizes_read_like_df() -> None:
    assert [errors.human_size(n) for n in (0, 999, 1000, 12_345_678, 2 * 10**12)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "12 MB",
        "2.0 TB",
    ]


def test_free_space_of_a_path_not_yet_created_is_its_nearest_folders(tmp_path) -> None:
    assert errors.free_space(tmp_path / "a" / "b" / "c.json") == errors.free_space(tmp_path)


def _raised_while_handling(fault: OSError) -> BaseException:
    """A RuntimeError raised while ``fault`` was handled, as MLflow's failing to mark its run FAILED would be."""
    try:
        try:
            raise fault
        except OSError as error:
            raise RuntimeError("cannot end the run") from error
    except RuntimeError as outer:
        return outer


def test_the_fault_behind_a_later_error_is_reported() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert errors.find_write_fault(_raised_while_handling(full)) is full


def test_a_refusal_that_names_no_file_stays_a_bug() -> None:
    assert errors.find_write_fault(PermissionError(errno.EPERM, "Operation not permitted")) is None
    assert errors.find_write_fault(OSError(errno.EIO, "Input/output error", "x")) is None
    refused = PermissionError(errno.EACCES, "Permission denied", "data/raw/cat/1.png")
    assert errors.describe_write_fault(refused).startswith("error: cannot access data/raw/cat/1.png: permission denied")
