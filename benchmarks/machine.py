"""What a benchmark ran on, recorded beside every result: numbers only compare on the same machine."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from pipeline.core import runtime


def describe() -> dict[str, object]:
    """CPU model and instruction set, core count, memory and accelerator, plus the time of measurement (UTC)."""
    cpu = runtime.describe_cpu()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu["model"],
        "cpu_isa": cpu["isa"],
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "device": "CPU",
    }


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)
