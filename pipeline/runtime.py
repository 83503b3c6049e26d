"""TensorFlow's process-wide settings, applied once at the start of a stage that runs a model, and
the process's memory use."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import ComputeParams


def configure(compute: ComputeParams) -> None:
    """Fix TensorFlow's CPU thread pools before the first operation runs.

    CPU kernels split their work by thread count, which changes the order floating-point sums are
    taken in; at a fixed count two runs give bitwise identical results.

    Args:
        compute: ``threads`` is the number of threads per pool; 0 lets TensorFlow use every core.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(compute.threads)
    tf.config.threading.set_inter_op_parallelism_threads(compute.threads)


def resident_memory_mb() -> float:
    """The process's resident memory now (not the peak), in MiB; 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
