"""Logging for operators: one line per job event, as text or as JSON lines, on stderr.

A worker logs, at INFO, every job it claims, every step with its duration,
and how the job ended (with the reason when it failed). The job's id, kind
and hostname travel in a context variable, so the step loop in provisioning
needs no job argument, and each thread of a worker pool keeps its own.
Under systemd, stderr goes to journald.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS_ATTR = "kvmvps"
QUIET_LOGGERS = ("paramiko",)  # the LogRecord attribute that carries an event's fields


@dataclass(frozen=True)
class JobTag:
    """Which job a log line is about."""

    job: str
    kind: str
    hostname: str | None = None

    @property
    def label(self) -> str:
        name = f" {self.hostname}" if self.hostname else ""
        return f"job {self.job[:8]} ({self.kind}{name})"


_current: ContextVar[JobTag | None] = ContextVar("kvmvps_job", default=None)


@contextmanager
def job_context(tag: JobTag) -> Iterator[None]:
    """Tag every event logged inside the block (in this thread) with ``tag``."""
    token = _current.set(tag)
    try:
        yield
    finally:
        _current.reset(token)


def event(
    logger: logging.Logger, name: str, text: str, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one event as one line: ``job 3f2a1b2c (create web1): TEXT``.

    ``fields`` (e.g. ``step``, ``seconds``, ``error``) go into JSON lines as
    they are; the job's tag, if any, is added from the context.
    """
    tag = _current.get()
    data: dict[str, Any] = {"event": name, **(asdict(tag) if tag else {}), **fields}
    prefix = f"{tag.label}: " if tag else ""
    logger.log(level, "%s%s", prefix, text, extra={FIELDS_ATTR: data})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``text`` or ``json``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level: int = logging.INFO, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log line of this process to stderr (or ``stream``) in ``fmt``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for chatty in QUIET_LOGGERS:  # a line per SSH connection drowns the job lines
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
