"""Trace extension settings: global values and per-model overrides, all reported as Triton does.

Values are strings, except trace_level which is a list of strings. An update changes only the keys
it names; for a model, a null value drops the override so the global value applies again.
Every change is handed to core/observability/tracer.py, which records requests while any level is TIMESTAMPS;
`trace_count` counts down as traces are taken, as Triton reports the remaining count.
The opentelemetry mode's own settings (`--trace-config opentelemetry,url=...`, see core/observability/otel.py)
are kept apart in `otel`: they are startup-only and not part of the settings endpoints.
"""
from __future__ import annotations

from typing import Union

from tritonpy.core.observability import otel
from tritonpy.core.observability import tracer as tracing
from tritonpy.core.errors import invalid

_LEVELS = {"OFF", "TIMESTAMPS", "TENSORS"}
# Levels this server records today. Others are refused with a clear message rather than
# silently accepted and never written.
SUPPORTED_LEVELS = {"OFF", "TIMESTAMPS"}
# A setting's value: a string, or the list of trace levels.
Setting = Union[str, list[str]]
_KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")


class TraceSettings:
    def __init__(self, defaults: dict[str, Setting]) -> None:
        self.globals: dict[str, Setting] = defaults
        self.models: dict[str, dict[str, Setting]] = {}
        self.otel: dict[str, str] = {}

    @classmethod
    def from_options(cls, trace_config: dict[str, str]) -> "TraceSettings":
        base: dict[str, Setting] = {
            "trace_file": "",
            "trace_level": ["OFF"],
            "trace_rate": "1000",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_mode": "triton",
        }
        settings = cls(base)
        translated: dict[str, object] = {}
        for key, value in trace_config.items():
            if key in otel.SETTINGS:
                settings.otel[key] = value
                continue
            name = {"file": "trace_file", "level": "trace_level", "rate": "trace_rate", "count": "trace_count",
                    "log-frequency": "log_frequency", "mode": "trace_mode"}.get(key, key)
            translated[name] = [value.upper()] if name == "trace_level" else value
        if translated:
            settings.update("", translated)
        else:
            tracing.configure(settings)
        return settings

    def any_level(self, level: str) -> bool:
        """Whether `level` is on globally or for any model."""
        if level in self.globals["trace_level"]:
            return True
        return any(level in values.get("trace_level", ()) for values in self.models.values())

    def consume_count(self, model: str = "") -> None:
        """One trace was taken: count down `trace_count` where it is set (the model's override, else
        the global value); -1 means unlimited."""
        target = self.models.get(model, {}) if model else {}
        if "trace_count" not in target:
            target = self.globals
        count = int(str(target.get("trace_count", "-1")))
        if count > 0:
            target["trace_count"] = str(count - 1)

    def get(self, model: str = "") -> dict[str, Setting]:
        merged = dict(self.globals)
        if model:
            merged.update(self.models.get(model, {}))
        return {k: (list(v) if isinstance(v, list) else v) for k, v in merged.items()}

    def update(self, model: str, values: dict[str, object]) -> dict[str, Setting]:
        if not isinstance(values, dict):
            raise invalid("trace settings must be a JSON object")
        staged: dict[str, Setting | None] = {}
        for key, value in values.items():
            if key not in _KEYS:
                raise invalid(f"unknown trace setting '{key}'")
            if value is None:
                if not model:
                    raise invalid(f"trace setting '{key}' can only be cleared for a model")
                staged[key] = None
                continue
            staged[key] = self._check(key, value)
        if staged.get("trace_mode") == "opentelemetry":
            try:
                otel.check_settings(self.otel)
            except ValueError as exc:
                raise invalid(str(exc)) from None
        target = self.models.setdefault(model, {}) if model else self.globals
        for key, value in staged.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
        if model and not target:
            self.models.pop(model, None)
        tracing.configure(self)
        return self.get(model)

    @staticmethod
    def _check(key: str, value: object) -> Setting:
        if key == "trace_level":
            given = value if isinstance(value, list) else [value]
            names = [v for v in given if isinstance(v, str)]
            if not given or len(names) != len(given):
                raise invalid("trace_level must be a list of strings")
            levels = [v.upper() for v in names]
            for level in levels:
                if level not in _LEVELS:
                    raise invalid(f"trace_level '{level}' is unknown; expected OFF, TIMESTAMPS or TENSORS")
                if level not in SUPPORTED_LEVELS:
                    raise invalid(
                        f"trace_level '{level}' is not supported by this server yet (only OFF and TIMESTAMPS; "
                        "tensor contents are not traced)"
                    )
            return levels
        if not isinstance(value, str):
            raise invalid(f"trace setting '{key}' must be a string")
        if key in ("trace_rate", "log_frequency"):
            if not value.isdigit():
                raise invalid(f"trace setting '{key}' must be a non-negative integer, got '{value}'")
        if key == "trace_count":
            try:
                count = int(value)
            except ValueError:
                raise invalid(f"trace setting 'trace_count' must be an integer, got '{value}'") from None
            if count < -1:
                raise invalid("trace setting 'trace_count' must be -1 (unlimited) or >= 0")
        if key == "trace_mode" and value not in ("triton", "opentelemetry"):
            raise invalid(f"trace_mode must be 'triton' or 'opentelemetry', got '{value}'")
        return value
