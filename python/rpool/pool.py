"""`rpool.Pool`: the `multiprocessing.Pool` API on rpool's native core."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from multiprocessing import TimeoutError as MpTimeoutError
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from rpool import _cloud, _rpool
from rpool._fronts import (
    CLOSE,
    RUN,
    TERMINATE,
    PoolFront,
    check_pool_options,
    queue_call,
)
from rpool._mapping import (
    IMapIterator,
    MapResult,
    check_chunksize,
    pickle_chunk,
)
from rpool._progress import ProgressArg, make_progress
from rpool._remote import FRONT_POOL, InitializerError
from rpool._runtime import KIND_MAP, KIND_STARMAP, CallbackEntry, Runtime

if TYPE_CHECKING:
    from rpool._insights import PoolStats

AsyncResult = _rpool.AsyncResult


class _FailedResult:
    """An `AsyncResult` for a task that failed before it could be sent (pickling error)."""

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> None:
        return None

    def get(self, timeout: float | None = None) -> Any:
        raise self._exc


def _fail_unpicklable_map(result: MapResult, exc: Exception) -> None:
    """Fails a map whose chunk could not be pickled (as in the stdlib, whose task thread also
    pickles chunk by chunk); chunks already sent still run, their results are dropped."""
    exc.add_note("rpool: an item of the map's input (or its function) could not be pickled")
    result._fail_now(exc)


class Pool(PoolFront):
    """A process pool with the `multiprocessing.pool.Pool` API.

    ``Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None)``
    behaves like the stdlib. Keyword-only extensions: ``retries`` re-runs a task whose worker
    died up to that many times; ``cloudpickle``: by default (None) a task function, argument or
    initializer that pickle refuses (a lambda, a closure, an interactively defined function)
    goes by cloudpickle while results keep the stdlib's rules (`MaybeEncodingError`); True
    extends the fallback to results; False turns it off. ``chunksize=None`` (the
    default everywhere) picks a chunk size automatically. See also `stats` and the
    ``progress=`` option of the map family.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: BaseContext | None = None,
        *,
        retries: int = 0,
        cloudpickle: bool | None = None,
    ) -> None:
        self._state = RUN
        self._runtime: Runtime | None = None
        check_pool_options(processes, maxtasksperchild, initializer)
        if processes is None:
            processes = os.cpu_count() or 1
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a non-negative int")
        self._ctx = context if context is not None else multiprocessing.get_context()
        self._processes = processes
        spawned = self._ctx.get_start_method() != "fork"
        initializer, initargs = _cloud.boot_for(cloudpickle, initializer, tuple(initargs), spawned)
        self._created = time.monotonic()
        self._runtime = Runtime(
            processes=processes,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks=maxtasksperchild,
            ctx=self._ctx,
            retries=retries,
            front=FRONT_POOL,
            daemon=True,
            worker_label="PoolWorker",
        )
        self._runtime.cloudpickle = cloudpickle is not False
        self._lock = threading.Lock()

    # --- helpers ---------------------------------------------------------------------------

    def _live_runtime(self) -> Runtime:
        runtime = self._runtime
        if self._state != RUN or runtime is None:
            raise ValueError("Pool not running")
        runtime.check_usable()
        return runtime

    # --- single tasks ----------------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Calls ``func(*args, **kwds)`` in a worker and returns its result."""
        return self.apply_async(func, args, kwds if kwds is not None else {}, timeout=timeout).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Queues ``func(*args, **kwds)``; returns an `AsyncResult`.

        ``timeout`` (keyword-only extension): seconds the task may run; past it the worker is
        killed and replaced and the task fails with `rpool.TaskTimeoutError`.
        """
        try:
            runtime = self._live_runtime()
        except InitializerError as exc:
            # A broken pool fails its results (the stdlib would hang), like any task failure.
            if error_callback is not None:
                error_callback(exc)
            return _FailedResult(exc)
        if type(args) is not tuple:
            args = tuple(args)
        if kwds is not None and type(kwds) is not dict:
            kwds = dict(kwds)
        func_id = runtime.func_id(func)
        notify = callback is not None or error_callback is not None
        handle = queue_call(runtime, func, func_id, args, kwds, notify, FRONT_POOL, timeout)
        if isinstance(handle, BaseException):
            if error_callback is not None:
                error_callback(handle)
            return _FailedResult(handle)
        if handle.notifies:
            runtime.pending[handle.task_id] = CallbackEntry(handle, callback, error_callback)
        return handle

    # --- maps ------------------------------------------------------------------------------

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        kind: int,
        chunksize: int | None,
        callback: Callable[[list[Any]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        task_timeout: float | None,
        progress: ProgressArg = None,
    ) -> MapResult:
        result = MapResult(callback, error_callback)
        try:
            runtime = self._live_runtime()
        except InitializerError as exc:
            result._fail_now(exc)
            return result
        check_chunksize(chunksize)
        items = iterable if type(iterable) is list else list(iterable)
        length = len(items)
        if length:
            result._progress = make_progress(progress, length)
        if chunksize is None:
            chunksize = _rpool.default_chunksize(length, self._processes)
        func_id = runtime.func_id(func)
        result._start(-(-length // chunksize), length)
        result._begin_sending()
        try:
            self._send_chunks(
                runtime, result, func, func_id, kind, items, length, chunksize, task_timeout
            )
        finally:
            result._end_sending(runtime)
        return result

    @staticmethod
    def _send_chunks(
        runtime: Runtime,
        result: MapResult,
        func: Callable[..., Any],
        func_id: int,
        kind: int,
        items: list[Any],
        length: int,
        chunksize: int,
        task_timeout: float | None,
    ) -> None:
        """Cuts `items` into chunks and submits each as soon as it is pickled, so the first
        leaves at once and workers start while the parent is still pickling the rest (cutting
        all of 1M items first took ~8 ms, more right after a fork, while the workers waited).
        A map's chunk of plain numbers is pickled in Rust straight from the list and queued in
        the same call (`Core.submit_list_chunk`: no slice, no reference counts touched, no
        bytes object); anything else is pickled here. A chunk that cannot be pickled fails the
        whole map (as in the stdlib, whose task thread also pickles chunk by chunk)."""
        core = runtime.core
        native = kind == KIND_MAP
        for start in range(0, length, chunksize):
            stop = min(start + chunksize, length)
            handle = None
            if native:
                handle = core.submit_list_chunk(
                    func_id, items, start, stop, True, FRONT_POOL, task_timeout
                )
            if handle is None:
                chunk = items[start:stop]
                try:
                    payload = pickle_chunk(func, func_id, chunk, runtime.cloudpickle)
                except Exception as exc:
                    _fail_unpicklable_map(result, exc)
                    return
                handle = core.submit(kind, func_id, payload, True, FRONT_POOL, task_timeout)
                stop = start + len(chunk)  # the list may have shrunk meanwhile
            result._add_chunk(runtime, handle, stop - start)

    def map(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> list[Any]:
        """Like the builtin `map`, in parallel; returns a list in input order."""
        return self._map_async(
            func, iterable, KIND_MAP, chunksize, None, None, task_timeout, progress
        ).get()

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[Any]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> MapResult:
        """Asynchronous `map`; returns a `MapResult`."""
        return self._map_async(
            func, iterable, KIND_MAP, chunksize, callback, error_callback, task_timeout, progress
        )

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> list[Any]:
        """Like `map`, but each item is unpacked as the arguments: ``func(*item)``."""
        return self._map_async(
            func, iterable, KIND_STARMAP, chunksize, None, None, task_timeout, progress
        ).get()

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[Any]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> MapResult:
        """Asynchronous `starmap`; returns a `MapResult`."""
        return self._map_async(
            func,
            iterable,
            KIND_STARMAP,
            chunksize,
            callback,
            error_callback,
            task_timeout,
            progress,
        )

    def _imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        ordered: bool,
        task_timeout: float | None,
        progress: ProgressArg = None,
    ) -> IMapIterator:
        runtime = self._live_runtime()
        check_chunksize(chunksize)
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        return IMapIterator(
            runtime,
            func,
            iterable,
            kind=KIND_MAP,
            chunksize=chunksize,
            ordered=ordered,
            front=FRONT_POOL,
            task_timeout=task_timeout,
            window=None,
            timeout_error=MpTimeoutError,
            progress=make_progress(progress, total),
        )

    def imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> IMapIterator:
        """Lazy `map`: reads the input as results are consumed; yields in input order."""
        return self._imap(func, iterable, chunksize, True, task_timeout, progress)

    def imap_unordered(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> IMapIterator:
        """Like `imap`, but yields results as they finish."""
        return self._imap(func, iterable, chunksize, False, task_timeout, progress)

    # --- insights (rpool extension) ---------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot of the pool: per-worker pid, tasks done, busy/idle seconds; queued and
        in-flight tasks, restarts and throughput. Counters lag by up to a fraction of a second.
        """
        runtime = self._runtime
        raw = runtime.core.stats() if runtime is not None else None
        # Imported here: `dataclasses` (and the `inspect` it pulls in) is ~0.4 MB that every
        # forked worker would inherit and tear down, for a method most programs never call.
        from rpool import _insights

        return _insights.collect(raw, self._created)

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Accepts no more tasks; workers exit once the queued ones are done."""
        with self._lock:
            if self._state == RUN and self._runtime is not None:
                self._state = CLOSE
                self._runtime.close()

    def terminate(self) -> None:
        """Stops the workers now; unfinished tasks fail."""
        with self._lock:
            self._state = TERMINATE
            runtime = self._runtime
        if runtime is not None and not runtime.forked_away:
            runtime.terminate()
            runtime.join()

    def join(self) -> None:
        """Waits for the workers to exit; call `close` or `terminate` first."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        runtime = self._runtime
        if runtime is not None and not runtime.forked_away:
            runtime.join()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is None or runtime.forked_away:
            return
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
            self._state = TERMINATE
            runtime.terminate()
