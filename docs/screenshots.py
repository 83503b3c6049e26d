"""The docs' pictures (``make docs-images``, after ``make run``), into ``docs/images/``:

- ``report.png``: the analyze stage's ``reports/report.html``, its first screens;
- ``mlflow-runs-table.png``: the page ``make ui`` opens on the workspace's store: the pipeline run of the last run;
- ``mlflow-sweep-table.png``, ``mlflow-sweep-chart.png``, ``mlflow-sweep-compare.png``: a real sweep of two DVC
  experiments (``SWEEP``, on ``SWEEP_IMAGES`` Fashion-MNIST images per class, in a throw-away clone of the
  repository's last commit): the runs table, one row per experiment; the chart view; the compare page;
- ``dag.txt``: ``dvc dag`` as text.

Pages are drawn by Debian's headless ``chromium`` (``make browser`` installs it), driven by Playwright; each MLflow
page is served by ``python -m pipeline.tracking.ui`` on a free loopback port, stopped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
PAGE_TIMEOUT_MS = 120_000
SWEEP = ("backbone.image_size", "48,96")
SWEEP_IMAGES = 100  # per class: two experiments of the whole pipeline in a few minutes on 2 cores
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@contextlib.contextmanager
def browser_page(width: int, height: int) -> Iterator[Any]:
    """A page of Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        sys.exit("chromium not found: make browser (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def free_port() -> int:
    """A loopback port nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(root: Path) -> Iterator[tuple[str, list[str]]]:
    """``python -m pipeline.tracking.ui`` on a project's store until the block ends: its base URL and the
    addresses it printed (the pipeline runs' view first)."""
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking.ui", "--host", HOST, "--port", str(port)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert ui.stdout is not None
        printed = [ui.stdout.readline(), ui.stdout.readline()]
        addresses = [match.group(1) for line in printed if (match := re.match(r"MLflow UI: (\S+)", line))]
        if not any("viewStateShareKey" in address for address in addresses):
            sys.exit(f"no pipeline run in {root / 'mlflow.db'} (run `make run` first): {printed}")
        wait_for(f"http://{HOST}:{port}/health", ui)
        yield f"http://{HOST}:{port}", addresses
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def wait_for(url: str, process: subprocess.Popen) -> None:
    """Wait until ``url`` answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                sys.exit("the MLflow UI did not start")
            time.sleep(1)


def open_runs(page: Any, url: str, runs: int) -> None:
    """Open a runs page, wait for its rows and close MLflow's assistant panel (it opens on a first visit)."""
    page.goto(url)
    page.get_by_text(f"{runs} matching run").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    with contextlib.suppress(Exception):  # not there in every MLflow version
        page.get_by_role("button", name="Close").first.click(timeout=3000)
    time.sleep(2)  # the charts draw after the rows


def shoot(page: Any, target: Path, what: str) -> None:
    page.screenshot(path=str(target))
    print(f"{target.relative_to(REPO)}: {what}")


def workspace_pictures() -> None:
    """The report and the pipeline run of the workspace's last run."""
    report = REPO / "reports" / "report.html"
    if not report.is_file():
        sys.exit("reports/report.html not found: run `make run` first")
    with browser_page(1280, 1600) as page:
        page.goto(report.as_uri())
        shoot(page, IMAGES / "report.png", "reports/report.html")
    with mlflow_ui(REPO) as (_, addresses), browser_page(2200, 460) as page:
        open_runs(page, addresses[0], 1)
        shoot(page, IMAGES / "mlflow-runs-table.png", f"make ui: {addresses[0]}")


def run_sweep(base: Path) -> Path:
    """Clone the repository's last commit, shrink the data, run the sweep; returns the clone."""
    root = base / "repo"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(*command: str) -> None:
        print(f"sweep: {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)

    subprocess.run(["git", "clone", "--quiet", str(REPO), str(root)], check=True)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["max_per_class"] = SWEEP_IMAGES
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    run("git", "commit", "-qam", f"{SWEEP_IMAGES} images per class")
    run("dvc", "exp", "run", "--queue", "-S", "=".join(SWEEP))
    run("dvc", "exp", "run", "--run-all", "-j", "1")
    run("dvc", "queue", "stop")  # the queue's worker, which would otherwise linger a while
    return root


def sweep_pictures(root: Path) -> None:
    """The runs table, the chart view and the compare page of the sweep's two pipeline runs."""
    with mlflow_ui(root) as (base, addresses), browser_page(2200, 460) as page:
        open_runs(page, addresses[0], 2)
        shoot(page, IMAGES / "mlflow-sweep-table.png", "the sweep's pipeline runs")
        page.set_viewport_size({"width": 2200, "height": 1100})
        open_runs(page, addresses[0] + "&compareRunsMode=CHART", 2)
        shoot(page, IMAGES / "mlflow-sweep-chart.png", "the sweep's chart view")
        experiment = re.search(r"#/experiments/(\w+)/", addresses[0]).group(1)  # type: ignore[union-attr]
        runs = pipeline_run_ids(root)
        query = urllib.parse.urlencode(
            {"runs": json.dumps(runs), "experiments": json.dumps([experiment]), "workflowType": "machine_learning"}
        )
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.goto(f"{base}/#/compare-runs?{query}")
        page.get_by_text("Run details").wait_for(timeout=PAGE_TIMEOUT_MS)
        with contextlib.suppress(Exception):
            page.get_by_role("button", name="Close").first.click(timeout=3000)
        for switch in page.get_by_role("switch").all():  # "Show diff only" of the parameters, metrics and tags
            switch.click()
        page.get_by_text("Run details").scroll_into_view_if_needed()
        page.mouse.wheel(0, 400)
        time.sleep(1)
        shoot(page, IMAGES / "mlflow-sweep-compare.png", "the compare page of the two pipeline runs")


def pipeline_run_ids(root: Path) -> list[str]:
    """The ids of the pipeline runs in a project's store, oldest first."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("headstart").experiment_id
    found = client.search_runs([experiment], "tags.stage = 'pipeline'", order_by=["attributes.start_time ASC"])
    return [run.info.run_id for run in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sweep", action="store_true", help="keep the sweep's pictures (it takes minutes)")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    workspace_pictures()
    if not args.skip_sweep:
        with tempfile.TemporaryDirectory(prefix="headstart-sweep-", ignore_cleanup_errors=True) as base:
            sweep_pictures(run_sweep(Path(base)))
    dag = subprocess.run(["dvc", "dag"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    (IMAGES / "dag.txt").write_text(dag, encoding="utf-8")
    print(f"docs/images/dag.txt: dvc dag ({len(dag.splitlines())} lines)")


if __name__ == "__main__":
    main()
