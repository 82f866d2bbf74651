"""The ``cloudpickle=True`` extension: lambdas, closures, nested and interactively defined
functions, and bound methods of local classes as tasks, arguments, results and initializers.

The standard pickler always goes first; cloudpickle (imported only when needed) is the
fallback when it refuses something. Where each piece is serialized:

- **Callables** are pickled once per pool (`Runtime.func_id` caches them in the workers), so a
  lambda costs one cloudpickle call per pool, not per task. Functions defined in an
  interactive ``__main__`` (REPL, ``python -c``, Jupyter) pickle *by reference* in the parent
  but cannot be found in a worker, so they always go by value. A callable serialized by value
  is a snapshot taken at its first use by the pool (its closure and the globals it reads).
- **Arguments**: a task whose payload pickle refuses is re-pickled with cloudpickle.
- **Results**: `WorkerBoot` (the initializer wrapper) switches the worker's codec to
  `dumps_result`, which retries refused results with cloudpickle. The parent loads them with
  ``pickle.loads`` (cloudpickle output only needs cloudpickle importable).
- **Initializer and initargs** (spawn/forkserver): `WorkerBoot` sends refused ones by value.

Off by default: with it, results that the stdlib reports as `MaybeEncodingError` (a lambda,
say) would arrive instead, which CPython's own pool tests check for.
"""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PROTOCOL = pickle.HIGHEST_PROTOCOL

# Set in a worker by `WorkerBoot` before its codec is built: results retry with cloudpickle.
results_fallback = False


def _cloudpickle() -> types.ModuleType:
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - cloudpickle is a dependency of rpool
        raise ImportError(
            "rpool: cloudpickle=True needs the cloudpickle package (pip install cloudpickle)"
        ) from exc
    module: types.ModuleType = cloudpickle
    return module


def describe(obj: object) -> str:
    """Names a callable or value for an error message: qualified name and where it was defined."""
    func = getattr(obj, "__func__", obj)  # bound methods: the function
    name = getattr(func, "__qualname__", None)
    if not isinstance(name, str):
        cls = type(obj)
        return f"{cls.__module__}.{cls.__qualname__} object"
    module = getattr(func, "__module__", None) or "?"
    code = getattr(func, "__code__", None)
    where = f" (defined at {code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{module}.{name}{where}"


def _interactive_main() -> bool:
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is None


def needs_by_value(func: object) -> bool:
    """True for functions/classes of an interactive ``__main__``: pickle accepts them by
    reference, but a worker has no such ``__main__`` to find them in."""
    target = getattr(func, "__func__", func)
    return getattr(target, "__module__", None) == "__main__" and _interactive_main()


def dumps_callable(func: object) -> bytes:
    """Pickles a task's callable once for the workers' cache: pickle, else cloudpickle."""
    if not needs_by_value(func):
        try:
            return pickle.dumps(func, PROTOCOL)
        except Exception:
            pass
    data: bytes = _cloudpickle().dumps(func, PROTOCOL)
    return data


def _refused(value: object) -> bool:
    try:
        _cloudpickle().dumps(value, PROTOCOL)
    except Exception:
        return True
    return False


def _culprits(func: object | None, items: Sequence[Any], kwds: Mapping[str, Any]) -> str:
    bad = []
    if func is not None and _refused(func):
        bad.append(f"function {describe(func)}")
    for position, value in enumerate(items):
        if _refused(value):
            bad.append(f"argument {position} ({describe(value)})")
    for name, value in kwds.items():
        if _refused(value):
            bad.append(f"keyword {name!r} ({describe(value)})")
    if not bad:
        return "rpool: the task could not be serialized with pickle or cloudpickle"
    return "rpool: pickle and cloudpickle both refuse the task's " + ", ".join(bad)


def dumps_inline(obj: object, func: object) -> bytes:
    """Payload of a task whose callable travels with it (bound methods, partials): pickle,
    unless the callable comes from an interactive ``__main__`` (then cloudpickle); a refusal
    by pickle propagates, for `call_payload`/`chunk_payload` to retry."""
    if needs_by_value(func):
        try:
            data: bytes = _cloudpickle().dumps(obj, PROTOCOL)
        except Exception as exc:
            raise pickle.PicklingError(
                f"rpool: cloudpickle refuses the task's function {describe(func)}"
            ) from exc
        return data
    return pickle.dumps(obj, PROTOCOL)


def call_payload(
    func: object, func_id: int, args: tuple[Any, ...], kwds: Mapping[str, Any] | None
) -> bytes:
    """The payload of one call that pickle refused, made by cloudpickle.

    Raises `pickle.PicklingError` naming the function or argument if cloudpickle fails too.
    """
    obj = (args, kwds or None) if func_id else (func, args, kwds or None)
    try:
        data: bytes = _cloudpickle().dumps(obj, PROTOCOL)
    except Exception as exc:
        raise pickle.PicklingError(_culprits(None if func_id else func, args, kwds or {})) from exc
    return data


def chunk_payload(func: object, func_id: int, chunk: list[Any]) -> bytes:
    """The payload of one map chunk that pickle refused, made by cloudpickle."""
    obj = chunk if func_id else (func, chunk)
    try:
        data: bytes = _cloudpickle().dumps(obj, PROTOCOL)
    except Exception as exc:
        raise pickle.PicklingError(_culprits(None if func_id else func, chunk, {})) from exc
    return data


def dumps_result(value: object) -> bytes:
    """Worker side: pickles a task's result, retrying with cloudpickle; a value that neither
    accepts raises pickle's error (reported like the stdlib's `MaybeEncodingError`)."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception as exc:
        try:
            data: bytes = _cloudpickle().dumps(value, PROTOCOL)
        except Exception:
            raise exc from None
        return data


def _loads(data: bytes) -> Any:
    return pickle.loads(data)


class _ByValue:
    """Pickles its value with cloudpickle; unpickles as the value itself."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_loads, (self.data,))


def _by_value_blob(value: object) -> bytes | None:
    """cloudpickle bytes for a value pickle refuses (or an interactive function), else None.

    A value that cloudpickle refuses as well (a `multiprocessing.Queue`, which may only be
    pickled while a worker is being spawned) is left to multiprocessing.
    """
    if not needs_by_value(value):
        try:
            pickle.dumps(value, PROTOCOL)
            return None
        except Exception:
            pass
    try:
        data: bytes = _cloudpickle().dumps(value, PROTOCOL)
    except Exception:
        return None
    return data


# What picklers raise for a value they cannot handle; anything else was raised on purpose by the
# object itself (e.g. multiprocessing.Queue's RuntimeError about inheritance).
_PICKLER_ERRORS = (pickle.PicklingError, TypeError, AttributeError)


def prefer_object_error(pickle_error: Exception, fallback_error: Exception) -> Exception:
    """The error to report when both pickle and cloudpickle refused a task.

    An error the object raised on purpose is what stdlib users expect and is kept (with
    cloudpickle's verdict as a note); otherwise cloudpickle's message, which names the
    function or argument, is clearer.
    """
    if fallback_error is pickle_error or isinstance(pickle_error, _PICKLER_ERRORS):
        return fallback_error
    pickle_error.add_note(str(fallback_error))
    return pickle_error


def boot_for(
    mode: bool | None,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    spawned: bool,
) -> tuple[Callable[..., object] | None, tuple[Any, ...]]:
    """The (initializer, initargs) a pool gives its workers for its ``cloudpickle`` mode.

    True: everything may go by cloudpickle, results included. None (the default): only an
    initializer that pickle refuses (a lambda, say) travels by value under spawn; initargs and
    results keep the stdlib's rules. False: unchanged.
    """
    if mode is True:
        return WorkerBoot(initializer, initargs, spawned), ()
    if mode is None and spawned and initializer is not None:
        if _by_value_blob(initializer) is not None:
            boot = WorkerBoot(
                initializer, initargs, spawned, results=False, initargs_by_value=False
            )
            return boot, ()
    return initializer, tuple(initargs)


class WorkerBoot:
    """The initializer a pool with ``cloudpickle=True`` gives its workers.

    In the worker it turns on the result fallback, then calls the user's initializer. When a
    worker is spawned (not forked), an initializer or initarg that pickle refuses travels by
    value; the decision is taken once, in the parent, when the pool is created.
    """

    def __init__(
        self,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        spawned: bool,
        results: bool = True,
        initargs_by_value: bool = True,
    ) -> None:
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.results = results
        self._init_blob: bytes | None = None
        self._arg_blobs: list[bytes | None] = []
        if spawned:
            if initializer is not None:
                self._init_blob = _by_value_blob(initializer)
            if initargs_by_value:
                self._arg_blobs = [_by_value_blob(arg) for arg in self.initargs]

    def __call__(self) -> None:
        global results_fallback
        results_fallback = self.results
        if self.initializer is not None:
            self.initializer(*self.initargs)

    def __reduce__(self) -> tuple[Any, ...]:
        init: object = self.initializer
        if self._init_blob is not None:
            init = _ByValue(self._init_blob)
        args = tuple(
            _ByValue(blob) if blob is not None else arg
            for arg, blob in zip(
                self.initargs, self._arg_blobs or [None] * len(self.initargs), strict=True
            )
        )
        return (WorkerBoot, (init, args, False, self.results))

    def __repr__(self) -> str:
        return f"<rpool WorkerBoot for {self.initializer!r}>"
