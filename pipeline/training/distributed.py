"""Distributed tuning: the head's search in Keras Tuner's chief/worker mode.

The same stage runs in several processes (on one machine or several), each with its own
``KERASTUNER_TUNER_ID`` (``configure``).

* The chief (``chief``) serves the oracle: it hands out trials and collects their scores, runs none
  itself, and owns everything the stage writes: its MLflow stage run, the final head, best_hparams, the
  plots and the metrics JSON (``serve_search``).
* A worker (any other id) runs trials and logs each as a child run of the chief's stage run, just as one
  process logs its trials, so the MLflow UI shows one train_head run with every trial under it, wherever
  the trial ran (``join_search``, ``run_worker``). It writes no stage outputs and no metrics JSON.

The tuner folder (``paths.tuner``) is where chief and workers meet: shared on one machine, it must
be a shared mount for workers on other machines.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import keras_tuner as kt
import pandas as pd

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.features.extraction import FeatureSet
from pipeline.tracking import runs, store
from pipeline.training import head
from pipeline.training.tuning import search, selection, trial_log

TUNER_ID_ENV = "KERASTUNER_TUNER_ID"
ORACLE_IP_ENV = "KERASTUNER_ORACLE_IP"
ORACLE_PORT_ENV = "KERASTUNER_ORACLE_PORT"
CHIEF_FILE = "chief_run.json"  # not chief.json: that is the chief tuner's own state file
# Keras Tuner saves each tuner's state as <tuner id>.json next to oracle.json and chief_run.json.
_RESERVED_IDS = ("oracle", "chief_run")


@dataclass(frozen=True)
class Role:
    """This process's part in a search: ``single`` (not distributed), ``chief`` or ``worker``.

    Attributes:
        kind: the role.
        tuner_id: ``KERASTUNER_TUNER_ID`` (None when single).
        oracle: the chief's ``ip:port`` (None when single).
    """

    kind: Literal["single", "chief", "worker"]
    tuner_id: str | None = None
    oracle: str | None = None


SINGLE = Role("single")


def configure(params: Params) -> Role:
    """This process's role in the search; exports the chief's address for Keras Tuner, which reads it
    from the environment.

    The environment wins: ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``, where unset, are
    set from ``tune.distributed``. ``KERASTUNER_TUNER_ID`` comes from the environment only, as each
    process has its own: an id containing ``chief`` (Keras Tuner's rule) serves the oracle, any other
    id (``tuner0``, ``tuner1``, ...) is a worker. An empty variable counts as unset. Called before the
    stage opens its MLflow run, so a wrong setup fails before any work.

    Raises:
        UserError: an oracle address without a tuner id or the reverse, a tuner id with tuning
            disabled, an unusable id or port, or a chief that cannot listen on the address.
    """
    for name in (TUNER_ID_ENV, ORACLE_IP_ENV, ORACLE_PORT_ENV):
        if not os.environ.get(name, "").strip():
            os.environ.pop(name, None)  # Keras Tuner takes a variable that is set, even empty, as given
    tuner_id = os.environ.get(TUNER_ID_ENV)
    ip = os.environ.get(ORACLE_IP_ENV) or params.tune.distributed.oracle_ip
    if tuner_id is not None and not params.tune.enabled:
        raise UserError(
            f"{TUNER_ID_ENV}={tuner_id} is set, but tune.enabled is false: there is no search to "
            f"distribute; unset {TUNER_ID_ENV} or enable tuning"
        )
    if not params.tune.enabled or (ip is None and tuner_id is None):
        return SINGLE
    if ip is None:
        raise UserError(
            f"{TUNER_ID_ENV}={tuner_id} is set, but not the chief's address: set "
            f"tune.distributed.oracle_ip or {ORACLE_IP_ENV} (or unset {TUNER_ID_ENV} to search in one process)"
        )
    if tuner_id is None:
        raise UserError(_how_to_distribute(ip))
    port = _oracle_port(os.environ.get(ORACLE_PORT_ENV) or str(params.tune.distributed.oracle_port))
    _check_tuner_id(tuner_id)
    os.environ[ORACLE_IP_ENV], os.environ[ORACLE_PORT_ENV] = ip, str(port)
    role = Role("chief" if "chief" in tuner_id else "worker", tuner_id, f"{ip}:{port}")
    if role.kind == "chief":
        _check_listenable(ip, port)
    return role


def _how_to_distribute(ip: str) -> str:
    return (
        f"the chief's address is set ({ip}, from tune.distributed.oracle_ip or {ORACLE_IP_ENV}), but "
        f"{TUNER_ID_ENV} is not: every process of a distributed search needs its own id. Start one chief "
        f"and any number of workers, in any order:\n"
        f"  {TUNER_ID_ENV}=chief dvc repro train_head          # serves the search, writes the outputs\n"
        f"  {TUNER_ID_ENV}=tuner0 python -m stages.train_head  # runs trials\n"
        f"  {TUNER_ID_ENV}=tuner1 python -m stages.train_head  # runs trials\n"
        f"or set tune.distributed.oracle_ip to null (and unset {ORACLE_IP_ENV}) to search in one process"
    )


def _oracle_port(text: str) -> int:
    """``KERASTUNER_ORACLE_PORT`` as a port number."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise UserError(f"{ORACLE_PORT_ENV}={text!r}: expected a port number from 1 to 65535")
    return int(text)


def _check_tuner_id(tuner_id: str) -> None:
    """A tuner id names its state file in the tuner folder and tags MLflow runs."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tuner_id) or tuner_id in _RESERVED_IDS:
        raise UserError(
            f"{TUNER_ID_ENV}={tuner_id!r}: use letters, digits, '_', '.' or '-' (chief for the chief, "
            f"tuner0, tuner1, ... for workers), not {' or '.join(_RESERVED_IDS)}"
        )


def _check_listenable(ip: str, port: int) -> None:
    """Fail before the search when the chief could not serve its oracle on ``ip:port``."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        socket.create_server((ip, port), family=family).close()
    except OSError as error:
        raise UserError(
            f"the chief cannot listen on {ip}:{port} ({error.strerror or error}): {ORACLE_IP_ENV} "
            f"must be an address of this machine, and {ORACLE_PORT_ENV} a free port (is another chief "
            f"running?)"
        ) from None


def search_params(params: Params) -> dict[str, Any]:
    """What chief and workers must agree on for their trials to belong to one search, as JSON values:
    ``train_head``, ``tune`` (without ``distributed``, which may differ per machine) and ``seed``."""
    tune = {k: v for k, v in asdict(params.tune).items() if k != "distributed"}
    return json.loads(json.dumps({"train_head": asdict(params.train_head), "tune": tune, "seed": params.seed}))


def serve_search(
    train: FeatureSet, val: FeatureSet, params: Params, run: runs.StageRun, role: Role
) -> tuple[head.HeadSettings, pd.DataFrame]:
    """The chief's part: tell workers where to log, then serve the oracle until every trial has ended.

    Returns:
        The best trial's settings and every trial (with the worker that ran it), as
        ``selection.train_chosen`` takes them: the final head is the best hyperparameters trained again
        from the seed, exactly as in one process (the trials' weights may lie on other machines).

    ``chief_run.json`` (the chief's run, tracking URI, tags and search params) is written into the tuner
    folder before the oracle answers anyone (a worker reads it once the chief answers) and removed when the
    search is over, so a finished search leaves none behind.
    Keras Tuner's chief waits for every worker that took a trial to ask for the next one (in steps of
    20 s); a worker that dies in the middle of a trial leaves the chief waiting: stop it with Ctrl-C.
    """
    folder = params.path("tuner")
    tuner = search.make_search(train, params, None)
    run.set_tags({"tuner.role": "chief", "tuner.oracle": str(role.oracle)})
    files.write_json(
        folder / CHIEF_FILE,
        {
            "run_id": run.run_id,
            "experiment_id": run.experiment_id,
            "tracking_uri": store.tracking_uri(params),
            "tags": {k: v for k, v in run.tags.items() if not k.startswith("mlflow.")},
            "oracle": role.oracle,
            "search": search_params(params),
        },
    )
    print(
        f"train_head chief: serving the search at {role.oracle}; start workers with "
        f"{TUNER_ID_ENV}=tuner0 (tuner1, ...) python -m stages.train_head",
        flush=True,
    )
    try:
        search.run_search(tuner, train, val, params)  # returns once the search is over
    finally:
        (folder / CHIEF_FILE).unlink(missing_ok=True)
    return search.best_settings(tuner), selection.trials_frame(tuner, read_worker_records(folder))


def read_worker_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The workers' records of their trials (``trial_<id>/worker.json``) by trial id."""
    records = (files.read_json(path) for path in sorted(folder.glob(f"trial_*/{trial_log.WORKER_FILE}")))
    return {record["trial_id"]: record for record in records}


@dataclass(frozen=True)
class ChiefRun:
    """The chief's stage run as a worker sees it (from ``chief_run.json``); trials are nested under it."""

    run_id: str
    experiment_id: str
    tags: dict[str, str]

    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> runs.ChildRun:
        """Open a trial's run under the chief's run, with the chief's stage tags (see ``StageRun.start_child``)."""
        return runs.start_child_run(self.run_id, self.experiment_id, name, params, {**self.tags, **tags})


def join_search(tuner: kt.Tuner, params: Params, role: Role) -> ChiefRun:
    """Wait for the chief (as long as Keras Tuner's client does: an hour), then find its run.

    Workers log to the chief's tracking URI unless ``MLFLOW_TRACKING_URI`` is set (a server's
    address may read differently from another machine).

    Raises:
        UserError: no ``chief_run.json`` in the tuner folder (not shared with the chief), the
            search params differ from the chief's, or the tracking store is unreachable.
    """
    print(f"train_head worker {role.tuner_id}: waiting for the chief at {role.oracle}", flush=True)
    tuner.oracle.get_space()  # answered once the chief serves, which it does after writing chief_run.json
    path = params.path("tuner") / CHIEF_FILE
    if not path.is_file():
        raise UserError(
            f"the chief at {role.oracle} answers, but {path} is missing: a worker must see the chief's "
            f"tuner folder (paths.tuner; on another machine, a shared mount), and the chief must run "
            f"from a repository, not a dvc exp run --temp or --queue copy"
        )
    chief = files.read_json(path)
    mine, theirs = _flatten(search_params(params)), _flatten(chief["search"])
    differing = sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
    if differing:
        raise UserError(
            f"this worker's params differ from the chief's in {', '.join(differing)}: "
            f"every process of a search must use the same params.yaml"
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI") or chief["tracking_uri"]
    store.check_reachable(uri, params)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the MLflow client that runs.start_child_run opens reads it
    return ChiefRun(chief["run_id"], chief["experiment_id"], chief["tags"])


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_worker(train: FeatureSet, val: FeatureSet, params: Params, role: Role) -> list[str]:
    """A worker's part: run the chief's trials until it has none left.

    Each trial is a child run of the chief's stage run, tagged ``tuner.id``, and leaves
    ``trial_<id>/worker.json`` (duration, memory, run id; the chief puts it into trials.csv) beside Keras
    Tuner's files; a worker opens no stage run and writes no stage output.

    Args:
        train: the train split's features.
        val: the val split's features.
        params: the same params as the chief's.
        role: a worker's role, from ``configure``.

    Returns:
        The ids of the trials this worker ran.
    """
    folder = params.path("tuner")
    log = trial_log.TrialLog(
        None, params.tune.algorithm, role.tuner_id, folder, params.tune.objective, search.planned_trials(params.tune)
    )
    tuner = search.make_search(train, params, log, overwrite=False)  # the folder, and the search in it, is the chief's
    log.run = join_search(tuner, params, role)
    search.run_search(tuner, train, val, params)
    return sorted(log.seconds)
