"""Fine-tuning: unfreezing by cut point or layer count, frozen BatchNormalization, augmentation only in
training, and the finetune stage's model taking raw uint8 images."""

from __future__ import annotations

import json

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.features import backbones, extraction, inputs
from pipeline.training import finetune, head

SIZE = 32


def _core(name: str) -> tuple[backbones.Backbone, keras.Model]:
    entry = backbones.get(name)
    core, _ = backbones.build_backbone(entry, max(SIZE, entry.min_size), "none", None, None)
    core.trainable = False
    return entry, core


def _finetune_params(base_params, **changes) -> config.FinetuneParams:
    fields = {**base_params["finetune"], **changes}
    return config.FinetuneParams(**fields)


@pytest.mark.parametrize(
    ("name", "cut"),
    [
        ("efficientnet_lite0", "block6a"),
        ("mobilenet_v2", "block_13"),
        ("resnet50", "conv5_block1"),
        ("inception_v3", "mixed9"),
    ],
)
def test_unfreezing_from_a_cut_point_trains_that_block_and_after_it_batchnorm_excepted(base_params, name, cut):
    entry, core = _core(name)
    trainable = finetune.unfreeze(core, entry, _finetune_params(base_params, unfreeze_from=cut, unfreeze_top=None))
    start = backbones.cut_index(core.layers, entry, cut)
    expected = [
        layer.name
        for layer in core.layers[start:]
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert trainable == expected and trainable
    assert all(not layer.trainable for layer in core.layers[:start])
    assert all(not layer.trainable for layer in core.layers if isinstance(layer, keras.layers.BatchNormalization))
    trained = {w.path for w in core.trainable_weights}
    assert trained == {w.path for layer in core.layers if layer.name in expected for w in layer.weights}


def test_unfreezing_the_top_n_layers(base_params):
    entry, core = _core("efficientnet_lite0")
    trainable = finetune.unfreeze(core, entry, _finetune_params(base_params, unfreeze_from=None, unfreeze_top=10))
    top = core.layers[-10:]
    normalizing = keras.layers.BatchNormalization
    assert trainable == [layer.name for layer in top if layer.weights and not isinstance(layer, normalizing)]
    assert sum(layer.trainable for layer in core.layers) == sum(not isinstance(layer, normalizing) for layer in top)
    with pytest.raises(UserError, match="has 142 layers; found 500"):
        finetune.unfreeze(core, entry, _finetune_params(base_params, unfreeze_from=None, unfreeze_top=500))
    with pytest.raises(UserError, match="'block_13' is not a cut point of efficientnet_lite0"):
        finetune.unfreeze(core, entry, _finetune_params(base_params, unfreeze_from="block_13", unfreeze_top=None))


def test_augmentation_acts_only_in_training(base_params):
    params = config.AugmentParams(flip="horizontal_and_vertical", rotation=0.2, zoom=0.2, contrast=0.5)
    layers = finetune.augmentation_layers(params, seed=1)
    names = [type(layer).__name__ for layer in layers.layers]
    assert names == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"]
    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_array_equal(layers(images, training=False), images)
    assert np.abs(np.asarray(layers(images, training=True)) - images).mean() > 1
    none = finetune.augmentation_layers(config.AugmentParams("none", 0.0, 0.0, 0.0), seed=1)
    np.testing.assert_array_equal(none(images, training=True), images)


def test_the_assembled_model_equals_the_head_on_the_extractor(base_params):
    entry, core = _core("efficientnet_lite0")
    settings = head.HeadSettings(1, 8, "relu", 0.2, "adam", 1e-3, 8)
    head_model = head.build_head(entry.feature_width, 3, settings)
    augment = finetune.augmentation_layers(config.AugmentParams("horizontal", 0.1, 0.1, 0.1), seed=0)
    model = finetune.with_probabilities(finetune.assemble(entry, core, head_model, SIZE, augment))
    assert [layer.name for layer in model.layers[1:]] == list(finetune.LAYER_NAMES)
    extractor = keras.Model(model.input, model.get_layer("features").output)
    images = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 3)).astype("float32")
    expected = keras.ops.softmax(head_model(extractor(images, training=False), training=False))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)


@pytest.mark.slow
def test_finetune_stage_writes_a_model_that_classifies_raw_uint8_images(tiny_run, tmp_path):
    project = tiny_run.copy(tmp_path)  # fine-tuned for 2 epochs of 8 images
    root = project.root
    model = keras.saving.load_model(root / "models/model.keras")
    test = pd.read_csv(root / "data/splits/test.csv")
    raw = np.stack([np.asarray(Image.open(root / p).convert("RGB").resize((SIZE, SIZE))) for p in test["path"]])
    assert raw.dtype == np.uint8
    probabilities = model.predict(raw, verbose=0)
    assert probabilities.shape == (len(test), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    (batch,) = inputs.image_dataset([root / p for p in test["path"]], SIZE, "center", 64)
    np.testing.assert_allclose(model.predict(batch, verbose=0), probabilities, atol=1e-5)  # 32 px: nothing resized

    best = json.loads((root / "metrics/train_head.json").read_text())["best_epoch"]
    history = pd.read_csv(root / "plots/finetune/history.csv")
    assert list(history["epoch"]) == list(range(best + 1, best + 1 + len(history))) and len(history) >= 1
    metrics = json.loads((root / "metrics/finetune.json").read_text())
    assert metrics["head_epochs"] == best and metrics["trainable_layers"] > 0
    assert metrics["best_val_accuracy"] >= metrics["val_accuracy_before"]  # never worse than where it started
    assert project.params["finetune"]["learning_rate"] == "auto"  # params.yaml's default, so a tiny set's rate:
    assert metrics["learning_rate_peak"] == pytest.approx(2e-4) and metrics["epochs_planned"] == 2

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(metrics["mlflow"]["run_id"])
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == list(
        history["epoch"]
    )
    assert run.data.tags["schedule_rule"].startswith("auto: ")
    assert run.data.tags["schedule_rule"].endswith("(under 20,000) → peak 0.0002, 2 epochs (params.yaml)")
    logged = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, SIZE, SIZE, 3)
    assert logged.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3)


@pytest.mark.slow
def test_finetune_disabled_hands_on_the_head_on_the_frozen_backbone(tiny_run, tmp_path):
    project = tiny_run.copy(tmp_path)
    project.params["finetune"]["enabled"] = False
    project.write_params()
    assert "Running stage 'finetune'" in project.run("dvc", "repro", "finetune").stdout
    root = project.root
    model = keras.saving.load_model(root / "models/model.keras")
    head_model = keras.saving.load_model(root / "models/head.keras")
    cached = extraction.read_feature_set(root / "data/features/test.npz")
    (batch,) = inputs.image_dataset([root / p for p in cached.paths], SIZE, "center", 64)
    expected = keras.ops.softmax(head_model(cached.features, training=False))
    np.testing.assert_allclose(model.predict(batch, verbose=0), expected, atol=1e-4)
    assert pd.read_csv(root / "plots/finetune/history.csv").empty


@pytest.mark.parametrize(
    ("rate", "epochs", "train_images", "expected"),
    [
        ("auto", "auto", 245, (2e-4, 6)),
        ("auto", "auto", 19_999, (2e-4, 6)),
        ("auto", "auto", 20_000, (5e-4, 2)),
        ("auto", "auto", 54_000, (5e-4, 2)),
        ("auto", 3, 54_000, (5e-4, 3)),
        (3e-5, "auto", 245, (3e-5, 6)),
        (3e-5, 4, 54_000, (3e-5, 4)),
        (0.01, 1, 10, (0.01, 1)),
    ],
)
def test_auto_schedule_goes_by_the_train_split_size_and_a_number_stays(rate, epochs, train_images, expected):
    chosen_rate, chosen_epochs, reason = finetune.choose_schedule(rate, epochs, train_images)
    assert (chosen_rate, chosen_epochs) == (pytest.approx(expected[0]), expected[1])
    assert reason.startswith(f"auto: {train_images:,} train images ") == ("auto" in (rate, epochs))
    assert ("(params.yaml)" in reason) == (rate != "auto" or epochs != "auto")


def test_the_schedule_refuses_an_unresolved_auto(base_params):
    for unresolved in ({"learning_rate": "auto", "epochs": 2}, {"learning_rate": 1e-4, "epochs": "auto"}):
        with pytest.raises(ValueError, match="resolve"):
            finetune.learning_rate(_finetune_params(base_params, **unresolved), 10)
    resolved, reason = finetune.resolve_schedule(
        _finetune_params(base_params, learning_rate="auto", epochs="auto"), 3_453
    )
    assert (resolved.learning_rate, resolved.epochs) == (pytest.approx(2e-4), 6)
    assert reason == "auto: 3,453 train images (under 20,000) → peak 0.0002, 6 epochs"
    assert float(finetune.learning_rate(resolved, 10)(0)) == pytest.approx(0.0)  # the warm-up starts from 0


def test_the_console_line_says_what_fine_tuning_did():
    numbers = {
        "head_epochs": 12,
        "val_accuracy_before": 0.90183,
        "best_val_accuracy": 0.90250,
        "epochs_trained": 3,
        "kept_epoch": 15,
        "trainable_layers": 16,
        "trainable_params": 3568042,
        "seconds": 275.6,
    }
    assert finetune.describe_result(numbers, "val_accuracy") == (
        "val_accuracy 0.9018 → 0.9025, kept epoch 15 (3 trained), 16 layers / 3.57M parameters trainable, 276 s"
    )
    kept_start = {**numbers, "best_val_accuracy": 0.90183, "kept_epoch": 0}
    assert "kept the starting weights (no epoch beat them)" in finetune.describe_result(kept_start, "val_accuracy")
    assert finetune.describe_result({"head_epochs": 12}, "val_accuracy").startswith("off (finetune.enabled: false)")
