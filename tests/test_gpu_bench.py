"""benchmarks/gpu.py (`make bench-gpu`): it refuses without a GPU, and every part runs (on the CPU, tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu, report

REPO = Path(__file__).resolve().parents[1]
NO_GPU_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}  # no GPU even where the machine has one


def run_benchmark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", *args],
        cwd=REPO,
        env=NO_GPU_ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_refuses_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = run_benchmark("--output", str(out))
    assert done.returncode == gpu.NO_GPU == 2
    assert "TensorFlow sees no GPU" in done.stderr
    assert "nothing measured, nothing written" in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_allow_cpu_quick_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = run_benchmark("--allow-cpu", "--quick", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["benchmark"] == "gpu"
    assert result["gpus"] == []
    assert result["machine"]["device"].startswith("CPU")  # never taken for a GPU figure
    assert result["quick"] is True
    assert set(result["policies"]) == {"float32", "mixed_float16"}
    for numbers in result["policies"].values():
        for key in ("extract_images_per_s", "forward_images_per_s", "finetune_images_per_s"):
            assert numbers[key] > 0
        assert numbers["extract_to_forward"] == pytest.approx(
            numbers["extract_images_per_s"] / numbers["forward_images_per_s"], abs=0.01
        )
        assert numbers["meets_goal"] == (numbers["extract_to_forward"] >= gpu.GOAL)
    (row, *_) = report.gpu_rows(result)
    assert "mixed_float16" in row[1] and "CPU" in row[0]


def test_write_jpegs_decodable(tmp_path: Path) -> None:
    from pipeline.features import inputs

    paths = gpu.write_jpegs(tmp_path, 3)
    batch = next(iter(inputs.image_dataset(paths, 32, "center", 3)))
    assert tuple(batch.shape) == (3, 32, 32, 3)
    assert float(batch.numpy().std()) > 1.0  # not a flat image
