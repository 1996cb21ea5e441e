"""Rules of the pytorch backend that depend only on the config: tensor naming, parameters.

Kept apart from the backend (and free of torch) so they are testable without loading a model.

Naming, as Triton's PyTorch backend does it:
- inputs named `<anything>__<i>` (all of them) are positional argument i of `forward`;
  otherwise input names must be `forward`'s argument names, and are passed in that order;
- outputs named `<anything>__<i>` are element i of the returned tuple/list; otherwise output k of
  the config is element k (a single returned tensor is element 0). A returned dict maps by name.
"""
from __future__ import annotations

import dataclasses
import re

from tritonpy.backends import config as cfg
from tritonpy.backends.base import BackendError
from tritonpy.proto.messages import ErrorCode

_INDEXED = re.compile(r"^.+__(\d+)$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def indexed(names: list[str]) -> list[int] | None:
    """The `__<i>` index of every name, or None unless all of them follow the convention."""
    found = [_INDEXED.match(n) for n in names]
    if not names or any(m is None for m in found):
        return None
    return [int(m.group(1)) for m in found if m is not None]


def input_order(names: list[str], forward_args: list[str] | None) -> list[str]:
    """Config input names in the order `forward` takes them.

    With the `__<i>` convention index i decides; otherwise the names must be `forward`'s argument
    names (`forward_args`, without self). A clear INVALID_ARG error otherwise.
    """
    idx = indexed(names)
    if idx is not None:
        if sorted(idx) != list(range(len(names))):
            raise BackendError(
                f"input names following the <name>__<index> convention must use indices 0..{len(names) - 1} "
                f"exactly once, got {', '.join(names)}",
                ErrorCode.INVALID_ARG,
            )
        return [name for _, name in sorted(zip(idx, names))]
    if forward_args is None:
        raise BackendError(
            "input names must follow the <name>__<index> convention (INPUT__0, INPUT__1, ...) because "
            "the model's forward() argument names are not available",
            ErrorCode.INVALID_ARG,
        )
    unknown = [n for n in names if n not in forward_args]
    if unknown:
        raise BackendError(
            f"input '{unknown[0]}' is neither a forward() argument ({', '.join(forward_args) or 'none'}) nor "
            "named by the <name>__<index> convention",
            ErrorCode.INVALID_ARG,
        )
    if len(names) != len(forward_args):
        raise BackendError(
            f"the model's forward() takes {len(forward_args)} input(s) ({', '.join(forward_args)}), "
            f"the configuration lists {len(names)}",
            ErrorCode.INVALID_ARG,
        )
    return [a for a in forward_args if a in names]


def output_indices(names: list[str]) -> dict[str, int]:
    """Output name -> element index of the model's returned tuple."""
    idx = indexed(names)
    if idx is not None:
        return dict(zip(names, idx))
    return {name: k for k, name in enumerate(names)}


def flag(params: dict[str, str], key: str, default: bool) -> bool:
    """A boolean config parameter ("true"/"false", case-insensitive)."""
    text = params.get(key, "").strip().lower()
    if not text:
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BackendError(f"parameter {key} must be true or false, got '{params[key]}'", ErrorCode.INVALID_ARG)


@dataclasses.dataclass(slots=True, frozen=True)
class TorchOptions:
    """The Triton PyTorch-backend parameters we honour (names as in Triton's README)."""

    inference_mode: bool = True
    disable_optimized_execution: bool = False
    enable_cache_cleaning: bool = False
    enable_jit_executor: bool | None = None
    enable_jit_profiling: bool | None = None
    disable_cudnn: bool = False
    intra_op_threads: int = 1
    inter_op_threads: int = 0  # 0: leave torch's default


def options(config: dict, *, cpu_threads: int) -> TorchOptions:
    """Read the parameters; `cpu_threads` is the default intra-op count (CPUs / total instances)."""
    params = cfg.parameters(config)

    def optional(key: str) -> bool | None:
        return flag(params, key, False) if params.get(key, "").strip() else None

    def count(key: str, default: int) -> int:
        text = params.get(key, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError as exc:
            raise BackendError(f"parameter {key} must be an integer, got '{text}'", ErrorCode.INVALID_ARG) from exc
        return value if value > 0 else default

    return TorchOptions(
        inference_mode=flag(params, "INFERENCE_MODE", True),
        disable_optimized_execution=flag(params, "DISABLE_OPTIMIZED_EXECUTION", False),
        enable_cache_cleaning=flag(params, "ENABLE_CACHE_CLEANING", False),
        enable_jit_executor=optional("ENABLE_JIT_EXECUTOR"),
        enable_jit_profiling=optional("ENABLE_JIT_PROFILING"),
        disable_cudnn=flag(params, "DISABLE_CUDNN", False),
        intra_op_threads=count("INTRA_OP_THREAD_COUNT", cpu_threads),
        inter_op_threads=count("INTER_OP_THREAD_COUNT", 0),
    )
