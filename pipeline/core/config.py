"""Typed, validated parameters: the one place that reads ``params.yaml``.

Every section is a frozen dataclass. ``load()`` checks the whole file before any stage does work:
an unknown key (with a close match for a likely typo), a missing key, a wrong type or an
out-of-range value each produce one line naming the key path, what was found and what is allowed.
All problems are reported together as a single ``ConfigError``.

Numbers are read as people (and ``dvc exp run -S``) write them: PyYAML follows YAML 1.1, where
``1e-4``, ``3E-5`` and ``1e-05`` (no dot, or no sign in the exponent) are strings; ``load`` reads
them as numbers, as YAML 1.2 does. An integer field takes a whole number however it is written
(``5e3``, ``5000.0``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from pipeline.core.errors import UserError

PARAMS_FILE = "params.yaml"
# A number with an exponent in any form YAML 1.2 reads as a float (1e-4, 3E-5, 1.0e4, .5e-3, -2e+1).
_EXPONENT_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent numbers without a dot as floats (see the module docstring)."""


_ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_NUMBER, list("-+.0123456789"))


class ConfigError(UserError):
    """params.yaml does not match the schema; the message lists every problem."""


@dataclass(frozen=True)
class Range:
    """Allowed interval for a number; bounds are inclusive unless marked open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))

    def describe(self) -> str:
        """Human-readable interval, e.g. ``in [0, 1)``."""
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Pattern:
    """A regular expression a string must match in full, with a description for messages."""

    regex: str
    description: str


# --------------------------------------------------------------------------------------------
# The schema. Field order follows params.yaml; every key is required.
# --------------------------------------------------------------------------------------------

RelPath = Annotated[str, Pattern(r"[^\0]+", "a path")]


@dataclass(frozen=True)
class PathsParams:
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


@dataclass(frozen=True)
class DataParams:
    """Where the images come from (download stage)."""

    source: Literal["fashion_mnist", "url", "folder"]
    url: Annotated[str, Pattern(r"https?://\S+", "an http(s) URL")] | None
    sha256: Annotated[str, Pattern(r"[0-9a-fA-F]{64}", "64 hexadecimal digits")] | None
    folder: RelPath | None
    subdir: RelPath | None
    max_per_class: Annotated[int, Range(lo=1)] | None
    follow_links: bool
    fashion_mnist_dir: RelPath
    retries: Annotated[int, Range(lo=0, hi=20)]
    timeout_s: Annotated[float, Range(lo=0, lo_open=True)]

    def check(self, key: str) -> list[str]:
        """Cross-field rules: each source names what it needs."""
        problems = []
        if self.source == "url" and (self.url is None or self.sha256 is None):
            problems.append("data.url and data.sha256: both required when data.source is 'url'")
        if self.source == "folder" and self.folder is None:
            problems.append("data.folder: required when data.source is 'folder'")
        return problems


@dataclass(frozen=True)
class SplitParams:
    """How images are divided into train, val and test (split stage)."""

    val: Annotated[float, Range(0.0, 0.9, lo_open=True, hi_open=True)]
    test: Annotated[float, Range(0.0, 0.9, lo_open=True, hi_open=True)]
    use_existing: bool
    max_image_pixels: Annotated[int, Range(lo=1)]

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


@dataclass(frozen=True)
class BackboneParams:
    """The frozen pretrained network and how images are fitted to it (extract, finetune)."""

    name: Literal[BACKBONE_NAMES]  # type: ignore[valid-type]
    weights: Annotated[str, Pattern(r"[^\0]+", "'imagenet', 'none' or a path to a weights file")]
    image_size: Literal["auto"] | Annotated[int, Range(16, 1024)] | None  # pipeline/features/sizing.py
    crop: Literal["center", "pad", "stretch"]


@dataclass(frozen=True)
class ExtractParams:
    """How features are computed and stored (extract stage)."""

    batch_size: Annotated[int, Range(1, 4096)]
    dtype: Literal["float32", "float16"]


@dataclass(frozen=True)
class ComputeParams:
    """CPU threads; a fixed count makes CPU results bitwise repeatable."""

    threads: Annotated[int, Range(0, 1024)]


Activation = Literal["relu", "gelu", "swish", "tanh"]
Optimizer = Literal["adam", "adamw", "rmsprop", "sgd"]
PositiveRate = Annotated[float, Range(0.0, 1.0, lo_open=True)]
DropoutRate = Annotated[float, Range(0.0, 1.0, hi_open=True)]
L2Penalty = Annotated[float, Range(0.0, 1.0)]
BatchSize = Annotated[int, Range(1, 65536)]


@dataclass(frozen=True)
class TrainHeadParams:
    """The classifier head on cached features: its fixed settings (used as they are when tuning is off)."""

    hidden_layers: Annotated[int, Range(0, 8)]
    units: Annotated[int, Range(1, 65536)]
    activation: Activation
    dropout: DropoutRate
    optimizer: Optimizer
    learning_rate: PositiveRate
    batch_size: BatchSize
    l2: L2Penalty
    epochs: Annotated[int, Range(1, 10000)]
    patience: Annotated[int, Range(1, 10000)]
    class_weight: Literal["balanced", "none"]


@dataclass(frozen=True)
class FloatRange:
    """A searched number: from ``min`` to ``max``, in steps of ``step`` (null: continuous)."""

    min: float
    max: float
    step: Annotated[float, Range(0.0, lo_open=True)] | None
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


@dataclass(frozen=True)
class SearchSpace:
    """The head's hyperparameters Keras Tuner searches: a list of choices, or a range."""

    hidden_layers: list[Annotated[int, Range(0, 8)]]
    units: list[Annotated[int, Range(1, 65536)]]
    activation: list[Activation]
    dropout: FloatRange
    learning_rate: FloatRange
    optimizer: list[Optimizer]
    batch_size: list[BatchSize]
    l2: list[L2Penalty]

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


@dataclass(frozen=True)
class DistributedParams:
    """Keras Tuner's chief/worker mode; the KERASTUNER_* environment variables override these."""

    oracle_ip: Annotated[str, Pattern(r"\S+", "a host name or IP address")] | None
    oracle_port: Annotated[int, Range(1, 65535)]


@dataclass(frozen=True)
class TuneParams:
    """The Keras Tuner search over the head (train_head stage)."""

    enabled: bool
    algorithm: Literal["random", "bayesian", "hyperband"]
    max_trials: Annotated[int, Range(1, 10000)]
    objective: Literal["val_accuracy", "val_loss"]
    executions_per_trial: Annotated[int, Range(1, 100)]
    hyperband_factor: Annotated[int, Range(2, 100)]
    search_samples: Annotated[int, Range(lo=1)] | None
    space: SearchSpace
    distributed: DistributedParams


@dataclass(frozen=True)
class FinetuneParams:
    """Unfreezing the top of the backbone and training it with the head at a low learning rate."""

    enabled: bool
    unfreeze_from: Annotated[str, Pattern(r"\S+", "a cut point name of the backbone")] | None
    unfreeze_top: Annotated[int, Range(1, 100000)] | None
    learning_rate: Literal["auto"] | PositiveRate  # auto: pipeline/training/finetune.py's choose_schedule
    optimizer: Optimizer
    batch_size: BatchSize
    epochs: Literal["auto"] | Annotated[int, Range(1, 10000)]  # auto: as learning_rate
    patience: Annotated[int, Range(1, 10000)]
    images_per_epoch: Annotated[int, Range(lo=1)] | None
    schedule: Literal["constant", "cosine"]
    warmup: Annotated[float, Range(0.0, 1.0, hi_open=True)]
    label_smoothing: Annotated[float, Range(0.0, 1.0, hi_open=True)]

    def check(self, key: str) -> list[str]:
        """Exactly one way to say where the trainable top begins."""
        if (self.unfreeze_from is None) == (self.unfreeze_top is None):
            return [f"{key}.unfreeze_from and {key}.unfreeze_top: set exactly one (the other null)"]
        return []


@dataclass(frozen=True)
class AugmentParams:
    """Random changes to training images while fine-tuning (Keras layers, inactive at inference)."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]
    rotation: Annotated[float, Range(0.0, 0.5)]
    zoom: Annotated[float, Range(0.0, 0.9)]
    contrast: Annotated[float, Range(0.0, 1.0)]


@dataclass(frozen=True)
class EvaluateParams:
    """Scoring the classifier on the test split (evaluate stage)."""

    top_k: Annotated[int, Range(2, 100)]
    batch_size: BatchSize
    calibration_bins: Annotated[int, Range(2, 100)]


@dataclass(frozen=True)
class RegistryParams:
    """The MLflow model registry entry evaluate makes for each new classifier."""

    enabled: bool
    model_name: Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*", "a registered model name")]
    primary_metric: Literal["accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted"]


@dataclass(frozen=True)
class ExportParams:
    """TFLite models made from model.keras (export stage), each checked against it on the test split."""

    enabled: bool
    formats: list[Literal["float32", "float16", "dynamic_range"]]
    min_agreement: Annotated[float, Range(0.0, 1.0)]


@dataclass(frozen=True)
class AnalyzeParams:
    """The error analysis and its report (analyze stage)."""

    worst_errors: Annotated[int, Range(1, 500)]
    confused_pairs: Annotated[int, Range(1, 500)]
    gradcam: bool


@dataclass(frozen=True)
class TrackingParams:
    """MLflow settings; MLFLOW_TRACKING_URI in the environment overrides the embedded store."""

    experiment: Annotated[str, Pattern(r".+", "a non-empty name")]


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    seed: Annotated[int, Range(0, 2**31 - 1)]
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
    export: ExportParams
    tracking: TrackingParams
    root: Path = dataclasses.field(default=Path("."), metadata={"internal": True})

    def path(self, name: str) -> Path:
        """An entry of ``paths`` resolved against the repository root."""
        return self.root / getattr(self.paths, name)


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
    problems: list[str] = []
    value = _convert(raw, Params, "", problems)
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n{listing}")
    return value


def _convert(value: Any, hint: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against ``hint``; append problems and return the converted value."""
    base, constraints = _unwrap(hint)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(base)):
            return None
        if len(options) > 1:  # the first option the value fits; else one line naming them all
            for option in options:
                tried: list[str] = []
                converted = _convert(value, option, key, tried)
                if not tried:
                    return converted
            problems.append(f"{key}: found {value!r}; allowed: {_describe(hint)}")
            return value
        inner: list[str] = []
        converted = _convert(value, options[0], key, inner)
        problems.extend(f"{p}, or null" if p.startswith(f"{key}:") else p for p in inner)
        return converted
    if value is None:
        problems.append(f"{key}: found null; allowed: {_describe(hint)}")
        return None
    if dataclasses.is_dataclass(base):
        return _convert_section(value, base, key, problems)
    if origin is list:
        return _convert_list(value, hint, key, problems)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            problems.append(f"{key}: found {value!r}; allowed: {_describe(hint)}{_suggest(value, choices)}")
        return value
    if not _has_type(value, base):
        problems.append(f"{key}: found {value!r} ({type(value).__name__}); allowed: {_describe(hint)}")
        return value
    value = float(value) if base is float else int(value) if base is int else value
    for constraint in constraints:
        if isinstance(constraint, Range) and not constraint.contains(value):
            problems.append(f"{key}: found {value!r}; allowed: {_describe(hint)}")
        if isinstance(constraint, Pattern) and not re.fullmatch(constraint.regex, value):
            problems.append(f"{key}: found {value!r}; allowed: {constraint.description}")
    return value


def _convert_section(value: Any, cls: type, key: str, problems: list[str]) -> Any:
    """Check a mapping against a dataclass: unknown keys, missing keys, each field, cross-field rules."""
    where = key or "top level"
    if not isinstance(value, dict):
        problems.append(f"{where}: found {type(value).__name__}; allowed: a mapping with keys {_field_names(cls)}")
        return None
    names = _field_names(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    before = len(problems)
    for unknown in sorted(set(map(str, value)) - set(names)):
        problems.append(
            f"{_join(key, unknown)}: unknown key{_suggest(unknown, names)}; allowed keys: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in value:
            problems.append(f"{_join(key, name)}: missing key; expected {_describe(hints[name])}")
            continue
        kwargs[name] = _convert(value[name], hints[name], _join(key, name), problems)
    if len(problems) > before:
        return None
    section = cls(**kwargs)
    problems.extend(section.check(key) if hasattr(section, "check") else [])
    return section


def _convert_list(value: Any, hint: Any, key: str, problems: list[str]) -> Any:
    """Check a non-empty list element by element; returned as a tuple, so params stay immutable."""
    (item,) = typing.get_args(_unwrap(hint)[0])
    if not isinstance(value, list) or not value:
        problems.append(f"{key}: found {value!r}; allowed: {_describe(hint)}")
        return value
    return tuple(_convert(element, item, f"{key}[{index}]", problems) for index, element in enumerate(value))


def _unwrap(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """Split ``Annotated[T, constraints...]`` into ``T`` and its constraints."""
    if typing.get_origin(hint) is Annotated:
        base, *constraints = typing.get_args(hint)
        return base, tuple(constraints)
    return hint, ()


def _has_type(value: Any, base: Any) -> bool:
    """Strict YAML type check: booleans are not numbers, integers are acceptable floats, whole floats
    acceptable integers."""
    if base is bool:
        return isinstance(value, bool)
    if base is int:  # a whole number written as a float (5e3, 5000.0) is an integer too
        whole = isinstance(value, float) and value.is_integer()
        return (isinstance(value, int) and not isinstance(value, bool)) or whole
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, base)


def _describe(hint: Any) -> str:
    """What a type hint allows, in words."""
    base, constraints = _unwrap(hint)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        nullable = ", or null" if len(options) < len(typing.get_args(base)) else ""
        return ", or ".join(_describe(option) for option in options) + nullable
    if origin is Literal:
        choices = typing.get_args(base)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(repr(c) for c in choices)
    if dataclasses.is_dataclass(base):
        return f"a mapping with keys {_field_names(base)}"
    if origin is list:
        return f"a non-empty list, each {_describe(typing.get_args(base)[0])}"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
    for constraint in constraints:
        if isinstance(constraint, Range):
            words += " " + constraint.describe()
        if isinstance(constraint, Pattern):
            words = constraint.description
    return words


def _suggest(word: Any, choices: typing.Iterable[Any]) -> str:
    """A 'did you mean' clause for the closest choice, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _field_names(cls: type) -> list[str]:
    """The params.yaml keys of a section (internal fields excluded)."""
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
