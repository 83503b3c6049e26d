"""Typed, validated parameters: the one place that reads ``params.yaml``.

The schema is a set of frozen pydantic dataclasses, one per section: pydantic checks types, ranges
(``Field(ge=, gt=, le=, lt=)``), choices (``Literal``), patterns and unknown keys (``extra="forbid"``);
a section's ``check`` adds the rules that involve more than one field. They are pydantic
*dataclasses* rather than ``BaseModel``s because the code, tests and benchmarks build sections
positionally and copy them with ``dataclasses.replace`` (which re-validates a pydantic dataclass) and
``dataclasses.asdict``; everything else is pydantic's: one core validator, the same ``Field``
constraints and validators, the JSON Schema. Hand-written, each where it is done and why: the messages
(``_explain``), strictness per field (``WholeNumber``) and numbers read as YAML 1.2 reads them
(``read_params_yaml``).

``params.schema.json`` (for editors' completion and inline checks; params.yaml's first line names it)
is generated from these dataclasses by ``python -m pipeline.core.config --write-schema``; a test
keeps it in step. ``python -m pipeline.core.config`` alone checks params.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import annotated_types
import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, SkipJsonSchema
from pydantic_core import PydanticCustomError

from pipeline.core.errors import UserError

PARAMS_FILE = "params.yaml"
SCHEMA_FILE = "params.schema.json"  # next to params.yaml, written by `python -m pipeline.core.config --write-schema`
# A number with an exponent in any form YAML 1.2 reads as a float (1e-4, 3E-5, 1.0e4, .5e-3, -2e+1).
_EXPONENT_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent numbers without a dot as floats (see ``read_params_yaml``)."""


_ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_NUMBER, list("-+.0123456789"))


class ConfigError(UserError):
    """params.yaml does not match the schema; the message lists every problem."""


def _whole_number(value: Any) -> Any:
    """A float with nothing after the point, as an int (``5e3`` in YAML is the float 5000.0)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Strictness per field, not ``strict=True`` for the whole schema: strict mode would also demand section
# instances where params.yaml has mappings. ``true`` is not a number, ``'0.2'`` and ``yes`` are not a number
# and a boolean; an integer field takes a whole number however it is written (``5e3``, ``5000.0``:
# ``WholeNumber``), a number field takes an integer.
#
# An integer field is ``Annotated[StrictInt, Field(<bounds>), WholeNumber]``, in that order: pydantic
# applies annotations in turn, and bounds after a validator would escape the JSON Schema.
WholeNumber = BeforeValidator(_whole_number)

# --------------------------------------------------------------------------------------------
# The schema. Field order follows params.yaml; every key is required. A string field's
# description says, in messages and in the JSON Schema, what its pattern allows.
# --------------------------------------------------------------------------------------------

_SECTION = ConfigDict(extra="forbid")
_RULE = "params_rule"  # pydantic error type of a failed ``check``
_UNKNOWN = "unexpected_keyword_argument"  # pydantic's error type for an extra key of a dataclass
_FROM_FILE = "from_params_file"  # validation context: the data came from params.yaml

RelPath = Annotated[StrictStr, Field(pattern=r"^[^\x00]+$", description="a path")]


@dataclass(frozen=True, config=_SECTION)
class _Section:
    """What every section shares: its cross-field rules, run once each of its fields is valid."""

    def check(self, key: str) -> list[str]:
        """Problems involving more than one field, each a line naming ``key``'s fields; none by default."""
        return []

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        problems = self.check(type(self).__name__)
        if problems:
            # The section goes along in the context: _explain asks it again with the key path it sits at.
            raise PydanticCustomError(_RULE, "{rules}", {"rules": "; ".join(problems), "section": self})
        return self


@dataclass(frozen=True, config=_SECTION)
class PathsParams(_Section):
    """Every file and folder the pipeline reads or writes, relative to the repository root."""

    raw: RelPath
    splits: RelPath
    features: RelPath
    models: RelPath
    head_model: RelPath
    best_hparams: RelPath
    model: RelPath
    predictions: RelPath
    report: RelPath
    metrics: RelPath
    plots: RelPath
    reports: RelPath
    downloads: RelPath
    weights: RelPath
    tuner: RelPath
    mlflow_db: RelPath
    mlflow_artifacts: RelPath
    tflite: RelPath
    review: RelPath
    label_issues: RelPath
    near_duplicates: RelPath
    outliers: RelPath
    review_suggestions: RelPath


@dataclass(frozen=True, config=_SECTION)
class DataParams(_Section):
    """Where the images come from (download stage)."""

    source: Literal["fashion_mnist", "url", "folder"]
    url: Annotated[StrictStr, Field(pattern=r"^https?://\S+$", description="an http(s) URL")] | None
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-fA-F]{64}$", description="64 hexadecimal digits")] | None
    folder: RelPath | None
    subdir: RelPath | None
    max_per_class: Annotated[StrictInt, Field(ge=1), WholeNumber] | None
    follow_links: StrictBool
    fashion_mnist_dir: RelPath
    retries: Annotated[StrictInt, Field(ge=0, le=20), WholeNumber]
    timeout_s: Annotated[StrictFloat, Field(gt=0)]

    def check(self, key: str) -> list[str]:
        """Cross-field rules: each source names what it needs."""
        problems = []
        if self.source == "url" and (self.url is None or self.sha256 is None):
            problems.append("data.url and data.sha256: both required when data.source is 'url'")
        if self.source == "folder" and self.folder is None:
            problems.append("data.folder: required when data.source is 'folder'")
        return problems


Fraction = Annotated[StrictFloat, Field(gt=0, lt=0.9)]


@dataclass(frozen=True, config=_SECTION)
class SplitParams(_Section):
    """How images are divided into train, val and test (split stage)."""

    val: Fraction
    test: Fraction
    use_existing: StrictBool
    max_image_pixels: Annotated[StrictInt, Field(ge=1), WholeNumber]

    def check(self, key: str) -> list[str]:
        """The two held-out fractions must leave something to train on."""
        if self.val + self.test >= 0.95:
            return [f"split.val + split.test: found {self.val + self.test:g}; allowed: < 0.95 (train needs the rest)"]
        return []


BACKBONE_NAMES = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_v2_b0",
    "resnet50",
    "resnet50_v2",
    "vgg16",
    "xception",
    "inception_v3",
    "densenet121",
    "convnext_tiny",
)  # pipeline/features/backbones.py has one entry per name (a test keeps the two in step)


@dataclass(frozen=True, config=_SECTION)
class BackboneParams(_Section):
    """The frozen pretrained network and how images are fitted to it (extract, finetune)."""

    name: Literal[BACKBONE_NAMES]  # type: ignore[valid-type]
    weights: Annotated[
        StrictStr, Field(pattern=r"^[^\x00]+$", description="'imagenet', 'none' or a path to a weights file")
    ]
    image_size: Literal["auto"] | Annotated[StrictInt, Field(ge=16, le=1024), WholeNumber] | None  # features/sizing.py
    crop: Literal["center", "pad", "stretch"]


@dataclass(frozen=True, config=_SECTION)
class ExtractParams(_Section):
    """How features are computed and stored (extract stage)."""

    batch_size: Annotated[StrictInt, Field(ge=1, le=4096), WholeNumber]
    dtype: Literal["float32", "float16"]


@dataclass(frozen=True, config=_SECTION)
class ComputeParams(_Section):
    """CPU threads (a fixed count makes CPU results bitwise repeatable), the runtime of the frozen forward
    passes, and how fine-tuning spreads over devices and machines."""

    threads: Annotated[StrictInt, Field(ge=0, le=1024), WholeNumber]
    runtime: Literal["auto", "tensorflow", "tflite", "onnx"]
    distribution: Literal["none", "mirrored", "multi_worker"]


Activation = Literal["relu", "gelu", "swish", "tanh"]
Optimizer = Literal["adam", "adamw", "rmsprop", "sgd"]
PositiveRate = Annotated[StrictFloat, Field(gt=0, le=1)]
DropoutRate = Annotated[StrictFloat, Field(ge=0, lt=1)]
L2Penalty = Annotated[StrictFloat, Field(ge=0, le=1)]
BatchSize = Annotated[StrictInt, Field(ge=1, le=65536), WholeNumber]
HiddenLayers = Annotated[StrictInt, Field(ge=0, le=8), WholeNumber]
Units = Annotated[StrictInt, Field(ge=1, le=65536), WholeNumber]
Epochs = Annotated[StrictInt, Field(ge=1, le=10000), WholeNumber]  # also trials and patience


@dataclass(frozen=True, config=_SECTION)
class TrainHeadParams(_Section):
    """The classifier head on cached features: its fixed settings (used as they are when tuning is off)."""

    hidden_layers: HiddenLayers
    units: Units
    activation: Activation
    dropout: DropoutRate
    optimizer: Optimizer
    learning_rate: PositiveRate
    batch_size: BatchSize
    l2: L2Penalty
    epochs: Epochs
    patience: Epochs
    class_weight: Literal["balanced", "none"]


@dataclass(frozen=True, config=_SECTION)
class FloatRange(_Section):
    """A searched number: from ``min`` to ``max``, in steps of ``step`` (null: continuous)."""

    min: StrictFloat
    max: StrictFloat
    step: Annotated[StrictFloat, Field(gt=0)] | None
    sampling: Literal["linear", "log"]

    def check(self, key: str) -> list[str]:
        """The range must be ordered, and positive where it is sampled on a log scale."""
        problems = []
        if self.min >= self.max:
            problems.append(f"{key}: min ({self.min:g}) must be below max ({self.max:g})")
        if self.sampling == "log" and self.min <= 0:
            problems.append(f"{key}: log sampling needs min > 0, found {self.min:g}")
        if self.sampling == "log" and self.step is not None:
            problems.append(f"{key}.step: log sampling takes no step; set it to null")
        return problems


@dataclass(frozen=True, config=_SECTION)
class SearchSpace(_Section):
    """The head's hyperparameters Keras Tuner searches: a list of choices, or a range.

    A list in params.yaml is a tuple here, so params stay immutable.
    """

    hidden_layers: Annotated[tuple[HiddenLayers, ...], Field(min_length=1)]
    units: Annotated[tuple[Units, ...], Field(min_length=1)]
    activation: Annotated[tuple[Activation, ...], Field(min_length=1)]
    dropout: FloatRange
    learning_rate: FloatRange
    optimizer: Annotated[tuple[Optimizer, ...], Field(min_length=1)]
    batch_size: Annotated[tuple[BatchSize, ...], Field(min_length=1)]
    l2: Annotated[tuple[L2Penalty, ...], Field(min_length=1)]

    def check(self, key: str) -> list[str]:
        """Rates must stay in their valid intervals."""
        problems = []
        if self.dropout.min < 0 or self.dropout.max >= 1:
            problems.append(
                f"{key}.dropout: found [{self.dropout.min:g}, {self.dropout.max:g}]; allowed: within [0, 1)"
            )
        if self.learning_rate.min <= 0 or self.learning_rate.max > 1:
            problems.append(
                f"{key}.learning_rate: found [{self.learning_rate.min:g}, {self.learning_rate.max:g}]; "
                "allowed: within (0, 1]"
            )
        return problems


@dataclass(frozen=True, config=_SECTION)
class DistributedParams(_Section):
    """Keras Tuner's chief/worker mode; the KERASTUNER_* environment variables override these."""

    oracle_ip: Annotated[StrictStr, Field(pattern=r"^\S+$", description="a host name or IP address")] | None
    oracle_port: Annotated[StrictInt, Field(ge=1, le=65535), WholeNumber]


@dataclass(frozen=True, config=_SECTION)
class TuneParams(_Section):
    """The Keras Tuner search over the head (train_head stage)."""

    enabled: StrictBool
    algorithm: Literal["random", "bayesian", "hyperband"]
    max_trials: Epochs
    objective: Literal["val_accuracy", "val_loss"]
    executions_per_trial: Annotated[StrictInt, Field(ge=1, le=100), WholeNumber]
    hyperband_factor: Annotated[StrictInt, Field(ge=2, le=100), WholeNumber]
    search_samples: Annotated[StrictInt, Field(ge=1), WholeNumber] | None
    space: SearchSpace
    distributed: DistributedParams


@dataclass(frozen=True, config=_SECTION)
class FinetuneParams(_Section):
    """Unfreezing the top of the backbone and training it with the head at a low learning rate."""

    enabled: StrictBool
    unfreeze_from: Annotated[StrictStr, Field(pattern=r"^\S+$", description="a cut point name of the backbone")] | None
    unfreeze_top: Annotated[StrictInt, Field(ge=1, le=100000), WholeNumber] | None
    learning_rate: Literal["auto"] | PositiveRate  # auto: pipeline/training/finetune.py's choose_schedule
    optimizer: Optimizer
    batch_size: BatchSize
    epochs: Literal["auto"] | Epochs  # auto: as learning_rate
    patience: Epochs
    images_per_epoch: Annotated[StrictInt, Field(ge=1), WholeNumber] | None
    schedule: Literal["constant", "cosine"]
    warmup: Annotated[StrictFloat, Field(ge=0, lt=1)]
    label_smoothing: Annotated[StrictFloat, Field(ge=0, lt=1)]

    def check(self, key: str) -> list[str]:
        """Exactly one way to say where the trainable top begins."""
        if (self.unfreeze_from is None) == (self.unfreeze_top is None):
            return [f"{key}.unfreeze_from and {key}.unfreeze_top: set exactly one (the other null)"]
        return []


@dataclass(frozen=True, config=_SECTION)
class AugmentParams(_Section):
    """Random changes to training images while fine-tuning (Keras layers, inactive at inference)."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]
    rotation: Annotated[StrictFloat, Field(ge=0, le=0.5)]
    zoom: Annotated[StrictFloat, Field(ge=0, le=0.9)]
    contrast: Annotated[StrictFloat, Field(ge=0, le=1)]


Count = Annotated[StrictInt, Field(ge=2, le=100), WholeNumber]


@dataclass(frozen=True, config=_SECTION)
class EvaluateParams(_Section):
    """Scoring the classifier on the test split (evaluate stage)."""

    top_k: Count
    batch_size: BatchSize
    calibration_bins: Count


@dataclass(frozen=True, config=_SECTION)
class RegistryParams(_Section):
    """The MLflow model registry entry evaluate makes for each new classifier."""

    enabled: StrictBool
    model_name: Annotated[
        StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$", description="a registered model name")
    ]
    primary_metric: Literal["accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted"]


@dataclass(frozen=True, config=_SECTION)
class ExportParams(_Section):
    """TFLite models made from model.keras (export stage), each checked against it on the test split."""

    enabled: StrictBool
    formats: Annotated[tuple[Literal["float32", "float16", "dynamic_range"], ...], Field(min_length=1)]
    min_agreement: Annotated[StrictFloat, Field(ge=0, le=1)]


Shown = Annotated[StrictInt, Field(ge=1, le=500), WholeNumber]


@dataclass(frozen=True, config=_SECTION)
class AnalyzeParams(_Section):
    """The error analysis and its report (analyze stage)."""

    worst_errors: Shown
    confused_pairs: Shown
    gradcam: StrictBool


@dataclass(frozen=True, config=_SECTION)
class AuditParams(_Section):
    """The data-centric audit on the cached features (audit stage)."""

    folds: Annotated[StrictInt, Field(ge=2, le=20), WholeNumber]
    duplicate_threshold: Literal["auto"] | Annotated[StrictFloat, Field(gt=0, lt=1)]
    neighbours: Annotated[StrictInt, Field(ge=1, le=100), WholeNumber]
    shown: Shown


@dataclass(frozen=True, config=_SECTION)
class TrackingParams(_Section):
    """MLflow settings; MLFLOW_TRACKING_URI in the environment overrides the embedded store."""

    experiment: Annotated[StrictStr, Field(pattern=r"^.+$", description="a non-empty name")]


@dataclass(frozen=True, config=_SECTION)
class Params(_Section):
    """The whole of params.yaml."""

    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), WholeNumber]
    paths: PathsParams
    data: DataParams
    split: SplitParams
    backbone: BackboneParams
    extract: ExtractParams
    compute: ComputeParams
    train_head: TrainHeadParams
    tune: TuneParams
    finetune: FinetuneParams
    augment: AugmentParams
    evaluate: EvaluateParams
    registry: RegistryParams
    analyze: AnalyzeParams
    audit: AuditParams
    export: ExportParams
    tracking: TrackingParams
    # The repository root, set by load(); not a key of params.yaml (internal: left out of messages and the schema).
    root: SkipJsonSchema[Path] = dataclasses.field(default=Path("."), metadata={"internal": True})

    @field_validator("root", mode="before")
    @classmethod
    def _root_is_not_a_key(cls, value: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get(_FROM_FILE):
            raise PydanticCustomError(_UNKNOWN, "unknown key")
        return value

    def path(self, name: str) -> Path:
        """An entry of ``paths`` resolved against the repository root."""
        return self.root / getattr(self.paths, name)


_PARAMS = TypeAdapter(Params)

# --------------------------------------------------------------------------------------------
# Loading and validation.
# --------------------------------------------------------------------------------------------


def load(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml.

    Args:
        path: the params file; its folder is taken as the repository root.

    Returns:
        The validated, frozen parameters.

    Raises:
        ConfigError: listing every problem found, one per line.
    """
    path = Path(path)
    try:
        raw = read_params_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root, where params.yaml lives)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    params = parse(raw, source=str(path))
    return dataclasses.replace(params, root=path.resolve().parent)


def read_params_yaml(text: str) -> Any:
    """Parse params YAML text, exponent numbers such as ``1e-4`` as floats (PyYAML alone gives strings).

    Numbers are read as people (and ``dvc exp run -S``) write them: PyYAML follows YAML 1.1, where ``1e-4``,
    ``3E-5`` and ``1e-05`` (no dot, or no sign in the exponent) are strings; this reads them as numbers, as
    YAML 1.2 does (and as an editor that checks params.yaml against the JSON Schema does). pydantic reads no
    YAML, so this is the loader's job.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader subclass)


def parse(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate already-parsed YAML data against the schema.

    Args:
        raw: the mapping read from params.yaml.
        source: the file name used in messages.

    Returns:
        The validated parameters.

    Raises:
        ConfigError: listing every problem found.
    """
    try:
        return _PARAMS.validate_python(raw, context={_FROM_FILE: True})
    except ValidationError as error:
        problems = _explain(error)
    listing = "\n".join(f"  {p}" for p in problems)
    raise ConfigError(f"{source} has {len(problems)} problem(s):\n{listing}")


def _explain(error: ValidationError) -> list[str]:
    """One line per problem pydantic found; the members of a union that all failed share a line.

    ``load()`` checks the whole file before any stage does work and reports every problem together as one
    ``ConfigError``, one line each naming the key path, what was found and what is allowed: an unknown key
    with a close match for a likely typo (difflib over the section's keys), a missing key, a wrong type, an
    out-of-range value. pydantic finds the problems; this phrases them from the error's location and the
    field's annotation, since pydantic's own text names neither the key as params.yaml spells it
    (``tune.space.units[1]``) nor the allowed values, and gives one error per member of a union (``'auto'``
    or a number) where one line reads better.
    """
    details = error.errors()
    first: dict[tuple[Any, ...], int] = {}  # where each section's first problem is
    for index, detail in enumerate(details):
        first.setdefault(tuple(detail["loc"][:-1]), index)

    def position(item: tuple[int, Any]) -> float:  # pydantic lists unknown keys last; they read better first
        index, detail = item
        return first[tuple(detail["loc"][:-1])] - 0.5 if detail["type"] == _UNKNOWN else index

    lines: dict[str, None] = {}  # an ordered set
    for _, detail in sorted(enumerate(details), key=position):
        lines.update(dict.fromkeys(_explain_one(detail)))
    return list(lines)


def _explain_one(detail: Any) -> list[str]:
    """The line(s) for one pydantic error, phrased from where it is and the field's annotation."""
    key, hint, rest = _locate(detail["loc"])
    kind, value = detail["type"], detail["input"]
    base = _unwrap(hint)[0]
    if kind == _RULE:
        return list(detail["ctx"]["section"].check(key))
    if kind == _UNKNOWN and rest:
        names = _field_names(base)
        unknown = str(rest[0])
        return [f"{_join(key, unknown)}: unknown key{_suggest(unknown, names)}; allowed keys: {', '.join(names)}"]
    if kind == "missing":
        return [f"{key}: missing key; expected {_describe(hint)}"]
    if rest and not _is_union(base):  # below a leaf, yet not a member of a union: not one of ours
        return [f"{_join(key, '.'.join(map(str, rest))) or 'top level'}: {detail['msg']}"]
    where = key or "top level"
    if value is None:
        return [f"{where}: found null; allowed: {_describe(hint)}"]
    options = [a for a in typing.get_args(base) if a is not type(None)] if _is_union(base) else [base]
    leaf = _unwrap(options[0])[0]  # what the value should have been, null aside
    if dataclasses.is_dataclass(leaf):
        return [f"{where}: found {type(value).__name__}; allowed: {_describe(hint)}"]
    if len(options) > 1 or typing.get_origin(leaf) is tuple:
        return [f"{where}: found {value!r}; allowed: {_describe(hint)}"]
    if typing.get_origin(leaf) is Literal:
        return [f"{where}: found {value!r}; allowed: {_describe(hint)}{_suggest(value, typing.get_args(leaf))}"]
    if kind.endswith("_type"):
        return [f"{where}: found {value!r} ({type(value).__name__}); allowed: {_describe(hint)}"]
    return [f"{where}: found {value!r}; allowed: {_describe(hint)}"]


def _locate(loc: Sequence[str | int]) -> tuple[str, Any, tuple[str | int, ...]]:
    """Follow a pydantic error location through the schema: the key path (``tune.space.units[1]``),
    the annotation there, and what is left of the location (an unknown key, a union member's tag)."""
    key: str = ""
    hint: Any = Params
    for index, part in enumerate(loc):
        base = _unwrap(hint)[0]
        if dataclasses.is_dataclass(base) and part in _field_names(base):
            key, hint = _join(key, str(part)), typing.get_type_hints(base, include_extras=True)[str(part)]
        elif typing.get_origin(base) is tuple and isinstance(part, int):
            key, hint = f"{key}[{part}]", typing.get_args(base)[0]
        else:
            return key, hint, tuple(loc[index:])
    return key, hint, ()


def _unwrap(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """Split ``Annotated[T, metadata...]`` into ``T`` and its metadata."""
    if typing.get_origin(hint) is Annotated:
        base, *metadata = typing.get_args(hint)
        return base, tuple(metadata)
    return hint, ()


def _is_union(base: Any) -> bool:
    return typing.get_origin(base) in (typing.Union, types.UnionType)


def _describe(hint: Any) -> str:
    """What a type hint allows, in words."""
    base, metadata = _unwrap(hint)
    origin = typing.get_origin(base)
    constraints = [c for m in metadata if isinstance(m, FieldInfo) for c in m.metadata]
    if _is_union(base):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        nullable = ", or null" if len(options) < len(typing.get_args(base)) else ""
        return ", or ".join(_describe(option) for option in options) + nullable
    if origin is Literal:
        choices = typing.get_args(base)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(repr(c) for c in choices)
    if dataclasses.is_dataclass(base):
        return f"a mapping with keys {_field_names(base)}"
    if origin is tuple:
        size = "a non-empty list" if any(isinstance(c, annotated_types.MinLen) for c in constraints) else "a list"
        return f"{size}, each {_describe(typing.get_args(base)[0])}"
    descriptions = [m.description for m in metadata if isinstance(m, FieldInfo) and m.description]
    if descriptions:  # a string with a pattern
        return descriptions[-1]
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
    return words + _bounds(constraints)


def _bounds(constraints: Iterable[Any]) -> str:
    """A number's interval in words, e.g. `` in [0, 1)`` or `` >= 1``; empty when unbounded."""
    lo: tuple[str, str, Any] | None = None  # bracket, comparison, bound
    hi: tuple[str, str, Any] | None = None
    for c in constraints:
        if isinstance(c, annotated_types.Ge):
            lo = ("[", ">=", c.ge)
        elif isinstance(c, annotated_types.Gt):
            lo = ("(", ">", c.gt)
        elif isinstance(c, annotated_types.Le):
            hi = ("]", "<=", c.le)
        elif isinstance(c, annotated_types.Lt):
            hi = (")", "<", c.lt)
    if lo and hi:
        return f" in {lo[0]}{_number(lo[2])}, {_number(hi[2])}{hi[0]}"
    bound = lo or hi
    return f" {bound[1]} {_number(bound[2])}" if bound else ""


def _number(bound: Any) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _suggest(word: Any, choices: Iterable[Any]) -> str:
    """A 'did you mean' clause for the closest choice, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _field_names(cls: Any) -> list[str]:
    """The params.yaml keys of a section (internal fields excluded)."""
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --------------------------------------------------------------------------------------------
# The JSON Schema of params.yaml, for editors.
# --------------------------------------------------------------------------------------------


class _SchemaGenerator(GenerateJsonSchema):
    """pydantic's JSON Schema, without a title per field (the key names it already)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def json_schema() -> dict[str, Any]:
    """The JSON Schema of params.yaml, generated from the dataclasses above."""
    schema = _PARAMS.json_schema(schema_generator=_SchemaGenerator)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Generated from pipeline/core/config.py by `python -m pipeline.core.config --write-schema`; "
        f"do not edit. {PARAMS_FILE}'s first line points editors here.",
        **schema,
    }


def schema_text() -> str:
    """``json_schema()`` as the text of params.schema.json."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: str | Path = SCHEMA_FILE) -> Path:
    """Write params.schema.json (or ``path``); returns the path written."""
    path = Path(path)
    path.write_text(schema_text(), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.core.config``: check params.yaml, or write its JSON Schema."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.core.config", description=main.__doc__)
    parser.add_argument("params", nargs="?", default=PARAMS_FILE, help="the params file to check (%(default)s)")
    parser.add_argument(
        "--write-schema",
        nargs="?",
        const=SCHEMA_FILE,
        metavar="PATH",
        help=f"write the JSON Schema of params.yaml to PATH ({SCHEMA_FILE}) instead",
    )
    args = parser.parse_args(argv)
    if args.write_schema:
        print(f"wrote {write_schema(args.write_schema)}")
        return 0
    try:
        load(args.params)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.params}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
