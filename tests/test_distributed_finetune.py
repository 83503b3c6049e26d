"""Fine-tuning across workers: TF_CONFIG read into roles, and a chief and a worker as two real processes on
127.0.0.1 (``dvc repro -s finetune`` on the chief, the bare stage on the worker), each in its own copy of the
tiny run as on two machines."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import mlflow
import pytest

from pipeline.core import config
from pipeline.core.errors import UserError
from pipeline.training import strategy
from processes import free_port, free_ports

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
CLUSTER = {"chief": ["127.0.0.1:2000"], "worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


def tf_config(cluster: dict, kind: str, index: int = 0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


# --- roles from TF_CONFIG ------------------------------------------------------------------------------------


def test_none_and_mirrored_take_no_tf_config():
    assert strategy.place("none", None) == strategy.Placement("none")
    assert strategy.place("mirrored", "  ").writes
    with pytest.raises(UserError, match="compute.distribution is mirrored"):
        strategy.place("mirrored", tf_config(CLUSTER, "chief"))


def test_the_chief_is_the_chief_task_or_worker_0_without_one():
    chief = strategy.place("multi_worker", tf_config(CLUSTER, "chief"))
    assert (chief.role, chief.task, chief.chief, chief.tasks) == ("chief", "chief:0", "127.0.0.1:2000", 3)
    assert chief.peers == ("127.0.0.1:2001", "127.0.0.1:2002")
    worker = strategy.place("multi_worker", tf_config(CLUSTER, "worker", 0))
    assert (worker.role, worker.writes, worker.chief) == ("worker", False, "127.0.0.1:2000")
    workers_only = {"worker": CLUSTER["worker"]}
    assert strategy.place("multi_worker", tf_config(workers_only, "worker", 0)).role == "chief"
    assert strategy.place("multi_worker", tf_config(workers_only, "worker", 1)).chief == "127.0.0.1:2001"


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "TF_CONFIG is not set"),
        ("{cluster", "not JSON"),
        (json.dumps({"task": {"type": "chief"}}), 'no "cluster"'),
        (json.dumps({"cluster": CLUSTER}), 'no "task"'),
        (tf_config(CLUSTER, "worker", 2), "task worker:2 is not in its cluster"),
        (tf_config({"chief": ["127.0.0.1"]}, "chief"), "host:port"),
        (tf_config({**CLUSTER, "ps": ["127.0.0.1:3000"]}, "chief"), "chief and worker only"),
    ],
)
def test_a_wrong_tf_config_is_a_user_error(text, message):
    with pytest.raises(UserError, match=message):
        strategy.place("multi_worker", text)


def test_batch_and_rate_scale_with_the_replicas():
    params = dataclasses.replace(config.load(REPO / "params.yaml").finetune, learning_rate=2e-4, batch_size=8)
    assert strategy.scale(params, 1) == (params, {"global_batch_size": 8, "learning_rate_peak": 2e-4})
    scaled, effective = strategy.scale(params, 4)
    assert (scaled.batch_size, scaled.learning_rate) == (32, pytest.approx(8e-4))
    assert effective == {"global_batch_size": 32, "learning_rate_peak": pytest.approx(8e-4)}


def test_waiting_for_a_missing_chief_gives_up_with_its_address():
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(UserError, match=f"no chief at {address} after 1 s"):
        strategy.wait_for((address,), 1.0, "chief")
    assert time.monotonic() - started < 10
    with pytest.raises(UserError, match=strategy.CHIEF_TIMEOUT_ENV):
        strategy.wait_timeout({strategy.CHIEF_TIMEOUT_ENV: "soon"})
    assert strategy.wait_timeout({}) == strategy.DEFAULT_CHIEF_TIMEOUT_S


# --- a chief and a worker ------------------------------------------------------------------------------------


def prepare(tiny_run, base: Path, **finetune) -> Any:
    """A copy of the tiny run set to fine-tune as one of two processes: one epoch of 8 images, 1 thread."""
    project = tiny_run.copy(base)
    project.params["compute"].update(distribution="multi_worker")
    project.params["finetune"].update(epochs=1, images_per_epoch=8, batch_size=2, **finetune)
    project.write_params()
    return project


def start(project, command: list[str], cluster: dict, kind: str, log: Path, **env: str) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "TF_CONFIG"))}
    full.update(
        PATH=f"{Path(sys.executable).parent}:{full['PATH']}",
        PYTHONUNBUFFERED="1",
        TF_CONFIG=tf_config(cluster, kind),
        TF_CPP_MIN_LOG_LEVEL="2",
        **env,
    )
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=project.root, env=full, stdout=out, stderr=subprocess.STDOUT)


def finish(processes: dict[str, tuple[subprocess.Popen, Path]]) -> str:
    """Wait for every process (killing them all at the timeout); their logs, for failure messages."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for process, _ in processes.values():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return "\n".join(
        f"--- {name} (exit {p.returncode})\n{log.read_text()[-3000:]}" for name, (p, log) in processes.items()
    )


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (bytecode caches aside) with its size and modification time."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def finetune_runs(project) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'finetune'")
    return list(found)


@pytest.mark.slow
def test_a_chief_and_a_worker_fine_tune_together_and_only_the_chief_writes(tiny_run, tmp_path):
    chief, worker = prepare(tiny_run, tmp_path / "chief"), prepare(tiny_run, tmp_path / "worker")
    ports = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    runs_before = {r.info.run_id for r in finetune_runs(chief)}
    worker_status = worker.run("git", "status", "--porcelain").stdout  # first: it refreshes .git/index
    worker_before = listing(worker.root)
    processes = {
        "worker": (
            start(worker, [sys.executable, "-m", "stages.finetune"], cluster, "worker", tmp_path / "w.log"),
            tmp_path / "w.log",
        ),
        "chief": (
            start(chief, ["dvc", "repro", "-s", "finetune"], cluster, "chief", tmp_path / "c.log"),
            tmp_path / "c.log",
        ),
    }
    logs = finish(processes)
    assert all(p.returncode == 0 for p, _ in processes.values()), logs

    # Both took the same steps: 8 images per epoch at a global batch of 2 × 2 replicas.
    assert "finetune worker worker:0: 2 training steps in step with the chief; wrote nothing" in logs
    assert "2 replica(s), 2 training steps here" in logs
    model = keras.saving.load_model(chief.root / chief.params["paths"]["model"])
    assert model.output_shape[-1] == 3
    new = [r for r in finetune_runs(chief) if r.info.run_id not in runs_before]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    run = new[0].data
    assert (run.params["distribution.tasks"], run.params["distribution.replicas"]) == ("2", "2")
    assert run.params["distribution.global_batch_size"] == "4" and run.tags["distribution.role"] == "chief"
    assert float(run.params["distribution.learning_rate_peak"]) == pytest.approx(2 * 2e-4)  # auto's peak × 2
    assert json.loads((chief.root / "metrics" / "finetune.json").read_text())["mlflow"]["run_id"] == new[0].info.run_id
    # The worker's workspace is as it was: no output, no MLflow run, no file touched.
    assert listing(worker.root) == worker_before
    assert worker.run("git", "status", "--porcelain").stdout == worker_status
    assert len(finetune_runs(worker)) == len(runs_before)


@pytest.mark.slow
def test_a_worker_without_its_chief_stops_with_exit_2(tiny_run, tmp_path):
    worker = prepare(tiny_run, tmp_path)
    cluster = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"]}
    log = tmp_path / "w.log"
    process = start(
        worker, [sys.executable, "-m", "stages.finetune"], cluster, "worker", log, **{strategy.CHIEF_TIMEOUT_ENV: "2"}
    )
    logs = finish({"worker": (process, log)})
    assert process.returncode == 2, logs
    assert f"error: no chief at {cluster['chief'][0]} after 2 s" in logs


@pytest.mark.slow
def test_a_worker_with_other_params_stops_both_with_exit_2(tiny_run, tmp_path):
    chief, worker = prepare(tiny_run, tmp_path / "chief"), prepare(tiny_run, tmp_path / "worker", patience=7)
    ports = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    command = [sys.executable, "-m", "stages.finetune"]
    processes = {
        "worker": (start(worker, command, cluster, "worker", tmp_path / "w.log"), tmp_path / "w.log"),
        "chief": (start(chief, command, cluster, "chief", tmp_path / "c.log"), tmp_path / "c.log"),
    }
    logs = finish(processes)
    assert [p.returncode for p, _ in processes.values()] == [2, 2], logs
    assert logs.count("error: the processes of this fine-tuning differ in finetune:") == 2
