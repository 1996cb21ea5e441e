"""Lines a worker writes to stdout/stderr, logged by the server.

A worker already writes its log lines in Triton's format (backends/worker/logfmt.py):

    I1124 21:00:00.123456 4242 model.py:12] "message"

Logging such a line as the message of a server line would nest it in a second set of quotes. Like
Triton, which prints a Python model's `pb_utils.Logger` lines as its own, we take the line apart
and log it as a record of its own: the worker's level, time, pid, file and line, and the message
unquoted, so that it comes out in whatever format the server uses (default, ISO8601, json). Any
other output (a `print`, a traceback) is logged as it is, naming the instance it came from.
"""
from __future__ import annotations

import datetime
import json
import logging
import re

_LINE = re.compile(
    r"^(?P<letter>[IWEV])(?P<month>\d\d)(?P<day>\d\d) (?P<clock>\d\d:\d\d:\d\d\.\d{6}) (?P<pid>\d+) "
    r"(?P<file>[^\s:]+):(?P<line>\d+)\] (?P<message>.*)$"
)
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "V": logging.DEBUG}


def _created(match: re.Match[str]) -> float | None:
    now = datetime.datetime.now()
    try:
        clock = datetime.datetime.strptime(match["clock"], "%H:%M:%S.%f").time()
        day = datetime.date(now.year, int(match["month"]), int(match["day"]))
    except ValueError:
        return None
    return datetime.datetime.combine(day, clock).timestamp()


def _message(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text[1:-1]
        if isinstance(value, str):
            return value
    return text


def record_for(logger: logging.Logger, label: str, text: str) -> logging.LogRecord | None:
    """The record of a worker's own log line, or None when `text` is not one."""
    match = _LINE.match(text)
    if match is None:
        return None
    record = logger.makeRecord(logger.name, _LEVELS[match["letter"]], match["file"], int(match["line"]),
                               "%s", (_message(match["message"]),), None, extra={"worker": label})
    record.process = int(match["pid"])
    created = _created(match)
    if created is not None:
        record.created = created
        record.msecs = (created % 1) * 1000
    return record


def forward(logger: logging.Logger, label: str, what: str, text: str) -> None:
    """Log one line of a worker's output (`what`: stdout or stderr)."""
    record = record_for(logger, label, text)
    if record is None:
        logger.info("[%s] %s: %s", label, what, text, extra={"worker": label}, stacklevel=2)
    elif logger.isEnabledFor(record.levelno):
        logger.handle(record)


__all__ = ["forward", "record_for"]
