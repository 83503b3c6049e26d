"""Reliability: every bad input gets a clear message, and loses nothing else.

This is the suite to scan. Cases tested where their module is tested are named here, not repeated.

| Case | Tested by |
|---|---|
| corrupt JPEG, truncated JPEG, oversized image (decompression-bomb guard); zero-byte file, text file named .jpg (left out by download) | here: ``test_odd_and_bad_files_through_split_and_extract``; reasons per file: ``test_split.py::test_inspect_image_gives_a_reason_for_every_bad_file``; ``test_inputs.py::test_not_an_image_is_a_clear_error`` |
| CMYK JPEG, 16-bit PNG, palette PNG with transparency, animated GIF, EXIF-rotated photo, lossless WebP, 16-bit TIFF | here: ``test_odd_and_bad_files_through_split_and_extract`` (each gives the features of the same picture saved plainly); decoding: ``test_inputs.py::test_formats_and_grayscale_become_three_channel_pixels``, ``::test_exif_rotated_jpeg_is_loaded_upright``, ``::test_orientation_matches_pil_exif_transpose`` |
| a file Pillow accepts but extract cannot decode (PNG with a bad IDAT checksum, JPEG with a marker inside its scan) | here: ``test_every_file_the_split_accepts_can_be_decoded_by_extract``, ``test_the_split_excludes_what_extract_cannot_decode_and_keeps_the_rest`` |
| a class with one image; a dataset with one class; an empty source folder | here: ``test_stage_refuses_what_it_cannot_split``; logic: ``test_split.py::test_class_with_too_few_images_is_named_with_its_count``, ``::test_a_single_class_is_refused`` |
| an empty class folder beside good ones | here: ``test_an_empty_class_folder_is_reported`` (download names it, on the console and in its metrics) |
| non-ASCII and space-containing paths | here (class ``ノウサギ hare``, files ``palette ü.png``, ...); ``test_sources.py::test_folder_source_hard_links_class_folders_keeping_unicode_and_spaces``; ``test_split.py::test_split_stage_on_unicode_names_with_bad_files`` |
| zip-slip archive | ``test_archive.py::test_zip_member_with_dotdot_is_refused_and_nothing_extracted``, ``::test_zip_member_with_absolute_name_is_refused`` |
| archive with a link pointing outside | ``test_archive.py::test_tar_symlink_pointing_outside_is_refused``, ``::test_tar_hard_link_pointing_outside_is_refused``, ``::test_tar_link_chain_escaping_through_another_link_is_refused`` |
| checksum mismatch | ``test_sources.py::test_url_checksum_mismatch_raises_and_leaves_nothing_behind``; ``test_fashion_mnist.py::test_fashion_mnist_wrong_digest_removes_the_downloaded_file``, ``::test_fashion_mnist_wrong_digest_of_a_local_file_keeps_the_file`` |
| the server closes the connection halfway | ``test_fetch.py::test_download_retries_after_connection_closed_midway`` (a retry succeeds), ``::test_download_without_retries_fails_and_leaves_no_partial_file`` |
| a stage killed with SIGKILL in the middle of extract | here: ``test_extract_killed_midway_leaves_nothing_half_written_and_repro_recovers``; ``test_files.py::test_a_failed_block_leaves_the_previous_folder`` |
| an unreachable tracking server | ``test_tracking.py::test_unreachable_tracking_server_is_a_user_error_naming_the_uri``, ``::test_stage_stops_before_work_when_tracking_server_is_down`` (a real stage process: exit 2, the URI named, nothing written) |
| a params typo | ``test_config.py::test_unknown_key_names_the_path_and_suggests_the_close_match``, ``::test_stage_with_bad_params_exits_2_without_traceback`` |
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile  # comes with scikit-image, a test dependency
from PIL import Image

from pipeline.data import images
from pipeline.features import extraction, inputs
from samples import write_image

SPLITS = ("train", "val", "test")
ODD = "ノウサギ hare"  # a class name with non-ASCII letters and a space
PLAIN = "sea lion"


def _picture(seed: int, height: int = 48, width: int = 48) -> np.ndarray:
    """A smooth random RGB picture (JPEG keeps it well), different for every seed."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _write_png16(path: Path, pixels: np.ndarray) -> None:
    """An RGB PNG with 16 bits per channel (Pillow writes 16 bits for grayscale only): 8-bit ``v`` as ``v * 257``."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + (pixels[y].astype(">u2") * 257).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _write_odd_files(folder: Path) -> dict[str, str]:
    """Files in unusual encodings, each with a twin: the same picture as a plain 8-bit RGB PNG.

    Returns:
        Odd file name -> twin file name.
    """
    folder.mkdir(parents=True)
    twins = {}

    def plain(name: str, pixels: np.ndarray) -> str:
        Image.fromarray(pixels).save(folder / name)
        return name

    cmyk = Image.fromarray(_picture(1)).convert("CMYK")
    cmyk.save(folder / "cmyk.jpg", quality=95)
    with Image.open(folder / "cmyk.jpg") as stored:
        assert stored.mode == "CMYK"
        twins["cmyk.jpg"] = plain("cmyk twin.png", np.asarray(stored.convert("RGB")))
    _write_png16(folder / "rgb16.png", _picture(2))
    twins["rgb16.png"] = plain("rgb16 twin.png", _picture(2))
    palette = Image.fromarray(_picture(3)).quantize(colors=32)
    palette.save(folder / "palette ü.png", transparency=0)  # palette entry 0 is transparent (a tRNS chunk)
    twins["palette ü.png"] = plain("palette twin.png", np.asarray(palette.convert("RGB")))
    frames = [Image.fromarray(_picture(seed)).quantize(colors=64) for seed in (4, 40, 41)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    twins["animated.gif"] = plain("animated twin.png", np.asarray(frames[0].convert("RGB")))
    upright = _picture(5, height=40, width=56)
    stored_turned = np.rot90(upright)  # 56 x 40 as stored; EXIF orientation 6 turns it back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored_turned)).save(folder / "exif rotated.jpg", quality=95, exif=exif)
    twins["exif rotated.jpg"] = plain("exif upright.png", upright)
    plain("exif as stored.png", np.ascontiguousarray(stored_turned))  # the decoy: what ignoring EXIF would give
    Image.fromarray(_picture(7)).save(folder / "web.webp", lossless=True)
    twins["web.webp"] = plain("web twin.png", _picture(7))
    tifffile.imwrite(folder / "scan16.tif", _picture(8).astype(np.uint16) * 257, photometric="rgb", compression="zlib")
    twins["scan16.tif"] = plain("scan16 twin.png", _picture(8))
    return twins


NOT_IMAGES = {"empty.jpg": "empty file (0 bytes)", "notes.jpg": "not an image (content not recognised)"}


def _write_bad_files(folder: Path) -> dict[str, str]:
    """Files the split must exclude, and two that are no images at all, which download leaves out
    (``NOT_IMAGES``). Returns file name -> the start of the reason the split must give."""
    buffer = io.BytesIO()
    Image.fromarray(_picture(6)).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    table = jpeg.find(b"\xff\xc4")  # the Huffman table, overwritten: the header still says JPEG
    (folder / "corrupt.jpg").write_bytes(jpeg[: table + 5] + b"\xff" * 20 + jpeg[table + 25 :])
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list, not a photo", encoding="utf-8")
    write_image(folder / "huge.png", "huge", size=(96, 96))  # more pixels than split.max_image_pixels below
    return {
        "corrupt.jpg": "corrupt or truncated image",
        "truncated.jpg": "corrupt or truncated image",
        "huge.png": "too large: 96x96 pixels exceeds split.max_image_pixels (4096)",
    }


def _feature_rows(root: Path) -> dict[str, np.ndarray]:
    """Every image's feature row, by its raw-folder path, over all splits."""
    rows = {}
    for name in SPLITS:
        frame = pd.read_csv(root / f"data/splits/{name}.csv", dtype=str, keep_default_na=False)
        subset = extraction.read_feature_set(root / f"data/features/{name}.npz")
        assert list(subset.paths) == list(frame["path"])  # every split row has its features, in order
        assert np.isfinite(subset.features).all()
        rows.update(zip(subset.paths, subset.features, strict=True))
    return rows


@pytest.mark.slow
def test_odd_and_bad_files_through_split_and_extract(project, image_tree) -> None:
    source = Path(project.params["data"]["folder"])
    image_tree(source, {PLAIN: 6})
    bad = _write_bad_files(source / PLAIN)
    twins = _write_odd_files(source / ODD)
    # The real ImageNet weights (offline): features that tell pictures apart.
    project.params["backbone"].update(image_size=48)
    project.params["extract"]["batch_size"] = 8
    project.params["split"]["max_image_pixels"] = 64 * 64
    project.write_params()

    result = project.run("dvc", "repro", "extract")

    # The console: the stages' own lines, no start-up chatter, no native warning for each refused file.
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "Local rendezvous"):
        assert noise not in result.stdout + result.stderr, noise
    root = project.root
    report = json.loads((root / "data/splits/report.json").read_text(encoding="utf-8"))
    excluded = {Path(entry["path"]).name: entry["reason"] for entry in report["excluded"]}
    assert set(excluded) == set(bad)
    for name, reason in bad.items():
        assert excluded[name].startswith(reason), (name, excluded[name])
        assert f"excluded data/raw/{PLAIN}/{name}: " in result.stdout
    for name, reason in NOT_IMAGES.items():
        assert f"download:   left out {PLAIN}/{name}: {reason}" in result.stdout
        assert not (root / "data" / "raw" / PLAIN / name).exists()
    good = {f"data/raw/{PLAIN}/img{i:03d}.png" for i in range(6)}
    good |= {f"data/raw/{ODD}/{p.name}" for p in (source / ODD).iterdir()}
    rows = _feature_rows(root)
    assert set(rows) == good  # nothing else lost: every good file is split and extracted

    for odd, twin in twins.items():
        odd_row = rows[f"data/raw/{ODD}/{odd}"]
        distances = {path: float(np.linalg.norm(row - odd_row)) for path, row in rows.items() if not path.endswith(odd)}
        assert min(distances, key=distances.get) == f"data/raw/{ODD}/{twin}", (
            odd,
            sorted(distances.items(), key=lambda i: i[1])[:3],
        )
    for lossless in ("rgb16.png", "palette ü.png", "animated.gif", "web.webp", "scan16.tif"):
        np.testing.assert_allclose(
            rows[f"data/raw/{ODD}/{lossless}"],
            rows[f"data/raw/{ODD}/{twins[lossless]}"],
            rtol=1e-4,
            atol=1e-4,
            err_msg=lossless,
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("counts", "stage", "message"),
    [
        ({"cat": 4, "dog": 4, "owl": 1}, "split", "too few images to split class(es) 'owl' (1 image(s), 1 distinct)"),
        ({"cat": 6}, "split", "a classifier needs at least two classes with usable images; found only 'cat'"),
        ({}, "download", "no images found in "),
    ],
    ids=["a class with one image", "one class", "an empty source folder"],
)
def test_stage_refuses_what_it_cannot_split(project, image_tree, counts, stage, message) -> None:
    source = Path(project.params["data"]["folder"])
    source.mkdir()
    image_tree(source, counts)
    result = project.run("dvc", "repro", "split", check=False)
    assert result.returncode != 0
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.root / "data" / "splits").exists()
    raw = project.root / "data" / "raw"
    if stage == "split":  # the stage before it kept its output
        assert sorted(p.name for p in raw.iterdir()) == sorted(counts)
    else:
        assert not raw.exists()


@pytest.mark.slow
def test_an_empty_class_folder_is_reported(project, image_tree) -> None:
    source = Path(project.params["data"]["folder"])
    image_tree(source, {"cat": 4, "dog": 4})
    (source / "owl").mkdir()
    (source / "hare").mkdir()
    (source / "hare" / ".DS_Store").write_bytes(b"junk")  # only a hidden file: no image either
    result = project.run("dvc", "repro", "split")
    frames = [pd.read_csv(project.root / f"data/splits/{name}.csv") for name in SPLITS]
    assert sum(len(frame) for frame in frames) == 8  # the good classes are split
    assert json.loads((project.root / "data/splits/classes.json").read_text(encoding="utf-8")) == ["cat", "dog"]
    for folder in ("owl", "hare"):
        assert f"download: ignored empty class folder {folder}/" in result.stdout
    download = json.loads((project.root / "metrics/download.json").read_text(encoding="utf-8"))
    assert download["empty_class_folders"] == ["hare", "owl"]
    assert download["classes"] == 2


def _png_with_a_bad_idat_checksum(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_picture(7)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    chunk = data.find(b"IDAT")
    length = struct.unpack(">I", data[chunk - 4 : chunk])[0]
    data[chunk + 4 + length] ^= 0xFF  # the chunk's CRC, which libpng checks and Pillow's decoder does not
    path.write_bytes(bytes(data))


def _jpeg_with_a_marker_inside_the_scan(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_picture(8)).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    scan = data.find(b"\xff\xda")
    at = scan + 2 + struct.unpack(">H", data[scan + 2 : scan + 4])[0] + 40
    data[at : at + 2] = b"\xff\xe9"  # an APP9 marker in the entropy-coded data: libjpeg warns, then stops
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [_png_with_a_bad_idat_checksum, _jpeg_with_a_marker_inside_the_scan],
    ids=["png-bad-idat-crc", "jpeg-marker-in-scan"],
)
def test_every_file_the_split_accepts_can_be_decoded_by_extract(tmp_path, damage) -> None:
    path = tmp_path / "damaged"
    damage(path)
    _, problem = images.inspect_image(path, max_pixels=10**6)
    if problem is None:  # the split keeps it, so extract must be able to read it
        (batch,) = inputs.image_dataset([path], 32, "center", 1)
        assert batch.shape == (1, 32, 32, 3)


def test_the_split_excludes_what_extract_cannot_decode_and_keeps_the_rest(tmp_path) -> None:
    twins = _write_odd_files(tmp_path / "odd")
    good = sorted((tmp_path / "odd").iterdir())
    for index in range(3):
        Image.fromarray(_picture(20 + index)).save(tmp_path / f"plain{index}.jpg", quality=90)
    good += sorted(tmp_path.glob("plain*.jpg"))
    damaged = [tmp_path / "bad crc.png", tmp_path / "marker in scan.jpg"]
    _png_with_a_bad_idat_checksum(damaged[0])
    _jpeg_with_a_marker_inside_the_scan(damaged[1])
    paths = good[:4] + damaged[:1] + good[4:] + damaged[1:]  # bad files among good ones, decoded in one batch

    checks = dict(zip(paths, images.inspect_images(paths, max_pixels=10**6), strict=True))

    assert len(good) == 2 * len(twins) + 1 + 3
    assert {path.name: checks[path][1] for path in good} == {path.name: None for path in good}
    assert checks[damaged[0]][1].startswith("corrupt image (TensorFlow's decoder refuses it): Invalid PNG data")
    assert checks[damaged[1]][1].startswith("corrupt image (TensorFlow's decoder refuses it): jpeg::Uncompress failed")
    assert all(checks[path][0] == hashlib.sha256(path.read_bytes()).hexdigest() for path in paths)
    (batch,) = inputs.image_dataset(good, 32, "center", len(good))  # everything kept decodes in extract
    assert batch.shape == (len(good), 32, 32, 3)


# --------------------------------------------------------------------------------------------
# SIGKILL in the middle of extract
# --------------------------------------------------------------------------------------------


def _stage_env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _extract_pid(session: int) -> int | None:
    """The ``python -m stages.extract`` process in a session (DVC starts it through a shell)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[3]) == session and b"stages.extract" in command:
            return int(entry.name)
    return None


def _kill_extract_midway(project, command: list[str]) -> int:
    """Run ``command``; once extract has written train.npz into its staging folder (val and test
    still to come), SIGKILL the extract process. Returns the command's exit status."""
    data = project.root / "data"
    earlier = set(data.glob(".features.partial-*"))  # left by a run killed before
    with open(project.root / "killed.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=project.root, env=_stage_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    while not [p for p in data.glob(".features.partial-*/train.npz") if p.parent not in earlier]:
        if process.poll() is not None:
            pytest.fail(f"extract ended before it could be killed:\n{(project.root / 'killed.log').read_text()}")
        time.sleep(0.005)
    pid = _extract_pid(process.pid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return process.wait(timeout=300)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _cache_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in (root / ".dvc/cache").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_extract_killed_midway_leaves_nothing_half_written_and_repro_recovers(project, image_tree) -> None:
    image_tree(project.params["data"]["folder"], {"a": 80, "b": 80})  # val and test: 40 images each, at 224 px
    project.params["backbone"].update(weights="none", image_size=224)
    project.params["extract"]["batch_size"] = 8
    project.write_params()
    project.run("dvc", "repro", "extract")
    root = project.root
    before = _digests(root / "data/features")
    lock = (root / "dvc.lock").read_text()
    cached = _cache_files(root)
    project.params["backbone"]["crop"] = "pad"  # new features to compute
    project.write_params()

    # Run directly, the stage swaps its folder in only when complete: the old features stay whole.
    assert _kill_extract_midway(project, [sys.executable, "-m", "stages.extract"]) == -signal.SIGKILL
    assert _digests(root / "data/features") == before
    assert list((root / "data").glob(".features.partial-*/train.npz"))  # the killed run's staging folder

    # Under dvc repro: DVC removes the outputs before running the stage, caches nothing of a failed one.
    assert _kill_extract_midway(project, ["dvc", "repro", "extract"]) != 0
    assert not (root / "data/features").exists() or _digests(root / "data/features") == before
    assert (root / "dvc.lock").read_text() == lock
    assert _cache_files(root) == cached
    assert "changed" in project.run("dvc", "status", "extract").stdout

    project.run("dvc", "repro", "extract")
    assert project.run("dvc", "status", "extract").stdout.strip() == "Data and pipelines are up to date."
    assert not list((root / "data").glob(".features.partial-*"))  # leftovers of killed runs are cleared
    assert _digests(root / "data/features") != before
    _feature_rows(root)  # every split row has finite features, in order
    for entry in (root / ".dvc/cache/files/md5").rglob("*"):  # every cache entry is whole: named by its md5
        if entry.is_file():
            assert entry.parent.name + entry.name.removesuffix(".dir") == hashlib.md5(entry.read_bytes()).hexdigest()
