"""Pick the scheduler a model configuration asks for."""
from __future__ import annotations

from tritonpy.core.errors import unsupported
from tritonpy.core.scheduling.base import InstancePool, InstT, Scheduler
from tritonpy.core.scheduling.default import DefaultScheduler
from tritonpy.core.scheduling.dynamic import DynamicBatcher
from tritonpy.core.scheduling.sequence import SequenceBatcher
from tritonpy.core.observability.stats import ModelStats
from tritonpy.proto import model_config_pb2 as mc

__all__ = ["make_scheduler"]


def make_scheduler(
    config: mc.ModelConfig, pool: InstancePool[InstT], stats: ModelStats, model_name: str, version: str
) -> Scheduler[InstT]:
    """DynamicBatcher for `dynamic_batching`, SequenceBatcher for `sequence_batching`,
    DefaultScheduler when no scheduling is configured.

    Ensembles have a scheduler of their own; asking this factory for one is an error rather than
    a silent downgrade to unbatched, unordered scheduling.
    """
    choice = config.WhichOneof("scheduling_choice")
    if choice is None:
        return DefaultScheduler(config=config, pool=pool, stats=stats, model_name=model_name, version=version)
    if choice == "dynamic_batching":
        return DynamicBatcher(config=config, pool=pool, stats=stats, model_name=model_name, version=version)
    if choice == "sequence_batching":
        return SequenceBatcher(config=config, pool=pool, stats=stats, model_name=model_name, version=version)
    raise unsupported(f"{choice} is not handled by make_scheduler (model '{model_name}')")
