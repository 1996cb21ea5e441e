"""Log lines in Triton's format, written to the worker's stderr (the core captures it).

    I1124 21:00:00.123456 4242 model.py:12] "message"

Level letter, month+day, wall time with microseconds, pid, source file:line, then the message as
a quoted, escaped string (Triton quotes messages so multi-line text stays on one line).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading

_LETTERS = {"INFO": "I", "WARNING": "W", "ERROR": "E", "VERBOSE": "I"}
_lock = threading.Lock()
_verbose_level = 0


def set_verbose(level: int) -> None:
    """Set the server's --log-verbose level; verbose lines are dropped at 0."""
    global _verbose_level
    _verbose_level = int(level)


def format_line(level: str, message: str, filename: str, line: int, *, when: datetime.datetime | None = None) -> str:
    now = when or datetime.datetime.now()
    letter = _LETTERS.get(level.upper(), "I")
    stamp = now.strftime("%m%d %H:%M:%S.%f")
    quoted = json.dumps(str(message), ensure_ascii=False)
    return f"{letter}{stamp} {os.getpid()} {os.path.basename(filename)}:{line}] {quoted}"


def emit(level: str, message: str, filename: str, line: int) -> None:
    """Write one line to stderr (VERBOSE only when the verbose level is on)."""
    if level.upper() == "VERBOSE" and _verbose_level <= 0:
        return
    text = format_line(level, message, filename, line) + "\n"
    with _lock:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


class TritonFormatter(logging.Formatter):
    """Formats the worker's own `logging` records like Triton's log lines."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            level = "ERROR"
        else:
            level = "WARNING" if record.levelno >= logging.WARNING else "INFO"
        message = record.getMessage()
        if record.exc_info:
            message = message + "\n" + self.formatException(record.exc_info)
        when = datetime.datetime.fromtimestamp(record.created)
        return format_line(level, message, record.pathname, record.lineno, when=when)


def configure_worker_logging(verbose: int) -> None:
    """Route `tritonpy.*` loggers in this process to stderr in Triton's format."""
    set_verbose(verbose)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TritonFormatter())
    root = logging.getLogger("tritonpy")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 0 else logging.INFO)
    root.propagate = False
