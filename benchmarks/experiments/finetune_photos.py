"""One-off experiment (2026-12-02; it ran before ``finetune.learning_rate`` and ``epochs`` became ``auto``, at 5e-4
and 2 epochs, and needs numbers there now; ``finetune_recipes`` decides auto as the stage does): params.yaml's
fine-tuning defaults on the photo sets, through the pipeline's own functions in one process (the split,
extract, head search and fine-tuning functions the stages call; no DVC or MLflow), the fine-tuned model paired
against the tuned head on the same test images. Kept as it ran (the README's "What the fine-tuning defaults
rest on").

    python -m benchmarks.experiments.finetune_photos hymenoptera flowers
"""

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks.backbones import DATASETS, split_dataset
from benchmarks.head_vs_probe import write_features
from pipeline.core import config, runtime
from pipeline.core.config import ComputeParams
from pipeline.evaluation import scoring
from pipeline.features import backbones, extraction
from pipeline.training import finetune, fitting, head, tuning

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    runtime.configure(ComputeParams(threads=2))
    params = config.load(REPO / "params.yaml")
    for name in sys.argv[1:]:
        splits = split_dataset(*DATASETS[name])
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            size = write_features(splits, folder)
            p = dataclasses.replace(params, root=folder, paths=dataclasses.replace(params.paths, tuner="tuner"))
            tr, va, te = (extraction.read_feature_set(folder / f"{s}.npz") for s in ("train", "val", "test"))
            tuner = tuning.make_search(tr, p, None)
            tuning.run_search(tuner, tr, va, p)
            settings = tuning.best_settings(tuner)
            keras.backend.clear_session()
            fitting.seed_everything(42)
            hm = head.build_head(tr.features.shape[1], len(tr.classes), settings, head.feature_scale(tr.features))
            head.fit_head(hm, tr, va, settings, p.train_head, p.tune.objective)
            head_pred = hm.predict(te.features, verbose=0).argmax(1)
            bb = backbones.get("efficientnet_lite0")
            core, _ = backbones.build_backbone(bb, size, "imagenet", Path("."), REPO / ".cache/weights")
            fitting.seed_everything(42)
            model = finetune.assemble(bb, core, hm, size, finetune.augmentation_layers(p.augment, 42))
            finetune.unfreeze(core, bb, p.finetune)
            batches = finetune.make_batches(splits["train"], splits["val"], size, "center", p.finetune, 42)
            t = time.perf_counter()
            history, start, kept = finetune.fine_tune(
                model,
                batches,
                p.finetune,
                p.tune.objective,
                fitting.class_weights(tr.labels, len(tr.classes), "balanced"),
                0,
                [],
            )
            secs = time.perf_counter() - t
            clf = finetune.with_probabilities(model)
            probs = clf.predict(
                __import__("pipeline.features.inputs", fromlist=["x"]).image_dataset(
                    splits["test"].paths, size, "center", 32
                ),
                verbose=0,
            )
            ft_pred = probs.argmax(1)
            pair = scoring.compare_paired(te.labels, head_pred, ft_pred)
            print(
                "RESULT",
                name,
                size,
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
                f"{secs:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
