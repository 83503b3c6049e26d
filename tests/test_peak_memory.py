"""The benchmarks' peak-memory probe reports the child's own address space, not its parent's."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import workspace

MIB = 2**20


def _write_module(folder, name: str, mib: int) -> None:
    (folder / f"{name}.py").write_text(
        "import numpy as np, sys\n"
        f"block = np.ones({mib} * 2**20, dtype=np.uint8)  # touched: every page resident\n"
        "print(block.sum(), sys.argv[1:])\n"
    )


def test_the_child_s_own_peak_is_measured_not_the_parent_s(tmp_path):
    _write_module(tmp_path, "small_child", 1)
    _write_module(tmp_path, "large_child", 300)
    held = np.ones(600 * MIB, dtype=np.uint8)  # this process is large; a forked child starts as large
    small, _ = workspace.run_measured(tmp_path, "small_child")
    large, seconds = workspace.run_measured(tmp_path, "large_child", "--flag", "x")
    assert held.sum() == 600 * MIB
    assert small < 300, small  # a wait4-based figure would be ≥ 600 here
    assert large - small == pytest.approx(300, abs=30), (small, large)
    assert seconds > 0
    assert "['--flag', 'x']" in (tmp_path / "large_child.log").read_text()


def test_a_failing_child_stops_with_its_output(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('the bytes were wrong')\n")
    with pytest.raises(SystemExit, match="the bytes were wrong"):
        workspace.run_measured(tmp_path, "broken")
