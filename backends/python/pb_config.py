"""`pb_utils.ModelConfig` (what `auto_complete_config` receives and returns) and config look-ups."""
from __future__ import annotations

import copy
import json
from typing import Any

_INPUT_KEYS = ("name", "data_type", "dims", "optional")
_OUTPUT_KEYS = ("name", "data_type", "dims")


class ModelConfig:
    """The model configuration during auto-complete; only a few things may be changed.

    Accepts the config as a dict or as JSON text (Triton passes text). Conflicting changes raise
    ValueError, which fails the model load with that message.
    """

    def __init__(self, model_config: dict[str, Any] | str) -> None:
        given: dict[str, Any] = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._model_config: dict[str, Any] = copy.deepcopy(dict(given))
        self._model_config.setdefault("name", "")
        self._model_config.setdefault("max_batch_size", 0)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])

    @property
    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def as_dict(self) -> dict:
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        max_batch_size = int(max_batch_size)
        if max_batch_size < 0:
            raise ValueError(f"max_batch_size for model '{self._name}' must not be negative, got {max_batch_size}")
        current = int(self._model_config.get("max_batch_size") or 0)
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._name}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._model_config:
                raise ValueError(
                    f"configuration specified scheduling_choice as '{other}', but auto-complete-config "
                    f"function for model '{self._name}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    f"model transaction property in auto-complete-config function for model '{self._name}' "
                    "contains property other than 'decoupled'"
                )
        wanted = bool(transaction_policy_dict.get("decoupled", False))
        current = self._model_config.get("model_transaction_policy")
        if current is not None and "decoupled" in current and bool(current["decoupled"]) != wanted:
            raise ValueError(
                f"trying to change decoupled property in auto-complete-config for model '{self._name}', "
                f"which is already set to {bool(current['decoupled'])}"
            )
        self._model_config["model_transaction_policy"] = {"decoupled": wanted}

    def add_input(self, input: dict) -> None:
        self._add("input", input, _INPUT_KEYS)

    def add_output(self, output: dict) -> None:
        self._add("output", output, _OUTPUT_KEYS)

    def _add(self, kind: str, tensor: dict, allowed: tuple[str, ...]) -> None:
        if not isinstance(tensor, dict):
            raise ValueError(f"add_{kind}() expects a dict, got {type(tensor).__name__}")
        label = tensor.get("name", "")
        extra = [k for k in tensor if k not in allowed]
        if extra:
            raise ValueError(
                f"{kind} '{label}' in auto-complete-config function for model '{self._name}' contains "
                f"property other than {', '.join(repr(k) for k in allowed)}: {', '.join(extra)}"
            )
        for required in ("name", "data_type", "dims"):
            if required not in tensor:
                where = f"{kind} '{label}'" if label else kind
                raise ValueError(
                    f"{where} in auto-complete-config function for model '{self._name}' "
                    f"is missing '{required}' property."
                )
        dims = [int(d) for d in tensor["dims"]]
        for current in self._model_config[kind]:
            if current.get("name") != tensor["name"]:
                continue
            have_type = current.get("data_type", "TYPE_INVALID")
            if have_type not in ("", "TYPE_INVALID") and have_type != tensor["data_type"]:
                raise ValueError(
                    f"unable to load model '{self._name}', configuration expects datatype {have_type} "
                    f"for {kind} '{tensor['name']}', model provides {tensor['data_type']}"
                )
            have_dims = [int(d) for d in current.get("dims") or []]
            if have_dims and have_dims != dims:
                raise ValueError(
                    f"model '{self._name}', tensor '{tensor['name']}': the model expects dims {dims} "
                    f"but the model configuration specifies dims {have_dims}"
                )
            if "optional" in tensor and "optional" in current and bool(current["optional"]) != bool(tensor["optional"]):
                raise ValueError(
                    f"model '{self._name}', tensor '{tensor['name']}': the model expects optional "
                    f"{bool(tensor['optional'])} but the model configuration specifies {bool(current['optional'])}"
                )
            current["data_type"] = tensor["data_type"]
            current["dims"] = dims
            if "optional" in tensor:
                current["optional"] = bool(tensor["optional"])
            return
        entry: dict[str, Any] = {"name": tensor["name"], "data_type": tensor["data_type"], "dims": dims}
        if "optional" in tensor:
            entry["optional"] = bool(tensor["optional"])
        self._model_config[kind].append(entry)


def _find(model_config: dict, key: str, name: str) -> dict | None:
    for entry in model_config.get(key) or []:
        if entry.get("name") == name:
            return entry
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    return _find(model_config, "input", name)


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    return _find(model_config, "output", name)


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    policy = model_config.get("model_transaction_policy") or {}
    return bool(policy.get("decoupled", False))
