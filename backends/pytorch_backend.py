"""The pytorch backend: TorchScript (`model.pt`) and torch.export / AOTInductor archives (`model.pt2`).

One model per worker process. torch is imported only here, when a worker serves such a model.

Zero copy on the way in: the request's input arrays are read-only views onto shared memory and
`torch.from_numpy` wraps them as they are. torch warns about non-writable arrays because it cannot
mark the tensor read-only; we silence that one warning in this worker and never write into inputs
(the model gets them under `torch.inference_mode()`/`no_grad()`, and an in-place op on an input is
the model's bug, which would corrupt only this batch's input memory). On the way out, CPU outputs
become numpy arrays with `Tensor.numpy()` (no copy) that the worker writes to shared memory once.
GPU inputs are copied to the device and outputs back to the host (the server's output tensors
live in host shared memory).

No auto-complete (Triton's PyTorch backend cannot either): the config lists inputs and outputs.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tritonpy.backends import config as cfg
from tritonpy.backends import pytorch_naming as ptc
from tritonpy.backends.array_backend import ArrayBackend
from tritonpy.backends.base import BackendError
from tritonpy.backends.frameworks import cpu_threads, require
from tritonpy.proto import dtypes
from tritonpy.proto.messages import ErrorCode

log = logging.getLogger("tritonpy.backends.pytorch")

AOTI_PLATFORM = "torch_aoti"


def _model_path(config: dict[str, Any], version_dir: Path) -> Path:
    platform = str(config.get("platform") or "")
    default = "model.pt2" if platform == AOTI_PLATFORM else "model.pt"
    path = cfg.model_file(config, version_dir, default)
    if not path.exists():
        raise BackendError(f"unable to find '{path}'", ErrorCode.NOT_FOUND)
    return path


class PyTorchBackend(ArrayBackend):
    name = "pytorch"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        torch = require("torch")
        self._torch = torch
        # Inputs are read-only shared-memory views handed to torch without a copy (see module doc).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self._opts = ptc.options(
            self.config,
            cpu_threads=cpu_threads("", cfg.total_instances(self.config), "INTRA_OP_THREAD_COUNT"),
        )
        self._check_types()
        self._device = self._choose_device()
        self._apply_runtime_options()
        path = _model_path(self.config, self.version_dir)
        self._model, forward_args = self._load(path)
        self._order = ptc.input_order(self._input_names, forward_args)
        self._out_index = ptc.output_indices(self._output_names)
        self._bf16_inputs = {
            e["name"] for e in self.config["input"] if e.get("data_type") == "TYPE_BF16"
        }
        log.info(
            "pytorch model '%s' from %s on %s: %d intra-op threads, inference_mode=%s",
            self.model_name, path.name, self._device, self._opts.intra_op_threads, self._opts.inference_mode,
        )

    # -- loading ---------------------------------------------------------------------------

    def _check_types(self) -> None:
        if not self._input_names or not self._output_names:
            raise BackendError(
                "the pytorch backend cannot auto-complete a configuration: list every input and output "
                "(name, data_type, dims) in config.pbtxt",
                ErrorCode.INVALID_ARG,
            )
        for key in ("input", "output"):
            for entry in self.config[key]:
                if entry.get("data_type") == "TYPE_STRING":
                    raise BackendError(
                        f"{key} '{entry.get('name')}': TYPE_STRING tensors are not supported by tritonpy's "
                        "pytorch backend",
                        ErrorCode.UNSUPPORTED,
                    )

    def _choose_device(self) -> Any:
        torch = self._torch
        if self.kind == "KIND_GPU":
            if not torch.cuda.is_available():
                raise BackendError(
                    f"instance kind KIND_GPU needs CUDA, but torch {torch.__version__} reports no usable CUDA device "
                    "(a CPU-only torch build, or no GPU/driver); use KIND_CPU or install a CUDA build of torch",
                    ErrorCode.UNAVAILABLE,
                )
            if self.device_id >= torch.cuda.device_count():
                raise BackendError(
                    f"GPU {self.device_id} requested but torch sees {torch.cuda.device_count()} device(s)",
                    ErrorCode.UNAVAILABLE,
                )
            return torch.device(f"cuda:{self.device_id}")
        return torch.device("cpu")

    def _apply_runtime_options(self) -> None:
        torch, opts = self._torch, self._opts
        torch.set_num_threads(opts.intra_op_threads)
        if opts.inter_op_threads > 0:
            try:
                torch.set_num_interop_threads(opts.inter_op_threads)
            except RuntimeError as exc:  # only settable before the first parallel work
                log.warning("cannot set INTER_OP_THREAD_COUNT: %s", exc)
        torch._C._set_graph_executor_optimize(not opts.disable_optimized_execution)
        if opts.enable_jit_executor is not None:
            torch._C._jit_set_profiling_executor(opts.enable_jit_executor)
        if opts.enable_jit_profiling is not None:
            torch._C._jit_set_profiling_mode(opts.enable_jit_profiling)
        if opts.disable_cudnn:
            torch.backends.cudnn.enabled = False

    def _load(self, path: Path) -> tuple[Any, list[str] | None]:
        """(callable model, forward argument names or None when the file does not say)."""
        torch = self._torch
        is_archive = path.suffix == ".pt2" or self.config.get("platform") == AOTI_PLATFORM
        try:
            if not is_archive:
                module = torch.jit.load(str(path), map_location=self._device)
                module.eval()
                args = [a.name for a in module.forward.schema.arguments][1:]
                return module, args
            return self._load_archive(path)
        except BackendError:
            raise
        except Exception as exc:  # torch raises many types for unreadable files
            raise BackendError(f"failed to load '{path.name}' with torch {torch.__version__}: {exc}") from exc

    def _load_archive(self, path: Path) -> tuple[Any, list[str] | None]:
        """A torch.export archive (ExportedProgram), else an AOTInductor package."""
        torch = self._torch
        try:
            program = torch.export.load(str(path))
        except Exception as export_exc:  # noqa: BLE001 - not an ExportedProgram (any error): try AOTInductor
            try:
                runner = torch._inductor.aoti_load_package(str(path))
            except Exception as aoti_exc:
                raise BackendError(
                    f"'{path.name}' is neither a torch.export archive ({export_exc}) nor an AOTInductor package "
                    f"({aoti_exc})"
                ) from aoti_exc
            return runner, None
        module = program.module()
        if self._device.type != "cpu":
            module = module.to(self._device)
        try:
            args = [p for p in inspect.signature(module.forward).parameters]
        except (TypeError, ValueError):
            args = None
        if not args or any(a in ("args", "kwargs") for a in args):
            args = [str(n) for n in program.graph_signature.user_inputs]
        return module, args

    # -- inference -------------------------------------------------------------------------

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        torch = self._torch
        if array.dtype == np.object_:
            raise BackendError(f"input '{name}': string tensors are not supported", ErrorCode.INVALID_ARG)
        tensor = torch.from_numpy(array)
        if name in self._bf16_inputs:
            tensor = tensor.view(torch.bfloat16)
        if self._device.type != "cpu":
            tensor = tensor.to(self._device)
        return tensor

    def _to_numpy(self, name: str, value: Any) -> np.ndarray:
        torch = self._torch
        if not isinstance(value, torch.Tensor):
            raise BackendError(f"output '{name}': the model returned {type(value).__name__}, expected a tensor")
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        if value.dtype == torch.bfloat16:
            bits: np.ndarray = value.view(torch.int16).numpy().view(np.uint16)
            return bits
        array: np.ndarray = value.numpy()
        wanted = self._output_types.get(name)
        if wanted and wanted != "BF16" and dtypes.wire_to_numpy(wanted) != array.dtype:
            raise BackendError(
                f"output '{name}': configuration expects {dtypes.WIRE_TO_CONFIG[wanted]}, "
                f"the model produced {dtypes.WIRE_TO_CONFIG.get(dtypes.numpy_to_wire(array.dtype), str(array.dtype))}"
            )
        return array

    def _pick(self, result: Any, name: str) -> Any:
        if isinstance(result, dict):
            if name not in result:
                raise BackendError(f"output '{name}' is not among the model's outputs ({', '.join(map(str, result))})")
            return result[name]
        items = list(result) if isinstance(result, (tuple, list)) else [result]
        index = self._out_index[name]
        if index >= len(items):
            raise BackendError(f"output '{name}' is element {index} of the model's result, which has {len(items)}")
        return items[index]

    def _infer(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        torch = self._torch
        args = [self._tensor(n, feeds[n]) for n in self._order]
        grad_off = torch.inference_mode() if self._opts.inference_mode else torch.no_grad()
        with grad_off:
            try:
                result = self._model(*args)
            except RuntimeError as exc:
                raise BackendError(f"PyTorch execute failure: {exc}", ErrorCode.INTERNAL) from exc
            arrays = [self._to_numpy(n, self._pick(result, n)) for n in fetch]
        if self._device.type == "cuda" and self._opts.enable_cache_cleaning:
            torch.cuda.empty_cache()
        return arrays

    def finalize(self) -> None:
        self._model = None
        if getattr(self, "_device", None) is not None and self._device.type == "cuda":
            with contextlib.suppress(Exception):
                self._torch.cuda.empty_cache()
