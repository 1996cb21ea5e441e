"""Logging in Triton's line format, with the settings the logging extension reads and changes at run time.

Default format:  I1124 21:00:00.123456 4242 server.py:88] "message"
ISO8601 format:  2026-11-24T21:00:00Z I 4242 server.py:88] "message"
json format:     {"time": "2026-11-24T21:00:00.123456Z", "level": "INFO", "pid": 4242,
                  "source": "server.py:88", "message": "message"}   (one object per line)
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from tritonpy.core.errors import invalid

_LEVEL_LETTER = {logging.DEBUG: "V", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "E"}


class TritonFormatter(logging.Formatter):
    def __init__(self, fmt_kind: str = "default") -> None:
        super().__init__()
        self.kind = fmt_kind

    def format(self, record: logging.LogRecord) -> str:
        letter = _LEVEL_LETTER.get(record.levelno, "I")
        where = f"{os.path.basename(record.pathname)}:{record.lineno}"
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        if self.kind == "json":
            return _json_line(record, letter, where, msg)
        if self.kind == "ISO8601":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            return f'{stamp} {letter} {record.process} {where}] "{msg}"'
        lt = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        stamp = time.strftime("%m%d %H:%M:%S", lt)
        return f'{letter}{stamp}.{micros:06d} {record.process} {where}] "{msg}"'


_LEVEL_NAME = {"V": "VERBOSE", "I": "INFO", "W": "WARNING", "E": "ERROR"}


def _json_line(record: logging.LogRecord, letter: str, where: str, msg: str) -> str:
    """One JSON object per line (`--log-format json`, beyond Triton), for log pipelines."""
    micros = int((record.created % 1) * 1_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{micros:06d}Z"
    doc = {"time": stamp, "level": _LEVEL_NAME.get(letter, "INFO"), "pid": record.process, "source": where,
           "message": msg}
    worker = getattr(record, "worker", None)
    if worker:
        doc["instance"] = worker
    return json.dumps(doc, ensure_ascii=False)


class _LevelFilter(logging.Filter):
    """Lets each of info/warning/error be switched on and off on its own, as Triton's flags do."""

    def __init__(self, settings: "LogSettings") -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.settings
        if record.levelno >= logging.ERROR:
            return s.log_error
        if record.levelno >= logging.WARNING:
            return s.log_warning
        if record.levelno >= logging.INFO:
            return s.log_info
        return s.log_verbose_level > 0


class LogSettings:
    """The logging extension's settings; applying them reconfigures the `tritonpy` logger."""

    def __init__(self, *, log_file: str = "", log_info: bool = True, log_warning: bool = True,
                 log_error: bool = True, log_verbose_level: int = 0, log_format: str = "default") -> None:
        self.log_file = log_file
        self.log_info = log_info
        self.log_warning = log_warning
        self.log_error = log_error
        self.log_verbose_level = log_verbose_level
        self.log_format = log_format
        self._handler: logging.Handler | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "log_file": self.log_file,
            "log_info": self.log_info,
            "log_warning": self.log_warning,
            "log_error": self.log_error,
            "log_verbose_level": self.log_verbose_level,
            "log_format": self.log_format,
        }

    def update(self, values: dict[str, object]) -> dict[str, object]:
        """Validate every value first, then apply them all (nothing changes on a bad request)."""
        if not isinstance(values, dict):
            raise invalid("log settings must be a JSON object")
        staged: dict[str, object] = {}
        for key, value in values.items():
            if key == "log_file":
                if value not in (None, self.log_file):
                    raise invalid("log_file can not be updated through the logging endpoint")
            elif key in ("log_info", "log_warning", "log_error"):
                if not isinstance(value, bool):
                    raise invalid(f"expect boolean for '{key}'")
                staged[key] = value
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise invalid("expect a non-negative integer for 'log_verbose_level'")
                staged[key] = value
            elif key == "log_format":
                if value not in ("default", "ISO8601"):  # Triton's; json is a start-up choice only
                    raise invalid(f"invalid argument for log_format, got '{value}'; expected 'default' or 'ISO8601'")
                staged[key] = value
            else:
                raise invalid(f"logging setting '{key}' is unknown")
        for key, value in staged.items():
            setattr(self, key, value)
        self.apply()
        return self.as_dict()

    def apply(self) -> None:
        logger = logging.getLogger("tritonpy")
        if self._handler is None:
            if self.log_file:
                self._handler = logging.FileHandler(self.log_file)
            else:
                self._handler = logging.StreamHandler(sys.stderr)
            self._handler.addFilter(_LevelFilter(self))
            logger.addHandler(self._handler)
            logger.propagate = False
        self._handler.setFormatter(TritonFormatter(self.log_format))
        logger.setLevel(logging.DEBUG if self.log_verbose_level > 0 else logging.INFO)

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger("tritonpy").removeHandler(self._handler)
            self._handler.close()
            self._handler = None
