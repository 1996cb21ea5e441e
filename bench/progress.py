"""Progress while the load runs: a live rich status line when rich is installed and stderr is a
terminal, one plain line per window otherwise, nothing with --quiet."""
from __future__ import annotations

import sys
from typing import Any

from .measure import Window


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    def __init__(self, kind: str, mode: str) -> None:
        if kind == "auto":
            kind = "rich" if rich_available() and sys.stderr.isatty() else "plain"
        if kind == "rich" and not rich_available():
            kind = "plain"
        self.kind, self.mode = kind, mode
        self._status: Any = None
        if kind == "rich":
            from rich.console import Console

            self._console = Console(file=sys.stderr)
            self._status = self._console.status("starting")
            self._status.start()

    def _text(self, level: float, trial: int, w: Window) -> str:
        tag = "concurrency" if self.mode == "concurrency" else "request rate"
        lat = sorted(w.latencies_ns)
        p50 = lat[len(lat) // 2] / 1000.0 if lat else 0.0
        return (f"{tag} {level:g}: window {trial}: {w.throughput:,.1f} infer/s, p50 {p50:.0f} µs, "
                f"client cpu {w.cpu_s / w.duration_s if w.duration_s else 0:.0%}"
                + (f", {w.errors} errors" if w.errors else ""))

    def window(self, level: float, trial: int, w: Window) -> None:
        if self.kind == "none":
            return
        text = self._text(level, trial, w)
        if self._status is not None:
            self._status.update(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.kind == "none":
            return
        if self._status is not None:
            self._console.log(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
