"""The head's search space and its Keras Tuner HyperModel.

The space is declared in params.yaml (``tune.space``): ``sample_settings`` turns it into Keras Tuner
hyperparameters, with ``train_head``'s values as their defaults, and returns the head settings a
trial picked. ``HeadHyperModel.build`` reads the space; its ``fit`` forwards the tuner's ``**kwargs``
(they carry the tuner's callbacks, and Hyperband's epochs) to ``model.fit``. Trials train on cached
features, which costs seconds per trial instead of a pass through the backbone every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import keras_tuner as kt

from pipeline.core.config import FloatRange, SearchSpace, TrainHeadParams
from pipeline.features.extraction import FeatureSet
from pipeline.training import fitting, head
from pipeline.training.tuning.trial_log import TrialLog


def sample_settings(hp: kt.HyperParameters, space: SearchSpace, first: head.HeadSettings) -> head.HeadSettings:
    """Declare the search space on ``hp`` and return the head settings it picked.

    A list in params becomes ``hp.Choice``, a range ``hp.Float`` (log-sampled where asked).
    ``units`` and ``activation`` are ignored by heads with no hidden layer. ``first`` (the
    ``train_head`` values) gives each hyperparameter its default, which is what the first trial runs
    (``oracles.KnownGoodFirst``); a value outside the space leaves Keras Tuner's default, its first
    choice or its minimum.
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
        scale: the train features' mean and variance, for the head's standardising layer.
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
