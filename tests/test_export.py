"""TFLite export: every format converts and follows the Keras model, the parity check refuses a format
that does not, and the export stage writes (or, disabled, leaves empty) its folder and logs to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline.core import config, files
from pipeline.core.errors import UserError
from pipeline.features import backbones, inputs
from pipeline.serving import export
from pipeline.training import finetune, head

SIZE = 32
CLASSES = 3


def _write_coloured(path: Path, label: int, index: int) -> Path:
    """A noisy PNG with colour channel ``label`` bright, in one of three sizes (so images are cropped and resized)."""
    width, height = [(32, 32), (48, 40), (40, 64)][index % 3]
    pixels = np.random.default_rng(index).integers(0, 100, (height, width, 3), dtype=np.uint8)
    pixels[:, :, label] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def labelled_images(tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """30 PNGs, 10 per class."""
    folder = tmp_path_factory.mktemp("images")
    labels = np.arange(30) % CLASSES
    return [_write_coloured(folder / f"img{i:02d}.png", label, i // CLASSES) for i, label in enumerate(labels)], labels


@pytest.fixture(scope="module")
def tiny_model(labelled_images, tmp_path_factory) -> keras.Model:
    """The finetune stage's classifier layout at 32 px: EfficientNet-Lite0 with its packaged ImageNet weights
    and a head trained on ``labelled_images``.

    A trained head makes confident, separated predictions, as a real classifier does; an untrained
    backbone's features vanish at this size and every image would get the same uniform answer,
    which any conversion "agrees" with.
    """
    keras.utils.set_random_seed(0)
    entry = backbones.get("efficientnet_lite0")
    cache = tmp_path_factory.mktemp("weights")
    core, _ = backbones.build_backbone(entry, SIZE, "imagenet", cache, cache)
    head_model = head.build_head(entry.feature_width, CLASSES, head.HeadSettings(0, 16, "relu", 0.0, "adam", 1e-2, 8))
    augment = finetune.augmentation_layers(config.AugmentParams("horizontal", 0.1, 0.1, 0.1), seed=0)
    model = finetune.with_probabilities(finetune.assemble(entry, core, head_model, SIZE, augment))
    paths, labels = labelled_images
    pixels = np.concatenate(list(inputs.image_dataset(paths, SIZE, "center", 64)))
    extractor = keras.Model(model.input, model.get_layer("features").output)
    head_model.fit(extractor.predict(pixels, verbose=0), labels, epochs=100, verbose=0)
    return model


@pytest.fixture(scope="module")
def converted(tiny_model) -> dict[str, bytes]:
    """The tiny model in every format (converted once for the module's tests)."""
    return {fmt: export.convert(tiny_model, fmt) for fmt in ("float32", "float16", "dynamic_range")}


# Per format: the largest and the mean probability difference allowed, and the least top-1 agreement. On
# this model float16 moves probabilities by under 0.007 and int8 weights (dynamic_range) by up to 0.17,
# which can flip images whose top two classes are close (4 of these 30 are closer than that error); the
# real gate for dynamic_range is the stage's export.min_agreement on the real test split.
LIMITS = {"float32": (1e-4, 1e-5, 1.0), "float16": (2e-2, 5e-3, 1.0), "dynamic_range": (0.3, 0.08, 0.8)}


@pytest.mark.parametrize("fmt", list(LIMITS))
def test_each_format_converts_and_follows_the_keras_model(tiny_model, converted, labelled_images, fmt):
    largest, mean, least_agreement = LIMITS[fmt]
    paths, labels = labelled_images
    content = converted[fmt]

    interpreter = export.load_interpreter(content, threads=1)
    (given,), (answer,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(given["shape_signature"]) == [-1, SIZE, SIZE, 3] and list(answer["shape_signature"]) == [-1, CLASSES]
    pixels = np.concatenate(list(inputs.image_dataset(paths, SIZE, "center", 64)))
    expected = tiny_model.predict(pixels, verbose=0)  # Keras itself, not the frozen graph measure() uses
    assert (expected.argmax(axis=1) == labels).all()  # it tells the classes apart: agreement means something
    found = export.run_interpreter(interpreter, pixels)
    np.testing.assert_allclose(found, expected, atol=largest)
    assert np.abs(found - expected).mean() < mean
    np.testing.assert_allclose(found.sum(axis=1), 1, atol=1e-4)
    agreement = (found.argmax(axis=1) == expected.argmax(axis=1)).mean()
    assert agreement >= least_agreement

    scores = export.measure(tiny_model, {fmt: content}, paths, labels, "center", batch_size=8, threads=1)
    assert set(scores) == {"keras", fmt}
    assert scores[fmt]["agreement"] == pytest.approx(agreement)
    assert scores[fmt]["disagreements"] == round((1 - agreement) * len(paths))
    assert scores[fmt]["max_abs_diff"] <= largest
    assert scores[fmt]["accuracy"] == pytest.approx((found.argmax(axis=1) == labels).mean())
    assert scores["keras"]["accuracy"] == pytest.approx((expected.argmax(axis=1) == labels).mean())
    assert scores[fmt]["size_mb"] == pytest.approx(len(content) / 1e6, abs=1e-3)
    assert scores[fmt]["images_per_s"] > 0 and scores["keras"]["images_per_s"] > 0


def test_formats_shrink_the_file_and_convert_to_the_same_bytes_every_time(tiny_model, converted):
    sizes = {fmt: len(content) for fmt, content in converted.items()}
    assert sizes["float32"] * 0.4 < sizes["float16"] < sizes["float32"] * 0.6
    assert sizes["dynamic_range"] < sizes["float16"]
    assert export.convert(tiny_model, "float16") == converted["float16"]  # same model, same DVC hash


def test_the_interpreter_follows_batch_size_changes(converted):
    interpreter = export.load_interpreter(converted["float32"], threads=1)
    pixels = np.random.default_rng(3).uniform(0, 255, (7, SIZE, SIZE, 3)).astype(np.float32)
    whole = export.run_interpreter(interpreter, pixels)
    pieces = np.concatenate([export.run_interpreter(interpreter, pixels[i : i + 3]) for i in range(0, 7, 3)])
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    assert whole.shape == (7, CLASSES)


def _crafted(rows: int, flipped: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keras-like probabilities, a copy with ``flipped`` rows' top-1 moved, and labels Keras gets right."""
    labels = np.arange(rows) % CLASSES
    reference = np.full((rows, CLASSES), 0.1, np.float32)
    reference[np.arange(rows), labels] = 0.8
    candidate = reference.copy()
    candidate[:flipped] = np.roll(reference[:flipped], 1, axis=1)  # top-1 moves to the next class
    candidate[flipped:, 0] += 0.001  # a small difference everywhere else
    return reference, candidate, labels


def test_scores_of_crafted_probabilities():
    reference, candidate, labels = _crafted(200, flipped=3)
    scores = export.score_format(reference, candidate, labels)
    assert scores["agreement"] == pytest.approx(197 / 200)
    assert scores["disagreements"] == 3
    assert scores["accuracy"] == pytest.approx(197 / 200)
    assert scores["max_abs_diff"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="shapes"):
        export.score_format(reference, candidate[:10], labels)


def test_the_parity_check_names_each_failing_format_with_its_numbers():
    reference, candidate, labels = _crafted(200, flipped=3)
    good = export.score_format(reference, reference, labels)
    bad = export.score_format(reference, candidate, labels)
    export.check_parity({"float32": good, "dynamic_range": bad}, 0.985)  # 197/200 = 0.985 passes
    with pytest.raises(UserError) as raised:
        export.check_parity({"float32": good, "dynamic_range": bad}, 0.99)
    message = str(raised.value)
    assert "dynamic_range: top-1 agreement 0.9850 (3 test images predicted differently)" in message
    assert "max probability difference 0.7" in message and "export.min_agreement (0.99)" in message
    assert "float32" not in message
    export.check_parity({"float32": good}, 1.0)


def test_describe_model_tells_an_app_what_to_feed_it(converted):
    content = converted["float16"]
    scores = {"agreement": 1.0, "disagreements": 0, "max_abs_diff": 0.001, "accuracy": 0.5, "images_per_s": 9.0}
    description = export.describe_model("float16", content, SIZE, "pad", ["cat", "dog", "owl"], scores)
    assert description["file"] == "model_float16.tflite" and description["bytes"] == len(content)
    assert description["input"]["shape"] == [-1, SIZE, SIZE, 3] and description["input"]["crop"] == "pad"
    assert description["output"]["shape"] == [-1, CLASSES] and description["classes"] == CLASSES
    assert "images_per_s" not in description["parity"]  # timings vary; the description must not


def test_export_stage_disabled_leaves_an_empty_folder(project):
    project.params["export"]["enabled"] = False
    project.write_params()
    (project.root / "models/tflite").mkdir(parents=True)
    (project.root / "models/tflite/model_float32.tflite").write_bytes(b"stale")
    result = project.stage("export")
    assert "export.enabled is false" in result.stdout
    assert (project.root / "models/tflite").is_dir() and not any((project.root / "models/tflite").iterdir())
    metrics = json.loads((project.root / "metrics/export.json").read_text())
    assert metrics["enabled"] is False and set(metrics) == {"enabled", "mlflow"}
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    run = mlflow.get_run(metrics["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "export"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras saving tiny_model, per weight
def test_export_stage_writes_checked_models_and_logs_them(project, tiny_model):
    for label, name in enumerate(("red", "green", "blue")):  # the colours tiny_model was trained to tell apart
        for index in range(8):
            _write_coloured(Path(project.params["data"]["folder"]) / name / f"img{index}.png", label, 100 + index)
    project.shrink(export={"formats": ["float32", "float16", "float32"]})
    project.run("dvc", "repro", "split")
    files.save_model(tiny_model, project.root / "models/model.keras")
    project.stage("export")

    root = project.root
    folder = root / "models/tflite"
    classes = json.loads((root / "data/splits/classes.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == [
        "labels.txt",
        "model_float16.json",
        "model_float16.tflite",
        "model_float32.json",
        "model_float32.tflite",
    ]
    assert (folder / "labels.txt").read_text().splitlines() == classes
    test = [root / p for p in files.read_csv(root / "data/splits/test.csv", text_columns=("path",))["path"]]
    pixels = np.concatenate(list(inputs.image_dataset(test, SIZE, "center", 64)))
    expected = tiny_model.predict(pixels, verbose=0)
    for fmt in ("float32", "float16"):
        description = json.loads((folder / f"model_{fmt}.json").read_text())
        content = (folder / f"model_{fmt}.tflite").read_bytes()
        assert description["input"]["image_size"] == SIZE and description["input"]["crop"] == "center"
        assert description["sha256"] == files.sha256_file(folder / f"model_{fmt}.tflite")
        found = export.run_interpreter(export.load_interpreter(content, threads=1), pixels)
        assert (found.argmax(axis=1) == expected.argmax(axis=1)).all()

    metrics = json.loads((root / "metrics/export.json").read_text())
    assert metrics["enabled"] is True and metrics["images"] == len(test)
    assert metrics["float32"]["agreement"] >= project.params["export"]["min_agreement"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(metrics["mlflow"]["run_id"])
    assert run.data.metrics["float16.agreement"] == metrics["float16"]["agreement"]
    assert run.data.metrics["keras.images_per_s"] > 0
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "tflite")}
    assert {"tflite/model_float32.tflite", "tflite/model_float16.tflite", "tflite/labels.txt"} <= logged
