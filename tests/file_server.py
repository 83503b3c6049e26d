"""A real HTTP server on 127.0.0.1, in a thread of the test process: it serves files from memory, counts the
requests and can break a transfer off halfway (the download tests; no mocks of the HTTP layer)."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    """Serves ``files`` by name; the first ``truncate_first[name]`` requests break off halfway."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.truncate_first: dict[str, int] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        with self.server.lock:
            self.server.hits[name] += 1
            hit = self.server.hits[name]
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404, "not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if hit <= self.server.truncate_first.get(name, 0):
            self.wfile.write(body[: len(body) // 2])  # promise len(body), send half, then close
        else:
            self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        """Keep the test output quiet."""


class LocalServer:
    """A ThreadingHTTPServer in a background thread, stoppable from a test."""

    def __init__(self) -> None:
        self.httpd = _Server()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def files(self) -> dict[str, bytes]:
        return self.httpd.files

    @property
    def truncate_first(self) -> dict[str, int]:
        return self.httpd.truncate_first

    @property
    def hits(self) -> Counter[str]:
        return self.httpd.hits

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def url(self, name: str) -> str:
        return self.base_url + name

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False
