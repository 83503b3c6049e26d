"""Sharing results through DVC remotes: push from one repository, pull into a fresh git clone, nothing to rerun.

One tiny run of the whole pipeline (the shared ``tiny_run``, copied) serves both remotes: the default folder remote that
.dvc/config ships, and an S3 remote on a real SeaweedFS server started on 127.0.0.1 by the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from pathlib import Path

import botocore.exceptions
import pytest
import yaml

from projects import Project, TinyRun
from seaweedfs import S3Server, create_client, run_seaweedfs

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_run: TinyRun) -> Project:
    """The whole pipeline run once on tiny data (a copy of the shared run) and committed (dvc.lock, metrics,
    .gitignore files)."""
    project = tiny_run.copy(tmp_path_factory.mktemp("remote"))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "tiny run")
    tracked = set(project.run("git", "ls-files").stdout.splitlines())
    metrics_dir = project.root / project.params["paths"]["metrics"]
    metrics = {p.relative_to(project.root).as_posix() for p in metrics_dir.glob("*.json")}
    assert metrics and metrics | {"dvc.lock"} <= tracked  # cache: false outputs live in git
    assert project.params["paths"]["mlflow_db"] not in tracked  # each machine's own MLflow store
    return project


def locked_outputs(project: Project) -> list[str]:
    """Every stage output dvc.lock records (whatever the stages are)."""
    lock = yaml.safe_load((project.root / "dvc.lock").read_text(encoding="utf-8"))
    return [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]


def digest_outputs(project: Project, outputs: list[str]) -> dict[str, str]:
    """sha256 of every file in ``outputs`` (files or folders), by path relative to the repository."""
    digests = {}
    for output in outputs:
        path = project.root / output
        for file in sorted([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())):
            digests[file.relative_to(project.root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def clone(project: Project, name: str) -> Project:
    """``git clone`` the project into a sibling folder ``name`` (the clone has no DVC cache)."""
    target = project.root.parent / name
    project.run("git", "clone", "-q", str(project.root), str(target))
    return Project(target, project.params)


def assert_nothing_to_rerun(original: Project, copy: Project) -> None:
    """After ``dvc pull``: the clone holds the original's outputs and ``dvc repro`` has nothing to do."""
    outputs = locked_outputs(original)
    assert digest_outputs(copy, outputs) == digest_outputs(original, outputs)
    assert copy.run("dvc", "status").stdout.strip() == UP_TO_DATE
    repro = copy.run("dvc", "repro")
    assert "Running stage" not in repro.stdout, repro.stdout
    stages = yaml.safe_load((original.root / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert all(f"Stage '{stage}' didn't change" in repro.stdout for stage in stages), repro.stdout
    assert json.loads(copy.run("dvc", "metrics", "diff", "HEAD", "--json").stdout) == {}
    assert copy.run("git", "status", "--porcelain").stdout == ""


def assert_missing_before_pull(original: Project, copy: Project) -> None:
    """A fresh clone has the code, params, dvc.lock and metrics (git) but not the outputs DVC caches."""
    assert (copy.root / "dvc.lock").is_file() and (copy.root / original.params["paths"]["metrics"]).is_dir()
    missing = [out for out in locked_outputs(original) if not (copy.root / out).exists()]
    assert missing and copy.run("dvc", "status").stdout.strip() != UP_TO_DATE


def test_the_default_folder_remote_shares_the_results_with_a_clone_beside_it(trained: Project) -> None:
    trained.run("dvc", "push")  # no -r: the default remote from the shipped .dvc/config
    remote = trained.root.parent / "headstart-remote"  # url = ../../headstart-remote, relative to .dvc/
    assert any(p.is_file() for p in (remote / "files" / "md5").rglob("*"))

    copy = clone(trained, "clone-folder")  # a sibling, so the same relative url names the same folder
    assert_missing_before_pull(trained, copy)
    copy.run("dvc", "pull")
    assert_nothing_to_rerun(trained, copy)


def set_credentials(project: Project, s3: S3Server) -> None:
    """Give the ``team`` remote its keys in .dvc/config.local (git-ignored), as each teammate does."""
    project.run("dvc", "remote", "modify", "--local", "team", "access_key_id", s3.access_key_id)
    project.run("dvc", "remote", "modify", "--local", "team", "secret_access_key", s3.secret_access_key)


def test_an_s3_remote_on_seaweedfs_shares_the_results_with_a_clone(trained: Project, tmp_path: Path) -> None:
    with run_seaweedfs(tmp_path / "seaweedfs") as s3:
        trained.run("dvc", "remote", "add", "team", f"s3://{s3.bucket}/dvc")
        trained.run("dvc", "remote", "modify", "team", "endpointurl", s3.endpoint_url)
        set_credentials(trained, s3)
        trained.run("git", "commit", "-qm", "team remote", ".dvc/config")
        assert s3.secret_access_key not in trained.run("git", "show", "HEAD:.dvc/config").stdout
        assert trained.run("git", "status", "--porcelain").stdout == ""  # config.local stays out of git

        trained.run("dvc", "push", "-r", "team")
        listed = create_client(s3).list_objects_v2(Bucket=s3.bucket, Prefix="dvc/files/md5/")
        assert listed["KeyCount"] > 0
        with pytest.raises(botocore.exceptions.ClientError):  # the keys matter: a wrong secret is refused
            create_client(dataclasses.replace(s3, secret_access_key="not-the-secret")).list_buckets()

        copy = clone(trained, "clone-s3")
        assert_missing_before_pull(trained, copy)
        set_credentials(copy, s3)
        copy.run("dvc", "pull", "-r", "team")
        assert_nothing_to_rerun(trained, copy)
        port = int(s3.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the server stopped with the test
