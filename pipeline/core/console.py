"""What the pipeline prints: one line per phase, progress bars and real warnings, not the libraries' chatter.

TensorFlow prints INFO lines when it loads (oneDNN, CPU instruction sets, an absl notice, graph
optimiser sessions) and MLflow its database migrations and artifact download bars; none of them needs a
user's attention. ``quiet_libraries`` (called when the ``pipeline`` package is imported, because TensorFlow
must not be loaded before it) keeps them out: TensorFlow's C++ log level set to warnings, MLflow's logging to
warnings, and the lines TensorFlow writes while it loads, before its log level applies, dropped
(INFO lines only; its warnings and errors pass). ``HEADSTART_VERBOSE=1`` turns all of this off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import IO, Any

VERBOSE_ENV = "HEADSTART_VERBOSE"
# absl's one-time notice, written before the first native log line of each library that links it: at
# import where TensorFlow has something to say then (oneDNN on), else before the first later line (a refused
# decode's warning on a CPU where oneDNN is off). It tells the user nothing wherever it comes.
_ABSL_NOTICE = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called")
# Lines TensorFlow's native code writes before its log level applies: INFO records.
_LOAD_NOISE = re.compile(r"^I\d{4} \d")
# TensorFlow's Python warning for models built one after another, which a hyperparameter search does on purpose.
_RETRACING = "triggered tf.function retracing"


def verbose() -> bool:
    """Whether ``HEADSTART_VERBOSE`` asks for the libraries' full output."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def quiet_libraries() -> None:
    """Keep TensorFlow's and MLflow's start-up INFO lines off the console, unless ``verbose()``.

    Only environment defaults and an import hook: nothing is imported here. Values already in the
    environment win (``TF_CPP_MIN_LOG_LEVEL=0`` brings TensorFlow's INFO lines back on its own).
    """
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # warnings and errors
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    logging.getLogger("tensorflow").addFilter(_drop_retracing)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


def _drop_retracing(record: logging.LogRecord) -> bool:
    return _RETRACING not in record.getMessage()


@contextlib.contextmanager
def quiet_lines(drop: re.Pattern[str]) -> Iterator[IO[str]]:
    """``filtered_stderr`` for lines a library prints that tell the user nothing (nothing filtered when
    ``verbose()``); yields the stream for live output."""
    if verbose():
        yield sys.stderr
    else:
        with filtered_stderr(drop) as live:
            yield live


@contextlib.contextmanager
def filtered_stderr(drop: re.Pattern[str]) -> Iterator[IO[str]]:
    """Capture what is written to file descriptor 2 in the block (by native code or Python); afterwards
    write it out without the lines ``drop`` matches, nor absl's notice that precedes a library's first line.

    Yields:
        A text stream on the real standard error, for output that must appear while the block runs
        (a progress bar).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    live = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield live
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            live.close()
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [
                line for line in text.splitlines(keepends=True) if not (drop.match(line) or _ABSL_NOTICE.match(line))
            ]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds one top-level module with the normal finders and loads it with ``_LOAD_NOISE`` dropped."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the normal finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """Runs the module's own loader with ``_LOAD_NOISE`` dropped, then hands the module back to it."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # anything else a loader offers (resources, source...)
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with filtered_stderr(_LOAD_NOISE):
            self.loader.exec_module(module)
