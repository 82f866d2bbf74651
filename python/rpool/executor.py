"""`rpool.ProcessPoolExecutor`: the `concurrent.futures` API on rpool's native core, with
Futures cheap enough to use per task."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import _base
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from rpool import _cloud
from rpool._fronts import (
    ExecutorFront,
    after_feeders,
    check_executor_options,
    map_deadline,
    map_sizing,
    queue_call,
)
from rpool._mapping import IMapIterator
from rpool._progress import ProgressArg, make_progress
from rpool._remote import FRONT_EXECUTOR
from rpool._runtime import KIND_STARMAP, Runtime

if TYPE_CHECKING:
    from rpool._insights import PoolStats

# Guards the lazy creation of Future conditions (see RpoolFuture); the native completion
# (`AsyncResult._complete_future`) holds it while it finishes a future that has none.
_CONDITION_LOCK = threading.Lock()


class _LazyList:
    """A per-instance list attribute made on first access: most futures never get a waiter or
    a done-callback, and two fewer objects per future means fewer garbage collections while
    thousands are pending. The list lives in ``_rpool<name>`` (class default None)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = "_rpool" + name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = getattr(instance, self.key)
        if value is None:
            with _LAZY_LIST_LOCK:  # racing first accesses must share one list
                value = getattr(instance, self.key)
                if value is None:
                    value = []
                    setattr(instance, self.key, value)
        return value

    def __set__(self, instance: Any, value: list[Any]) -> None:
        setattr(instance, self.key, value)


# Guards the lazy creation of a future's waiter and callback lists (see _LazyList).
_LAZY_LIST_LOCK = threading.Lock()


class RpoolFuture(futures.Future):  # type: ignore[type-arg]
    """A real `concurrent.futures.Future` whose `threading.Condition` is created only when
    something needs it: `as_completed`, `wait`, a done-callback, `exception()`, or a
    `result()` that cannot wait on the task itself. Completion without one never makes it:
    the notifier sets the result natively (see `AsyncResult._complete_future`), or `result()`
    waits on the task itself and completes the future in its own thread
    (`AsyncResult._complete_future_here`), which makes a Future several times cheaper to
    create and complete. Cancelling works while no worker has received the task."""

    _waiters = _LazyList()
    _done_callbacks = _LazyList()
    _rpool_waiters: list[Any] | None = None
    _rpool_done_callbacks: list[Any] | None = None

    # Defaults shared by all instances; assignments shadow them per instance.
    _rpool_cond: threading.Condition | None = None
    _result: Any = None
    _exception: BaseException | None = None
    _rpool_handle: Any = None
    _rpool_pending: dict[int, Any] | None = None

    def __init__(self) -> None:  # deliberately not calling Future.__init__ (it makes a Condition)
        self._state = _base.PENDING

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._rpool_cond
        if cond is None:
            with _CONDITION_LOCK:
                cond = self._rpool_cond
                if cond is None:
                    cond = self._rpool_cond = threading.Condition()
        return cond

    def _finish_without_waiters(self, result: Any, exception: BaseException | None) -> bool:
        """Completes the future if no thread has created its condition yet."""
        if self._rpool_cond is not None:
            return False
        with _CONDITION_LOCK:
            if self._rpool_cond is not None:
                return False
            if self._state in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED):
                raise _base.InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._exception = exception
            self._state = _base.FINISHED
        self._invoke_callbacks()
        return True

    def _invoke_callbacks(self) -> None:
        if self._rpool_done_callbacks:  # no list made: no callback added
            super()._invoke_callbacks()  # type: ignore[misc]

    def set_result(self, result: Any) -> None:
        if not self._finish_without_waiters(result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if exception is None or not self._finish_without_waiters(None, exception):
            super().set_exception(exception)

    def result(self, timeout: float | None = None) -> Any:
        if self._state != _base.FINISHED:
            handle = self._rpool_handle
            if handle is not None and self._rpool_cond is None and (timeout is None or timeout > 0):
                # Nothing else waits on this future and it has no callbacks: wait for the
                # task's outcome natively and complete the future in this thread, instead of
                # waiting for the notifier thread to be scheduled, take the GIL and wake this
                # one (a first result 0.27 -> 0.13 ms). The notifier then finds it done.
                deadline = None if timeout is None else time.monotonic() + timeout
                if not handle._complete_future_here(self, timeout):
                    raise TimeoutError
                if deadline is not None:
                    timeout = max(0.0, deadline - time.monotonic())
        if self._state == _base.FINISHED:  # done: no need for the condition
            if self._exception is not None:
                raise self._exception
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == _base.FINISHED:
            return self._exception
        return super().exception(timeout)

    def cancel(self) -> bool:
        handle = self._rpool_handle
        if handle is not None and handle.cancel():
            pending = self._rpool_pending
            if pending is not None:
                pending.pop(handle.task_id, None)
            self._rpool_handle = None
            cancelled = super().cancel()
            # What an executor does when it skips a cancelled work item: waiters in
            # `wait`/`as_completed` see it as done.
            self.set_running_or_notify_cancel()
            return cancelled
        with self._condition:
            return self._state in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        handle = self._rpool_handle
        if handle is not None and self._state == _base.PENDING:
            return bool(handle.running())
        return super().running()

    def _rpool_complete(self) -> None:
        """Called by the notifier once the task's outcome arrived."""
        handle = self._rpool_handle
        if handle is None:
            return
        try:
            handle._complete_future(self)
        except BaseException as exc:
            # Never leave the future unresolved (its waiters would hang): fail it instead.
            if self._state in (_base.PENDING, _base.RUNNING):
                self.set_exception(exc)
            raise


def _seed_shared_attribute_names() -> None:
    """CPython 3.11 keeps a class's instance attributes in one shared key table, but adds a
    name to it only while few instances exist (the room shrinks with each new instance): a
    name first set after that (`_result` on the first completion, `_rpool_cond` on the first
    wait) gives every later future a dict of its own, one more allocation and one more object
    for the garbage collector each. Setting every name once, on a throwaway future made
    before any real one, keeps them all in the shared table."""
    seed = RpoolFuture()
    for name in (
        "_rpool_handle",
        "_rpool_pending",
        "_result",
        "_exception",
        "_rpool_cond",
        "_rpool_waiters",
        "_rpool_done_callbacks",
    ):
        setattr(seed, name, None)


_seed_shared_attribute_names()


class ProcessPoolExecutor(ExecutorFront, futures.Executor):
    """A process pool with the `concurrent.futures.ProcessPoolExecutor` API.

    Differences (deliberate): a worker that dies fails only the future it was running (with
    `rpool.WorkerLostError`, a `BrokenProcessPool`) and is replaced, so the executor keeps
    serving; `map` picks a chunk size automatically when ``chunksize`` is None (the default).
    Keyword-only extensions: ``retries`` re-runs tasks lost to a dead worker;
    ``cloudpickle`` (default None: functions, arguments and the initializer fall back to
    cloudpickle when pickle refuses them; True: results too; False: never). See also `stats`
    and ``map(..., progress=)``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        retries: int = 0,
        cloudpickle: bool | None = None,
    ) -> None:
        self._runtime: Runtime | None = None
        self._created = time.monotonic()
        check_executor_options(max_workers, initializer, max_tasks_per_child)
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if mp_context is None:
            if max_tasks_per_child is not None:
                mp_context = multiprocessing.get_context("spawn")
            else:
                mp_context = multiprocessing.get_context()
        if max_tasks_per_child is not None:
            if mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError(
                    "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                    "start method; supply a different mp_context."
                )
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a non-negative int")
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._init_shutdown()
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._cloudpickle = cloudpickle
        spawned = mp_context.get_start_method(allow_none=False) != "fork"
        self._initializer, self._initargs = _cloud.boot_for(
            cloudpickle, initializer, self._initargs, spawned
        )
        self._max_tasks_per_child = max_tasks_per_child
        self._retries = retries

    @property
    def _broken(self) -> str | bool:
        """The stdlib's private flag, kept for code that polls it: a message once the
        executor is broken (its initializer failed), else False."""
        runtime = self._runtime
        if runtime is not None and runtime.broken:  # the flag submit() checks
            return "A child process terminated abruptly, the process pool is not usable anymore"
        return False

    def _start_runtime(self) -> Runtime:
        """Starts the workers on first use, as the stdlib executor does."""
        with self._shutdown_lock:
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._runtime is None:
                runtime = Runtime(
                    processes=self._max_workers,
                    initializer=self._initializer,
                    initargs=self._initargs,
                    max_tasks=self._max_tasks_per_child,
                    ctx=self._mp_context,
                    retries=self._retries,
                    front=FRONT_EXECUTOR,
                    daemon=False,
                    worker_label="Process",
                )
                runtime.graceful_exit = True
                runtime.cloudpickle = self._cloudpickle is not False
                self._runtime = runtime
            return self._runtime

    def _live_runtime(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            # The call that starts the workers is accepted even if they break at once; its
            # future carries the failure (as in the stdlib, which starts workers on first
            # submit). The engine accepts tasks for a broken pool and fails them.
            return self._start_runtime()
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        try:  # a broken pool raises InitializerError (with the initializer's exception) here
            runtime.check_usable()
        except ValueError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return runtime

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        """Schedules ``fn(*args, **kwargs)``; returns a `concurrent.futures.Future`."""
        return self._submit(fn, args, kwargs, None)

    def submit_with(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> futures.Future[Any]:
        """Like `submit`, with options (rpool extension).

        ``timeout``: seconds the task may run; past it its worker is killed and replaced and
        the future fails with `rpool.TaskTimeoutError`.
        """
        if timeout is not None and not timeout > 0:  # NaN too
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return self._submit(fn, tuple(args), kwargs or {}, timeout)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> futures.Future[Any]:
        runtime = self._runtime
        if runtime is None or self._shutdown_thread or runtime.broken or runtime.forked_away:
            runtime = self._live_runtime()  # starts the workers, or raises the right error
        future = RpoolFuture()
        func_id = runtime.func_id(fn)
        try:
            handle = queue_call(runtime, fn, func_id, args, kwargs, True, FRONT_EXECUTOR, timeout)
        except ValueError:  # closed concurrently by shutdown()
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        if isinstance(handle, BaseException):
            future.set_exception(handle)
            return future
        future._rpool_handle = handle
        future._rpool_pending = runtime.pending
        runtime.pending[handle.task_id] = future
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: ProgressArg = None,
    ) -> Iterator[Any]:
        """Returns an iterator of ``fn(*items)`` in input order, computed in chunks.

        ``chunksize=None`` picks a chunk size (the stdlib's default of 1 is the slow case).
        ``buffersize`` bounds the number of chunks in flight, so an endless input works.
        ``timeout`` counts from this call; past it, iteration raises `TimeoutError`.
        ``progress`` (rpool extension): True for a tqdm bar, a tqdm-like object, or a callable
        ``f(done, total)``; advanced as chunks finish.
        """
        deadline = map_deadline(timeout, chunksize, buffersize)
        runtime = self._live_runtime()
        total, chunksize, window = map_sizing(iterables, chunksize, buffersize, self._max_workers)
        results = IMapIterator(
            runtime,
            fn,
            zip(*iterables),  # noqa: B905 - stops at the shortest input, like the stdlib
            kind=KIND_STARMAP,
            chunksize=chunksize,
            ordered=True,
            front=FRONT_EXECUTOR,
            task_timeout=None,
            window=window,
            timeout_error=futures.TimeoutError,
            deadline=deadline,
            progress=make_progress(progress, total),
        )
        return self._map_results(results)

    def stats(self) -> PoolStats:
        """A snapshot of the executor (rpool extension): per-worker pid, tasks done, busy/idle
        seconds; queued and in-flight tasks, restarts and throughput. Before the first
        submission no worker has started and the snapshot is empty."""
        runtime = self._runtime
        raw = runtime.core.stats() if runtime is not None else None
        # Imported here: `dataclasses` (and the `inspect` it pulls in) is ~0.4 MB that every
        # forked worker would inherit and tear down, for a method most programs never call.
        from rpool import _insights

        return _insights.collect(raw, self._created)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accepts no more work; waits for running and pending work when ``wait`` is true.

        ``cancel_futures=True`` cancels futures that no worker has received yet.
        """
        runtime = self._runtime
        feeders = self._stop_accepting()
        if runtime is None or runtime.forked_away:
            return
        if cancel_futures:
            # The stdlib has already moved the next max_workers (+1) items into its call queue,
            # where they can no longer be cancelled; keep that guarantee that some work runs.
            committed = self._max_workers
            for task_id in sorted(runtime.pending):
                entry = runtime.pending.get(task_id)
                if not isinstance(entry, RpoolFuture):
                    continue
                if committed > 0 and entry._state == _base.PENDING:
                    committed -= 1
                    continue
                entry.cancel()
        after_feeders(feeders, runtime.close, wait, "rpool-shutdown")
        if wait:
            runtime.join()

    def terminate_workers(self) -> None:
        """Terminates every worker now (SIGTERM) and shuts the executor down; unfinished
        futures fail with `BrokenProcessPool`."""
        self._stop_workers(signal.SIGTERM)

    def kill_workers(self) -> None:
        """Kills every worker now (SIGKILL) and shuts the executor down; unfinished futures
        fail with `BrokenProcessPool`."""
        self._stop_workers(signal.SIGKILL)

    def _stop_workers(self, signum: int) -> None:
        runtime = self._runtime
        self._stop_accepting()
        if runtime is None or runtime.forked_away:
            return
        runtime.core.terminate()
        runtime.kill_workers(signum)
        runtime.terminate()
        runtime.join()

    def __del__(self) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is not None and not runtime.forked_away and not self._shutdown_thread:
            runtime.close()
