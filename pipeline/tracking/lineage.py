"""Lineage between stage runs: DVC content hashes and upstream run ids on every MLflow run.

``runs.stage_run`` calls ``log_inputs`` as a stage's run opens and ``log_outputs`` once its metrics JSON is
written. Each run then carries ``dvc.dep.<path>`` / ``dvc.out.<path>`` tags (DVC's own hashes, as in
dvc.lock), ``upstream.<stage>`` tags (the run id in ``metrics/<stage>.json`` of every stage whose outs it
reads: that file travels with the data, so a skipped or restored stage still names the run that made it),
and an MLflow dataset input per data dep.

``headstart lineage`` prints that chain for the current workspace::

    headstart lineage                     # from the run in metrics/evaluate.json
    headstart lineage --stage train_head  # from the run in metrics/train_head.json
    headstart lineage --run <run id>      # from any stage run, an old one too
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import posixpath
import re
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.core import config, files
from pipeline.core.config import Params
from pipeline.core.errors import UserError, run_cli
from pipeline.tracking import store

PROG = "python -m pipeline.tracking.lineage"
DEP_PREFIX = "dvc.dep."
OUT_PREFIX = "dvc.out."
UPSTREAM_PREFIX = "upstream."
DEFAULT_STAGE = "evaluate"
CODE_SUFFIXES = (".py",)  # deps that are code, not data: git.commit covers them, no dataset input
_TAG_KEY_REFUSED = re.compile(r"[^/\w.\- ]")  # MLflow tag keys: word characters, / . - and space
_MAX_TAG_KEY = 250


# --------------------------------------------------------------------------------------------
# Recording (called by runs.stage_run inside a stage's run).
# --------------------------------------------------------------------------------------------


def log_inputs(mlflow: Any, stage: str, params: Params) -> None:
    """Tag the active run with its deps' DVC hashes and upstream run ids; log its data deps as datasets.

    Outside a DVC repository, or for a stage that dvc.yaml does not declare, nothing is logged.

    Args:
        mlflow: the ``mlflow`` module, with the stage's run active.
        stage: the stage name, as in dvc.yaml.
        params: the loaded params (repository root, metrics folder).
    """
    with _dvc_stage(params.root, stage) as (repo, found):
        if found is None:
            return
        hashes = hash_entries(_file_deps(found))
        producers = _producers(repo, found)
    upstream = {
        name: run_id for name in sorted(set(producers.values())) if (run_id := read_run_id(params, name)) is not None
    }
    mlflow.set_tags(
        {
            **{tag_key(DEP_PREFIX, path): value for path, value in hashes.items()},
            **{UPSTREAM_PREFIX + name: run_id for name, run_id in upstream.items()},
        }
    )
    data = [path for path in hashes if not path.endswith(CODE_SUFFIXES)]
    if data:
        mlflow.log_inputs(
            datasets=[dvc_dataset(path, hashes[path]) for path in data],
            contexts=[stage] * len(data),
            tags_list=[_producer_tags(producers.get(path), upstream) for path in data],
        )


def log_outputs(mlflow: Any, stage: str, params: Params) -> None:
    """Tag the active run with its outs' DVC hashes (call it after the metrics JSON is written).

    Args:
        mlflow: the ``mlflow`` module, with the stage's run active.
        stage: the stage name, as in dvc.yaml.
        params: the loaded params.
    """
    with _dvc_stage(params.root, stage) as (_, found):
        if found is None:
            return
        hashes = hash_entries(found.outs)
    mlflow.set_tags({tag_key(OUT_PREFIX, path): value for path, value in hashes.items()})


def hash_entries(entries: Iterable[Any]) -> dict[str, str]:
    """DVC's content hash of each dep or out that exists, by its path as written in dvc.yaml.

    Args:
        entries: DVC ``Output`` or ``Dependency`` objects of one stage.

    Returns:
        ``{path: md5}``, ``<md5>.dir`` for a folder (DVC's tree hash), as in dvc.lock.
    """
    return {entry.def_path: entry.get_hash().value for entry in entries if entry.exists}


def tag_key(prefix: str, path: str) -> str:
    """The MLflow tag key for a path: characters MLflow refuses in keys become ``_``."""
    return (prefix + _TAG_KEY_REFUSED.sub("_", posixpath.normpath(path)))[:_MAX_TAG_KEY]


def dvc_dataset(path: str, digest: str) -> Any:
    """An MLflow dataset that stands for a DVC-tracked file or folder: metadata only, digest its DVC hash."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    source = get_dataset_source_from_json(json.dumps({"uri": path}), source_type="local")
    return MetaDataset(source, name=path, digest=digest)  # type: ignore[abstract]  # profile is optional at runtime


def read_run_id(params: Params, stage: str) -> str | None:
    """The MLflow run id a stage's metrics JSON names, or None when there is none (or it has no id)."""
    try:
        return files.read_json(store.metrics_file(params, stage))["mlflow"]["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _dvc_stage(root: Path, stage: str) -> Iterator[tuple[Any, Any]]:
    """DVC's repository at ``root`` and its pipeline stage ``stage``; ``(None, None)`` when either is missing."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        yield None, None
        return
    with repo:
        try:
            found = next((s for s in _pipeline_stages(repo) if s.addressing == stage), None)
        except DvcException as error:  # an invalid dvc.yaml: the stage still runs, without lineage
            print(f"lineage: not recorded, dvc.yaml could not be read: {error}", file=sys.stderr)
            found = None
        yield repo, found


def _pipeline_stages(repo: Any) -> list[Any]:
    """The stages of the repository's dvc.yaml files, in file order (``.dvc`` files left out)."""
    from dvc.stage import PipelineStage

    return [stage for stage in repo.index.stages if isinstance(stage, PipelineStage)]


def _file_deps(stage: Any) -> list[Any]:
    """A stage's file and folder deps (params are logged as MLflow params, not hashed here)."""
    from dvc.dependency.param import ParamsDependency

    return [dep for dep in stage.deps if not isinstance(dep, ParamsDependency)]


def _producers(repo: Any, stage: Any) -> dict[str, str]:
    """``{dep path: name of the pipeline stage whose out holds it}`` for the deps another stage makes.

    DVC's pipeline graph gives the upstream stages (an edge wherever a dep is, lies in or holds an out).
    """
    from dvc.stage import PipelineStage

    producers: dict[str, str] = {}
    for upstream in repo.index.graph.successors(stage):
        if not isinstance(upstream, PipelineStage):
            continue
        for dep in _file_deps(stage):
            if any(_overlap(dep.fs_path, out.fs_path) for out in upstream.outs):
                producers[dep.def_path] = upstream.name
    return producers


def _overlap(first: str, second: str) -> bool:
    """Whether one path is the other or lies inside it."""
    a, b = PurePosixPath(first), PurePosixPath(second)
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _producer_tags(producer: str | None, upstream: dict[str, str]) -> dict[str, str] | None:
    """A dataset input's tags: the stage that made the data and, when known, its run."""
    if producer is None:
        return None
    tags = {"upstream.stage": producer}
    if producer in upstream:
        tags["upstream.run_id"] = upstream[producer]
    return tags


# --------------------------------------------------------------------------------------------
# Reading the chain back (headstart lineage).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRunRecord:
    """What one stage run recorded about its inputs and outputs."""

    run_id: str
    stage: str
    status: str
    start_time_ms: int
    commit: str
    dirty: bool
    deps: dict[str, str]
    outs: dict[str, str]
    upstream: dict[str, str]

    @classmethod
    def from_run(cls, run: Any) -> StageRunRecord:
        """Read an MLflow run's stage, status and lineage tags."""
        tags = run.data.tags
        return cls(
            run_id=run.info.run_id,
            stage=tags.get("stage", "?"),
            status=run.info.status,
            start_time_ms=run.info.start_time or 0,
            commit=tags.get("git.commit", ""),
            dirty=tags.get("git.dirty") == "true",
            deps=_strip(tags, DEP_PREFIX),
            outs=_strip(tags, OUT_PREFIX),
            upstream=_strip(tags, UPSTREAM_PREFIX),
        )


@dataclass
class Chain:
    """A stage run and every run upstream of it, each once, with what does not add up."""

    runs: list[StageRunRecord]
    missing: dict[str, str] = field(default_factory=dict)  # run id → stage of upstream runs not in the store


def read_chain(client: Any, run_id: str) -> Chain:
    """Follow ``upstream.<stage>`` tags from a run, breadth first.

    Args:
        client: an ``mlflow.MlflowClient`` of the tracking store.
        run_id: the run to start from.

    Returns:
        The runs reached (the first is ``run_id``'s) and the upstream ids the store does not hold.

    Raises:
        UserError: ``run_id`` itself is not in the store.
    """
    first = _get_run(client, run_id)
    if first is None:
        raise UserError(f"run {run_id} is not in the tracking store {client.tracking_uri}")
    chain = Chain([StageRunRecord.from_run(first)])
    seen, queue = {run_id}, [chain.runs[0]]
    while queue:
        for stage, upstream_id in sorted(queue.pop(0).upstream.items()):
            if upstream_id in seen:
                continue
            seen.add(upstream_id)
            found = _get_run(client, upstream_id)
            if found is None:
                chain.missing[upstream_id] = stage
                continue
            chain.runs.append(StageRunRecord.from_run(found))
            queue.append(chain.runs[-1])
    return chain


def find_problems(chain: Chain, locked: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """What does not add up in a chain, per run id.

    Args:
        chain: from ``read_chain``.
        locked: ``{stage: {out path: hash}}`` of the current dvc.lock.

    Returns:
        For each run with problems: an out that differs from dvc.lock (stale: the workspace holds
        another run's output), a dep whose hash differs from the out its upstream run recorded, an
        upstream run the store does not hold.
    """
    by_id = {run.run_id: run for run in chain.runs}
    problems: dict[str, list[str]] = {}
    for run in chain.runs:
        found = problems.setdefault(run.run_id, [])
        for path, value in sorted(run.outs.items()):
            now = locked.get(run.stage, {}).get(path)
            if now is not None and now != value:
                found.append(f"stale: out {path} is {now} in dvc.lock, this run wrote {value}")
        for stage, upstream_id in sorted(run.upstream.items()):
            if upstream_id in chain.missing:
                found.append(f"upstream {stage} run {upstream_id} is not in this tracking store")
                continue
            for path, value in sorted(run.deps.items()):
                wrote = by_id[upstream_id].outs.get(path)
                if wrote is not None and wrote != value:
                    found.append(f"dep {path} was {value}, but {stage} run {upstream_id} wrote {wrote}")
    return {run_id: found for run_id, found in problems.items() if found}


def format_chain(chain: Chain, problems: dict[str, list[str]], order: Sequence[str], code: bool = False) -> str:
    """The chain as text: one block per run, downstream first, deps with the run that wrote them.

    Args:
        chain: from ``read_chain``.
        problems: from ``find_problems``.
        order: stage names in pipeline order (dvc.yaml); runs are listed from the last stage back.
        code: list code deps (Python files) too.
    """
    rank = {stage: index for index, stage in enumerate(order)}
    runs = [chain.runs[0], *sorted(chain.runs[1:], key=lambda r: (-rank.get(r.stage, -1), -r.start_time_ms))]
    by_id = {run.run_id: run for run in runs}
    shown = [
        {path: value for path, value in run.deps.items() if code or not path.endswith(CODE_SUFFIXES)} for run in runs
    ]
    width = max((len(path) for run, deps in zip(runs, shown, strict=True) for path in [*deps, *run.outs]), default=0)
    lines: list[str] = []
    for run, deps in zip(runs, shown, strict=True):
        started = datetime.datetime.fromtimestamp(run.start_time_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
        commit = f"  git {run.commit[:10]}{' (dirty)' if run.dirty else ''}" if run.commit else ""
        lines.append(f"{run.stage:<11} {run.run_id}  {run.status:<8}  {started}{commit}")
        if not (run.deps or run.outs):
            lines.append("  (no lineage tags: recorded before lineage tracking)")
        lines.extend(
            f"  dep  {path:<{width}}  {value:<36}{_written_by(path, run, by_id)}"
            for path, value in sorted(deps.items())
        )
        lines.extend(f"  out  {path:<{width}}  {value}" for path, value in sorted(run.outs.items()))
        lines.extend(f"  ! {problem}" for problem in problems.get(run.run_id, []))
    return "\n".join(lines)


def locked_state(root: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The pipeline's stage names in dvc.yaml order and ``{stage: {out path: hash}}`` from dvc.lock."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            stages = _pipeline_stages(repo)
            return (
                [stage.name for stage in stages],
                {
                    stage.name: {out.def_path: out.hash_info.value for out in stage.outs if out.hash_info}
                    for stage in stages
                },
            )
    except NotDvcRepoError:
        return [], {}
    except DvcException as error:
        raise UserError(f"dvc.yaml or dvc.lock could not be read: {error}") from None


def start_run_id(params: Params, order: Sequence[str], stage: str | None) -> str:
    """The run id in ``metrics/<stage>.json``: the given stage's, else evaluate's, else the last stage's that has one.

    Raises:
        UserError: no such metrics JSON (the stage has not run in this workspace).
    """
    if stage is not None:
        run_id = read_run_id(params, stage)
        if run_id is None:
            raise UserError(
                f"{store.metrics_file(params, stage)} names no MLflow run: "
                f"stage {stage!r} has not run in this workspace (dvc repro {stage})"
            )
        return run_id
    for name in [DEFAULT_STAGE, *reversed(order)]:
        if (run_id := read_run_id(params, name)) is not None:
            return run_id
    raise UserError(f"no stage has written its metrics JSON under {params.path('metrics')} yet: run `dvc repro` first")


def parse_arguments(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    """The command line of ``headstart lineage``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print the stage runs that produced a run's inputs, back to download, with the DVC hashes "
        "of their deps and outs. Run it from the repository root (it reads params.yaml).",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--run", help="an MLflow run id of a stage run")
    start.add_argument(
        "--stage",
        help=f"start from the run in metrics/<stage>.json (default: {DEFAULT_STAGE}, else the last stage that has run)",
    )
    parser.add_argument("--code", action="store_true", help="list code deps (Python files) too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> None:
    """Print the lineage chain of a stage run in this workspace's tracking store."""
    args = parse_arguments(argv, prog)
    params = config.load()
    order, locked = locked_state(params.root)
    run_id = args.run or start_run_id(params, order, args.stage)
    uri = store.tracking_uri(params)
    store.check_reachable(uri, params)
    _check_store_exists(uri)
    import mlflow  # slow: imported once the arguments are known to be usable

    chain = read_chain(mlflow.MlflowClient(uri), run_id)
    print(f"lineage of {chain.runs[0].stage} run {run_id} ({uri})")
    print(format_chain(chain, find_problems(chain, locked), order, code=args.code))


def _check_store_exists(uri: str) -> None:
    """An embedded store that does not exist holds no runs (and MLflow would create an empty one)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite" and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"the MLflow store {uri} does not exist: no stage has run with it")


def _get_run(client: Any, run_id: str) -> Any | None:
    """The run, or None when the store does not hold it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _strip(tags: dict[str, str], prefix: str) -> dict[str, str]:
    """The tags under a prefix, keyed by the rest of their key."""
    return {key.removeprefix(prefix): value for key, value in tags.items() if key.startswith(prefix)}


def _written_by(path: str, run: StageRunRecord, by_id: dict[str, StageRunRecord]) -> str:
    """``  ← <stage> <run id>`` of the upstream run whose out holds a dep, else nothing."""
    for stage, upstream_id in sorted(run.upstream.items()):
        upstream = by_id.get(upstream_id)
        if upstream is not None and any(_overlap(path, out) for out in upstream.outs):
            return f"  ← {stage} {upstream_id}"
    return ""


if __name__ == "__main__":
    run_cli(main)
