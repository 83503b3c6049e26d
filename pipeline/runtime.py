"""TensorFlow's process-wide settings, applied once at the start of a stage that runs a model, and
the process's memory use."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import ComputeParams

# Random draws that no stage seeds from params (the initial weights of ``backbone.weights: none``)
# come from this fixed seed: the same in every run, and the same backbone in every stage that builds it.
UNSEEDED_DRAWS_SEED = 0


def configure(compute: ComputeParams) -> None:
    """Fix TensorFlow's CPU thread pools and the random generators before the first operation runs.

    CPU kernels split their work by thread count, which changes the order floating-point sums are
    taken in; at a fixed count two runs give bitwise identical results. Python's, NumPy's and the
    backend's generators start from ``UNSEEDED_DRAWS_SEED``; training code seeds them again from
    ``params.seed`` where the seed is meant to matter.

    Args:
        compute: ``threads`` is the number of threads per pool; 0 lets TensorFlow use every core.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(compute.threads)
    tf.config.threading.set_inter_op_parallelism_threads(compute.threads)
    keras.utils.set_random_seed(UNSEEDED_DRAWS_SEED)


def resident_memory_mb() -> float:
    """The process's resident memory now (not the peak), in MiB; 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
