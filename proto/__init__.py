"""Wire contracts of tritonpy.

This package holds the gRPC service and model-configuration schemas
(``*.proto``), the code generated from them (``*_pb2.py``, ``*_pb2_grpc.py``;
regenerate with ``scripts/gen_proto.py``) and the core<->worker message types.
It imports nothing else of tritonpy, and importing the package itself stays
cheap: protobuf is only loaded by the generated modules.

The generated modules register their descriptors in a private
``DescriptorPool`` (see :func:`descriptor_pool`) rather than protobuf's default
pool, because tritonclient registers the same full names (``inference.*``) in
the default pool and a pool refuses a second definition of a name. With the
private pool both packages can be imported into one process, in either order.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.protobuf.descriptor_pool import DescriptorPool

__all__ = ["descriptor_pool"]

_pool: DescriptorPool | None = None
_pool_lock = threading.Lock()


def descriptor_pool() -> DescriptorPool:
    """Return the pool holding every tritonpy ``.proto`` file.

    Use it wherever protobuf asks for a pool to resolve names against ours
    (for example ``json_format.Parse(..., descriptor_pool=descriptor_pool())``
    or gRPC server reflection).
    """
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from google.protobuf import descriptor_pool as _dp

                _pool = _dp.DescriptorPool()
    return _pool
