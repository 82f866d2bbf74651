"""`rpool.dask`: rpool's `Pool` and `ProcessPoolExecutor` API on an existing Dask cluster.

``from rpool.dask import Pool, ProcessPoolExecutor`` and pass ``client=`` (a
`distributed.Client` or a scheduler address such as ``"tcp://10.0.0.5:8786"``); every method
keeps the local classes' semantics. This module is imported only on demand, so ``import rpool``
never needs `distributed` (``pip install rpool[dask]`` installs it).

```
 caller threads                         Dask client                    Dask workers
 apply_async/submit --pickle--------->  client.submit(_run_call) --->  unpickle, call, pickle
 map/starmap/imap/Executor.map            one Dask task per chunk      (ok, bytes, seconds)
   --chunks (auto chunksize)--pickle->  client.submit(_run_chunk) -->       |
 AsyncResult/MapResult/Future  <-- done callbacks on Dask's one  <---------+
   (unpickle, rebuild exceptions)       callback thread: fetch, complete
```

- Batching is what rpool adds: a map sends one task per chunk (the local pools' chunk-size rules,
  with the cluster's thread count as the worker count), so a million tiny items become a few
  dozen Dask tasks, not a million.
- Tasks pickle their own arguments and results (pickle, then cloudpickle for lambdas/closures), so
  errors match the local pools: task exceptions keep type and args with a `RemoteTraceback`
  ``__cause__``, unpicklable results give `MaybeEncodingError` (Pool), exceptions that cannot
  travel arrive as `rpool.RemoteError`.
- Completion needs no thread per task: Dask calls ``add_done_callback`` on its own callback thread,
  which fetches the result, then fills in the result object and runs user callbacks once.
- Worker loss is Dask's to retry (``distributed.scheduler.allowed-failures``); a task that finally
  fails with `KilledWorker` raises `rpool.WorkerLostError`, as a lost task does locally.
- Cluster-side futures are released as soon as their result is fetched; close/terminate/shutdown
  cancel what is still outstanding. A client made from an address is closed with the pool; a
  client passed in is left open, and no cluster is ever shut down.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from concurrent.futures import CancelledError, _base
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import TimeoutError as MpTimeoutError
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any, NamedTuple

try:
    import distributed
    from distributed.scheduler import KilledWorker
except ImportError as _missing:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "rpool.dask needs the 'distributed' package: pip install 'rpool[dask]'"
    ) from _missing

from rpool import _rpool
from rpool._codec import run_map, run_starmap
from rpool._fronts import (
    CLOSE,
    RUN,
    TERMINATE,
    ExecutorFront,
    PoolFront,
    after_feeders,
    check_executor_options,
    check_pool_options,
    map_deadline,
    map_sizing,
)
from rpool._insights import PoolStats, WorkerStats
from rpool._mapping import (
    ChunkSink,
    EventResult,
    LazyMapIterator,
    _LazyMapState,
    check_chunksize,
    default_window,
    lazy_chunksize,
    split_chunks,
)
from rpool._remote import (
    FRONT_EXECUTOR,
    FRONT_POOL,
    PROTOCOL,
    InitializerError,
    TaskTimeoutError,
    WorkerLostError,
    encode_exception,
    rebuild_exception,
    result_unpickle_failure,
)

__all__ = ["AsyncResult", "IMapIterator", "MapResult", "Pool", "ProcessPoolExecutor"]

# Seconds `terminate`/`shutdown` wait for Dask to report cancelled tasks before failing their
# results directly: long enough for a scheduler round trip, short enough not to hang on a dead
# scheduler.
CANCEL_GRACE_SECONDS = 5.0

# Seconds to wait for the scheduler when the pool connects to an address itself.
CONNECT_TIMEOUT_SECONDS = 30.0

# What a task function returns to the parent: a status code, a payload, its compute time.
STATUS_OK = 0  # payload: the pickled result
STATUS_ERROR = 1  # payload: the encoded exception (rpool._remote.encode_exception)
STATUS_INIT_FAILED = 2  # payload: the initializer's encoded exception


class TaskReply(NamedTuple):
    """What `_run_call`/`_run_chunk` send back from a Dask worker."""

    status: int
    payload: bytes
    seconds: float
    worker: str = ""  # the Dask worker's address
    pid: int = 0  # the Dask worker process that ran the task


# --- worker side (runs inside Dask workers, imported there by name) -------------------------

# Pools whose initializer already ran in this worker process: token -> None if it succeeded,
# else its encoded exception (every later task of that pool fails with it, like a broken pool).
_initialized: dict[str, bytes | None] = {}
_initialized_lock = threading.Lock()


def _initialize(token: str, setup: bytes | None) -> bytes | None:
    """Runs the pool's initializer once per worker process; returns its failure, if any."""
    if setup is None:
        return None
    with _initialized_lock:
        if token not in _initialized:
            try:
                initializer, initargs = pickle.loads(setup)
                initializer(*initargs)
                _initialized[token] = None
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                _initialized[token] = encode_exception(exc)
        return _initialized[token]


def _answer(status: int, payload: bytes, seconds: float) -> TaskReply:
    """A reply stamped with the worker that produced it (for `stats()`)."""
    try:
        address = str(distributed.get_worker().address)
    except ValueError:  # not inside a Dask worker (direct call)
        address = ""
    return TaskReply(status, payload, seconds, address, os.getpid())


def _reply(value: Any, front: int, started: float) -> TaskReply:
    try:
        data = pickle.dumps(value, PROTOCOL)
    except Exception as exc:
        error = MaybeEncodingError(exc, value) if front == FRONT_POOL else exc
        return _answer(STATUS_ERROR, encode_exception(error), time.perf_counter() - started)
    return _answer(STATUS_OK, data, time.perf_counter() - started)


def _run_call(token: str, setup: bytes | None, payload: bytes, front: int) -> TaskReply:
    """A Dask task for one `apply_async`/`submit`: ``func(*args, **kwargs)``."""
    failed = _initialize(token, setup)
    if failed is not None:
        return _answer(STATUS_INIT_FAILED, failed, 0.0)
    started = time.perf_counter()
    try:
        func, args, kwargs = pickle.loads(payload)
        value = func(*args, **(kwargs or {}))
    except BaseException as exc:  # noqa: BLE001 - the task's failure, sent to the parent
        return _answer(STATUS_ERROR, encode_exception(exc), time.perf_counter() - started)
    return _reply(value, front, started)


def _run_chunk(token: str, setup: bytes | None, payload: bytes, front: int) -> TaskReply:
    """A Dask task for one chunk of a map: ``[func(x) for x in chunk]`` (or ``func(*x)``)."""
    failed = _initialize(token, setup)
    if failed is not None:
        return _answer(STATUS_INIT_FAILED, failed, 0.0)
    started = time.perf_counter()
    try:
        func, star, items = pickle.loads(payload)
        values = run_starmap(func, items) if star else run_map(func, items)
    except BaseException as exc:  # noqa: BLE001 - the chunk's failure, sent to the parent
        return _answer(STATUS_ERROR, encode_exception(exc), time.perf_counter() - started)
    return _reply(values, front, started)


# --- parent side: pickling and the connection to the cluster --------------------------------


def _dumps(obj: object) -> bytes:
    """Pickles with pickle, falling back to cloudpickle (lambdas, closures, `__main__` code the
    workers cannot import), which Dask users expect to work."""
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception as first:
        try:
            import cloudpickle  # type: ignore[import-untyped,unused-ignore]  # ships with dask
        except ImportError:
            raise first from None
        try:
            return cloudpickle.dumps(obj, PROTOCOL)  # type: ignore[no-any-return]
        except Exception:
            raise first from None


def _cluster_threads(client: Any) -> int:
    """Total worker threads of the cluster (at least 1, so chunk sizes stay defined)."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:
        threads = 0
    return max(1, int(threads))


# A done-callback target: (ok, value or exception, compute seconds).
Completion = Callable[[bool, Any, float], None]


class _Task(NamedTuple):
    """A Dask future the pool still owns, who to tell when it completes, and (executor
    futures) how to cancel it so that it reports as cancelled."""

    future: Any
    on_done: Completion
    cancel: Callable[[], object] | None


class _Cluster:
    """One pool's view of the Dask cluster: submits tasks, turns their replies into values or
    exceptions, remembers outstanding futures until their results are fetched."""

    def __init__(
        self,
        client: Any,
        front: int,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError:
                raise ValueError(
                    "rpool.dask needs client=: a distributed.Client or a scheduler address "
                    "such as 'tcp://127.0.0.1:8786'"
                ) from None
            self.owns_client = False
        elif isinstance(client, str):
            client = distributed.Client(client, timeout=CONNECT_TIMEOUT_SECONDS)  # type: ignore[no-untyped-call]
            self.owns_client = True
        elif isinstance(client, distributed.Client):
            self.owns_client = False
        else:
            raise TypeError(
                "client must be a distributed.Client or a scheduler address string, "
                f"not {type(client).__name__}"
            )
        if client.asynchronous:
            raise ValueError("rpool.dask needs a synchronous distributed.Client")
        self.client: Any = client
        self.front = front
        # Names this pool's initializer on the workers, which run it once per process.
        self.token = uuid.uuid4().hex
        self.setup = None if initializer is None else _dumps((initializer, initargs))
        self.lock = threading.Lock()
        self.drained = threading.Condition(self.lock)
        self.live: dict[str, _Task] = {}
        self.released = False
        # stats(): address -> [worker id, pid, tasks done, compute seconds]
        self.created = time.monotonic()
        self.per_worker: dict[str, list[Any]] = {}
        self.tasks_done = 0
        self.restarts = 0
        # Per-task time limits: (deadline, key, limit) heap watched by one thread per pool.
        self.deadlines: list[tuple[float, str, float]] = []
        self.deadlines_changed = threading.Condition(self.lock)
        self.watchdog: threading.Thread | None = None

    def threads(self) -> int:
        return _cluster_threads(self.client)

    def submit(
        self,
        task: Callable[..., TaskReply],
        payload: bytes,
        label: str,
        on_done: Completion,
        cancel: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Sends one task; `on_done` is called once, on Dask's callback thread (or on the
        watchdog thread when the task runs past `timeout` seconds)."""
        key = f"rpool-{label}-{uuid.uuid4().hex}"
        future = self.client.submit(
            task, self.token, self.setup, payload, self.front, key=key, pure=False
        )
        with self.lock:
            self.live[key] = _Task(future, on_done, cancel)
            if timeout is not None:
                heapq.heappush(self.deadlines, (time.monotonic() + timeout, key, timeout))
                self.deadlines_changed.notify()
                if self.watchdog is None:
                    self.watchdog = threading.Thread(
                        target=self._watch_deadlines, name="rpool-dask-deadlines", daemon=True
                    )
                    self.watchdog.start()
        future.add_done_callback(functools.partial(self._done, key))
        return future

    def _watch_deadlines(self) -> None:
        """Fails tasks that run past their limit. Dask cannot stop a running task, so the
        task is cancelled on the cluster (if it has not started, it never will) and its
        result, should it still come, is dropped."""
        while True:
            with self.lock:
                while not self.released:
                    now = time.monotonic()
                    # Tasks that already finished leave their entry behind: skip those.
                    while self.deadlines and self.deadlines[0][1] not in self.live:
                        heapq.heappop(self.deadlines)
                    if self.deadlines and self.deadlines[0][0] <= now:
                        break
                    wait = self.deadlines[0][0] - now if self.deadlines else None
                    self.deadlines_changed.wait(wait)
                if self.released:
                    return
                _, key, limit = heapq.heappop(self.deadlines)
                task = self.live.pop(key)
                if not self.live:
                    self.drained.notify_all()
            try:
                self.client.cancel([task.future])
            except Exception:
                pass  # the client is closing; the result is dropped either way
            task.on_done(
                False,
                TaskTimeoutError(
                    f"task ran longer than its {limit:g} s time limit; it was cancelled on the "
                    "Dask cluster (a task already running there finishes, its result is dropped)"
                ),
                0.0,
            )

    def _done(self, key: str, future: Any) -> None:
        with self.lock:
            task = self.live.get(key)
        if task is None:  # already failed by `cancel_all`
            return
        try:
            ok, value, seconds = self._resolve(future)
            # The result is here: let the cluster forget it now, rather than when the last
            # reference to the Dask future is collected (Dask's internals can keep it in a
            # reference cycle until the next garbage collection).
            _release(future)
            task.on_done(ok, value, seconds)
        finally:
            with self.lock:
                self.live.pop(key, None)
                if not self.live:
                    self.drained.notify_all()

    def _resolve(self, future: Any) -> tuple[bool, Any, float]:
        if future.status == "cancelled":
            return False, self.cancelled_error(), 0.0
        try:
            reply = future.result()
        except KilledWorker as exc:
            with self.lock:
                self.restarts += 1
            return False, _worker_lost(exc), 0.0
        except CancelledError:
            return False, self.cancelled_error(), 0.0
        except Exception as exc:  # a failure outside the task function (e.g. lost connection)
            return False, exc, 0.0
        status, payload, seconds, worker, pid = reply
        self._count(worker, pid, seconds)
        if status == STATUS_OK:
            try:
                return True, pickle.loads(payload), seconds
            except Exception as exc:
                return False, result_unpickle_failure(exc, self.front), seconds
        error = rebuild_exception(payload, self.front)
        if status == STATUS_INIT_FAILED:
            broken = InitializerError("the pool's initializer raised in a Dask worker")
            broken.__cause__ = error
            return False, broken, seconds
        return False, error, seconds

    def _count(self, worker: str, pid: int, seconds: float) -> None:
        with self.lock:
            self.tasks_done += 1
            entry = self.per_worker.get(worker)
            if entry is None:
                entry = self.per_worker[worker] = [len(self.per_worker) + 1, pid, 0, 0.0]
            entry[1] = pid
            entry[2] += 1
            entry[3] += seconds

    def stats(self) -> PoolStats:
        """Counters of this pool's tasks: per Dask worker that ran any of them, tasks done and
        compute seconds; idle time is measured against the pool's age (a remote worker's own
        lifetime is not visible from here)."""
        with self.lock:
            age = max(0.0, time.monotonic() - self.created)
            workers = tuple(
                WorkerStats(
                    worker_id=worker_id,
                    pid=pid,
                    tasks_done=done,
                    busy_seconds=busy,
                    idle_seconds=max(0.0, age - busy),
                    alive_seconds=max(age, busy),
                    in_flight=0,
                )
                for worker_id, pid, done, busy in self.per_worker.values()
            )
            return PoolStats(
                workers=workers,
                queued=0,
                in_flight=len(self.live),
                tasks_done=self.tasks_done,
                restarts=self.restarts,
                uptime_seconds=age,
                throughput=self.tasks_done / age if age > 0 else 0.0,
            )

    def cancelled_error(self) -> BaseException:
        if self.front == FRONT_EXECUTOR:
            return CancelledError()
        return BrokenProcessPool("the pool was terminated before this task finished")

    def outstanding(self) -> list[_Task]:
        with self.lock:
            return list(self.live.values())

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Waits until every outstanding task reported (results fetched, callbacks run)."""
        with self.lock:
            return self.drained.wait_for(lambda: not self.live, timeout)

    def drain(self) -> None:
        """Waits for every outstanding task, then releases the client."""
        self.wait_drained()
        self.release()

    def cancel_all(self) -> None:
        """Cancels every outstanding task on the cluster; their results fail. Tasks Dask does
        not report in time are failed here (their results are lost with the futures)."""
        tasks = self.outstanding()
        if not tasks:
            return
        for task in tasks:
            if task.cancel is not None:
                task.cancel()
        try:
            self.client.cancel([task.future for task in tasks])
        except Exception:
            pass  # the client is gone; the results are failed below
        if self.wait_drained(CANCEL_GRACE_SECONDS):
            return
        with self.lock:
            left = list(self.live.values())
            self.live.clear()
            self.drained.notify_all()
        for task in left:
            _release(task.future)
            task.on_done(False, self.cancelled_error(), 0.0)

    def release(self) -> None:
        """Closes the client if this pool opened it (never the cluster itself)."""
        with self.lock:
            if self.released:
                return
            self.released = True
            self.deadlines_changed.notify_all()
        if self.owns_client:
            self.client.close()


def _check_limit(seconds: float | None, what: str) -> None:
    """A per-task time limit must be a positive number of seconds (or None)."""
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {seconds!r}")


def _release(future: Any) -> None:
    """Drops the client's claim on a Dask future's result (idempotent)."""
    try:
        future.release()
    except Exception:
        pass  # the client is closing; the scheduler forgets its keys anyway


def _worker_lost(exc: BaseException) -> WorkerLostError:
    error = WorkerLostError(
        f"the Dask workers running this task died too often ({exc}); Dask stopped retrying it"
    )
    error.__cause__ = exc
    return error


def _task_label(func: object, kind: str) -> str:
    name = getattr(func, "__name__", type(func).__name__)
    return f"{kind}-{name}"


# --- result objects --------------------------------------------------------------------------


class AsyncResult(EventResult[Any]):
    """Result of `Pool.apply_async`: ``get(timeout)``, ``wait(timeout)``, ``ready()``,
    ``successful()``, as `multiprocessing.pool.AsyncResult`."""

    def __init__(
        self,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._settled = False
        self._success = False
        self._value: Any = None

    def _complete(self, ok: bool, value: Any, seconds: float = 0.0) -> None:
        """Settles the result once (later calls are ignored), runs the callback, wakes waiters."""
        with self._lock:
            if self._settled:
                return
            self._settled = True
            self._success = ok
            self._value = value
        try:
            if ok:
                if self._callback is not None:
                    self._callback(value)
            elif self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._event.set()


class MapResult(AsyncResult):
    """Result of `Pool.map_async`/`starmap_async`: the list of results, in input order."""

    def __init__(
        self,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        super().__init__(callback, error_callback)
        self._chunks: list[Any] = []
        self._left = 0

    def _start(self, chunks: int) -> None:
        with self._lock:
            self._chunks = [None] * chunks
            self._left = chunks
        if chunks == 0:
            self._complete(True, [])

    def _chunk_done(self, index: int, ok: bool, value: Any, seconds: float = 0.0) -> None:
        if not ok:
            self._complete(False, value)
            return
        with self._lock:
            if self._settled:
                return
            self._chunks[index] = value
            self._left -= 1
            if self._left:
                return
            values = list(itertools.chain.from_iterable(self._chunks))
            self._chunks = []
        self._complete(True, values)


class _ClusterSink(ChunkSink):
    """Sends a lazy map's chunks to the cluster, one Dask task each; Dask's callback thread
    completes them."""

    def __init__(
        self, cluster: _Cluster, func: Callable[..., Any], star: bool, task_timeout: float | None
    ) -> None:
        self.cluster = cluster
        self.func = func
        self.star = star
        self.task_timeout = task_timeout
        self.label = _task_label(func, "starmap" if star else "map")

    def send(self, state: _LazyMapState, index: int, chunk: list[Any]) -> None:
        payload = _dumps((self.func, self.star, chunk))
        on_done = functools.partial(state.chunk_done, index, len(chunk))
        self.cluster.submit(_run_chunk, payload, self.label, on_done, timeout=self.task_timeout)


class IMapIterator(LazyMapIterator):
    """Iterator of `imap`/`imap_unordered`/`Executor.map`: a feeder thread reads the input
    lazily, sending at most ``window`` chunks ahead of the consumer.

    ``next(timeout)`` raises the pool's timeout error if no result arrives in time.
    """

    def __init__(
        self,
        cluster: _Cluster,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        star: bool,
        chunksize: int | None,
        ordered: bool,
        window: int,
        timeout_error: type[BaseException],
        deadline: float | None = None,
        task_timeout: float | None = None,
    ) -> None:
        self._start(
            _ClusterSink(cluster, func, star, task_timeout),
            iterable,
            chunksize=chunksize,
            ordered=ordered,
            window=window,
            timeout_error=timeout_error,
            deadline=deadline,
            progress=None,
            thread_name="rpool-dask-feeder",
        )


# --- Pool ------------------------------------------------------------------------------------


class Pool(PoolFront):
    """The `multiprocessing.pool.Pool` API, running tasks on a Dask cluster.

    ``client`` (keyword-only): a `distributed.Client`, or a scheduler address (the pool then
    opens a client and closes it with the pool); default: the current default client.
    ``processes`` is the parallelism used to pick chunk sizes (default: the cluster's thread
    count). ``initializer(*initargs)`` runs once per Dask worker process before its first task
    of this pool. ``maxtasksperchild`` and ``context`` are accepted for compatibility and have no
    effect: the workers are Dask's.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: object | None = None,
        *,
        client: Any = None,
    ) -> None:
        self._state = RUN
        check_pool_options(processes, maxtasksperchild, initializer)
        self._cluster = _Cluster(client, FRONT_POOL, initializer, tuple(initargs))
        self._processes = processes if processes is not None else self._cluster.threads()
        self._lock = threading.Lock()

    def _live_cluster(self) -> _Cluster:
        if self._state != RUN:
            raise ValueError("Pool not running")
        return self._cluster

    # --- single tasks ----------------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Calls ``func(*args, **kwds)`` on a Dask worker and returns its result."""
        return self.apply_async(func, args, kwds, timeout=timeout).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> AsyncResult:
        """Queues ``func(*args, **kwds)`` as one Dask task; returns an `AsyncResult`.

        ``timeout``: seconds the task may run before it fails with `rpool.TaskTimeoutError`.
        """
        _check_limit(timeout, "timeout")
        cluster = self._live_cluster()
        result = AsyncResult(callback, error_callback)
        args = tuple(args)
        kwargs = dict(kwds) if kwds else None
        try:
            payload = _dumps((func, args, kwargs))
        except Exception as exc:
            exc.add_note("rpool.dask: the task's function or arguments could not be pickled")
            result._complete(False, exc)
            return result
        label = _task_label(func, "apply")
        cluster.submit(_run_call, payload, label, result._complete, timeout=timeout)
        return result

    # --- maps ------------------------------------------------------------------------------

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        star: bool,
        chunksize: int | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        task_timeout: float | None = None,
    ) -> MapResult:
        _check_limit(task_timeout, "task_timeout")
        cluster = self._live_cluster()
        check_chunksize(chunksize)
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        length = len(items)  # type: ignore[arg-type]
        if chunksize is None:
            chunksize = _rpool.default_chunksize(length, self._processes)
        result = MapResult(callback, error_callback)
        chunks = list(split_chunks(items, chunksize))
        result._start(len(chunks))
        label = _task_label(func, "starmap" if star else "map")
        for index, chunk in enumerate(chunks):
            try:
                payload = _dumps((func, star, chunk))
            except Exception as exc:
                exc.add_note(
                    "rpool.dask: an item of the map's input (or its function) could not be pickled"
                )
                result._complete(False, exc)
                return result
            on_done = functools.partial(result._chunk_done, index)
            cluster.submit(_run_chunk, payload, label, on_done, timeout=task_timeout)
        return result

    def map(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
    ) -> list[Any]:
        """Like the builtin `map`, on the cluster, one Dask task per chunk; returns a list."""
        return self._map_async(func, iterable, False, chunksize, None, None, task_timeout).get()  # type: ignore[no-any-return]

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> MapResult:
        """Asynchronous `map`; returns a `MapResult`."""
        return self._map_async(
            func, iterable, False, chunksize, callback, error_callback, task_timeout
        )

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
    ) -> list[Any]:
        """Like `map`, but each item is unpacked as the arguments: ``func(*item)``."""
        return self._map_async(func, iterable, True, chunksize, None, None, task_timeout).get()  # type: ignore[no-any-return]

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
    ) -> MapResult:
        """Asynchronous `starmap`; returns a `MapResult`."""
        return self._map_async(
            func, iterable, True, chunksize, callback, error_callback, task_timeout
        )

    def _imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        ordered: bool,
        task_timeout: float | None = None,
    ) -> IMapIterator:
        _check_limit(task_timeout, "task_timeout")
        cluster = self._live_cluster()
        check_chunksize(chunksize)
        return IMapIterator(
            cluster,
            func,
            iterable,
            star=False,
            chunksize=lazy_chunksize(iterable, chunksize, self._processes),
            ordered=ordered,
            window=default_window(self._processes),
            timeout_error=MpTimeoutError,
            task_timeout=task_timeout,
        )

    def imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
    ) -> IMapIterator:
        """Lazy `map`: reads the input as results are consumed; yields in input order."""
        return self._imap(func, iterable, chunksize, True, task_timeout)

    def imap_unordered(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
    ) -> IMapIterator:
        """Like `imap`, but yields results as chunks finish."""
        return self._imap(func, iterable, chunksize, False, task_timeout)

    def stats(self) -> PoolStats:
        """A snapshot of this pool's work on the cluster: per Dask worker that ran its tasks,
        pid, tasks done and compute seconds; in-flight tasks, tasks done, workers lost and
        throughput. Idle time is counted against the pool's age."""
        return self._cluster.stats()

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Accepts no more tasks; queued ones still run."""
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE

    def terminate(self) -> None:
        """Cancels every outstanding task on the cluster (their results fail with
        `BrokenProcessPool`) and releases the pool's client. The cluster keeps running."""
        with self._lock:
            self._state = TERMINATE
        self._cluster.cancel_all()
        self._cluster.release()

    def join(self) -> None:
        """Waits for outstanding tasks to finish; call `close` or `terminate` first."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._cluster.drain()


# --- ProcessPoolExecutor ---------------------------------------------------------------------


class DaskFuture(futures.Future):  # type: ignore[type-arg]
    """A real `concurrent.futures.Future` backed by a Dask future; `cancel()` also cancels the
    Dask task."""

    _dask_future: Any = None
    _dask_client: Any = None

    def cancel(self) -> bool:
        dask_future = self._dask_future
        with self._condition:
            first = self._state == _base.PENDING
        if not super().cancel():
            return False
        if first:
            # What an executor does when it skips a cancelled item: `wait`/`as_completed` see it.
            self.set_running_or_notify_cancel()
        if dask_future is not None:
            self._dask_future = None
            try:
                self._dask_client.cancel([dask_future])
            except Exception:
                pass  # client already closed: nothing left to cancel
        return True

    def _complete(self, ok: bool, value: Any, seconds: float = 0.0) -> None:
        self._dask_future = None
        try:
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except futures.InvalidStateError:
            pass  # cancelled meanwhile


class ProcessPoolExecutor(ExecutorFront, futures.Executor):
    """The `concurrent.futures.ProcessPoolExecutor` API, running tasks on a Dask cluster.

    ``client`` (keyword-only): a `distributed.Client` or a scheduler address (the executor then
    opens a client and closes it at shutdown); default: the current default client.
    ``max_workers`` is the parallelism used to pick chunk sizes (default: the cluster's thread
    count). ``mp_context`` and ``max_tasks_per_child`` are accepted for compatibility and have no
    effect: the workers are Dask's.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: object | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        client: Any = None,
    ) -> None:
        check_executor_options(max_workers, initializer, max_tasks_per_child)
        self._cluster = _Cluster(client, FRONT_EXECUTOR, initializer, tuple(initargs))
        self._max_workers = max_workers if max_workers is not None else self._cluster.threads()
        self._init_shutdown()

    def _check_open(self) -> _Cluster:
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._cluster

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        """Schedules ``fn(*args, **kwargs)`` as one Dask task; returns a
        `concurrent.futures.Future`."""
        return self._submit(fn, args, kwargs, None)

    def submit_with(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> futures.Future[Any]:
        """Like `submit`, with options: ``timeout`` seconds before the future fails with
        `rpool.TaskTimeoutError`."""
        _check_limit(timeout, "timeout")
        return self._submit(fn, tuple(args), kwargs or {}, timeout)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> futures.Future[Any]:
        with self._shutdown_lock:
            cluster = self._check_open()
        future = DaskFuture()
        try:
            payload = _dumps((fn, args, kwargs or None))
        except Exception as exc:
            exc.add_note("rpool.dask: the task's function or arguments could not be pickled")
            future.set_exception(exc)
            return future
        future._dask_client = cluster.client
        future._dask_future = cluster.submit(
            _run_call,
            payload,
            _task_label(fn, "submit"),
            future._complete,
            future.cancel,
            timeout=timeout,
        )
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Returns an iterator of ``fn(*items)`` in input order, one Dask task per chunk.

        ``chunksize=None`` picks a chunk size; ``buffersize`` bounds the chunks in flight;
        ``timeout`` counts from this call, past it iteration raises `TimeoutError`.
        """
        deadline = map_deadline(timeout, chunksize, buffersize)
        with self._shutdown_lock:
            cluster = self._check_open()
        _, chunksize, window = map_sizing(iterables, chunksize, buffersize, self._max_workers)
        results = IMapIterator(
            cluster,
            fn,
            zip(*iterables),  # noqa: B905 - stops at the shortest input, like the stdlib
            star=True,
            chunksize=chunksize,
            ordered=True,
            window=window,
            timeout_error=futures.TimeoutError,
            deadline=deadline,
        )
        return self._map_results(results)

    def stats(self) -> PoolStats:
        """A snapshot of this pool's work on the cluster: per Dask worker that ran its tasks,
        pid, tasks done and compute seconds; in-flight tasks, tasks done, workers lost and
        throughput. Idle time is counted against the pool's age."""
        return self._cluster.stats()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accepts no more work; with ``wait``, waits for outstanding tasks. Then releases the
        executor's client. ``cancel_futures=True`` cancels tasks on the cluster first. The
        cluster keeps running."""
        feeders = self._stop_accepting()
        if cancel_futures:
            self._cluster.cancel_all()
        after_feeders(feeders, self._cluster.drain, wait, "rpool-dask-shutdown")

    def terminate_workers(self) -> None:
        """Stops this executor's work now: every task it has on the cluster is cancelled and
        the executor shuts down. The Dask workers belong to the cluster and keep running (a
        pool never stops processes it did not start)."""
        self.shutdown(wait=True, cancel_futures=True)

    def kill_workers(self) -> None:
        """Same as `terminate_workers` on a Dask cluster (there is no local process to kill)."""
        self.terminate_workers()
