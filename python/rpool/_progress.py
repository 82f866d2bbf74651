"""``progress=`` on the map family: a tqdm bar or a callback, advanced per finished chunk.

The notifier thread already runs once per finished chunk (`_ChunkEntry._rpool_complete`), so
the bar is advanced there by the chunk's size: a million tiny tasks in chunks of a few
thousand cost a few hundred updates, not a million. tqdm is imported only for
``progress=True`` (``pip install rpool[progress]``); ``tqdm.auto`` picks the notebook widget
in Jupyter.

Accepted values: ``None``/``False`` (off), ``True`` (a new bar, closed when the map ends), a
tqdm-like object with ``update(n)`` (advanced, never closed: its owner closes it), or a callable
``f(done, total)`` (``total`` is None until the input's length is known), called in rpool's
notifier thread.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeAlias

ProgressArg: TypeAlias = "bool | Callable[[int, int | None], object] | Any | None"


def _new_bar(total: int | None) -> Any:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "rpool: progress=True needs tqdm (pip install 'rpool[progress]'); "
            "or pass a callable progress=f(done, total)"
        ) from exc
    return tqdm(total=total, unit="task", dynamic_ncols=True)


class Progress:
    """Counts finished items of one map and reports them to a bar or a callback."""

    __slots__ = ("done", "total", "_bar", "_owned", "_callback", "_closed", "_lock")

    def __init__(
        self,
        bar: Any,
        owned: bool,
        callback: Callable[[int, int | None], object] | None,
        total: int | None,
    ) -> None:
        self.done = 0
        self.total = total
        self._bar = bar
        self._owned = owned
        self._callback = callback
        self._closed = False
        self._lock = threading.Lock()

    def advance(self, items: int) -> None:
        """Records `items` more finished items (called by the notifier thread)."""
        with self._lock:
            if self._closed:
                return
            self.done += items
            self._report(items)
            if self.total is not None and self.done >= self.total:
                self._close_locked()

    def set_total(self, total: int) -> None:
        """Sets the number of items once the (lazy) input has been read to its end."""
        with self._lock:
            if self._closed or self.total == total:
                return
            self.total = total
            bar = self._bar
            if bar is not None:
                try:
                    bar.total = total
                    bar.refresh()
                except Exception:  # noqa: BLE001 - a progress display never breaks a map
                    traceback.print_exc()
            self._report(0)
            if self.done >= total:
                self._close_locked()

    def close(self) -> None:
        """Ends reporting (the map finished, failed or was abandoned); closes an owned bar."""
        with self._lock:
            self._close_locked()

    def _report(self, items: int) -> None:
        try:
            if self._callback is not None:
                self._callback(self.done, self.total)
            elif items:
                self._bar.update(items)
        except Exception:  # noqa: BLE001 - a progress display never breaks a map
            traceback.print_exc()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owned:
            try:
                self._bar.close()
            except Exception:  # noqa: BLE001 - a progress display never breaks a map
                traceback.print_exc()


def make_progress(progress: ProgressArg, total: int | None) -> Progress | None:
    """A `Progress` for a map's ``progress=`` argument (None when progress is off)."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return Progress(_new_bar(total), True, None, total)
    if hasattr(progress, "update"):
        bar: Any = progress
        if total is not None and getattr(bar, "total", 0) is None:
            bar.total = total
            bar.refresh()
        return Progress(bar, False, None, total)
    if callable(progress):
        return Progress(None, False, progress, total)
    raise TypeError(
        "progress must be True/False, a tqdm-like object with update(n), or a callable "
        f"f(done, total), not {type(progress).__name__}"
    )
