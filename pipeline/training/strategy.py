"""Fine-tuning on several devices or machines: ``compute.distribution`` turned into a tf.distribute strategy.

This is TensorFlow's data parallelism for the finetune stage; distributed *tuning* of the head (Keras Tuner's
chief and workers) is another mechanism and lives in ``pipeline.training.distributed``.

* ``none``: no strategy, the stage runs as it always has.
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs, one replica each (on a machine
  without a GPU, one replica on the CPU: the same training as ``none``).
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines named by ``TF_CONFIG``,
  every process running the same stage. Only the chief (``place``) opens the stage's MLflow run and writes
  its outputs; a worker trains in step with it and writes nothing into the workspace.

``finetune.batch_size`` is the batch of one replica; the global batch and the peak learning rate are
multiplied by the replicas (the linear scaling rule, ``scale``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import tensorflow as tf

from pipeline.core.config import FinetuneParams, Params
from pipeline.core.errors import UserError

TF_CONFIG_ENV = "TF_CONFIG"
CHIEF_TIMEOUT_ENV = "HEADSTART_CHIEF_TIMEOUT_S"
DEFAULT_CHIEF_TIMEOUT_S = 120.0
_TASK_TYPES = ("chief", "worker")
_RETRY_S = 0.5


@dataclass(frozen=True)
class Placement:
    """Where this process stands in the fine-tuning.

    Attributes:
        distribution: ``compute.distribution``.
        role: ``single`` (not multi-worker), ``chief`` or ``worker``.
        task: ``TF_CONFIG``'s task as ``type:index`` (None when single).
        chief: the chief's ``host:port`` (None when single).
        peers: the other tasks' addresses, the chief's included.
        tasks: the processes in the cluster (1 when single).
    """

    distribution: Literal["none", "mirrored", "multi_worker"]
    role: Literal["single", "chief", "worker"] = "single"
    task: str | None = None
    chief: str | None = None
    peers: tuple[str, ...] = ()
    tasks: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the stage's outputs and owns its MLflow run."""
        return self.role != "worker"


def place(distribution: Literal["none", "mirrored", "multi_worker"], tf_config: str | None) -> Placement:
    """This process's placement from ``compute.distribution`` and the text of ``TF_CONFIG`` (None: unset).

    The chief is the task of type ``chief``, or worker 0 where the cluster has no ``chief`` entry
    (TensorFlow's rule).

    Raises:
        UserError: ``TF_CONFIG`` set with ``none`` or ``mirrored``; ``multi_worker`` without it; ``TF_CONFIG``
            that is no JSON, has no ``cluster`` of ``chief``/``worker`` addresses, or a task missing from it.
    """
    tf_config = tf_config if tf_config and tf_config.strip() else None
    if distribution != "multi_worker":
        if tf_config is not None:
            raise UserError(
                f"{TF_CONFIG_ENV} is set, but compute.distribution is {distribution}: set it to multi_worker "
                f"to fine-tune across the machines {TF_CONFIG_ENV} names, or unset {TF_CONFIG_ENV}"
            )
        return Placement(distribution)
    if tf_config is None:
        raise UserError(
            f"compute.distribution is multi_worker, but {TF_CONFIG_ENV} is not set: every process needs it, "
            f'e.g. {TF_CONFIG_ENV}=\'{{"cluster": {{"chief": ["host0:12345"], "worker": ["host1:12345"]}}, '
            f'"task": {{"type": "chief", "index": 0}}}}\' (docs/scale.md, "Fine-tuning on several machines")'
        )
    cluster, task_type, index = _read_tf_config(tf_config)
    chief = cluster["chief"][0] if "chief" in cluster else cluster["worker"][0]
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    mine = cluster[task_type][index]
    peers = tuple(address for kind in _TASK_TYPES for address in cluster.get(kind, []) if address != mine)
    tasks = sum(len(cluster.get(kind, [])) for kind in _TASK_TYPES)
    return Placement(distribution, "chief" if is_chief else "worker", f"{task_type}:{index}", chief, peers, tasks)


def _read_tf_config(text: str) -> tuple[dict[str, list[str]], str, int]:
    """``TF_CONFIG``'s cluster, task type and index, checked."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{TF_CONFIG_ENV} is not JSON ({error.msg} at character {error.pos})") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f'{TF_CONFIG_ENV} has no "cluster": expected {{"chief": ["host:port"], "worker": [...]}}')
    unknown = sorted(set(cluster) - set(_TASK_TYPES))
    if unknown:
        raise UserError(f"{TF_CONFIG_ENV}'s cluster has {', '.join(unknown)}: fine-tuning uses chief and worker only")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise UserError(f'{TF_CONFIG_ENV}\'s cluster "{kind}": expected a list of "host:port", found {addresses!r}')
    if len(cluster.get("chief", [])) > 1:
        raise UserError(f"{TF_CONFIG_ENV}'s cluster names {len(cluster['chief'])} chiefs: there is one")
    task = spec.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise UserError(f'{TF_CONFIG_ENV} has no "task": expected {{"type": "chief" or "worker", "index": 0}}')
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise UserError(
            f"{TF_CONFIG_ENV}'s task {task_type}:{index} is not in its cluster "
            f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())})"
        )
    return cluster, task_type, index


def _is_address(text: object) -> bool:
    host, _, port = str(text).rpartition(":")
    return isinstance(text, str) and bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def wait_timeout(environ: Mapping[str, str]) -> float:
    """Seconds to wait for the other processes: ``HEADSTART_CHIEF_TIMEOUT_S``, or two minutes.

    Raises:
        UserError: the variable is no positive number.
    """
    text = environ.get(CHIEF_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CHIEF_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{CHIEF_TIMEOUT_ENV}={text!r}: expected a number of seconds above 0")
    return seconds


def wait_for(addresses: tuple[str, ...], timeout_s: float, who: str) -> None:
    """Return once something listens at every ``host:port`` (a TCP connect, retried every half second).

    Raises:
        UserError: one of them still refused after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    for address in addresses:
        host, _, port = address.rpartition(":")
        while True:
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=_RETRY_S).close()
                break
            except OSError as error:
                if time.monotonic() >= deadline:
                    raise UserError(
                        f"no {who} at {address} after {timeout_s:.0f} s ({error.strerror or error}): start the "
                        f"chief and every worker {TF_CONFIG_ENV} names, with the same cluster, or wait longer "
                        f"with {CHIEF_TIMEOUT_ENV}"
                    ) from None
                time.sleep(_RETRY_S)


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` takes what Keras 3's ``fit`` hands it.

    Keras 3.15 reduces a whole (images, labels, weights) batch at once to build the model, and each step's
    scalar metrics with ``axis=0``; TensorFlow's collective ``reduce`` takes one tensor, and no axis on a
    scalar, so ``fit`` fails on its first batch. Here each tensor is reduced on its own, scalars over the
    replicas only (the mean of the replicas' metrics, the same number on every process).
    """

    def reduce(self, reduce_op: Any, value: Any, axis: int | None = None) -> Any:  # noqa: D102
        def one(tensor: Any) -> Any:
            rank = getattr(getattr(tensor, "shape", None), "rank", None)
            return super(_MultiWorkerStrategy, self).reduce(reduce_op, tensor, axis=None if rank == 0 else axis)

        return tf.nest.map_structure(one, value)


@dataclass(frozen=True)
class Spread:
    """The strategy fine-tuning runs under (None for ``none``) and its replicas across the cluster."""

    placement: Placement
    strategy: tf.distribute.Strategy | None
    replicas: int

    def scope(self) -> Any:
        """The strategy's scope: models, optimizers and metrics made in it are mirrored on every replica."""
        return self.strategy.scope() if self.strategy is not None else _no_scope()

    def describe(self) -> str:
        """One line for the console, e.g. ``multi_worker, chief (chief:0) of 2 processes, 2 replicas``."""
        where = f", {self.placement.role} ({self.placement.task}) of {self.placement.tasks} processes"
        return f"{self.placement.distribution}{where if self.placement.task else ''}, {self.replicas} replica(s)"


def _no_scope() -> Any:
    return contextlib.nullcontext()


def spread(placement: Placement, environ: Mapping[str, str]) -> Spread:
    """Build the strategy; with ``multi_worker``, wait for the chief first (a worker) or for the workers
    after (the chief), so that a missing process fails in ``HEADSTART_CHIEF_TIMEOUT_S`` rather than hangs.

    Call after ``runtime.configure`` (thread pools are fixed before TensorFlow starts) and before any model.

    Raises:
        UserError: a process of the cluster did not answer in time.
    """
    if placement.distribution == "none":
        return Spread(placement, None, 1)
    if placement.distribution == "mirrored":
        mirrored = tf.distribute.MirroredStrategy()
        return Spread(placement, mirrored, int(mirrored.num_replicas_in_sync))
    timeout = wait_timeout(environ)
    if placement.role == "worker":
        assert placement.chief is not None
        print(f"finetune worker {placement.task}: waiting for the chief at {placement.chief}", flush=True)
        wait_for((placement.chief,), timeout, "chief")
    strategy = _MultiWorkerStrategy()  # reads TF_CONFIG; its server listens from here on
    if placement.role == "chief":
        print(
            f"finetune chief: waiting for {len(placement.peers)} worker(s) at {', '.join(placement.peers)}", flush=True
        )
        wait_for(placement.peers, timeout, "worker")
    return Spread(placement, strategy, int(strategy.num_replicas_in_sync))


def scale(params: FinetuneParams, replicas: int) -> tuple[FinetuneParams, dict[str, float]]:
    """The params at ``replicas`` replicas: the global batch and the peak rate, both × replicas.

    ``finetune.batch_size`` is the batch of one replica, so the global batch is ``batch_size × replicas``; the
    peak learning rate is multiplied by the replicas (the linear scaling rule of Goyal et al., 2017, "Accurate,
    Large Minibatch SGD"), reached through the schedule's existing warm-up. ``images_per_epoch`` counts images
    across the cluster, so an epoch has ``images_per_epoch / global batch`` steps.

    ``learning_rate`` must be a number already (``finetune.resolve_schedule``). With one replica the params
    come back unchanged.

    Returns:
        The scaled params and the effective values for MLflow (``global_batch_size``, ``learning_rate_peak``).
    """
    if isinstance(params.learning_rate, str):
        raise ValueError("finetune.learning_rate: auto must be resolved first (finetune.resolve_schedule)")
    if replicas > 1:
        params = dataclasses.replace(
            params, batch_size=params.batch_size * replicas, learning_rate=float(params.learning_rate) * replicas
        )
    return params, {"global_batch_size": params.batch_size, "learning_rate_peak": float(params.learning_rate)}


def shard(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset split across the workers by element (TensorFlow's DATA sharding): every worker walks the
    same seeded file order and keeps its share of each global batch. Exact and simple (the images lie at the
    same paths on every machine); a worker may decode images it then drops."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fingerprint(params: Params) -> dict[str, str]:
    """What every process must agree on, each part as a sha256: the params fine-tuning reads, the split CSVs
    and the head it starts from (the images themselves lie at the same relative paths on every machine)."""
    parts: dict[str, Any] = {
        "finetune": dataclasses.asdict(params.finetune),
        "backbone": dataclasses.asdict(params.backbone),
        "augment": dataclasses.asdict(params.augment),
        "seed": params.seed,
        "train_head.class_weight": params.train_head.class_weight,
        "tune.objective": params.tune.objective,
    }
    digests = {
        k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest() for k, v in parts.items()
    }
    for name in ("train", "val"):
        path = params.path("splits") / f"{name}.csv"
        digests[f"splits/{name}.csv"] = _sha256(path)
    return digests


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def check_agreement(spread: Spread, digests: dict[str, str]) -> None:
    """All-gather every process's fingerprint; stop on every process, naming what differs.

    A no-op unless ``multi_worker``. Each part travels as a 62-bit integer cut from its sha256.

    Raises:
        UserError: some process's parts differ from this one's.
    """
    if spread.strategy is None or spread.placement.distribution != "multi_worker":
        return
    names = sorted(digests)
    mine = tf.constant([[int(digests[n][:15], 16) for n in names]], tf.int64)

    def gather() -> tf.Tensor:
        return tf.distribute.get_replica_context().all_gather(mine, axis=0)

    gathered = spread.strategy.experimental_local_results(spread.strategy.run(gather))[0].numpy()
    differing = [n for i, n in enumerate(names) if (gathered[:, i] != gathered[0, i]).any()]
    if differing:
        raise UserError(
            f"the processes of this fine-tuning differ in {', '.join(differing)}: the chief and every worker "
            f"must run the same params.yaml on the same splits"
        )


class StepCount(keras.callbacks.Callback):
    """Counts the training steps this process takes (each replica's batch), for its closing line."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1


def env_tf_config() -> str | None:
    """``TF_CONFIG`` from the environment (None when unset or empty)."""
    return os.environ.get(TF_CONFIG_ENV) or None
