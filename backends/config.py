"""Reading the model configuration the core sends (JSON with protobuf field names).

Protobuf's JSON form writes 64-bit integers as strings ("dims": ["-1", "4"]); Triton shows model
authors numbers. `normalize_config` turns those back into ints once, so every backend (and every
Python model reading `args["model_config"]`) sees `[-1, 4]`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Fields of model_config.proto that are 64-bit integers (alone or repeated), hence strings in JSON.
_INT64_KEYS = frozenset(
    {
        "dims",
        "shape",
        "versions",
        "max_queue_delay_microseconds",
        "default_timeout_microseconds",
        "max_sequence_idle_microseconds",
        "model_version",
        "int32_false_true",
        "count",
        "batch_size",
    }
)


def _to_int(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _INT64_KEYS:
                if isinstance(value, list):
                    value = [_to_int(v) for v in value]
                else:
                    value = _to_int(value)
            out[key] = _walk(value)
        return out
    if isinstance(node, list):
        return [_walk(v) for v in node]
    return node


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with 64-bit integer fields as ints and the usual keys present."""
    result: dict[str, Any] = _walk(config)
    result.setdefault("max_batch_size", 0)
    result["max_batch_size"] = int(result["max_batch_size"] or 0)
    result.setdefault("input", [])
    result.setdefault("output", [])
    return result


def parse_config(config_json: str) -> dict[str, Any]:
    """Parse the core's config JSON (empty text means an empty config)."""
    if not config_json.strip():
        return normalize_config({})
    data = json.loads(config_json)
    if not isinstance(data, dict):
        raise ValueError("model configuration JSON must be an object")
    return normalize_config(data)


def parameters(config: dict[str, Any]) -> dict[str, str]:
    """The config's `parameters` map flattened to `{key: string_value}`."""
    result: dict[str, str] = {}
    for key, value in (config.get("parameters") or {}).items():
        if isinstance(value, dict):
            result[key] = str(value.get("string_value", ""))
        else:
            result[key] = str(value)
    return result


def total_instances(config: dict[str, Any]) -> int:
    """How many instances the config asks for in all (each group's count, default 1 per group)."""
    groups = config.get("instance_group") or []
    if not groups:
        return 1
    total = 0
    for group in groups:
        count = _to_int(group.get("count", 1))
        total += int(count) if isinstance(count, int) and count > 0 else 1
    return max(total, 1)


def model_file(config: dict[str, Any], version_dir: Path, default_name: str) -> Path:
    """The model file inside the version directory (`default_model_filename` or the default)."""
    name = str(config.get("default_model_filename") or default_name)
    return version_dir / name


def io_names(config: dict[str, Any], key: str) -> list[str]:
    return [str(entry.get("name", "")) for entry in config.get(key) or []]
