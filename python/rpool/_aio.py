"""asyncio bridges: ``await rpool.wrap_async(result)`` and ``async for x in pool.imap(...)``.

- `imap`/`imap_unordered` iterators are pushed to: the notifier thread, which stores each
  finished chunk, also wakes the event loops waiting for one (``call_soon_threadsafe``). No
  thread ever blocks on the loop's behalf.
- `AsyncResult` is a native class whose completion reaches Python only when a callback was
  given, so `wrap_async` hands results to one shared waiter thread. It blocks (GIL released)
  on the oldest result for a short slice, then sweeps every result it holds with ``ready()``;
  the slice grows while nothing finishes (`WAIT_SLICE_MIN` .. `WAIT_SLICE_MAX`), so an idle
  waiter wakes 50 times a second and a busy one delivers results within a millisecond.
  Results are unpickled in the loop's thread (``get(0)``), exceptions included.
- `concurrent.futures.Future`s (the executor's) go through ``asyncio.wrap_future``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpool._mapping import IMapIterator

# Shortest and longest wait of the waiter thread on its oldest result before sweeping the rest:
# short slices deliver out-of-order completions sooner, long ones cost less CPU when idle.
WAIT_SLICE_MIN = 0.001
WAIT_SLICE_MAX = 0.02


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    try:
        value = result.get(0)
    except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
        future.set_exception(exc)
    else:
        future.set_result(value)


class _Waiter:
    """The shared thread that watches `AsyncResult`s awaited through `wrap_async`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[tuple[Any, asyncio.Future[Any], asyncio.AbstractEventLoop]] = []
        self._thread: threading.Thread | None = None

    def add(
        self, result: Any, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        with self._cond:
            self._items.append((result, future, loop))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rpool-aio", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        slice_seconds = WAIT_SLICE_MIN
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                oldest = self._items[0][0]
            try:
                oldest.wait(slice_seconds)
            except BaseException:  # noqa: BLE001 - its get() reports the problem
                pass
            with self._cond:
                items = self._items
                self._items = []
            keep = []
            settled = False
            for item in items:
                result, future, loop = item
                if future.done():  # cancelled by its coroutine
                    continue
                if result.ready():
                    settled = True
                    try:
                        loop.call_soon_threadsafe(_settle, future, result)
                    except RuntimeError:
                        pass  # the loop is closed: nobody is waiting any more
                else:
                    keep.append(item)
            with self._cond:
                self._items[:0] = keep
            slice_seconds = WAIT_SLICE_MIN if settled else min(slice_seconds * 2, WAIT_SLICE_MAX)


_waiter = _Waiter()


def wrap_async(result: Any) -> Awaitable[Any]:
    """Makes a pool result awaitable from a coroutine, without blocking the event loop.

    Accepts what `apply_async` (`AsyncResult`), `map_async`/`starmap_async` (`MapResult`) and
    `ProcessPoolExecutor.submit` (a `concurrent.futures.Future`) return::

        value = await rpool.wrap_async(pool.apply_async(f, (x,)))

    Must be called with a running event loop. Cancelling the await does not cancel the task.
    """
    if isinstance(result, concurrent.futures.Future):
        return asyncio.wrap_future(result)
    if not all(hasattr(result, name) for name in ("get", "ready", "wait")):
        raise TypeError(f"rpool.wrap_async expects a pool result, not {type(result).__name__}")
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    if result.ready():
        _settle(future, result)
    else:
        _waiter.add(result, future, loop)
    return future


def _wake(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


def wake_loops(wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]]) -> None:
    """Wakes coroutines waiting in `imap_anext` (called with the iterator's state locked)."""
    for loop, future in wakers:
        try:
            loop.call_soon_threadsafe(_wake, future)
        except RuntimeError:
            pass  # the loop is closed
    wakers.clear()


_NOTHING = object()


async def imap_anext(iterator: IMapIterator) -> Any:
    """`IMapIterator.__anext__`: the next result, awaiting the notifier without a thread."""
    while True:
        if iterator._buffer:
            return iterator._buffer.popleft()
        state = iterator._state
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[Any] = loop.create_future()
        with state.cond:
            state.async_wakers.append((loop, woken))
        # Registered before looking, so a chunk that lands in between still wakes us.
        try:
            value = iterator.next(timeout=0)
        except StopIteration:
            raise StopAsyncIteration from None
        except iterator._timeout_error:
            deadline = iterator._deadline
            if deadline is not None and time.monotonic() >= deadline:
                raise
            value = _NOTHING
        if value is not _NOTHING:
            return value
        await woken
