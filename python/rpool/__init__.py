"""rpool: drop-in `multiprocessing.Pool` and `concurrent.futures.ProcessPoolExecutor` with a
Rust core. ``from rpool import Pool`` is all a program changes."""

from rpool._mapping import IMapIterator, MapResult
from rpool._remote import InitializerError, RemoteError, TaskTimeoutError, WorkerLostError
from rpool._runtime import PoolForkedError
from rpool.executor import ProcessPoolExecutor, RpoolFuture
from rpool.pool import AsyncResult, Pool

__all__ = [
    "AsyncResult",
    "IMapIterator",
    "InitializerError",
    "MapResult",
    "Pool",
    "PoolForkedError",
    "ProcessPoolExecutor",
    "RpoolFuture",
    "RemoteError",
    "TaskTimeoutError",
    "WorkerLostError",
]
__version__ = "0.1.0"
