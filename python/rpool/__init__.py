"""rpool: drop-in `multiprocessing.Pool` and `concurrent.futures.ProcessPoolExecutor` with a
Rust core. ``from rpool import Pool`` is all a program changes."""

from rpool._aio import wrap_async
from rpool._insights import PoolStats, WorkerStats
from rpool._mapping import IMapIterator, MapResult
from rpool._remote import InitializerError, RemoteError, TaskTimeoutError, WorkerLostError
from rpool._runtime import PoolForkedError
from rpool._state import worker_state
from rpool.executor import ProcessPoolExecutor, RpoolFuture
from rpool.pool import AsyncResult, Pool

__all__ = [
    "AsyncResult",
    "IMapIterator",
    "InitializerError",
    "MapResult",
    "Pool",
    "PoolForkedError",
    "PoolStats",
    "ProcessPoolExecutor",
    "RpoolFuture",
    "RemoteError",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerStats",
    "worker_state",
    "wrap_async",
]
__version__ = "0.1.0"
