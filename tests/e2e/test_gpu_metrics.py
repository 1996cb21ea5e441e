"""GPU metrics through NVML: a stand-in `pynvml` module proves names, labels, units and values;
a real server on this GPU-less machine shows no nv_gpu_* family; the `gpu` test checks the real NVML."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.model_builders import FP32_IO, python_model
from support.servers import serve
from test_metrics import scrape
from tritonpy.core.observability.gpu_metrics import FAMILIES, GpuMetrics
from tritonpy.core.observability.metrics import exposition, make_registry

GPU_NAMES = set(FAMILIES)


class NotSupported(Exception):
    pass


def fake_nvml(devices: list[dict], *, init_error: Exception | None = None) -> types.ModuleType:
    """A module with the nvml* functions GpuMetrics calls, over `devices` (dicts of raw NVML values)."""
    mod = types.ModuleType("fake_pynvml")
    mod.calls = {"init": 0, "shutdown": 0}

    def init():
        mod.calls["init"] += 1
        if init_error is not None:
            raise init_error

    def shutdown():
        mod.calls["shutdown"] += 1

    def value(handle, key):
        v = devices[handle][key]
        if v is None:
            raise NotSupported(key)
        return v() if callable(v) else v

    mod.nvmlInit = init
    mod.nvmlShutdown = shutdown
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetUUID = lambda h: value(h, "uuid")
    mod.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=value(h, "util"), memory=0)
    mod.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=value(h, "total"), used=value(h, "used"),
                                                            free=value(h, "total") - value(h, "used"))
    mod.nvmlDeviceGetPowerUsage = lambda h: value(h, "power_mw")
    mod.nvmlDeviceGetPowerManagementLimit = lambda h: value(h, "limit_mw")
    mod.nvmlDeviceGetTotalEnergyConsumption = lambda h: value(h, "energy_mj")
    return mod


@pytest.fixture
def install(monkeypatch):
    def _install(mod: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod
    return _install


def parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam) -> dict[str, float]:
    return {s.labels["gpu_uuid"]: s.value for s in fam.samples}


def test_names_labels_units_and_values(install):
    devices = [
        {"uuid": b"GPU-aaaa", "util": 37, "total": 80 * 2**30, "used": 3 * 2**30, "power_mw": 123_456,
         "limit_mw": 700_000, "energy_mj": iter([10_000, 25_500]).__next__},  # mJ: at open, at scrape
        {"uuid": "GPU-bbbb", "util": 0, "total": 16 * 2**30, "used": 0, "power_mw": None, "limit_mw": None,
         "energy_mj": None},
    ]
    install(fake_nvml(devices))
    gpu = GpuMetrics.open()
    assert gpu is not None and [u for u, _ in gpu.handles] == ["GPU-aaaa", "GPU-bbbb"]
    fams = {f.name: f for f in gpu.families()}
    assert set(fams) == GPU_NAMES
    assert fams["nv_energy_consumption"].type == "counter"
    assert all(fams[n].type == "gauge" for n in GPU_NAMES - {"nv_energy_consumption"})
    assert samples(fams["nv_gpu_utilization"]) == {"GPU-aaaa": 0.37, "GPU-bbbb": 0.0}
    assert samples(fams["nv_gpu_memory_total_bytes"]) == {"GPU-aaaa": 80 * 2**30, "GPU-bbbb": 16 * 2**30}
    assert samples(fams["nv_gpu_memory_used_bytes"]) == {"GPU-aaaa": 3 * 2**30, "GPU-bbbb": 0}
    # milliwatts -> watts; a GPU that cannot report power is left out rather than shown as 0
    assert samples(fams["nv_gpu_power_usage"]) == {"GPU-aaaa": pytest.approx(123.456)}
    assert samples(fams["nv_gpu_power_limit"]) == {"GPU-aaaa": 700.0}
    # millijoules since the server started -> joules
    assert samples(fams["nv_energy_consumption"]) == {"GPU-aaaa": pytest.approx(15.5)}
    assert all(set(s.labels) == {"gpu_uuid"} for f in fams.values() for s in f.samples)
    gpu.close()
    assert sys.modules["pynvml"].calls == {"init": 1, "shutdown": 1}


def test_registry_exposes_gpu_families_only_when_allowed(install):
    install(fake_nvml([{"uuid": "GPU-1", "util": 50, "total": 100, "used": 40, "power_mw": 2000,
                        "limit_mw": 3000, "energy_mj": 0}]))
    server = SimpleNamespace(models=None, options=SimpleNamespace(allow_gpu_metrics=True))
    fams = parse(exposition(make_registry(server, cpu_metrics=False)).decode())
    assert GPU_NAMES <= set(fams)
    assert fams["nv_gpu_utilization"].samples[0].labels == {"gpu_uuid": "GPU-1"}
    assert fams["nv_gpu_utilization"].samples[0].value == 0.5
    assert fams["nv_gpu_power_limit"].samples[0].value == 3.0
    server.options.allow_gpu_metrics = False  # --allow-gpu-metrics=false: NVML is not even opened
    text = exposition(make_registry(server, cpu_metrics=False)).decode()
    assert not GPU_NAMES & set(parse(text))
    assert sys.modules["pynvml"].calls["init"] == 1


@pytest.mark.parametrize("case", ["missing", "init_fails", "no_devices"])
def test_absent_without_package_driver_or_gpu(install, monkeypatch, case):
    if case == "missing":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    elif case == "init_fails":
        install(fake_nvml([], init_error=RuntimeError("NVML Shared Library Not Found")))
    else:
        mod = install(fake_nvml([]))
    assert GpuMetrics.open() is None
    if case == "no_devices":
        assert mod.calls == {"init": 1, "shutdown": 1}
    server = SimpleNamespace(models=None, options=SimpleNamespace(allow_gpu_metrics=True))
    assert not GPU_NAMES & set(parse(exposition(make_registry(server, cpu_metrics=False)).decode()))


def test_real_server_without_gpu_has_no_gpu_families(tmp_path):
    python_model(tmp_path / "repo", "m", "out = x", config=FP32_IO)
    with serve(tmp_path / "repo") as server:
        fams = scrape(server)
        assert "nv_cpu_utilization" in fams
        assert not [name for name in fams if name.startswith("nv_gpu_") or name == "nv_energy_consumption"]


@pytest.mark.gpu
def test_real_nvml_reports_every_gpu(tmp_path):
    python_model(tmp_path / "repo", "m", "out = x", config=FP32_IO)
    with serve(tmp_path / "repo") as server:
        fams = scrape(server)
    assert GPU_NAMES - {"nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"} <= set(fams)
    uuids = {s.labels["gpu_uuid"] for s in fams["nv_gpu_memory_total_bytes"].samples}
    assert uuids and all(u.startswith("GPU-") for u in uuids)
    for s in fams["nv_gpu_utilization"].samples:
        assert 0.0 <= s.value <= 1.0
    for total, used in zip(fams["nv_gpu_memory_total_bytes"].samples, fams["nv_gpu_memory_used_bytes"].samples):
        assert 0 < used.value <= total.value
