"""TensorFlow's process-wide settings, applied once at the start of a stage that runs a model, the
process's memory use, and the CPU it runs on.

The CPU matters for results, not only for speed: oneDNN, TensorFlow's CPU kernel library, picks its
kernels by instruction set (AVX2, AVX-512, AVX-512 with VNNI or BF16, AMX...), and kernels for
different instruction sets sum in different orders. Features, and everything trained on them, repeat
bit for bit on the same CPU model at the same thread count, and differ in the last bits on another.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from pipeline.core.config import ComputeParams

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


# oneDNN's names for the x86 instruction sets it has kernels for, best first, with the /proc/cpuinfo
# flags each needs.
_ONEDNN_ISAS = (
    ("avx512_core_amx", ("amx_tile", "amx_bf16", "avx512_bf16")),
    ("avx512_core_bf16", ("avx512_bf16", "avx512_vnni", "avx512bw")),
    ("avx512_core_vnni", ("avx512_vnni", "avx512bw")),
    ("avx512_core", ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    ("avx2_vnni", ("avx_vnni", "avx2")),
    ("avx2", ("avx2", "fma")),
    ("avx", ("avx",)),
    ("sse41", ("sse4_1",)),
)


def describe_cpu(cpuinfo: str | None = None) -> dict[str, str]:
    """The CPU model and the instruction set oneDNN's kernels will use on it.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read when None; empty where it does not exist).

    Returns:
        ``{"model": <its "model name" in /proc/cpuinfo>, "isa": "avx512_core_bf16"}``; off x86, the machine
        type as the ISA.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    flags = set(fields.get("flags", "").split())
    isa = next((name for name, needed in _ONEDNN_ISAS if flags.issuperset(needed)), None)
    return {"model": model, "isa": isa or platform.machine() or "unknown"}
