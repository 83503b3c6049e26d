"""Selection: the head a search chose, trained again, and what the stage records of it.

``select_head`` runs the search in this process (or takes ``train_head``'s fixed settings when tuning
is off) and ``train_chosen`` trains the chosen settings once more from the seed, every epoch logged to
the stage's run. The trials become two tables: their results (``trials``, repeatable, a DVC output)
and what was measured per trial (``trial_runs``: MLflow run ids, times, memory; MLflow only).
``save_result`` writes the train_head stage's outputs and logs them to its run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import keras_tuner as kt
import pandas as pd

from pipeline.core import files
from pipeline.core.config import Params
from pipeline.features.extraction import FeatureSet
from pipeline.tracking import runs
from pipeline.training import fitting, head
from pipeline.training.tuning import oracles, search
from pipeline.training.tuning.trial_log import TrialLog, describe_settings, trial_values

# Measured per trial, so different on every run: kept in MLflow, never in a DVC output.
_RECORD_COLUMNS = ("mlflow_run_id", "seconds", "rss_mb")


def trials_frame(tuner: kt.Tuner, records: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Every trial of a search as one row: id, status, hyperparameters, objective, best epoch, and from
    ``records`` (``TrialLog.records`` or ``read_worker_records``) seconds, memory, MLflow run id and,
    for a distributed search, the worker that ran it."""
    columns: tuple[str, ...] = _RECORD_COLUMNS
    if records is not None and any("tuner_id" in record for record in records.values()):
        columns += ("tuner_id",)
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        row: dict[str, Any] = {"trial": trial_id, "status": str(trial.status)}
        row.update(trial_values(trial))
        row["objective"] = trial.score
        row["best_epoch"] = None if trial.best_step is None else int(trial.best_step) + 1
        if records is not None:
            row.update({column: records.get(trial_id, {}).get(column) for column in columns})
        rows.append(row)
    return pd.DataFrame(rows)


def split_trials(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Divide a ``trials_frame`` into what a rerun repeats and what it measures anew.

    A distributed search's ``tuner_id`` goes to both: which worker ran a trial depends on
    scheduling, but such a search's tuner folder (the workers' records, the oracle's end order)
    differs from run to run anyway, and the worker is worth seeing beside the results.

    Returns:
        ``(results, runs)``: per trial its id, status, hyperparameters, objective and best epoch;
        and per trial its id, MLflow run id, seconds and memory (empty without those columns).
    """
    measured = [column for column in _RECORD_COLUMNS if column in trials]
    if not measured:
        return trials, pd.DataFrame()
    worker = ["tuner_id"] if "tuner_id" in trials else []
    return trials.drop(columns=measured), trials[["trial", *worker, *measured]]


@dataclass(frozen=True)
class HeadResult:
    """The chosen head: its settings, the trained model, its per-epoch history and every trial."""

    settings: head.HeadSettings
    model: keras.Model
    history: pd.DataFrame
    # The trials' results, repeatable (plots/train_head/trials.csv); empty when tuning is off.
    trials: pd.DataFrame
    objective: str
    # Where each trial ran and what it cost (MLflow run id, worker, seconds, memory): MLflow only.
    trial_runs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def best_epoch(self) -> dict[str, float]:
        """The history row of the epoch whose weights the head kept (the best on the objective)."""
        values = self.history[self.objective]
        row = values.idxmin() if fitting.objective_mode(self.objective) == "min" else values.idxmax()
        return {name: float(value) for name, value in self.history.loc[row].items()}

    def summary(self) -> dict[str, float]:
        """The numbers for metrics/train_head.json: the kept epoch's metrics (``best_`` prefixed; the plain
        names are the per-epoch series in MLflow) and the search's cost."""
        best = self.best_epoch()
        numbers = {f"best_{name}": value for name, value in best.items() if name not in ("epoch", "learning_rate")}
        numbers.update({"best_epoch": int(best["epoch"]), "epochs_trained": len(self.history)})
        if not self.trials.empty:
            seconds = self.trial_runs.get("seconds", pd.Series(dtype=float)).dropna()
            numbers.update(
                {
                    "trials": len(self.trials),
                    "trials_completed": int((self.trials["status"] == "COMPLETED").sum()),
                    "best_trial_objective": float(
                        self.trials["objective"]
                        .dropna()
                        .agg("min" if fitting.objective_mode(self.objective) == "min" else "max")
                    ),
                    "seconds_per_trial": float(seconds.mean()) if len(seconds) else 0.0,
                    "search_seconds": float(seconds.sum()),
                }
            )
            if "tuner_id" in self.trials:
                numbers["tuners"] = int(self.trials["tuner_id"].nunique())
        return numbers


def select_head(train: FeatureSet, val: FeatureSet, params: Params, run: runs.StageRun) -> HeadResult:
    """Sweep the head with Keras Tuner in this process (or take the fixed settings) and train the chosen one.

    Args:
        train: the train split's features.
        val: the val split's features.
        params: the whole params (``train_head``, ``tune``, ``seed``, ``paths.tuner``).
        run: the stage's MLflow run; each trial becomes a child run of it.
    """
    if not params.tune.enabled:
        params.path("tuner").mkdir(parents=True, exist_ok=True)  # a stage output: empty, as there is no search
        return train_chosen(head.HeadSettings.from_params(params.train_head), pd.DataFrame(), train, val, params, run)
    log = TrialLog(
        run, params.tune.algorithm, objective=params.tune.objective, total=search.planned_trials(params.tune)
    )
    tuner = search.make_search(train, params, log)
    search.run_search(tuner, train, val, params)
    oracles.make_oracle_repeatable(params.path("tuner"))
    return train_chosen(search.best_settings(tuner), trials_frame(tuner, log.records()), train, val, params, run)


def train_chosen(
    settings: head.HeadSettings,
    trials: pd.DataFrame,
    train: FeatureSet,
    val: FeatureSet,
    params: Params,
    run: runs.StageRun,
) -> HeadResult:
    """Train the chosen settings once more from the seed, every epoch logged to the stage's run.

    For random and Bayesian search that reproduces the best trial exactly. Hyperband's best trial
    may have resumed another trial's weights, so its final head is trained from scratch with the
    full epoch budget; so is a distributed chief's, whose trials ran in the workers.

    The trials' MLflow run ids, times and memory are logged as the ``trial_runs`` table; the
    result's ``trials`` leave them out, so the table the stage writes for DVC is repeatable.

    Args:
        settings: the head's settings.
        trials: every trial of the search, as ``trials_frame`` gives it (empty when tuning is off).
        train: the train split's features.
        val: the val split's features.
        params: the whole params.
        run: the stage's MLflow run.
    """
    results, trial_runs = split_trials(trials)
    if not trial_runs.empty:
        run.log_table(trial_runs, "trial_runs")
    keras.backend.clear_session()  # as the tuner does before each trial, so the final fit starts alike
    fitting.seed_everything(params.seed)
    model = head.build_head(train.features.shape[1], len(train.classes), settings, head.feature_scale(train.features))
    fitted = head.fit_head(
        model,
        train,
        val,
        settings,
        params.train_head,
        params.tune.objective,
        [fitting.EpochLog(run.log_metrics)],
        seed=params.seed,
    )
    return HeadResult(
        settings, model, fitting.history_frame(fitted.history), results, params.tune.objective, trial_runs
    )


def save_result(result: HeadResult, params: Params, run: runs.StageRun) -> None:
    """Write the chosen head's outputs (``paths.head_model``, ``paths.best_hparams`` with the kept epoch,
    the history and trials tables under ``paths.plots/train_head``) and log them, the chosen values
    (``best.*``) and ``HeadResult.summary`` to the stage's run."""
    best = result.best_epoch()
    files.save_model(result.model, params.path("head_model"))
    files.write_yaml(params.path("best_hparams"), {**result.settings.as_dict(), "epochs": int(best["epoch"])})
    files.write_csv(params.path("plots") / "train_head" / "history.csv", result.history)
    if not result.trials.empty:
        files.write_csv(params.path("plots") / "train_head" / "trials.csv", result.trials)
        run.log_table(result.trials, "trials")
    run.log_params({f"best.{name}": value for name, value in result.settings.as_dict().items()})
    run.log_artifact(params.path("best_hparams"))
    run.log_artifact(params.path("head_model"))
    run.log_metrics(result.summary())


def describe_result(result: HeadResult, params: Params) -> str:
    """The console's last train_head line: the chosen settings, the kept epoch's objective, the head's path."""
    best = result.best_epoch()
    return (
        f"train_head: {describe_settings(result.settings.as_dict())}: {params.tune.objective} "
        f"{best[params.tune.objective]:.4f} at epoch {int(best['epoch'])} → {params.paths.head_model}"
    )
