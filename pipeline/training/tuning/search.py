"""The search: the tuner of the configured algorithm, and the train rows its trials fit on.

``make_search`` pairs the head's HyperModel (``space``) with the oracle of ``tune.algorithm``
(``oracles``) in a tuner that tells the trial log when each trial begins and ends (``trial_log``);
``run_search`` runs it. On large feature sets the trials fit on a seeded per-class sample of the train
rows (``tune.search_samples``), which costs a fraction of the time per trial; the chosen head then
trains on all of them (``selection.train_chosen``). See docs/benchmarks.md, "Head search speed".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np

from pipeline.core import console
from pipeline.core.config import Params, TuneParams
from pipeline.features import store
from pipeline.features.extraction import FeatureSet
from pipeline.training import fitting, head
from pipeline.training.tuning.oracles import ORACLES
from pipeline.training.tuning.space import HeadHyperModel
from pipeline.training.tuning.trial_log import TrialLog


def search_sample(train: FeatureSet, most: int | None, seed: int) -> FeatureSet:
    """The train features the trials fit on: all of them, or a seeded sample of ``most`` rows drawn per
    class in proportion (every class keeps at least one row), in the original order.

    Trials on a sample cost a fraction of the time on large feature sets (see docs/benchmarks.md,
    "Head search speed"); the chosen head then trains on all of them (``selection.train_chosen``).
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


def planned_trials(tune: TuneParams) -> int | None:
    """How many trials the search runs (None for Hyperband: that follows from its epochs and factor)."""
    return None if tune.algorithm == "hyperband" else tune.max_trials


def best_settings(tuner: kt.Tuner) -> head.HeadSettings:
    """The settings of a finished search's best trial."""
    return head.HeadSettings.from_values(tuner.get_best_hyperparameters(1)[0].values)
