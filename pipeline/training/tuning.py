"""Keras Tuner sweeps the head on cached features; every trial is an MLflow child run.

Training on cached features costs seconds per trial instead of a pass through the backbone every
epoch, which is what makes a real search affordable. The search space is declared in params.yaml
(``tune.space``); ``HeadHyperModel.build`` reads it, and its ``fit`` forwards the tuner's
``**kwargs`` (they carry the tuner's callbacks, and Hyperband's epochs) to ``model.fit``.

Distributed tuning (Keras Tuner's chief/worker mode) builds on these pieces: see ``pipeline.training.distributed``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd

from pipeline.core import console, files, runtime
from pipeline.core.config import FloatRange, Params, SearchSpace, TrainHeadParams, TuneParams
from pipeline.features import store
from pipeline.features.extraction import FeatureSet
from pipeline.tracking import runs
from pipeline.training import fitting, head

# Keras Tuner's trial states as MLflow run states.
_RUN_STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "INVALID": "FAILED", "STOPPED": "KILLED"}

WORKER_FILE = "worker.json"  # a distributed worker's record of a trial, in trial_<id>/
ORACLE_FILE = "oracle.json"  # Keras Tuner's state of the search, in the tuner folder
# Measured per trial, so different on every run: kept in MLflow, never in a DVC output.
_RECORD_COLUMNS = ("mlflow_run_id", "seconds", "rss_mb")


def sample_settings(hp: kt.HyperParameters, space: SearchSpace, first: head.HeadSettings) -> head.HeadSettings:
    """Declare the search space on ``hp`` and return the head settings it picked.

    A list in params becomes ``hp.Choice``, a range ``hp.Float`` (log-sampled where asked).
    ``units`` and ``activation`` are ignored by heads with no hidden layer. ``first`` (the
    ``train_head`` values) gives each hyperparameter its default, which is what the first trial runs
    (``KnownGoodFirst``); a value outside the space leaves Keras Tuner's default, its first choice or
    its minimum.
    """
    return head.HeadSettings(
        hidden_layers=_choice(hp, "hidden_layers", space.hidden_layers, first),
        units=_choice(hp, "units", space.units, first),
        activation=_choice(hp, "activation", space.activation, first),
        dropout=_float(hp, "dropout", space.dropout, first),
        optimizer=_choice(hp, "optimizer", space.optimizer, first),
        learning_rate=_float(hp, "learning_rate", space.learning_rate, first),
        batch_size=_choice(hp, "batch_size", space.batch_size, first),
        l2=_choice(hp, "l2", space.l2, first),
    )


def _choice(hp: kt.HyperParameters, name: str, values: Sequence[Any], first: head.HeadSettings) -> Any:
    default = getattr(first, name)
    return hp.Choice(name, list(values), default=default if default in values else None)


def _float(hp: kt.HyperParameters, name: str, spec: FloatRange, first: head.HeadSettings) -> float:
    default = getattr(first, name)
    inside = spec.min <= default <= spec.max
    return hp.Float(
        name, spec.min, spec.max, step=spec.step, sampling=spec.sampling, default=default if inside else None
    )


def first_trials(defaults: Mapping[str, Any], hidden_layers: tuple[int, ...]) -> list[dict[str, Any]]:
    """What a new search runs before it searches: the defaults (``train_head``'s values), then the same
    as a linear head (no hidden layer, its L2 penalty kept) when the space holds one and the defaults
    are not linear already."""
    trials = [dict(defaults)]
    if 0 in hidden_layers and defaults.get("hidden_layers") != 0:
        trials.append({**defaults, "hidden_layers": 0})
    return trials


class KnownGoodFirst:
    """Mixed into a Keras Tuner oracle: a new search first runs ``first_trials`` (the known-good
    configuration, then its linear twin) instead of random draws, so every search holds a head known
    to work and a well-regularised linear probe; the best on val wins, as for any trial."""

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        space = self.hyperparameters  # type: ignore[attr-defined]
        layers = next((tuple(h.values) for h in space.space if h.name == "hidden_layers"), ())
        planned = first_trials(space.values, layers)
        done = len(self.trials)  # type: ignore[attr-defined]
        if done < len(planned):
            return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": planned[done]}
        return super().populate_space(trial_id)  # type: ignore[misc]


class RandomSearchOracle(KnownGoodFirst, kt.oracles.RandomSearchOracle):
    """Random search, the first trial at train_head's values."""


class BayesianOptimizationOracle(KnownGoodFirst, kt.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation (a Gaussian process over the space), the first trial at train_head's values."""


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

    Example: ``trial 2/6: val_accuracy 0.8712 (best 0.9015, trial 1), 31 s; units 512 (best 256)``.
    """
    head = f"train_head: trial {_trial_number(trial_id)}{f'/{total}' if total else ''}: "
    head += f"{objective} {score:.4f}" if score is not None else "no score (failed)"
    if best is None:
        return f"{head}, {seconds:.0f} s; {describe_settings(values)}"
    differ = [
        f"{name} {_short(value)} (best {_short(best[2].get(name))})"
        for name, value in values.items()
        if best[2].get(name) != value
    ]
    compared = ", ".join(differ) or "same settings"
    return f"{head} (best {best[1]:.4f}, trial {_trial_number(best[0])}), {seconds:.0f} s; {compared}"


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


def search_sample(train: FeatureSet, most: int | None, seed: int) -> FeatureSet:
    """The train features the trials fit on: all of them, or a seeded sample of ``most`` rows drawn per
    class in proportion (every class keeps at least one row), in the original order.

    Trials on a sample cost a fraction of the time on large feature sets (about 36 s a trial on
    54,000 × 1,280 on 2 cores); the chosen head then trains on all of them (``train_chosen``).
    """
    if most is None or len(train.labels) <= most:
        return train
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(train.labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts * most / len(train.labels)).astype(int))
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(train.labels == c), q, replace=False)
                for c, q in zip(classes, quota, strict=True)
            ]
        )
    )
    features = store.take_rows(train.features, keep)  # row by row: the sample only, never the whole file
    return FeatureSet(features, train.labels[keep], train.paths[keep], train.sha256[keep], train.classes)


def run_search(tuner: kt.Tuner, train: FeatureSet, val: FeatureSet, params: Params) -> None:
    """``tuner.search`` on ``search_sample``'s train features (val whole), with a line per trial from
    ``TrialLog``, or Keras Tuner's tables with ``HEADSTART_VERBOSE``."""
    sample = search_sample(train, params.tune.search_samples, params.seed)
    tuner.search(sample, val, epochs=params.train_head.epochs, verbose=1 if console.verbose() else 0)


class HeadHyperModel(kt.HyperModel):
    """Builds a head from the search space in params and fits it on cached features.

    Args:
        space: ``tune.space``.
        feature_width: the width of the cached features.
        num_classes: the number of classes.
        params: ``train_head`` (epochs, patience, class weighting).
        objective: the monitored val metric.
        seed: every trial starts from the same seed, so equal hyperparameters give equal results.
        trial_log: receives each epoch's metrics, or None.
    """

    def __init__(
        self,
        space: SearchSpace,
        feature_width: int,
        num_classes: int,
        params: TrainHeadParams,
        objective: str,
        seed: int,
        trial_log: TrialLog | None = None,
        scale: head.FeatureScale | None = None,
    ) -> None:
        super().__init__(name="head")
        self.space, self.feature_width, self.num_classes = space, feature_width, num_classes
        self.params, self.objective, self.seed, self.trial_log = params, objective, seed, trial_log
        self.scale = scale

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        settings = sample_settings(hp, self.space, head.HeadSettings.from_params(self.params))
        fitting.seed_everything(self.seed)
        return head.build_head(self.feature_width, self.num_classes, settings, self.scale)

    def fit(
        self, hp: kt.HyperParameters, model: keras.Model, train: FeatureSet, val: FeatureSet, **kwargs: Any
    ) -> keras.callbacks.History:
        callbacks = list(kwargs.pop("callbacks", []))
        if self.trial_log is not None:
            callbacks.append(fitting.EpochLog(self.trial_log.log_epoch))
        settings = head.HeadSettings.from_values(hp.values)
        return head.fit_head(
            model, train, val, settings, self.params, self.objective, callbacks, seed=self.seed, **kwargs
        )


class _LoggedTrials:
    """Mixed into a Keras Tuner tuner: tells the trial log when each trial begins and ends."""

    trial_log: TrialLog | None = None
    oracle: Any  # the tuner's, which comes after this mixin in the MRO

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)  # type: ignore[misc]  # a mixin: the tuner after it defines this
        if self.trial_log is not None:
            self.trial_log.begin(trial)

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)  # type: ignore[misc]  # the tuner's: the oracle scores the trial here
        if self.trial_log is not None:
            self.trial_log.end(self.oracle.get_trial(trial.trial_id))


class Tuner(_LoggedTrials, kt.Tuner):
    """A Keras Tuner tuner over heads whose trials are MLflow child runs (random or Bayesian search,
    by its oracle)."""


class Hyperband(_LoggedTrials, kt.Hyperband):
    """Hyperband whose trials are MLflow child runs (its brackets decide every trial, the first too)."""


ORACLES = {"random": RandomSearchOracle, "bayesian": BayesianOptimizationOracle}


def make_tuner(
    hypermodel: HeadHyperModel,
    tune: TuneParams,
    epochs: int,
    directory: Path,
    seed: int,
    trial_log: TrialLog | None = None,
    overwrite: bool = True,
) -> kt.Tuner:
    """A tuner of the configured algorithm writing its trials under ``directory``.

    Args:
        hypermodel: the head's hypermodel.
        tune: algorithm, trials, objective.
        epochs: the most epochs a trial trains (Hyperband's ``max_epochs``).
        directory: the tuner's folder.
        seed: the oracle's seed.
        trial_log: MLflow child runs for the trials, or None.
        overwrite: empty ``directory`` first, so every run is a new search; a distributed worker
            passes False, since the folder (and the search in it) belongs to the chief.
    """
    objective = kt.Objective(tune.objective, direction=fitting.objective_mode(tune.objective))
    common = dict(
        hypermodel=hypermodel,
        objective=objective,
        seed=seed,
        overwrite=overwrite,
        directory=str(directory.parent),
        project_name=directory.name,
        executions_per_trial=tune.executions_per_trial,
    )
    if tune.algorithm == "hyperband":
        tuner = Hyperband(max_epochs=epochs, factor=tune.hyperband_factor, **common)
    else:
        oracle = ORACLES[tune.algorithm](
            objective=common.pop("objective"), max_trials=tune.max_trials, seed=common.pop("seed")
        )
        tuner = Tuner(oracle=oracle, **common)
    tuner.trial_log = trial_log
    return tuner


def make_search(train: FeatureSet, params: Params, trial_log: TrialLog | None, overwrite: bool = True) -> kt.Tuner:
    """The configured tuner over heads for ``train``'s features, in ``paths.tuner``."""
    hypermodel = HeadHyperModel(
        params.tune.space,
        train.features.shape[1],
        len(train.classes),
        params.train_head,
        params.tune.objective,
        params.seed,
        trial_log,
        head.feature_scale(train.features),
    )
    return make_tuner(
        hypermodel, params.tune, params.train_head.epochs, params.path("tuner"), params.seed, trial_log, overwrite
    )


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
    log = TrialLog(run, params.tune.algorithm, objective=params.tune.objective, total=planned_trials(params.tune))
    tuner = make_search(train, params, log)
    run_search(tuner, train, val, params)
    make_oracle_repeatable(params.path("tuner"))
    return train_chosen(best_settings(tuner), trials_frame(tuner, log.records()), train, val, params, run)


def planned_trials(tune: TuneParams) -> int | None:
    """How many trials the search runs (None for Hyperband: that follows from its epochs and factor)."""
    return None if tune.algorithm == "hyperband" else tune.max_trials


def make_oracle_repeatable(folder: Path) -> None:
    """Rewrite the ``oracle.json`` of a finished search in ``folder`` without what differs between two
    runs of the same search, since the tuner folder is a DVC output.

    Keras Tuner keeps when the search and each trial started and the trials' display numbers
    (``display``), only to print its tables while it searches (it records them only then, so with
    ``HEADSTART_VERBOSE`` alone); it reloads the file without them (no start time is what a search that
    never began has). ``tried_so_far`` is a set, listed in Python's per-process hash order: sorted.
    """
    path = folder / ORACLE_FILE
    state = files.read_json(path)
    state["display"] = {**state["display"], "search_start": None, "trial_start": {}, "trial_number": {}}
    state["tried_so_far"] = sorted(state["tried_so_far"])
    files.write_json(path, state)


def best_settings(tuner: kt.Tuner) -> head.HeadSettings:
    """The settings of a finished search's best trial."""
    return head.HeadSettings.from_values(tuner.get_best_hyperparameters(1)[0].values)


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
    results, runs = split_trials(trials)
    if not runs.empty:
        run.log_table(runs, "trial_runs")
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
    return HeadResult(settings, model, fitting.history_frame(fitted.history), results, params.tune.objective, runs)
