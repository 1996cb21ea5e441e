"""aiohttp's protocol logger, tamed for hostile clients.

aiohttp logs every malformed request (bad header bytes, oversized lines, broken chunking) at ERROR
with a full traceback, after it has already answered 400. A client can send thousands of such
requests a second and flood the log. Here those records become one WARNING line per interval
that says how many were dropped; real server errors still pass through unchanged.
"""
from __future__ import annotations

import logging
import time

from aiohttp.http_exceptions import HttpProcessingError

LOGGER_NAME = "tritonpy.frontends.http.protocol"
INTERVAL_S = 60.0


class ClientErrorFilter(logging.Filter):
    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.suppressed = 0
        self._next_report = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now < self._next_report:
            self.suppressed += 1
            return False
        # Report this one briefly (no traceback), with the count since the last report.
        record.msg = "malformed HTTP request from %s answered %s: %s (%d more since the last report)"
        first_line = (str(exc.message).strip().splitlines() or [""])[0]
        given = record.args if isinstance(record.args, tuple) and record.args else ("?",)
        record.args = (given[0], getattr(exc, "code", 400), first_line, self.suppressed)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self.suppressed = 0
        self._next_report = now + self.interval_s
        return True


def protocol_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
    return logger
