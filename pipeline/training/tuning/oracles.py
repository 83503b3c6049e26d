"""Which trials a search runs: Keras Tuner's oracles, known-good trials first; the oracle's saved state.

A new search first runs ``first_trials`` (``train_head``'s values, then the same as a linear head)
instead of random draws, so every search holds a head known to work and a well-regularised linear
probe; the best on val wins, as for any trial. ``ORACLES`` names the oracle of each ``tune.algorithm``
that has one (Hyperband's brackets decide every trial, the first too: it keeps Keras Tuner's own).

The tuner folder is a DVC output, so ``make_oracle_repeatable`` removes from the oracle's state file
what differs between two runs of the same search.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras_tuner as kt

from pipeline.core import files

ORACLE_FILE = "oracle.json"  # Keras Tuner's state of the search, in the tuner folder


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


ORACLES = {"random": RandomSearchOracle, "bayesian": BayesianOptimizationOracle}


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
