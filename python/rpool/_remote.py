"""Exceptions that cross the process boundary.

Workers encode a task's exception together with its formatted traceback; the parent rebuilds it
with the stdlib's own `RemoteTraceback` class as ``__cause__``. Also home of rpool's exception
classes and of the parent-side failures (dead worker, task timeout, broken pool).
"""

from __future__ import annotations

import pickle
import signal
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from multiprocessing import TimeoutError as MpTimeoutError
from typing import Any

from rpool._codec import (
    FRONT_EXECUTOR,
    FRONT_POOL,
    PROTOCOL,
    WorkerCodec,
    encode_exception,
)

__all__ = [
    "FRONT_EXECUTOR",
    "FRONT_POOL",
    "PROTOCOL",
    "InitializerError",
    "RemoteError",
    "TaskTimeoutError",
    "WorkerCodec",
    "WorkerLostError",
    "encode_exception",
]


class WorkerLostError(BrokenProcessPool):
    """The worker process running a task died (killed, crashed or called ``os._exit``).

    Only the task that was running fails; the pool replaces the worker and keeps serving.
    ``pid`` is the dead worker's pid, ``exitcode`` its exit code (negative: killed by that signal).
    """

    def __init__(self, message: str, pid: int = 0, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.pid, self.exitcode))


class InitializerError(BrokenProcessPool):
    """The pool's initializer raised in a worker, so the pool cannot run tasks.

    The initializer's exception is attached as ``__cause__``.
    """


class TaskTimeoutError(MpTimeoutError, TimeoutError):
    """A task ran past its per-task time limit; its worker was killed and replaced."""


class RemoteError(Exception):
    """A task raised an exception that could not be sent to the parent as itself.

    ``type_name`` is the qualified name of the original exception type, ``message`` its text and
    ``remote_traceback`` the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


# --- parent side -------------------------------------------------------------------------------


def _remote_traceback(front: int, tb_text: str) -> BaseException:
    if front == FRONT_POOL:
        # Imported on the first failure: `multiprocessing.pool` is ~0.2 MB that every forked
        # worker would inherit.
        from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]

        return RemoteTraceback(tb_text)  # type: ignore[no-any-return]
    return _RemoteTraceback(tb_text)  # type: ignore[arg-type]


def rebuild_exception(payload: bytes, front: int) -> BaseException:
    """Turns a worker's encoded exception back into an exception with its remote traceback."""
    try:
        exc, info = pickle.loads(payload)
    except Exception as err:
        return RemoteError(
            type(err).__name__, f"the task's exception could not be unpickled: {err}"
        )
    if exc is None:
        type_name, message, tb_text = info
        exc = RemoteError(type_name, message, tb_text)
    else:
        tb_text = info
    if not isinstance(exc, BaseException):
        return RemoteError(type(exc).__name__, repr(exc))
    exc.__cause__ = _remote_traceback(front, tb_text)
    return exc


def result_unpickle_failure(exc: BaseException, front: int) -> BaseException:
    """The error for a task whose result could not be unpickled in the parent.

    The executor reports it as `BrokenProcessPool` (what the stdlib raises there) with the
    unpickling error as ``__cause__``; the pool re-raises the unpickling error itself. Either
    way only this task fails.
    """
    note = "rpool: the task's result was sent but could not be unpickled in the parent"
    if front == FRONT_POOL:
        exc.add_note(note)
        return exc
    error = BrokenProcessPool(f"{note}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def describe_exit(exitcode: int | None) -> str:
    """Says how a worker ended, with the likely cause for common signals."""
    if exitcode is None:
        return "with an unknown status"
    if exitcode >= 0:
        return f"with exit code {exitcode}"
    signum = -exitcode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hints: dict[int, str] = {
        signal.SIGKILL: " (killed: often the kernel's OOM killer, or a kill -9)",
        signal.SIGSEGV: " (segmentation fault, usually in native code)",
        signal.SIGABRT: " (aborted, usually by native code)",
        signal.SIGBUS: " (bus error, usually in native code)",
        signal.SIGTERM: " (terminated)",
    }
    return f"from signal {name}{hints.get(signum, '')}"


def outcome_to_exception(
    kind: str, payload: bytes | None, front: int, pid: int, exitcode: int | None, limit: float
) -> BaseException:
    """Builds the exception for a failed task. Called by the native AsyncResult."""
    if kind == "error" and payload is not None:
        return rebuild_exception(payload, front)
    if kind == "lost":
        return WorkerLostError(
            f"worker process {pid} died {describe_exit(exitcode)} while running this task; "
            "the worker was replaced and the pool keeps serving",
            pid,
            exitcode,
        )
    if kind == "timeout":
        return TaskTimeoutError(
            f"task ran longer than its {limit:g} s time limit; "
            f"worker process {pid} was killed and replaced"
        )
    if kind == "init":
        error = InitializerError("the pool's initializer raised in a worker; no task can run")
        if payload is not None:
            error.__cause__ = rebuild_exception(payload, front)
        return error
    if kind == "startup":
        return InitializerError(
            f"{pid} worker processes in a row ended {describe_exit(exitcode)} before finishing "
            "start-up; is the task's module importable in the child?"
        )
    if kind == "cancelled":
        return CancelledError()
    if kind == "terminated":
        return BrokenProcessPool("the pool was terminated before this task finished")
    detail = payload.decode("utf-8", "replace") if payload else kind
    return BrokenProcessPool(f"rpool internal failure: {detail}")
