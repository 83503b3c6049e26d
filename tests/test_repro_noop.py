"""The image deps in dvc.yaml: only split lists data/raw; the stages after it stand on data/splits, whose CSVs carry
every image's sha256. A changed image must still reach every stage that reads images, through split."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from projects import REPO
from samples import write_image

pytestmark = pytest.mark.slow

IMAGE_READERS = ("extract", "finetune", "evaluate", "analyze", "export")
AFTER_SPLIT = ("split", "extract", "train_head", "audit", "finetune", "evaluate", "analyze", "export", "record")
UP_TO_DATE = "Data and pipelines are up to date."
_RUNNING = re.compile(r"Running stage '([^']+)'")


def stages_run(output: str) -> list[str]:
    """The stages a ``dvc repro`` ran, in order, from its "Running stage" lines."""
    return _RUNNING.findall(output)


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace_image(path: Path, seed: str) -> None:
    """Put new pixels at ``path`` as a new file renamed over the old one (a new inode, as most editors save)."""
    fresh = write_image(path.with_name(f".{path.name}.new.png"), seed)
    os.replace(fresh, path)


def test_only_split_lists_the_raw_images_and_every_image_reader_lists_the_splits() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    listing_raw = [name for name, stage in dvc["stages"].items() if "${paths.raw}" in stage.get("deps", [])]
    assert listing_raw == ["split"]
    missing = [name for name in IMAGE_READERS if "${paths.splits}" not in dvc["stages"][name]["deps"]]
    assert not missing, f"{missing} read images but do not list ${{paths.splits}}, the images' sha256"


def test_a_changed_source_image_reruns_split_and_every_stage_after_it(tiny_run, tmp_path) -> None:
    project = tiny_run.copy(tmp_path)
    # The copy's own source folder, so the shared run's images stay untouched; dvc.lock takes the new data.folder
    # as a param of download and of record (which reads every param) without running them (the same images:
    # nothing else changed).
    source = tmp_path / "source"
    shutil.copytree(project.params["data"]["folder"], source)
    project.params["data"]["folder"] = str(source)
    project.write_params()
    project.run("dvc", "commit", "--force", "download", "record")
    assert project.run("dvc", "status").stdout.strip() == UP_TO_DATE
    image = "sea lion/img003.png"
    raw = project.root / "data" / "raw" / image

    # A changed image in the source folder: DVC does not watch a folder outside the repository (download's deps
    # are its params and code), so `dvc repro -f download` copies it in, and `dvc repro` takes it from there.
    replace_image(source / image, "a new picture")
    assert project.run("dvc", "status").stdout.strip() == UP_TO_DATE
    assert stages_run(project.run("dvc", "repro", "--force", "download").stdout) == ["download"]
    assert sha256_of(raw) == sha256_of(source / image)
    ran = stages_run(project.run("dvc", "repro").stdout)
    assert ran[0] == "split" and sorted(ran) == sorted(AFTER_SPLIT), ran
    assert project.run("dvc", "status").stdout.strip() == UP_TO_DATE
    rows = pd.concat(
        pd.read_csv(project.root / "data" / "splits" / f"{name}.csv", dtype=str) for name in ("train", "val", "test")
    )
    assert rows.set_index("path").loc[f"data/raw/{image}", "sha256"] == sha256_of(source / image)
