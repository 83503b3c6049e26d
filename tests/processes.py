"""Servers that tests start and stop: free loopback ports, a command run in its own session until a block ends
(then stopped with everything it started), a real ``mlflow server`` and ``make ui``'s MLflow UI; DVC's queue
workers waited for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 240.0  # importing MLflow or TensorFlow alone takes tens of seconds on a busy 2-core machine
STOP_TIMEOUT_S = 30.0
_LOG_TAIL_CHARS = 3000


@dataclasses.dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: its URL and where it keeps runs and artifacts."""

    url: str
    store: Path
    artifacts: Path


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    """Return a loopback port that nothing listened on a moment ago (also a port that refuses connections)."""
    return free_ports(1)[0]


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a process started with ``start_new_session`` and everything it started.

    SIGTERM goes to its process group, SIGKILL if any of the group lingers past ``grace_s``; returns once no
    process of the group is left.

    Raises:
        RuntimeError: some process of the group survived SIGKILL.
    """
    group = process.pid  # the process leads its own session, so its group id is its pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        if group_exited(process, grace_s):
            return
    raise RuntimeError(f"process group {group} ({process.args!r:.200}) survived SIGKILL")


def group_exited(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the group's leader and every other process of its group to exit."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return process.poll() is not None
        time.sleep(0.2)
    return False


def url_answers(url: str) -> bool:
    """Return whether ``url`` answers a GET with 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(process: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout_s: float) -> None:
    """Poll ``ready`` until it returns True.

    Raises:
        RuntimeError: the process exited first, or ``timeout_s`` passed (either with the log's tail).
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r:.200} exited with {process.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r:.200} not ready in {timeout_s:.0f} s:\n{log_tail(log)}")
        time.sleep(0.5)


def log_tail(log: Path) -> str:
    """Return the end of a log file."""
    return log.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARS:]


@contextlib.contextmanager
def serving(
    command: list[str],
    log: Path,
    ready: str | Callable[[], bool],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own session until the block ends, once it is ready.

    Args:
        command: the server's command line.
        log: the file that receives its stdout and stderr.
        ready: a URL that answers 200 once the server serves, or a probe that returns True then.
        env: the server's environment (default: this process's); the test interpreter's folder goes first on
            PATH either way, so the environment's own executables (``mlflow``, ``weed``) are found.
        cwd: the folder it runs in.
        timeout_s: how long it may take to become ready.

    Yields:
        The process; it is stopped with its whole process group when the block ends.

    Raises:
        RuntimeError: it exited or was not ready in time (with the log's tail).
    """
    full_env = dict(os.environ if env is None else env)
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", os.defpath)])
    probe = ready if callable(ready) else functools.partial(url_answers, ready)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(process, probe, log, timeout_s)
        yield process
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[MlflowServer]:
    """Run ``mlflow server`` on a free port of 127.0.0.1 until the block ends.

    A sqlite store and one worker; artifacts are proxied by the server into its own folder (clients upload over
    HTTP). The server sees none of this process's ``MLFLOW_*`` variables.

    Args:
        folder: where the store, the artifacts and ``server.log`` go (created if missing).

    Yields:
        The server's URL and folders; it is stopped, with its workers, when the block ends.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = MlflowServer(f"http://{HOST}:{port}", folder / "mlflow.db", folder / "artifacts")
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{server.store}",
        "--artifacts-destination",
        str(server.artifacts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    with serving(command, folder / "server.log", f"{server.url}/health", env=env, cwd=folder):
        yield server


@dataclasses.dataclass(frozen=True)
class MlflowUi:
    """``python -m pipeline.tracking.ui`` (``make ui``) serving a project's embedded store: the addresses it
    printed, first the one it asks people to open."""

    url: str
    addresses: list[str]


@contextlib.contextmanager
def mlflow_ui(project_root: Path, log: Path) -> Iterator[MlflowUi]:
    """Run ``make ui``'s command in a project on a free port of 127.0.0.1 until the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "pipeline.tracking.ui", "--host", HOST, "--port", str(port)]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    url = f"http://{HOST}:{port}"
    with serving(command, log, f"{url}/health", env=env, cwd=project_root):
        printed = log.read_text(encoding="utf-8").splitlines()
        yield MlflowUi(url, [line.split()[2] for line in printed if line.startswith("MLflow UI: ")])


def wait_for_queue_workers(root: Path, timeout_s: float = 120.0) -> None:
    """Wait for DVC's queue workers to exit: each stops itself once the queue has stayed empty a while,
    and a test leaves no process behind.

    Raises:
        RuntimeError: a worker was still running after ``timeout_s`` (it is then sent SIGTERM).
    """
    pid_files = root.glob(".dvc/tmp/exps/celery/dvc-exp-worker-*.json")
    pids = [json.loads(file.read_text(encoding="utf-8"))["pid"] for file in pid_files]
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while process_exists(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGTERM)
                raise RuntimeError(f"the DVC queue worker {pid} did not stop by itself")
            time.sleep(1)


def process_exists(pid: int) -> bool:
    """Whether a process with this id is still running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
