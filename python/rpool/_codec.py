"""The worker side of crossing the process boundary: how a worker pickles results and encodes
exceptions (with their formatted traceback) for the parent, which rebuilds them in
`rpool._remote`.

Kept apart from `rpool._remote` so a worker imports only this: no `concurrent.futures`,
`logging` or `traceback` at start-up (≈ 7 ms of imports under spawn); `traceback` and
`multiprocessing.pool` are imported when a task first fails.
"""

from __future__ import annotations

import functools
import itertools
import pickle
import types
from collections.abc import Callable
from typing import Any

from rpool import _cloud, _split

FRONT_POOL = 0
FRONT_EXECUTOR = 1

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _qualified_name(cls: type) -> str:
    module = getattr(cls, "__module__", "")
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in ("builtins", "") else f"{module}.{name}"


def _format_traceback(exc: BaseException) -> str:
    import traceback  # only once a task fails (worker start-up time)

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f'\n"""\n{text}"""'


def encode_exception(exc: BaseException) -> bytes:
    """Pickles (exception, traceback text); falls back to names and text if that cannot travel."""
    tb_text = _format_traceback(exc)
    try:
        data = pickle.dumps((exc, tb_text), PROTOCOL)
        pickle.loads(data)  # an exception whose __init__ needs other args fails here, not later
        return data
    except Exception:
        try:
            message = str(exc)
        except Exception:
            message = "<str() of the exception failed>"
        fallback = (None, (_qualified_name(type(exc)), message, tb_text))
        return pickle.dumps(fallback, PROTOCOL)


def _encode_result_error_pool(exc: BaseException, value: object) -> bytes:
    from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

    return encode_exception(MaybeEncodingError(exc, value))


def _encode_result_error_executor(exc: BaseException, value: object) -> bytes:
    return encode_exception(exc)


# Calls that CPython 3.11+ makes without a C-level call when they sit in a comprehension:
# for these `[func(x) for x in items]` is 10-18 % faster than `list(map(func, items))`; for
# builtins, types and partials `map` stays faster (measured on 200k ints; README, Pool.map).
_COMPREHENSION_CALLABLES = (types.FunctionType, types.MethodType)


def _stop_iteration_error(func: Any) -> RuntimeError:
    name = getattr(func, "__qualname__", None)
    if not isinstance(name, str):  # a partial, a callable instance: its type's name
        name = f"a {type(func).__qualname__} object"
    return RuntimeError(
        f"{name} raised StopIteration in a map; rpool reports it as RuntimeError (as a "
        "generator would, PEP 479) so that it cannot silently cut the results short"
    )


def run_map(func: Any, items: list[Any]) -> list[Any]:
    """``[func(x) for x in items]``, the fastest way for the type of `func`. A StopIteration
    from `func` becomes RuntimeError: `map` would end early and lose the rest of the chunk."""
    if type(func) in _COMPREHENSION_CALLABLES:
        try:
            return [func(item) for item in items]
        except StopIteration as exc:
            raise _stop_iteration_error(func) from exc
    results = list(map(func, items))
    if len(results) != len(items):  # `map` ended early: `func` raised StopIteration
        raise _stop_iteration_error(func)
    return results


def run_starmap(func: Any, items: list[Any]) -> list[Any]:
    """``[func(*args) for args in items]``; StopIteration as in `run_map`."""
    results = list(itertools.starmap(func, items))
    if len(results) != len(items):
        raise _stop_iteration_error(func)
    return results


class WorkerCodec:
    """The callables a worker's loop uses; see `worker_codec`."""

    def __init__(self, front: int) -> None:
        self.loads = pickle.loads
        self.dumps: Callable[[object], bytes] = functools.partial(pickle.dumps, protocol=PROTOCOL)
        if _cloud.results_fallback:  # set by the initializer of a ``cloudpickle=True`` pool
            self.dumps = _cloud.dumps_result
        self.encode_exception = encode_exception
        self.encode_result_error = (
            _encode_result_error_pool if front == FRONT_POOL else _encode_result_error_executor
        )
        self.run_map = run_map
        self.run_starmap = run_starmap
        self.loads_segment = _split.loads_segment
        self.loads_buffer = _split.loads_buffer

    def dumps_call_result(self, value: object) -> bytes | _split.SplitPickle:
        """Pickles one call's result; one holding large buffers becomes a split pickle, which
        the loop writes into a shared-memory segment the parent granted."""
        if _split.result_is_large(value):
            try:
                return _split.SplitPickle(value)
            except Exception:
                pass  # `dumps` reports the failure the usual way (or cloudpickle accepts it)
        return self.dumps(value)


# Built once at import: a forked worker inherits them instead of building its own (every
# object a fresh fork creates or touches costs copy-on-write page faults: building the codec
# in the worker cost ~50 us of its start-up).
_PREBUILT = {front: WorkerCodec(front) for front in (FRONT_POOL, FRONT_EXECUTOR)}


_IMPORTED_PICKLE = (pickle.dumps, pickle.loads)


def worker_codec(front: int) -> WorkerCodec:
    """The codec for a worker of `front`; call after the initializer, which may switch results
    to cloudpickle or replace `pickle.dumps`/`loads` (the prebuilt codecs hold the originals)."""
    if _cloud.results_fallback or (pickle.dumps, pickle.loads) != _IMPORTED_PICKLE:
        return WorkerCodec(front)
    return _PREBUILT[front]
