"""The docs' pictures of a finished run (``make docs-images``, after ``make run``), into ``docs/images/``:

- ``report.png``: the analyze stage's ``reports/report.html``, its first screens;
- ``mlflow-runs-table.png``: the MLflow UI's runs table of the headstart experiment (``python -m
  pipeline.tracking.ui`` on a free loopback port, stopped afterwards);
- ``dag.txt``: ``dvc dag`` as text.

Both screenshots come from Debian's headless ``chromium`` (``apt-get install chromium``); the MLflow page is a
script-built app, so Chromium is given a virtual-time budget to draw it before the picture is taken.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0


def screenshot(url: str, target: Path, width: int, height: int, budget_ms: int = 0) -> None:
    """Save a headless Chromium screenshot of ``url`` (after ``budget_ms`` of virtual time for scripts)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={target}",
    ]
    if budget_ms:
        command.append(f"--virtual-time-budget={budget_ms}")
    subprocess.run([*command, url], check=True, capture_output=True, timeout=180)
    print(f"{target.relative_to(REPO)}: {url}")


def free_port() -> int:
    """A loopback port nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def mlflow_runs_table(target: Path) -> None:
    """Start the MLflow UI on the embedded store, screenshot the training runs, stop it."""
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking.ui", "--host", HOST, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert ui.stdout is not None
        first = ui.stdout.readline()
        found = re.search(r"MLflow UI: (\S+) \(the training runs", first)
        if found is None:
            sys.exit(f"no runs in the embedded store yet (run `make run` first): {first.strip()}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or ui.poll() is not None:
                    sys.exit("the MLflow UI did not start")
                time.sleep(1)
        screenshot(found.group(1), target, 1400, 900, budget_ms=20_000)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    report = REPO / "reports" / "report.html"
    if not report.is_file():
        sys.exit("reports/report.html not found: run `make run` first")
    screenshot(report.as_uri(), IMAGES / "report.png", 1280, 1600)
    mlflow_runs_table(IMAGES / "mlflow-runs-table.png")
    dag = subprocess.run(["dvc", "dag"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    (IMAGES / "dag.txt").write_text(dag, encoding="utf-8")
    print(f"docs/images/dag.txt: dvc dag ({len(dag.splitlines())} lines)")


if __name__ == "__main__":
    main()
