"""Chunked `map` machinery shared by `Pool` and `ProcessPoolExecutor` (and, for lazy maps and
waiting on results, by `rpool.dask`).

`MapResult` collects the chunks of an eager map; `EventResult` is its waiting side.
`LazyMapIterator` is a lazy map's consumer side: a feeder thread reads its input and hands chunks
to a `ChunkSink`, with a bounded window of chunks in flight, and it yields results in order (or
as they finish). `IMapIterator` is the local one, whose sink submits to the runtime; its chunk
results arrive through the runtime's notifier thread.
"""

from __future__ import annotations

import itertools
import pickle
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from multiprocessing import TimeoutError as MpTimeoutError
from typing import Any, Generic, Self, TypeVar

from rpool import _cloud, _rpool
from rpool._progress import Progress
from rpool._remote import PROTOCOL
from rpool._runtime import Runtime

# Chunks in flight per worker for lazy maps (rpool.dask counts cluster threads as workers): enough
# to keep every worker busy while results are being consumed, small enough that an endless input
# is read only a little ahead.
WINDOW_CHUNKS_PER_WORKER = 4

T = TypeVar("T")


def split_chunks(items: Iterable[Any], chunksize: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, chunksize))
        if not chunk:
            return
        yield chunk


def check_chunksize(chunksize: int | None) -> None:
    if chunksize is None:
        return
    if not isinstance(chunksize, int) or isinstance(chunksize, bool):
        raise TypeError(f"chunksize must be an int or None, not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize}")


def pickle_chunk(func: object, func_id: int, chunk: list[Any], cloud: bool = False) -> bytes:
    """A chunk's payload; with `cloud` what pickle refuses is retried with cloudpickle."""
    try:
        if cloud and not func_id:
            return _cloud.dumps_inline((func, chunk), func)
        return pickle.dumps(chunk if func_id else (func, chunk), PROTOCOL)
    except Exception as exc:
        if not cloud:
            raise
        try:
            return _cloud.chunk_payload(func, func_id, chunk)
        except Exception as error:
            raise _cloud.prefer_object_error(exc, error) from None


def _wake_loops(wakers: Any) -> None:
    """Wakes the event loops waiting in ``async for`` (only set once `rpool._aio` is in use;
    it is not imported at start-up because `asyncio` costs ~40 ms to import)."""
    from rpool._aio import wake_loops

    wake_loops(wakers)


class _ChunkEntry:
    """One chunk of a map in flight. `index`: its position among the chunks (lazy maps);
    for `MapResult`, where its results start in the map's list."""

    __slots__ = ("owner", "index", "handle", "size")

    def __init__(self, owner: Any, index: int, handle: Any, size: int) -> None:
        self.owner = owner
        self.index = index
        self.handle = handle
        self.size = size

    def _rpool_complete(self) -> None:
        owner = self.owner
        if owner._set_aside(self):
            return
        handle = self.handle
        placed = False
        try:
            target = owner._target()
            if target is None:
                ok, value = handle._resolve()
            else:
                ok, value, placed = handle._resolve_into(target, self.index, self.size)
        finally:
            handle._publish()
        owner._chunk_done(self, ok, value, placed)


class EventResult(Generic[T]):
    """The waiting side of a result that is settled once (``_success``, ``_value``) and then
    signalled through ``_event``: `multiprocessing.pool.AsyncResult`'s methods. Local map results
    and all of `rpool.dask`'s results use it."""

    _event: threading.Event
    _success: bool
    _value: Any

    def ready(self) -> bool:
        """True once the result is in: it finished (for a map: all chunks did) or failed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether it succeeded; `ValueError` if it is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Waits until it is ready or `timeout` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Returns the result (for a map: the list of results) or raises the failure;
        `multiprocessing.TimeoutError` if it is not ready within `timeout` seconds."""
        if not self._event.wait(timeout):
            raise MpTimeoutError
        if self._success:
            value: T = self._value
            return value
        raise self._value


class MapResult(EventResult[list[Any]]):
    """Result of `map_async`/`starmap_async`: same methods as `AsyncResult`."""

    # ``progress=`` of the map (rpool extension), advanced per finished chunk.
    _progress: Progress | None = None

    def __init__(
        self,
        callback: Callable[[list[Any]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._lock = threading.Lock()
        # The map's results, placed chunk by chunk as they arrive (in the notifier, while the
        # workers still compute), instead of concatenating every chunk at the end.
        self._results: list[Any] | None = None
        self._capacity = 0
        self._dispatched = 0  # items sent so far; where the next chunk's results go
        # While the calling thread still sends chunks, finished ones wait here unpickled: the
        # notifier decoding them would take the GIL from the sender in 5 ms slices and starve
        # the workers (1M ints: the last chunk left after 42-77 ms instead of ~15 ms).
        self._sending = False
        self._set_aside_entries: list[_ChunkEntry] = []
        self._left = 0
        self._success = True
        self._value: Any = None

    def _start(self, chunks: int, items: int) -> None:
        """Expects `chunks` chunk results holding at most `items` items together (an empty map
        is ready at once)."""
        self._left = chunks
        self._capacity = items
        if chunks == 0:
            self._value = []
            self._event.set()

    def _begin_sending(self) -> None:
        self._sending = True

    def _end_sending(self, runtime: Runtime) -> None:
        """Called by the sending thread after its last chunk (or a failure): the chunks set
        aside meanwhile go back to the notifier, which runs callbacks as usual."""
        with self._lock:
            self._sending = False
            entries, self._set_aside_entries = self._set_aside_entries, []
        if entries:
            runtime.hand_back(entries)

    def _set_aside(self, entry: _ChunkEntry) -> bool:
        """The notifier's hook: keeps a finished chunk for later while chunks are being sent."""
        if not self._sending:
            return False
        with self._lock:
            if not self._sending:
                return False
            self._set_aside_entries.append(entry)
            return True

    def _target(self) -> list[Any] | None:
        """The map's result list while results still go into it."""
        with self._lock:
            if self._event.is_set() or not self._success:
                return None
            return self._results_locked()

    def _results_locked(self) -> list[Any]:
        """The result list, made on first use (call holding ``_lock``)."""
        if self._results is None:
            self._results = [None] * self._capacity
        return self._results

    def _add_chunk(self, runtime: Runtime, handle: Any, size: int) -> None:
        """Registers the next chunk (chunks are added in input order)."""
        entry = _ChunkEntry(self, self._dispatched, handle, size)
        self._dispatched += size
        runtime.pending[handle.task_id] = entry

    def _fail_now(self, exc: BaseException) -> None:
        """Fails the whole map from the calling thread (e.g. an item could not be pickled);
        chunks already sent still run, their results are dropped."""
        with self._lock:
            if self._event.is_set():
                return
            self._success = False
            self._value = exc
            self._results = None
        if self._progress is not None:
            self._progress.close()
        try:
            if self._error_callback is not None:
                self._error_callback(exc)
        finally:
            self._event.set()

    def _chunk_done(self, entry: _ChunkEntry, ok: bool, value: Any, placed: bool = False) -> None:
        """A chunk's outcome; `placed`: its values are already in the result list."""
        with self._lock:
            if self._event.is_set() or not self._success:
                return
            if not ok:
                self._success = False
                self._value = value
                self._results = None
                finished = True
            else:
                results = self._results_locked()
                if not placed:
                    results[entry.index : entry.index + entry.size] = value
                self._left -= 1
                finished = self._left == 0
                if finished:
                    # The input may have had fewer items than its length said at the start.
                    del results[self._dispatched :]
                    self._value = results
                    self._results = None
        progress = self._progress
        if progress is not None:
            if ok:
                progress.advance(entry.size)
            if finished:
                progress.close()
        if not finished:
            return
        try:
            if self._success:
                if self._callback is not None:
                    self._callback(self._value)
            elif self._error_callback is not None:
                self._error_callback(self._value)
        finally:
            self._event.set()

    def __await__(self) -> Generator[Any, None, list[Any]]:
        """``await pool.map_async(...)`` inside a coroutine, without blocking the loop."""
        from rpool._aio import wrap_async

        return wrap_async(self).__await__()


class _LazyMapState:
    """State shared by a lazy map's iterator, its feeder thread and the thread that completes its
    chunks (the runtime's notifier, or Dask's callback thread)."""

    def __init__(self, ordered: bool, window: int) -> None:
        self.cond = threading.Condition()
        self.ordered = ordered
        self.done_chunks: dict[int, tuple[bool, Any]] = {}
        self.arrival: deque[tuple[bool, Any]] = deque()
        self.total: int | None = None
        self.window = threading.Semaphore(window)
        self.abandoned = False
        self.sizer: Any = None
        # rpool extensions: ``progress=``, and coroutines awaiting a chunk (``async for``).
        self.progress: Progress | None = None
        self.async_wakers: list[Any] = []

    def _set_aside(self, entry: _ChunkEntry) -> bool:
        """Lazy maps send and collect in step (their window), so nothing is set aside."""
        return False

    def _target(self) -> None:
        """Lazy maps hand each chunk's list to the consumer as it is."""
        return None

    def _chunk_done(self, entry: _ChunkEntry, ok: bool, value: Any, placed: bool = False) -> None:
        """The runtime's completion hook (this state owns the chunk's `_ChunkEntry`)."""
        self.chunk_done(entry.index, entry.size, ok, value, entry.handle.compute_seconds)

    def chunk_done(self, index: int, size: int, ok: bool, value: Any, seconds: float) -> None:
        """Records chunk `index` (`size` items, `seconds` of compute) and wakes the consumer."""
        if ok and self.sizer is not None:
            self.sizer.observe(size, seconds)
        if self.progress is not None:
            self.progress.advance(size)
        with self.cond:
            if self.ordered:
                self.done_chunks[index] = (ok, value)
            else:
                self.arrival.append((ok, value))
            self.cond.notify_all()
            if self.async_wakers:
                _wake_loops(self.async_wakers)

    def deliver_error(self, index: int, exc: BaseException) -> None:
        with self.cond:
            if self.ordered:
                self.done_chunks[index] = (False, exc)
            else:
                self.arrival.append((False, exc))
            self.total = index + 1
            self.cond.notify_all()
            if self.async_wakers:
                _wake_loops(self.async_wakers)
        if self.progress is not None:
            self.progress.close()

    def finish(self, total: int) -> None:
        with self.cond:
            self.total = total
            self.cond.notify_all()
            if self.async_wakers:
                _wake_loops(self.async_wakers)


class ChunkSink:
    """Where a lazy map's feeder thread sends its chunks: the local runtime (`_RuntimeSink`) or a
    Dask cluster (`rpool.dask`). A sink must not refer to the iterator, only to its state, so
    that an iterator the caller drops is collected and its feeder stops."""

    def open(self) -> None:
        """Runs on the feeder thread once the input is open, before the first chunk; what it
        raises reaches the consumer as the map's error."""

    def send(self, state: _LazyMapState, index: int, chunk: list[Any]) -> None:
        """Sends chunk `index`; its outcome must reach `state` (`chunk_done`)."""
        raise NotImplementedError

    def halted(self) -> bool:
        """True once sent chunks can no longer finish (the feeder then stops waiting)."""
        return False


class _RuntimeSink(ChunkSink):
    """Sends chunks to the local workers; the runtime's notifier thread completes them."""

    def __init__(
        self,
        runtime: Runtime,
        func: Callable[..., Any],
        kind: int,
        front: int,
        task_timeout: float | None,
    ) -> None:
        self.runtime = runtime
        self.func = func
        self.kind = kind
        self.front = front
        self.task_timeout = task_timeout
        self.func_id = 0

    def open(self) -> None:
        self.func_id = self.runtime.func_id(self.func)

    def send(self, state: _LazyMapState, index: int, chunk: list[Any]) -> None:
        runtime = self.runtime
        payload = pickle_chunk(self.func, self.func_id, chunk, runtime.cloudpickle)
        runtime.check_usable()
        handle = runtime.core.submit(
            self.kind, self.func_id, payload, True, self.front, self.task_timeout
        )
        runtime.pending[handle.task_id] = _ChunkEntry(state, index, handle, len(chunk))

    def halted(self) -> bool:
        return self.runtime.finished


def _feed(
    state: _LazyMapState, iterable: Iterable[Any], chunksize: int | None, sink: ChunkSink
) -> None:
    index = 0
    items = 0
    try:
        iterator = iter(iterable)
        sink.open()
        while not state.abandoned:
            size = chunksize if chunksize is not None else state.sizer.next_size()
            try:
                chunk = list(itertools.islice(iterator, size))
            except BaseException as exc:  # noqa: BLE001 - raised to the consumer in order
                state.deliver_error(index, exc)
                return
            if not chunk:
                break
            while not state.window.acquire(timeout=0.1):
                if state.abandoned or sink.halted():
                    return
            sink.send(state, index, chunk)
            index += 1
            items += len(chunk)
        if state.progress is not None and not state.abandoned:
            state.progress.set_total(items)
        state.finish(index)
    except BaseException as exc:  # noqa: BLE001 - raised to the consumer in order
        state.deliver_error(index, exc)


def lazy_chunksize(iterable: Iterable[Any], chunksize: int | None, processes: int) -> int | None:
    """A lazy map's chunk size: as given, else the automatic one for an input of known length,
    else None (the feeder then sizes chunks from the compute times of finished ones)."""
    if chunksize is None and hasattr(iterable, "__len__"):
        return _rpool.default_chunksize(len(iterable), processes)  # type: ignore[arg-type]
    return chunksize


def default_window(processes: int) -> int:
    """Chunks a lazy map keeps in flight unless told otherwise."""
    return max(2, WINDOW_CHUNKS_PER_WORKER * processes)


class LazyMapIterator(Iterator[Any]):
    """The consumer side of a lazy map, whichever sink runs its chunks: a feeder thread reads
    the input and sends chunks at most ``window`` ahead of the consumer; results come out in
    input order, or as chunks finish.

    ``next(timeout)`` raises the pool's timeout error if no result arrives in time.
    """

    _state: _LazyMapState
    _feeder: threading.Thread

    def _start(
        self,
        sink: ChunkSink,
        iterable: Iterable[Any],
        *,
        chunksize: int | None,
        ordered: bool,
        window: int,
        timeout_error: type[BaseException],
        deadline: float | None,
        progress: Progress | None,
        thread_name: str,
    ) -> None:
        """Starts the feeder; `chunksize` None sizes chunks as results come back."""
        self._state = _LazyMapState(ordered, window)
        if chunksize is None:
            self._state.sizer = _rpool.ChunkSizer()
        self._state.progress = progress
        self._timeout_error = timeout_error
        self._deadline = deadline
        self._buffer: deque[Any] = deque()
        self._next_index = 0
        self._feeder = threading.Thread(
            target=_feed,
            args=(self._state, iterable, chunksize, sink),
            name=thread_name,
            daemon=True,
        )
        self._feeder.start()

    def __iter__(self) -> Self:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """Returns the next result, waiting at most `timeout` seconds."""
        if self._buffer:
            return self._buffer.popleft()
        state = self._state
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            timeout = left if timeout is None else min(timeout, left)
        end = None if timeout is None else time.monotonic() + timeout
        with state.cond:
            while True:
                got = self._take_chunk_locked()
                if got is not None:
                    break
                if state.total is not None and self._next_index >= state.total:
                    raise StopIteration
                if end is None:
                    state.cond.wait()
                else:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise self._timeout_error()
                    state.cond.wait(left)
        state.window.release()
        ok, value = got
        if not ok:
            raise value
        self._buffer.extend(value)
        if self._buffer:
            return self._buffer.popleft()
        return self.next(timeout)

    __next__ = next

    def _take_chunk_locked(self) -> tuple[bool, Any] | None:
        state = self._state
        if state.ordered:
            got = state.done_chunks.pop(self._next_index, None)
        else:
            got = state.arrival.popleft() if state.arrival else None
        if got is not None:
            self._next_index += 1
        return got

    def close(self) -> None:
        """Stops reading the input; chunks already sent still run."""
        self._state.abandoned = True
        if self._state.progress is not None:
            self._state.progress.close()

    def __del__(self) -> None:
        self._state.abandoned = True
        if self._state.progress is not None:
            self._state.progress.close()


class IMapIterator(LazyMapIterator):
    """Iterator returned by `imap`/`imap_unordered` (and used by `Executor.map`).

    ``next(timeout)`` raises the pool's timeout error if no result arrives in time.
    """

    def __init__(
        self,
        runtime: Runtime,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        kind: int,
        chunksize: int | None,
        ordered: bool,
        front: int,
        task_timeout: float | None,
        window: int | None,
        timeout_error: type[BaseException],
        deadline: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._start(
            _RuntimeSink(runtime, func, kind, front, task_timeout),
            iterable,
            chunksize=lazy_chunksize(iterable, chunksize, runtime.processes),
            ordered=ordered,
            window=default_window(runtime.processes) if window is None else window,
            timeout_error=timeout_error,
            deadline=deadline,
            progress=progress,
            thread_name="rpool-feeder",
        )

    def __aiter__(self) -> IMapIterator:
        """``async for x in pool.imap(...)``: results are awaited without blocking the loop."""
        return self

    def __anext__(self) -> Awaitable[Any]:
        from rpool._aio import imap_anext  # asyncio is imported only by code that uses it

        return imap_anext(self)
