"""One-off experiment (2026-12-02): a fine-tuning recipe on Fashion-MNIST, in memory, as the README's table
"What the fine-tuning defaults rest on" ran it (rows 3-6). Kept as it ran, so the rows can be repeated.

What differs from the pipeline: the images come from Debian's IDX files in memory (resized in tf.data, no PNGs),
val is a seeded 6,000 of the official train set (not the split stage's), the head is a fresh linear layer with
dropout 0.2 (not the tuned head), AdamW's weight decay is 1e-4 (the pipeline keeps Keras's 0.004), the warm-up is
``total // 10`` steps, and there are no class weights. Augmentation: flips plus ROT / ZOOM / CONTRAST from the
environment (defaults 0.03 / 0.1 / 0.1, params.yaml's; ROT=0 ZOOM=0 CONTRAST=0 for flips only, rows 3-5).

    python -m benchmarks.experiments.finetune_fashion SIZE CUT LR EPOCHS IMAGES_PER_EPOCH SMOOTHING
    # e.g. 64 all 5e-4 2 54000 0.1 (CUT: a cut point such as block2a, or all)
"""

import gzip
import math
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.config import AugmentParams
from pipeline.features import backbones
from pipeline.training import finetune

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    size, cut, lr, epochs, per_epoch, smooth = (
        int(sys.argv[1]),
        sys.argv[2],
        float(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
        float(sys.argv[6]),
    )
    D = "/usr/share/datasets/fashion-mnist/"

    def read(name, off):
        return np.frombuffer(gzip.open(D + name).read(), np.uint8, offset=off)

    xtr = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    ytr = read("train-labels-idx1-ubyte.gz", 8)
    xte = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    yte = read("t10k-labels-idx1-ubyte.gz", 8)
    rng = np.random.default_rng(42)
    order = rng.permutation(60000)
    val_idx, tr_idx = order[:6000], order[6000:]
    keras.utils.set_random_seed(42)

    def ds(x, y, shuffle):
        d = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
        if shuffle:
            d = d.shuffle(60000, seed=1).repeat()

        def prep(img, lab):
            img = tf.image.resize(tf.cast(img[..., None], tf.float32), (size, size), method="bilinear")
            return tf.image.grayscale_to_rgb(img), lab

        return d.map(prep, num_parallel_calls=2).batch(64).prefetch(2)

    bb = backbones.get("efficientnet_lite0")
    core, _ = backbones.build_backbone(bb, size, "imagenet", REPO, REPO / ".cache/weights")
    head = keras.Sequential([keras.Input((1280,)), keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    aug = finetune.augmentation_layers(
        AugmentParams(
            flip="horizontal",
            rotation=float(os.environ.get("ROT", 0.03)),
            zoom=float(os.environ.get("ZOOM", 0.1)),
            contrast=float(os.environ.get("CONTRAST", 0.1)),
        ),
        42,
    )
    model = finetune.assemble(bb, core, head, size, aug)
    start = backbones.cut_index(core.layers, bb, cut) if cut != "all" else 0
    core.trainable = True
    for i, layer in enumerate(core.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
    steps = math.ceil(per_epoch / 64)
    total = steps * epochs
    sched = keras.optimizers.schedules.CosineDecay(
        0.0, total - total // 10, alpha=0.0, warmup_target=lr, warmup_steps=total // 10
    )
    model.compile(
        keras.optimizers.AdamW(sched, weight_decay=1e-4),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smooth),
        metrics=["accuracy"],
    )

    def onehot(d):
        return d.map(lambda x, y: (x, tf.one_hot(y, 10)))

    tr = onehot(ds(xtr[tr_idx], ytr[tr_idx], True))
    va = onehot(ds(xtr[val_idx], ytr[val_idx], False))
    te = onehot(ds(xte, yte, False))
    t = time.perf_counter()
    h = model.fit(tr, steps_per_epoch=steps, epochs=epochs, validation_data=va, verbose=2)
    dt = time.perf_counter() - t
    test = model.evaluate(te, verbose=0, return_dict=True)
    print(
        f"RESULT size={size} cut={cut} lr={lr} epochs={epochs}x{per_epoch} smooth={smooth}: "
        f"val {[round(v, 4) for v in h.history['val_accuracy']]} test {test['accuracy']:.4f} "
        f"train_s {dt:.0f} ({steps * epochs * 64 / dt:.0f} img/s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
