"""What the benchmarks share: where the data and the results are, the machine a result was measured on,
writing a result, and the pieces several benchmarks measure with (photos sampled evenly over the classes,
interleaved timing, the pipeline's own split and features of a photo set, sampling noise).

Not a benchmark: nothing here measures anything by itself. Benchmarks import it; it imports no benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core import files, runtime
from pipeline.core.config import ComputeParams

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"  # the real photo sets, outside the repository
FLOWERS = DATASETS / "flowers"
HYMENOPTERA = DATASETS / "hymenoptera_data"
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work"  # scratch space kept between runs (git-ignored)
BATCH = 64
THREADS = 2
SEED = 42
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own limit, as params.yaml's split.max_image_pixels
# The photo sets split as the pipeline splits them: name -> (folder, val share, test share). Hymenoptera's
# shipped val/ becomes the test set (the classic protocol), and val is carved from its train/.
PHOTO_SETS = {"flowers": (FLOWERS, 0.1, 0.1), "hymenoptera": (HYMENOPTERA, 0.2, 0.1)}
PROBE_BACKBONE = "efficientnet_lite0"  # the backbone of the photo-set features (``write_features``)


def describe_machine() -> dict[str, object]:
    """What a result was measured on (numbers only compare on the same machine): the CPU model and the
    instruction set oneDNN uses, cores, memory, the device, and the time of measurement (UTC)."""
    cpu = runtime.describe_cpu()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu["model"],
        "cpu_isa": cpu["isa"],
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "device": "CPU",
    }


def set_threads(threads: int = THREADS) -> None:
    """Fix TensorFlow's thread pools (and seed the unseeded generators) before its first operation, as
    the pipeline's ``compute.threads`` does: speeds compare only at one thread count."""
    runtime.configure(ComputeParams(threads=threads, runtime="tensorflow", distribution="none"))


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def write_result(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Write a benchmark's result as JSON, atomically, keys in the order the benchmark built them.

    Args:
        name: the benchmark; the file is ``benchmarks/results/<name>.json`` unless ``path`` is given.
        result: what it measured.
        path: another file (a quick or a test run's result, kept out of ``results/``).

    Returns:
        The file written.
    """
    path = path or RESULTS / f"{name}.json"
    files.write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path


def sample_images(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs spread evenly over the class folders of ``folder``, in a fixed order.

    Raises:
        SystemExit: the folder holds fewer.
    """
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.jpg")) for c in classes]
    picked = [images[i] for i in range(max(map(len, per_class))) for images in per_class if i < len(images)]
    if len(picked) < count:
        raise SystemExit(f"{folder} has {len(picked)} images; {count} requested")
    return picked[:count]


def rates(count: int, runs: Mapping[str, Callable[[], object]], rounds: int = 5) -> dict[str, dict[str, float]]:
    """Items per second of each run over ``count`` items, the runs taken in turns (one pass of each per
    round) so that drift in the machine's speed hits every run alike; the best and the median pass of each."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {
        name: {"best": round(count / min(s), 1), "median": round(count / statistics.median(s), 1)}
        for name, s in seconds.items()
    }


def sampling_noise(accuracy: float, images: int) -> float:
    """Half the width of the 95% interval of an accuracy measured on ``images`` test images (normal
    approximation): differences smaller than this between two methods can be chance."""
    return 1.96 * math.sqrt(accuracy * (1 - accuracy) / images)


def split_dataset(root: Path, val: float, test: float) -> dict[str, Any]:
    """The pipeline's seeded split of the class folders under ``root`` (a shipped ``val/`` folder becomes
    the test set): split name -> ``SplitFiles``."""
    from pipeline.core import config
    from pipeline.data import dataset, images, split

    scan = dataset.scan_dataset(root)
    checks = images.inspect_images([scan.root / e.rel for e in scan.entries], MAX_IMAGE_PIXELS)
    items, _ = split.collect_items(scan, checks, str(root))
    items = [dataclasses.replace(i, existing="test" if i.existing == "val" else i.existing) for i in items]
    params = config.SplitParams(val=val, test=test, use_existing=scan.presplit, max_image_pixels=MAX_IMAGE_PIXELS)
    result = split.split_images(items, params, SEED, scan.presplit)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for name, members in result.items.items():
            split.split_frame(members).to_csv(out / f"{name}.csv", index=False)
        (out / split.CLASSES_FILE).write_text(json.dumps(sorted({i.label for i in items})))
        return {name: split.read_split_files(out, name, Path("/")) for name in result.items}


def write_features(splits: dict[str, Any], out: Path, cache_dir: Path = REPO / ".cache" / "weights") -> int:
    """``PROBE_BACKBONE``'s ImageNet features of every split, at the size ``backbone.image_size: auto`` picks
    for the train images, written as the extract stage writes them (``out/<split>.npz``); returns that size."""
    from pipeline.features import backbones, extraction, inputs, sizing

    backbone = backbones.get(PROBE_BACKBONE)
    size = sizing.choose_image_size(
        sizing.AUTO, backbone.default_size, backbone.min_size, inputs.read_sizes(splits["train"].paths)
    )
    model, _ = backbones.build_extractor(backbone, size, "imagenet", REPO, cache_dir)
    forward = extraction.compile_forward(model)
    for name, rows in splits.items():
        values, _ = extraction.compute_features(
            forward,
            inputs.image_dataset(rows.paths, size, "center", 32),
            len(rows.paths),
            "float32",
            f"{PROBE_BACKBONE} {name}",
        )
        extraction.write_feature_set(
            out / f"{name}.npz", extraction.FeatureSet(values, rows.labels, rows.rel_paths, rows.sha256, rows.classes)
        )
    return size
