"""The MLflow model registry: every evaluated classifier becomes a version, the best one the champion.

evaluate registers ``model.keras`` as a pyfunc model (``pyfunc_model.py``), a new version of
``registry.model_name`` tagged with what made it (the md5 of the split CSVs and of the model file, the git
commit, the evaluate run) and how it scored. Two aliases: ``candidate`` is always the newest version;
``champion`` moves only to a version strictly better on ``registry.primary_metric`` on the same test split
(the same md5 of ``test.csv``), since scores on different test splits are not comparable. Otherwise the reason
is printed, tagged on the version and recorded in ``metrics/evaluate.json``, and a person decides::

    headstart registry promote 4     # alias champion → version 4
    headstart registry list          # versions, aliases, scores, test splits

The registry is the tracking store's, so it works the same against a remote ``mlflow server``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import config, console
from pipeline.core.errors import UserError, run_cli
from pipeline.data import split

PROG = "python -m pipeline.serving.registry"
# MLflow's own announcement of a registration (the stage prints the version and why it is or is not champion).
_REGISTERED = re.compile(r"^(Successfully registered model|Registered model '.*' already exists|Created version ')")
CANDIDATE = "candidate"
CHAMPION = "champion"
TEST_SPLIT_TAG = "data.test_split.md5"
PROMOTION_TAG = "promotion"
# Tagged on every version; registry.primary_metric is one of the first five.
HEADLINE_METRICS = (
    "accuracy",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "f1_weighted",
    "log_loss",
    "ece",
    "roc_auc",
    "n",
)
RUN_TAGS = ("git.commit", "git.dirty", "params.sha256", "dvc.exp_name")  # copied from the evaluate run


@dataclass(frozen=True)
class Version:
    """A registered version: its number and tags."""

    number: int
    tags: dict[str, str]


@dataclass(frozen=True)
class Decision:
    """Whether a new version becomes the champion, and why (one line for people)."""

    promote: bool
    reason: str


def metric_tag(metric: str) -> str:
    """The version tag holding a test metric."""
    return f"metric.{metric}"


def md5_file(path: Path) -> str:
    """The md5 of a file's bytes: the hash DVC records for it (``dvc.lock``, ``.dir`` listings)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def version_tags(
    params: config.Params, scores: dict[str, Any], run_id: str, run_tags: dict[str, str]
) -> dict[str, str]:
    """The tags of a new version: data and model hashes, code, run, settings and headline metrics.

    Args:
        params: the loaded params.
        scores: ``evaluation.summarize`` of the model on the test split.
        run_id: the evaluate run's id.
        run_tags: the evaluate run's tags (git commit and dirty flag, params hash, DVC experiment).
    """
    splits = params.path("splits")
    tags = {
        TEST_SPLIT_TAG: md5_file(splits / "test.csv"),
        "data.train_split.md5": md5_file(splits / "train.csv"),
        "data.val_split.md5": md5_file(splits / "val.csv"),
        "model.md5": md5_file(params.path("model")),
        "evaluate.run_id": run_id,
        "backbone": params.backbone.name,
        "crop": params.backbone.crop,
        "primary_metric": params.registry.primary_metric,
    }
    tags.update({key: run_tags[key] for key in RUN_TAGS if key in run_tags})
    tags.update({metric_tag(key): repr(float(scores[key])) for key in HEADLINE_METRICS if key in scores})
    return tags


def decide(metric: str, value: float, test_split: str, version: int, champion: Version | None) -> Decision:
    """Whether version ``version`` (``metric`` = ``value`` on test split ``test_split``) replaces ``champion``.

    Only a strictly better score on the same test split promotes; a champion measured on another
    split, or without the metric, is never compared (the reason gives the command to promote by hand).
    """
    if champion is None:
        return Decision(True, f"promoted: first champion ({metric} {value:.4f})")
    by_hand = f"promote by hand if it should serve: {promote_command(version)}"
    theirs = champion.tags.get(TEST_SPLIT_TAG)
    if theirs != test_split:
        return Decision(
            False,
            f"not promoted: champion v{champion.number} was measured on a different test split "
            f"(test.csv md5 {theirs or 'unknown'}, this one {test_split}); scores on different "
            f"splits are not comparable, {by_hand}",
        )
    recorded = champion.tags.get(metric_tag(metric))
    if recorded is None:
        return Decision(False, f"not promoted: champion v{champion.number} has no {metric} tag; {by_hand}")
    ours, best = _format_pair(value, float(recorded))
    if value > float(recorded):
        return Decision(True, f"promoted: {metric} {ours} > champion v{champion.number}'s {best}")
    return Decision(False, f"not promoted: {metric} {ours} ≤ champion v{champion.number}'s {best}")


def _format_pair(a: float, b: float) -> tuple[str, str]:
    """Four decimals, or every digit when four would show two different numbers as equal."""
    short = f"{a:.4f}", f"{b:.4f}"
    return short if short[0] != short[1] or a == b else (repr(a), repr(b))


def promote_command(version: int) -> str:
    """The command that makes ``version`` the champion."""
    return f"headstart registry promote {version}"


def current_champion(client: Any, name: str) -> Version | None:
    """The version the ``champion`` alias points at; None when there is none (or no such model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if CHAMPION not in aliases:
        return None
    found = client.get_model_version(name, str(aliases[CHAMPION]))
    return Version(int(found.version), dict(found.tags))


def register_classifier(
    params: config.Params, scores: dict[str, Any], run_id: str, run_tags: dict[str, str]
) -> dict[str, Any]:
    """Log ``paths.model`` as a pyfunc model in the active run, register it, tag it, set its aliases.

    Args:
        params: the loaded params (``registry``, the paths of the model and the splits, the crop).
        scores: ``evaluation.summarize`` of the model on the test split.
        run_id: the active (evaluate) run's id.
        run_tags: its tags.

    Returns:
        ``{"name", "version", "promoted", "reason"}`` for the metrics JSON.
    """
    import mlflow

    from pipeline.serving import pyfunc_model

    name, metric = params.registry.model_name, params.registry.primary_metric
    settings = {
        "crop": params.backbone.crop,
        "max_image_pixels": params.split.max_image_pixels,
        "batch_size": params.evaluate.batch_size,
    }
    model_uri = pyfunc_model.log_classifier(params.path("model"), params.path("splits") / split.CLASSES_FILE, settings)
    tags = version_tags(params, scores, run_id, run_tags)
    client = mlflow.MlflowClient()
    champion = current_champion(client, name)
    with console.quiet_lines(_REGISTERED):
        number = int(mlflow.register_model(model_uri, name, tags=tags).version)
    client.set_registered_model_alias(name, CANDIDATE, str(number))
    decision = decide(metric, float(scores[metric]), tags[TEST_SPLIT_TAG], number, champion)
    client.set_model_version_tag(name, str(number), PROMOTION_TAG, decision.reason)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, str(number))
    return {"name": name, "version": number, "promoted": decision.promote, "reason": decision.reason}


def describe_entry(entry: dict[str, Any]) -> str:
    """The console's line on a version ``register_classifier`` registered: its name, version and the decision."""
    return f"registered {entry['name']} v{entry['version']} (alias {CANDIDATE}); {entry['reason']}"


def promote(client: Any, name: str, version: int) -> Version | None:
    """Point ``champion`` at ``version`` by hand; returns the previous champion.

    Raises:
        UserError: no such version.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise UserError(f"{name} has no version {version}; see `headstart registry list`") from None
    previous = current_champion(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    at_registration = found.tags.get(PROMOTION_TAG)
    note = f"promoted by hand (at registration: {at_registration})" if at_registration else "promoted by hand"
    client.set_model_version_tag(name, str(version), PROMOTION_TAG, note)
    return previous


def list_versions(client: Any, name: str, metric: str) -> list[str]:
    """One line per version, newest first: aliases, the metric, test split, commit, promotion decision."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases  # search results leave versions' aliases out
    except MlflowException:
        return []
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
    lines = []
    for found in versions:
        tags = found.tags
        named = ",".join(sorted(a for a, v in aliases.items() if str(v) == str(found.version))) or "-"
        score = tags.get(metric_tag(metric))
        fields = [
            f"v{found.version}",
            named,
            f"{metric} {float(score):.4f}" if score else f"{metric} ?",
            f"test {tags.get(TEST_SPLIT_TAG, '?')[:8]}",
            f"commit {tags.get('git.commit', '?')[:8]}",
            tags.get(PROMOTION_TAG, ""),
        ]
        lines.append("\t".join(fields))
    return lines


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> None:
    """``headstart registry promote VERSION`` / ``list``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The registered classifier's versions and its champion alias.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every version with its aliases, primary metric and test split")
    promoting = commands.add_parser("promote", help="point the champion alias at a version")
    promoting.add_argument("version", type=int, help="the version's number, as `list` shows it (v4: 4)")
    args = parser.parse_args(argv)
    params = config.load()
    client = _client(params)
    name = params.registry.model_name
    if args.command == "promote":
        previous = promote(client, name, args.version)
        was = f" (was v{previous.number})" if previous else ""
        print(f"{name}: champion → v{args.version}{was}")
    else:
        lines = list_versions(client, name, params.registry.primary_metric)
        print("\n".join(lines) if lines else f"{name}: no versions registered yet")


def _client(params: config.Params) -> Any:
    import mlflow

    from pipeline.tracking import store

    uri = store.tracking_uri(params)
    store.check_reachable(uri, params)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


if __name__ == "__main__":
    run_cli(main)
