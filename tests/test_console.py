"""The console: TensorFlow's and MLflow's start-up chatter stays off it, warnings stay on, HEADSTART_VERBOSE=1
shows all; the CPU is named."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pipeline.core import console
from projects import REPO

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")
LOAD = "import pipeline, tensorflow as tf; import mlflow; print('loaded', tf.__version__)"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("HEADSTART_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**full, **env}, capture_output=True, text=True, timeout=300
    )


def test_loading_tensorflow_prints_nothing_but_verbose_shows_its_lines() -> None:
    quiet = _python(LOAD)
    assert quiet.returncode == 0 and quiet.stdout.startswith("loaded")
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in NOISE)], quiet.stderr
    loud = _python(LOAD, HEADSTART_VERBOSE="1")
    assert loud.returncode == 0
    # What TensorFlow 2.21 says on x86: the CPU feature line, and oneDNN's where its custom operations are on.
    assert "cpu_feature_guard" in loud.stderr or "oneDNN custom operations" in loud.stderr, loud.stderr


def test_a_refused_file_prints_nothing_where_onednn_is_off(tmp_path) -> None:
    # With oneDNN off (the default on AVX2-only CPUs) TensorFlow logs nothing at import, so absl's notice
    # comes with the first later native line: the refused decode's, which split's image check drops.
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    code = (
        "import sys; from pathlib import Path; from pipeline.data import images\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "found = images.inspect_images([folder / 'good.png', folder / 'cut.png'], 10**6)\n"
        "print([problem is None for _, problem in found])"
    )
    result = _python(code, TF_ENABLE_ONEDNN_OPTS="0")
    assert result.stdout.strip() == "[True, False]", result.stderr
    assert not [line for line in result.stderr.splitlines() if "absl" in line or line.startswith("W0")], result.stderr


def test_a_tensorflow_warning_after_loading_stays_visible() -> None:
    # A refused decode: TensorFlow's native warning and the Python error both reach the console.
    result = _python(
        "import pipeline, tensorflow as tf\ntry:\n    tf.io.decode_image(b'no image')\n"
        "except tf.errors.InvalidArgumentError as e:\n    print('refused', flush=True)"
    )
    assert "refused" in result.stdout
    assert re.search(r"^W\d{4} .*Unknown image file format", result.stderr, re.MULTILINE), result.stderr


def test_native_lines_are_filtered_and_the_rest_passes(capfd) -> None:
    with console.filtered_stderr(re.compile(r"^I\d{4} ")) as live:
        os.write(
            2,
            b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            b"I0000 00:00:1.0 port.cc:1] chatter\nW0000 00:00:1.0 real.cc:2] a warning\n",
        )
        live.write("progress 50%\n")
        print("python stderr", file=sys.stderr)
    err = capfd.readouterr().err
    assert "chatter" not in err and "absl" not in err
    assert "W0000 00:00:1.0 real.cc:2] a warning" in err and "python stderr" in err and "progress 50%" in err


XEON = """processor	: 0
model name	: Intel(R) Xeon(R) CPU @ 2.20GHz
flags		: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni
processor	: 1
model name	: Intel(R) Xeon(R) CPU @ 2.20GHz
"""


def test_the_cpu_is_named_with_the_instruction_set_its_kernels_use() -> None:
    from pipeline.core import runtime

    assert runtime.describe_cpu(XEON) == {"model": "Intel(R) Xeon(R) CPU @ 2.20GHz", "isa": "avx512_core_vnni"}
    epyc = "model name\t: AMD EPYC 7B12\nflags\t\t: sse4_1 avx avx2 fma\n"
    assert runtime.describe_cpu(epyc) == {"model": "AMD EPYC 7B12", "isa": "avx2"}
    amx = XEON.replace("avx512_vnni", "avx512_vnni avx512_bf16 amx_tile amx_bf16")
    assert runtime.describe_cpu(amx)["isa"] == "avx512_core_amx"
    assert runtime.describe_cpu("")["model"]  # no /proc/cpuinfo: still a name, never an error
