"""The trial log: what each trial of a search leaves behind, wherever it ran.

Every trial is timed and the process's memory recorded after it; under a parent run it is also an
MLflow child run (its hyperparameters, per-epoch metrics, objective and status), and on the console
it is one line naming what differs from the best trial so far (``HEADSTART_VERBOSE`` brings back
Keras Tuner's own tables instead). A distributed worker also writes each trial's record beside Keras
Tuner's files, for the chief's trials table.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import keras_tuner as kt

from pipeline.core import console, files, runtime
from pipeline.tracking import runs
from pipeline.training import fitting

# Keras Tuner's trial states as MLflow run states.
_RUN_STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "INVALID": "FAILED", "STOPPED": "KILLED"}

WORKER_FILE = "worker.json"  # a distributed worker's record of a trial, in trial_<id>/


def trial_values(trial: kt.engine.trial.Trial) -> dict[str, Any]:
    """A trial's hyperparameters, Hyperband's own ``tuner/epochs`` etc. renamed ``tuner.epochs``
    (a valid MLflow param name)."""
    return {k.replace("tuner/", "tuner."): v for k, v in trial.hyperparameters.values.items()}


class ParentRun(Protocol):
    """The run trials are nested under: the stage's own run, or in a worker the chief's."""

    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> runs.ChildRun: ...


class TrialLog:
    """Times each trial and records the process's memory after it; with a parent run, also opens an
    MLflow child run per trial (its hyperparameters, per-epoch metrics, status).

    Args:
        run: the parent run, or None (no MLflow); a worker sets it once it has joined the chief.
        algorithm: the search algorithm, a tag of every trial's run.
        tuner_id: a worker's ``KERASTUNER_TUNER_ID``, tagged ``tuner.id`` on each trial's run.
        folder: a worker's tuner folder: each trial's record goes to ``trial_<id>/worker.json``.
        objective: the search's objective, for the console line's best-so-far.
        total: how many trials the search runs, for the console line (None: unknown in advance).
    """

    def __init__(
        self,
        run: ParentRun | None,
        algorithm: str,
        tuner_id: str | None = None,
        folder: Path | None = None,
        objective: str = "val_accuracy",
        total: int | None = None,
    ) -> None:
        self.run = run
        self.algorithm = algorithm
        self.tuner_id, self.folder = tuner_id, folder
        self.objective, self.total = objective, total
        self.current: runs.ChildRun | None = None
        self.run_ids: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.rss_mb: dict[str, float] = {}
        self.best: tuple[str, float, dict[str, Any]] | None = None  # trial id, score, values
        self._started = 0.0

    def begin(self, trial: kt.engine.trial.Trial) -> None:
        """Start the clock; open the trial's child run."""
        self._started = time.perf_counter()
        if self.run is None:
            return
        tags = {"tuner.trial_id": str(trial.trial_id), "tuner.algorithm": self.algorithm}
        if self.tuner_id is not None:
            tags["tuner.id"] = self.tuner_id
        self.current = self.run.start_child(f"trial {trial.trial_id}", trial_values(trial), tags)
        self.run_ids[trial.trial_id] = self.current.run_id

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        """Per-epoch metrics of the running trial (called by ``fitting.EpochLog``)."""
        if self.current is not None:
            self.current.log_metrics(metrics, step)

    def end(self, trial: kt.engine.trial.Trial) -> None:
        """Record the duration and memory; close the trial's run with its status and objective."""
        self.seconds[trial.trial_id] = time.perf_counter() - self._started
        self.rss_mb[trial.trial_id] = runtime.resident_memory_mb()
        if self.current is not None:
            final = {"seconds": self.seconds[trial.trial_id], "rss_mb": self.rss_mb[trial.trial_id]}
            if trial.score is not None:
                final["objective"] = trial.score
            self.current.log_metrics(final)
            self.current.set_tags({"tuner.status": str(trial.status)})
            self.current.end(_RUN_STATUS.get(str(trial.status), "FAILED"))
            self.current = None
        if self.folder is not None:
            record = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id, **self.records()[trial.trial_id]}
            files.write_json(self.folder / f"trial_{trial.trial_id}" / WORKER_FILE, record)
        if not console.verbose():  # verbose: Keras Tuner prints its own table per trial
            print(
                describe_trial(
                    trial.trial_id,
                    self.total,
                    trial_values(trial),
                    trial.score,
                    self.seconds[trial.trial_id],
                    self.objective,
                    self.best,
                ),
                flush=True,
            )
        if trial.score is not None and (self.best is None or _improves(trial.score, self.best[1], self.objective)):
            self.best = (trial.trial_id, trial.score, trial_values(trial))

    def records(self) -> dict[str, dict[str, Any]]:
        """What this process measured and logged per trial id: seconds, rss_mb, mlflow_run_id."""
        return {
            trial_id: {
                "seconds": seconds,
                "rss_mb": self.rss_mb.get(trial_id),
                "mlflow_run_id": self.run_ids.get(trial_id),
            }
            for trial_id, seconds in self.seconds.items()
        }


def describe_trial(
    trial_id: str,
    total: int | None,
    values: dict[str, Any],
    score: float | None,
    seconds: float,
    objective: str,
    best: tuple[str, float, dict[str, Any]] | None,
) -> str:
    """One console line for a finished trial: its number, objective and time, then its hyperparameters
    (after the first trial only those that differ from the best trial so far, with the best's value).
    A trial that beats the best so far says ``new best`` and what the best was.

    Examples: ``trial 2/6: val_accuracy 0.8712 (best 0.9015, trial 1), 31 s; units 512 (best 256)``;
    ``trial 3/6: val_accuracy 0.9120 (new best; was 0.9015, trial 1), 30 s; units 512 (was 256)``.
    """
    head = f"train_head: trial {_trial_number(trial_id)}{f'/{total}' if total else ''}: "
    head += f"{objective} {score:.4f}" if score is not None else "no score (failed)"
    if best is None:
        return f"{head}, {seconds:.0f} s; {describe_settings(values)}"
    new = score is not None and _improves(score, best[1], objective)
    word = "was" if new else "best"
    differ = [
        f"{name} {_short(value)} ({word} {_short(best[2].get(name))})"
        for name, value in values.items()
        if best[2].get(name) != value
    ]
    compared = ", ".join(differ) or "same settings"
    against = f"{'new best; was' if new else 'best'} {best[1]:.4f}, trial {_trial_number(best[0])}"
    return f"{head} ({against}), {seconds:.0f} s; {compared}"


def describe_settings(values: Mapping[str, Any]) -> str:
    """Hyperparameters for the console: ``units 256, dropout 0.2, learning_rate 0.00123``."""
    return ", ".join(f"{name} {_short(value)}" for name, value in values.items())


def _trial_number(trial_id: str) -> str:
    """Keras Tuner's trial id ``"00"`` as the console counts it, from 1."""
    return f"{int(trial_id) + 1}" if trial_id.isdigit() else trial_id


def _improves(score: float, best: float, objective: str) -> bool:
    return score < best if fitting.objective_mode(objective) == "min" else score > best


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
