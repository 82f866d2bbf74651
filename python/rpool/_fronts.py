"""What the local fronts (`rpool.pool`, `rpool.executor`) and `rpool.dask`'s have in common,
whatever runs their tasks: the constructors' argument checks, `Pool`'s states and the methods
that only look at them, and `Executor.map`'s option checks, input sizing and the bookkeeping of
its feeder threads that `shutdown` waits for. Also the local `apply_async`/`submit` pickling.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from rpool import _cloud, _rpool
from rpool._mapping import LazyMapIterator, check_chunksize
from rpool._remote import PROTOCOL
from rpool._runtime import KIND_CALL, Runtime
from rpool._split import SplitPickle, call_is_large

# `Pool._state`: accepting tasks, closed (queued tasks still run), terminated.
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"


def check_pool_options(
    processes: int | None,
    maxtasksperchild: int | None,
    initializer: Callable[..., object] | None,
) -> None:
    """`Pool`'s checks of its stdlib arguments, with the stdlib's errors."""
    if processes is not None and processes < 1:
        raise ValueError("Number of processes must be at least 1")
    if maxtasksperchild is not None:
        if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
            raise ValueError("maxtasksperchild must be a positive int or None")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")


def describe_unpicklable(args: tuple[Any, ...], kwds: Mapping[str, Any]) -> str:
    """Names the arguments that cannot be pickled (only called after pickling failed)."""
    bad = []
    for position, value in enumerate(args):
        try:
            pickle.dumps(value, PROTOCOL)
        except Exception:
            bad.append(f"argument {position} ({type(value).__module__}.{type(value).__qualname__})")
    for name, value in kwds.items():
        try:
            pickle.dumps(value, PROTOCOL)
        except Exception:
            bad.append(f"keyword {name!r} ({type(value).__module__}.{type(value).__qualname__})")
    if not bad:
        return "rpool: the task's function or arguments could not be pickled"
    return "rpool: could not pickle the task's " + ", ".join(bad)


def pickle_call(
    runtime: Runtime,
    func: Callable[..., Any],
    func_id: int,
    args: tuple[Any, ...],
    kwds: Mapping[str, Any] | None,
) -> bytes | list[bytes | memoryview] | BaseException:
    """The payload of one local call ``func(*args, **kwds)`` (`func_id` from the runtime's
    cache, 0: inline); or, if it cannot be pickled, the error to fail the call with (noted
    with the arguments pickle refused when that error is pickle's own). Arguments holding
    large buffers become the parts of a split pickle (see `rpool._split`), which the engine
    writes straight into a shared-memory segment when the task is dispatched."""
    try:
        if call_is_large(args, kwds):  # type: ignore[arg-type]
            call = (args, kwds or None) if func_id else (func, args, kwds or None)
            return SplitPickle(call, _CALL_SEARCH_DEPTH).parts()
        if func_id:
            return pickle.dumps((args, kwds or None), PROTOCOL)
        if runtime.cloudpickle:
            return _cloud.dumps_inline((func, args, kwds or None), func)
        return pickle.dumps((func, args, kwds or None), PROTOCOL)
    except Exception as exc:
        try:
            if not runtime.cloudpickle:
                raise
            return _cloud.call_payload(func, func_id, args, kwds)
        except Exception as error:
            error = _cloud.prefer_object_error(exc, error)
            if error is exc:
                error.add_note(describe_unpicklable(args, kwds or {}))
            return error


def queue_call(
    runtime: Runtime,
    func: Callable[..., Any],
    func_id: int,
    args: tuple[Any, ...],
    kwds: Mapping[str, Any] | None,
    notify: bool,
    front: int,
    timeout: float | None,
) -> Any:
    """Queues the local call ``func(*args, **kwds)`` (`apply_async`, `submit`) and returns its
    handle; or, if it cannot be pickled, returns the error to fail the call with. Plain
    positional arguments are pickled natively (`Core.submit_plain_call`), anything else by
    `pickle_call`. A call with large buffers is resolved by the notifier as soon as it
    arrives, like one with callbacks (``handle.notifies``): its result then frees its
    shared-memory segment for the next result instead of holding it until it is asked for (a
    fresh segment costs ~4 ms per 8 MiB)."""
    core = runtime.core
    if not kwds:
        handle = core.submit_plain_call(func_id, args, notify, front, timeout)
        if handle is not None:
            return handle
    payload = pickle_call(runtime, func, func_id, args, kwds)
    if isinstance(payload, BaseException):
        return payload
    notify = notify or type(payload) is not bytes
    return core.submit(KIND_CALL, func_id, payload, notify, front, timeout)


#: The call tuple is one level above the arguments `call_is_large` searched.
_CALL_SEARCH_DEPTH = 4


def check_executor_options(
    max_workers: int | None,
    initializer: Callable[..., object] | None,
    max_tasks_per_child: int | None,
) -> None:
    """`ProcessPoolExecutor`'s checks of its stdlib arguments, with the stdlib's errors (the
    local executor also refuses ``max_tasks_per_child`` with the fork start method)."""
    if max_workers is not None and max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if max_tasks_per_child is not None:
        if not isinstance(max_tasks_per_child, int):
            raise TypeError("max_tasks_per_child must be an integer")
        if max_tasks_per_child <= 0:
            raise ValueError("max_tasks_per_child must be >= 1")


class PoolFront:
    """`Pool` methods that depend only on its state; a subclass sets ``_state`` and
    ``_processes`` and defines `terminate`."""

    _state: str
    _processes: int

    def terminate(self) -> None:
        raise NotImplementedError

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} state={self._state} pool_size={self._processes}>"

    def __enter__(self) -> Self:
        if self._state != RUN:
            raise ValueError("Pool not running")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()


def map_deadline(
    timeout: float | None, chunksize: int | None, buffersize: int | None
) -> float | None:
    """Checks `Executor.map`'s options; returns the monotonic time ``timeout`` (counted from
    the call) ends at, or None."""
    if buffersize is not None:
        if not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
    check_chunksize(chunksize)
    return None if timeout is None else time.monotonic() + timeout


def map_sizing(
    iterables: tuple[Iterable[Any], ...],
    chunksize: int | None,
    buffersize: int | None,
    workers: int,
) -> tuple[int | None, int | None, int]:
    """`Executor.map`'s input length (the shortest input's, None if one has no length), chunk
    size (None: sized as results come back) and window of chunks in flight."""
    total = None
    if iterables and all(hasattr(i, "__len__") for i in iterables):
        total = min(len(i) for i in iterables)  # type: ignore[arg-type]
    if chunksize is None and total is not None:
        chunksize = _rpool.default_chunksize(total, workers)
    window = buffersize if buffersize is not None else sys.maxsize
    return total, chunksize, window


def _result_iterator(results: LazyMapIterator) -> Iterator[Any]:
    try:
        yield from results
    finally:
        results.close()


def _join_then(feeders: list[threading.Thread], finish: Callable[[], object]) -> None:
    for feeder in feeders:
        feeder.join()
    finish()


class ExecutorFront:
    """An executor's shutdown flag and the feeder threads of its maps, which `shutdown` lets
    finish reading their input before it closes the pool."""

    _shutdown_lock: threading.Lock
    _shutdown_thread: bool
    _feeders: list[threading.Thread]

    def _init_shutdown(self) -> None:
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._feeders = []

    def _map_results(self, results: LazyMapIterator) -> Iterator[Any]:
        """What `map` returns for `results`; `shutdown` will wait for its feeder."""
        with self._shutdown_lock:
            self._feeders = [t for t in self._feeders if t.is_alive()]
            self._feeders.append(results._feeder)
        return _result_iterator(results)

    def _stop_accepting(self) -> list[threading.Thread]:
        """Marks the executor shut down; returns the feeders that may still be reading."""
        with self._shutdown_lock:
            self._shutdown_thread = True
            return list(self._feeders)


def after_feeders(
    feeders: list[threading.Thread], finish: Callable[[], object], wait: bool, thread_name: str
) -> None:
    """Calls `finish` once `feeders` have stopped: now, or (``wait`` false) on a daemon thread."""
    if wait:
        _join_then(feeders, finish)
    else:
        threading.Thread(
            target=_join_then, args=(feeders, finish), name=thread_name, daemon=True
        ).start()
