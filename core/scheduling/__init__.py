"""Per-model schedulers: the default FIFO scheduler and the dynamic batcher.

`make_scheduler(config, pool, stats, model_name, version)` picks one for a model version; the
instance pool it drives must implement `InstancePool` (see `base.py`).
"""
from tritonpy.core.scheduling.base import ExecOutcome, Instance, InstancePool, Scheduler
from tritonpy.core.scheduling.factory import make_scheduler

__all__ = ["ExecOutcome", "Instance", "InstancePool", "Scheduler", "make_scheduler"]
