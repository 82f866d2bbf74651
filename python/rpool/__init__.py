"""rpool: drop-in `multiprocessing.Pool` and `concurrent.futures.ProcessPoolExecutor` with a
Rust core. ``from rpool import Pool`` is all a program changes.

Public names are loaded on first use, so a worker process (which imports only
``rpool._worker``) does not pay for the parent-side modules (asyncio bridges, fronts, maps).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpool._aio import wrap_async
    from rpool._insights import PoolStats, WorkerStats
    from rpool._mapping import IMapIterator, MapResult
    from rpool._remote import InitializerError, RemoteError, TaskTimeoutError, WorkerLostError
    from rpool._runtime import PoolForkedError
    from rpool._state import worker_state
    from rpool.executor import ProcessPoolExecutor, RpoolFuture
    from rpool.pool import AsyncResult, Pool

# public name -> module that defines it
_EXPORTS = {
    "AsyncResult": "rpool.pool",
    "IMapIterator": "rpool._mapping",
    "InitializerError": "rpool._remote",
    "MapResult": "rpool._mapping",
    "Pool": "rpool.pool",
    "PoolForkedError": "rpool._runtime",
    "PoolStats": "rpool._insights",
    "ProcessPoolExecutor": "rpool.executor",
    "RpoolFuture": "rpool.executor",
    "RemoteError": "rpool._remote",
    "TaskTimeoutError": "rpool._remote",
    "WorkerLostError": "rpool._remote",
    "WorkerStats": "rpool._insights",
    "worker_state": "rpool._state",
    "wrap_async": "rpool._aio",
}

__all__ = [
    "AsyncResult",
    "IMapIterator",
    "InitializerError",
    "MapResult",
    "Pool",
    "PoolForkedError",
    "PoolStats",
    "ProcessPoolExecutor",
    "RemoteError",
    "RpoolFuture",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerStats",
    "worker_state",
    "wrap_async",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
