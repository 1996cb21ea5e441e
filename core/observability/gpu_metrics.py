"""GPU metrics through NVML with Triton's names, sampled at scrape time.

Triton polls NVML every `--metrics-interval-ms` in a background thread. Here the values are read
when `/metrics` is scraped instead: an NVML query costs microseconds, a scrape reads fresh values,
and no thread runs when nobody scrapes. So `--metrics-interval-ms` changes nothing here either.

`pynvml` (package `nvidia-ml-py`, in the `gpu` extra) is imported only when GPU metrics are
allowed; without the package, without a driver or without any GPU, `GpuMetrics.open()` returns
None and no `nv_gpu_*` family appears at all (as in Triton on a CPU-only machine).

Units follow Triton: utilisation as a rate in [0, 1], memory in bytes, power in watts and the
energy counter in joules since the server started (NVML reports milliwatts and millijoules).
Every family carries one label, `gpu_uuid`.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

from prometheus_client.metrics_core import Metric

log = logging.getLogger("tritonpy.core.observability.gpu_metrics")

# name -> (type, help) as Triton documents them.
FAMILIES: dict[str, tuple[str, str]] = {
    "nv_gpu_utilization": ("gauge", "GPU utilization rate [0.0 - 1.0)"),
    "nv_gpu_memory_total_bytes": ("gauge", "GPU total memory, in bytes"),
    "nv_gpu_memory_used_bytes": ("gauge", "GPU used memory, in bytes"),
    "nv_gpu_power_usage": ("gauge", "GPU power usage in watts"),
    "nv_gpu_power_limit": ("gauge", "GPU power management limit in watts"),
    "nv_energy_consumption": ("counter", "GPU energy consumption in joules since the Triton Server started"),
}


def _text(value: Any) -> str:
    # Older pynvml releases return bytes for strings, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuMetrics:
    """The NVML devices of this machine and how to turn them into metric families."""

    def __init__(self, nvml: Any, handles: list[tuple[str, Any]]) -> None:
        self.nvml = nvml
        self.handles = handles  # (uuid, handle), in device index order
        # Energy is reported since the server started, so remember where each counter stood.
        self._energy_base: dict[str, float] = {}
        for uuid, handle in handles:
            base = self._call(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            if base is not None:
                self._energy_base[uuid] = float(base)

    @classmethod
    def open(cls, module: str = "pynvml") -> GpuMetrics | None:
        """NVML's devices, or None when the package, the driver or a GPU is missing.
        Never raises: a server without GPU metrics still serves."""
        try:
            nvml = importlib.import_module(module)
        except ImportError:
            log.debug("%s is not installed; no GPU metrics", module)
            return None
        try:
            nvml.nvmlInit()
        # NVML's error classes live in the module loaded above; any of them means "no GPU metrics".
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("NVML unavailable (%s); no GPU metrics", exc)
            return None
        try:
            handles = []
            for index in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                handles.append((_text(nvml.nvmlDeviceGetUUID(handle)), handle))
        except Exception as exc:  # noqa: BLE001 - an NVMLError of any kind: serve without GPU metrics
            log.warning("NVML device enumeration failed (%s); no GPU metrics", exc)
            handles = []
        if not handles:
            cls._shutdown(nvml)
            return None
        log.info("collecting GPU metrics for %d GPU(s)", len(handles))
        return cls(nvml, handles)

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - best effort at shutdown; nothing to do about a failure
            pass

    def close(self) -> None:
        if self.handles:
            self.handles = []
            self._shutdown(self.nvml)

    @staticmethod
    def _call(fn: Any, handle: Any) -> Any:
        """One NVML query; None when the device does not support it (e.g. power on some boards)."""
        try:
            return fn(handle)
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends: the value is left out
            return None

    def families(self) -> list[Metric]:
        """One family per metric with a sample per GPU; a value the GPU cannot report is left out."""
        fams = {name: Metric(name, doc, kind) for name, (kind, doc) in FAMILIES.items()}
        nvml = self.nvml

        def add(name: str, labels: dict[str, str], value: float | None) -> None:
            if value is not None:
                fams[name].add_sample(name, labels, float(value))

        for uuid, handle in self.handles:
            labels = {"gpu_uuid": uuid}
            util = self._call(nvml.nvmlDeviceGetUtilizationRates, handle)
            add("nv_gpu_utilization", labels, util.gpu / 100.0 if util is not None else None)
            mem = self._call(nvml.nvmlDeviceGetMemoryInfo, handle)
            add("nv_gpu_memory_total_bytes", labels, mem.total if mem is not None else None)
            add("nv_gpu_memory_used_bytes", labels, mem.used if mem is not None else None)
            power = self._call(nvml.nvmlDeviceGetPowerUsage, handle)
            add("nv_gpu_power_usage", labels, power / 1000.0 if power is not None else None)
            limit = self._call(nvml.nvmlDeviceGetPowerManagementLimit, handle)
            add("nv_gpu_power_limit", labels, limit / 1000.0 if limit is not None else None)
            energy = self._call(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            if energy is not None and uuid in self._energy_base:
                add("nv_energy_consumption", labels, (float(energy) - self._energy_base[uuid]) / 1000.0)
        return list(fams.values())


__all__ = ["FAMILIES", "GpuMetrics"]
