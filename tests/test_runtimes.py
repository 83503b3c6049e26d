"""The runtimes of frozen forward passes: every one agrees with TensorFlow, ``auto`` chooses and remembers.

Real conversions (TFLite's converter, tf2onnx) and real interpreters on EfficientNet-Lite0 with its
ImageNet weights at 32 px, so the graph checked is the one extract runs; no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import config, runtime
from pipeline.features import backbones, extraction, runtimes

# Features of Lite0 reach about 5-10; the runtimes sum in other orders and fold BatchNorm their own way.
RELATIVE_TOLERANCE = 1e-4  # of the largest feature's magnitude; measured: about 5e-6 (benchmarks/runtimes.py)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> keras.Model:
    model, _ = backbones.build_extractor(
        backbones.get("efficientnet_lite0"), 32, "imagenet", Path("."), tmp_path_factory.mktemp("weights")
    )
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # auto's memory, per test


@pytest.mark.parametrize("name", runtimes.RUNTIMES)
def test_every_runtime_agrees_with_tensorflow_and_repeats_bitwise(
    extractor: keras.Model, images: np.ndarray, name: runtimes.Runtime
) -> None:
    reference = extraction.compile_forward(extractor)(tf.constant(images)).numpy()
    forward = runtimes.compile_forward(extractor, name, threads=2)
    features = forward(tf.constant(images)).numpy()
    assert features.shape == reference.shape == (5, 1280) and features.dtype == np.float32
    assert np.isfinite(features).all() and reference.std() > 0.01  # meaningful features, not NaN or zeros
    np.testing.assert_allclose(features, reference, rtol=0, atol=RELATIVE_TOLERANCE * np.abs(reference).max())
    assert np.array_equal(forward(tf.constant(images)).numpy(), features)  # the same bits on every call
    # A smaller last batch (a split's tail) gives the same rows as in the full batch, to rounding.
    tail = forward(tf.constant(images[3:])).numpy()
    np.testing.assert_allclose(tail, features[3:], rtol=0, atol=RELATIVE_TOLERANCE * np.abs(reference).max())


def test_tensorflow_is_todays_graph(extractor: keras.Model, images: np.ndarray) -> None:
    name, forward, how = runtimes.choose(extractor, "tensorflow", 5, 2, Path("unused"))
    assert (name, how["rule"]) == ("tensorflow", "set")
    expected = extraction.compile_forward(extractor)(tf.constant(images)).numpy()
    assert np.array_equal(forward(tf.constant(images)).numpy(), expected)


def test_auto_measures_once_then_remembers_its_choice(extractor: keras.Model, tmp_path: Path) -> None:
    name, forward, how = runtimes.choose(extractor, "auto", 4, 2, tmp_path)
    assert name in runtimes.RUNTIMES and how["rule"] == "measured"
    assert set(how["images_per_s"]) == set(runtimes.RUNTIMES) and min(how["images_per_s"].values()) > 0
    assert all(len(speeds) == runtimes.MEASURE_ROUNDS for speeds in how["rounds"].values())
    assert how["images_per_s"] == {r: max(speeds) for r, speeds in how["rounds"].items()}
    assert name == runtimes.pick_fastest(how["rounds"])
    remembered: dict[str, Any] = json.loads((tmp_path / runtimes.CHOICES_FILE).read_text())
    key = runtimes.choice_key(extractor, 4, 2)
    assert remembered[key]["runtime"] == name
    # The next run reads the choice instead of measuring: even a choice the speeds would not give is kept.
    other = next(r for r in runtimes.RUNTIMES if r != name)
    remembered[key]["runtime"] = other
    (tmp_path / runtimes.CHOICES_FILE).write_text(json.dumps(remembered))
    again, _, how_again = runtimes.choose(extractor, "auto", 4, 2, tmp_path)
    assert (again, how_again["rule"]) == (other, "remembered")
    # Another batch size or thread count is another key: measured on its own, the first entry kept.
    runtimes.choose(extractor, "auto", 2, 1, tmp_path)
    assert len(json.loads((tmp_path / runtimes.CHOICES_FILE).read_text())) == 2


def test_tensorflow_is_kept_unless_another_runtime_is_clearly_faster() -> None:
    assert runtimes.pick_fastest({"tensorflow": [100.0], "tflite": [105.0], "onnx": [108.0]}) == "tensorflow"
    assert runtimes.pick_fastest({"tensorflow": [100.0], "tflite": [150.0], "onnx": [120.0]}) == "tflite"
    assert runtimes.pick_fastest({"tensorflow": [100.0], "tflite": [90.0], "onnx": [111.0]}) == "onnx"
    assert runtimes.pick_fastest({"tensorflow": [100.0]}) == "tensorflow"


def test_a_runtime_must_win_every_round_not_only_its_best() -> None:
    # Round two was slowed for TensorFlow alone (another process woke up): TFLite's best ratio is 2x,
    # but it lost round one, so TensorFlow stays.
    assert runtimes.pick_fastest({"tensorflow": [300.0, 100.0], "tflite": [170.0, 200.0]}) == "tensorflow"
    # Ratios are taken round by round: a whole round slowed for both does not hide a steady 1.3x.
    assert runtimes.pick_fastest({"tensorflow": [100.0, 50.0], "tflite": [130.0, 65.0]}) == "tflite"
    # The runtime with the best worst-round ratio wins, not the one with the best single round.
    rounds = {"tensorflow": [100.0, 100.0], "tflite": [200.0, 112.0], "onnx": [130.0, 130.0]}
    assert runtimes.pick_fastest(rounds) == "onnx"


def test_the_choice_depends_on_the_machine_threads_and_shapes(extractor: keras.Model) -> None:
    key = runtimes.choice_key(extractor, 64, 2)
    cpu = runtime.describe_cpu()
    assert cpu["model"] in key and cpu["isa"] in key
    assert key != runtimes.choice_key(extractor, 1, 2) and key != runtimes.choice_key(extractor, 64, 1)
    assert "x".join(map(str, extractor.input_shape[1:])) in key


def test_the_choices_live_outside_the_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtimes.choices_dir() == tmp_path / "headstart"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert runtimes.choices_dir() == Path.home() / ".cache" / "headstart"


def test_an_unknown_runtime_is_rejected_by_the_config(base_params: dict[str, Any]) -> None:
    base_params["compute"]["runtime"] = "openvino"
    with pytest.raises(config.ConfigError, match=r"compute\.runtime: found 'openvino'"):
        config.parse(base_params)
    for name in ("auto", *runtimes.RUNTIMES):
        base_params["compute"]["runtime"] = name
        assert config.parse(base_params).compute.runtime == name


@pytest.mark.slow
def test_extract_records_the_runtime_it_chose_and_repeats_it(project, image_tree, tmp_path: Path) -> None:
    import mlflow

    image_tree(project.params["data"]["folder"], {"cat": 4, "dog": 4})
    project.params["backbone"].update(weights="imagenet", image_size=32)
    project.params["extract"]["batch_size"] = 4
    project.params["compute"]["runtime"] = "auto"
    project.write_params()
    project.run("dvc", "repro", "extract")
    features = project.root / "data/features"
    meta = json.loads((features / "meta.json").read_text())
    choices = json.loads((tmp_path / "xdg/headstart" / runtimes.CHOICES_FILE).read_text())
    (entry,) = choices.values()
    assert meta["runtime"] == entry["runtime"] and meta["runtime"] in runtimes.RUNTIMES
    metrics = json.loads((project.root / "metrics/extract.json").read_text())
    assert metrics["runtime"] == meta["runtime"]
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    run = mlflow.get_run(metrics["mlflow"]["run_id"])
    assert run.data.tags["runtime"] == meta["runtime"] and run.data.params["compute.runtime"] == "auto"
    # A second run reads the remembered choice: the same runtime, the same feature bytes.
    first = {p.name: p.read_bytes() for p in sorted(features.iterdir())}
    project.run("dvc", "repro", "--force", "extract")
    assert {p.name: p.read_bytes() for p in sorted(features.iterdir())} == first
    # Naming the runtime is a params change: extract runs again and says so.
    project.params["compute"]["runtime"] = "tensorflow"
    project.write_params()
    assert "Running stage 'extract'" in project.run("dvc", "repro", "extract").stdout
    assert json.loads((features / "meta.json").read_text())["runtime"] == "tensorflow"
