"""One-off experiment (2026-12-02, second session): several fine-tuning recipes on one photo set, each from the
same tuned head and the same split, through the pipeline's own functions in one process (no DVC or MLflow); each
fine-tuned model paired against that head on the same test images. Kept as it ran (README, "What the fine-tuning
defaults rest on").

    python -m benchmarks.experiments.finetune_recipes flowers 'lr1e-4:finetune.learning_rate=1e-4' ...

A recipe is ``name:key=value,key=value`` over params.yaml's finetune.* and augment.* keys; what stays ``auto``
is decided as the finetune stage decides it (``finetune.resolve_schedule``).
"""

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from benchmarks.backbones import DATASETS, split_dataset
from benchmarks.head_vs_probe import fit_tuned_head, write_features
from pipeline.core import config, runtime
from pipeline.core.config import ComputeParams
from pipeline.evaluation import scoring
from pipeline.features import backbones, extraction, inputs
from pipeline.training import finetune, fitting

REPO = Path(__file__).resolve().parents[2]


def with_overrides(params: config.Params, spec: str) -> config.Params:
    """params with ``finetune.x=v`` / ``augment.x=v`` pairs applied (values read as YAML)."""
    sections = {"finetune": params.finetune, "augment": params.augment}
    for pair in filter(None, spec.split(",")):
        key, value = pair.split("=", 1)
        section, field = key.split(".")
        parsed = yaml.safe_load(value)  # PyYAML reads 1e-4 (no dot) as a string
        parsed = float(parsed) if isinstance(parsed, str) and parsed[:1].isdigit() else parsed
        sections[section] = dataclasses.replace(sections[section], **{field: parsed})
    return dataclasses.replace(params, finetune=sections["finetune"], augment=sections["augment"])


def main() -> None:
    runtime.configure(ComputeParams(threads=2))
    params = config.load(REPO / "params.yaml")
    name, recipes = sys.argv[1], sys.argv[2:]
    splits = split_dataset(*DATASETS[name])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = write_features(splits, folder)
        p = dataclasses.replace(params, root=folder, paths=dataclasses.replace(params.paths, tuner="tuner"))
        tr, te = (extraction.read_feature_set(folder / f"{s}.npz") for s in ("train", "test"))
        hm, settings = fit_tuned_head(folder)
        head_pred = hm.predict(te.features, verbose=0).argmax(1)
        hm.save(folder / "head.keras")
        print("HEAD", name, size, settings, "test", round(float(np.mean(head_pred == te.labels)), 4), flush=True)
        bb = backbones.get(params.backbone.name)
        test_images = inputs.image_dataset(splits["test"].paths, size, "center", 32)
        for recipe in recipes:
            label, _, spec = recipe.partition(":")
            q = with_overrides(p, spec)
            q = dataclasses.replace(q, finetune=finetune.resolve_schedule(q.finetune, len(splits["train"].paths))[0])
            keras.backend.clear_session()
            fitting.seed_everything(42)
            core, _ = backbones.build_backbone(bb, size, "imagenet", Path("."), REPO / ".cache/weights")
            model = finetune.assemble(
                bb, core, finetune.load_head(folder / "head.keras"), size, finetune.augmentation_layers(q.augment, 42)
            )
            finetune.unfreeze(core, bb, q.finetune)
            batches = finetune.make_batches(splits["train"], splits["val"], size, "center", q.finetune, 42)
            start_time = time.perf_counter()
            history, start, kept = finetune.fine_tune(
                model,
                batches,
                q.finetune,
                q.tune.objective,
                fitting.class_weights(tr.labels, len(tr.classes), "balanced"),
                0,
                [],
            )
            seconds = time.perf_counter() - start_time
            ft_pred = finetune.with_probabilities(model).predict(test_images, verbose=0).argmax(1)
            pair = scoring.compare_paired(te.labels, head_pred, ft_pred)
            print(
                "RESULT",
                name,
                size,
                label,
                spec,
                "head",
                round(float(np.mean(head_pred == te.labels)), 4),
                "finetuned",
                round(float(np.mean(ft_pred == te.labels)), 4),
                pair,
                "val",
                [round(v, 4) for v in history["val_accuracy"]],
                "start",
                round(start, 4),
                "kept",
                kept,
                f"{seconds:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
