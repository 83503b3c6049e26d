"""``python -m pipeline.serving.predict``: files and folders in, CSV or JSON out, unusable files reported, skipped."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from keras_samples import build_model
from pipeline.core import config, files
from pipeline.core.errors import UserError
from pipeline.serving import classifier, predict, pyfunc_model
from projects import REPO
from samples import write_image

CLASSES = ["bird", "cat", "dog"]


@pytest.fixture
def repository(tmp_path: Path, base_params: dict[str, Any]) -> config.Params:
    """A checkout's worth for predicting: params.yaml, classes.json and a trained-shaped model."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "params.yaml").write_text(
        yaml.safe_dump(copy.deepcopy(base_params), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    params = config.load(root / "params.yaml")
    files.write_json(params.path("splits") / "classes.json", CLASSES)
    build_model(params.path("model"), len(CLASSES))
    return params


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """Good images of several formats and sizes, in nested folders, plus two files that are no images."""
    folder = tmp_path / "photos"
    made = {
        "a": write_image(folder / "a.png", "a", size=(40, 30)),
        "b": write_image(folder / "sub" / "b.jpg", "b", size=(32, 32), fmt="JPEG"),
        "c": write_image(folder / "sub" / "deeper" / "C.BMP", "c", size=(20, 50), fmt="BMP"),
        "d": write_image(folder / "sub" / "d.webp", "d", size=(36, 24), fmt="WEBP"),
        "e": write_image(folder / "e.tiff", "e", size=(24, 24), fmt="TIFF"),
    }
    (folder / "sub" / "notes.jpg").write_text("this is text, not a JPEG\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "readme.txt").write_text("not looked at: no image suffix\n")
    write_image(folder / ".hidden" / "skipped.png", "hidden")
    return made


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the command in ``root`` as a user would, with this checkout's package importable."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "pipeline.serving.predict", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def expected_probabilities(params: config.Params, paths: list[Path]) -> np.ndarray:
    return classifier.predict_probabilities(classifier.load_model(params.path("model")), paths, params.backbone.crop, 4)


def test_folders_are_searched_for_images_in_sorted_order(photos: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    found = classifier.find_images([folder, folder / "readme.txt"])
    names = [p.relative_to(folder).as_posix() for p in found]
    assert names == [
        "a.png",
        "e.tiff",
        "empty.png",
        "sub/b.jpg",
        "sub/d.webp",
        "sub/notes.jpg",
        "sub/deeper/C.BMP",
        "readme.txt",
    ]
    with pytest.raises(UserError, match="no such file or folder"):
        classifier.find_images([tmp_path / "missing"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no image files"):
        classifier.find_images([tmp_path / "nothing"])


def test_unusable_files_are_told_apart_with_a_reason(photos: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    good, bad = classifier.check_images(classifier.find_images([folder]), max_pixels=10_000)
    assert good == [photos["a"], photos["e"], photos["b"], photos["d"], photos["c"]]
    assert dict(bad) == {
        folder / "empty.png": "empty file (0 bytes)",
        folder / "sub" / "notes.jpg": "not an image (content not recognised)",
    }
    _, too_large = classifier.check_images([photos["a"]], max_pixels=100)
    assert too_large[0][1].startswith("too large: 40x30 pixels")


@pytest.mark.slow
def test_a_folder_with_bad_files_is_predicted_to_stdout(
    repository: config.Params, photos: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(repository.root, str(tmp_path / "photos"))
    assert result.returncode == predict.PARTIAL_EXIT, result.stderr
    assert f"{tmp_path / 'photos' / 'empty.png'}: empty file (0 bytes)\n" in result.stderr
    assert f"{tmp_path / 'photos' / 'sub' / 'notes.jpg'}: not an image (content not recognised)\n" in result.stderr
    assert "predict: 5 image(s) predicted, 2 left out" in result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    good = [photos["a"], photos["e"], photos["b"], photos["d"], photos["c"]]
    assert list(frame.columns) == ["path", "predicted", "confidence", *(f"p:{c}" for c in CLASSES)]
    assert frame["path"].tolist() == [str(p) for p in good]
    served = frame[[f"p:{c}" for c in CLASSES]].to_numpy()
    expected = expected_probabilities(repository, good)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    assert frame["predicted"].tolist() == [CLASSES[i] for i in expected.argmax(axis=1)]


@pytest.mark.slow
def test_json_output_of_named_files(repository: config.Params, photos: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out" / "predictions.json"
    result = run_cli(repository.root, str(photos["b"]), str(photos["a"]), "--output", str(output), "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(output.read_text(encoding="utf-8"))
    assert [row["path"] for row in rows] == [str(photos["b"]), str(photos["a"])]
    expected = expected_probabilities(repository, [photos["b"], photos["a"]])
    for row, probabilities in zip(rows, expected, strict=True):
        assert row["predicted"] == CLASSES[int(probabilities.argmax())]
        np.testing.assert_allclose([row[f"p:{c}"] for c in CLASSES], probabilities, atol=1e-5)


@pytest.mark.slow
def test_nothing_usable_or_a_wrong_output_name_is_an_error(repository: config.Params, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    result = run_cli(repository.root, str(tmp_path / "bad"), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 2
    assert "error: none of the 1 file(s) is a usable image" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.csv").exists()
    wrong = run_cli(repository.root, str(tmp_path / "bad"), "--output", str(tmp_path / "out.txt"))
    assert wrong.returncode == 2 and "must end in .csv or .json" in wrong.stderr


@pytest.mark.slow
def test_a_registered_model_brings_its_class_names(
    repository: config.Params, photos: dict[str, Path], tmp_path: Path
) -> None:
    registered_classes = ["x-ray", "yak", "zebra"]
    classes_file = tmp_path / "registered" / "classes.json"
    files.write_json(classes_file, registered_classes)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{repository.root / repository.paths.mlflow_db}")  # the CLI's default store
    try:
        experiment = mlflow.create_experiment("predict-test", (tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            uri = pyfunc_model.log_classifier(
                repository.path("model"), classes_file, {"crop": "pad", "max_image_pixels": 10**6, "batch_size": 2}
            )
        version = mlflow.register_model(uri, "cli-test").version
        mlflow.MlflowClient().set_registered_model_alias("cli-test", "champion", version)
    finally:
        mlflow.set_tracking_uri(previous)
    output = tmp_path / "registered.csv"
    result = run_cli(
        repository.root,
        str(photos["a"]),
        str(photos["c"]),
        "--model",
        "models:/cli-test@champion",
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(output)
    assert [c for c in frame.columns if c.startswith("p:")] == [f"p:{c}" for c in registered_classes]
    expected = classifier.predict_probabilities(
        classifier.load_model(repository.path("model")), [photos["a"], photos["c"]], "pad", 2
    )  # the registered crop, not params' center
    centered = expected_probabilities(repository, [photos["a"], photos["c"]])
    assert not np.allclose(expected, centered, atol=1e-4)  # so the crop used really shows
    np.testing.assert_allclose(frame[[f"p:{c}" for c in registered_classes]].to_numpy(), expected, atol=1e-5)
    missing = run_cli(repository.root, str(photos["a"]), "--model", "models:/no-such-model@champion")
    assert missing.returncode == 2 and "error: cannot load models:/no-such-model@champion" in missing.stderr
