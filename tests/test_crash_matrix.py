"""Crash matrix: each stage of a task's round trip x each way of failing.

Stages: pickle the argument (parent), unpickle it (worker), call (worker), pickle the
result (worker), unpickle the result (parent). Kinds: exception, SystemExit, os._exit,
SIGKILL (the last three only where a worker runs them: they would end the test process).
Every case must fail only its own task, promptly, with the expected exception, and leave
the pool (or executor) serving.
"""

from __future__ import annotations

import multiprocessing.pool
import signal

import _tasks
import pytest
import rpool

GET_TIMEOUT = 30

WORKER_STAGES = ["unpickle_arg", "call", "pickle_result"]
PARENT_STAGES = ["pickle_arg", "unpickle_result"]
KINDS = ["exception", "systemexit", "os_exit", "sigkill"]

CASES = [(stage, kind) for stage in WORKER_STAGES for kind in KINDS] + [
    (stage, "exception") for stage in PARENT_STAGES
]


def _task(stage, kind):
    """(function, args) that fails at `stage` in the given way."""
    if stage == "pickle_arg":
        return _tasks.identity, (_tasks.CrashOnPickle(kind),)
    if stage == "unpickle_arg":
        return _tasks.identity, (_tasks.CrashOnUnpickle(kind),)
    if stage == "call":
        return _tasks.crash_now, (kind, "call")
    if stage == "pickle_result":
        return _tasks.return_crash_on_pickle, (kind,)
    return _tasks.return_crash_on_unpickle, (kind,)


def _messages(exc: BaseException) -> str:
    """str() of an exception and everything chained to it."""
    seen, parts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _check(exc: BaseException, stage: str, kind: str, api: str) -> None:
    if kind == "os_exit":
        assert isinstance(exc, rpool.WorkerLostError), _messages(exc)
        assert exc.exitcode == 7
    elif kind == "sigkill":
        assert isinstance(exc, rpool.WorkerLostError), _messages(exc)
        assert exc.exitcode == -signal.SIGKILL
    elif kind == "systemexit":
        # Not specified beyond "that task fails": reported as it was raised, as the
        # worker exiting with its code, or (pickling a result) as an encoding error.
        allowed: tuple[type[BaseException], ...] = (SystemExit, rpool.WorkerLostError)
        if stage == "pickle_result" and api == "pool":
            allowed += (multiprocessing.pool.MaybeEncodingError,)
        assert isinstance(exc, allowed), _messages(exc)
    elif stage == "call":
        assert type(exc) is _tasks.CrashError
        assert exc.args == ("crash during call",)
    elif stage == "pickle_result" and api == "pool":
        assert isinstance(exc, multiprocessing.pool.MaybeEncodingError), _messages(exc)
    else:
        where = "pickle" if "pickle_" in stage and "unpickle" not in stage else "unpickle"
        assert f"crash during {where}" in _messages(exc), _messages(exc)


def _failure(call) -> BaseException:
    try:
        value = call()
    except BaseException as exc:  # SystemExit is a valid outcome here
        return exc
    pytest.fail(f"task succeeded with {value!r}")


@pytest.mark.parametrize(("stage", "kind"), CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_pool_crash_matrix(ctx, stage, kind):
    fn, args = _task(stage, kind)
    with rpool.Pool(2, context=ctx) as pool:
        others = [pool.apply_async(_tasks.square, (i,)) for i in range(4)]
        exc = _failure(lambda: pool.apply_async(fn, args).get(timeout=GET_TIMEOUT))
        assert not isinstance(exc, multiprocessing.TimeoutError), "task result never arrived"
        _check(exc, stage, kind, "pool")
        assert [r.get(timeout=GET_TIMEOUT) for r in others] == [0, 1, 4, 9]
        assert pool.apply_async(_tasks.square, (5,)).get(timeout=GET_TIMEOUT) == 25


@pytest.mark.parametrize(("stage", "kind"), CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_executor_crash_matrix(ctx, stage, kind):
    fn, args = _task(stage, kind)
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        others = [ex.submit(_tasks.square, i) for i in range(4)]
        exc = _failure(lambda: ex.submit(fn, *args).result(timeout=GET_TIMEOUT))
        assert not isinstance(exc, TimeoutError), "future never completed"
        _check(exc, stage, kind, "executor")
        assert [f.result(timeout=GET_TIMEOUT) for f in others] == [0, 1, 4, 9]
        assert ex.submit(_tasks.square, 5).result(timeout=GET_TIMEOUT) == 25
