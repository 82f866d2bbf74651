"""Entry point of every worker process: safety nets, the initializer, then the native loop.

Runs in the child after `multiprocessing` started it (fork, spawn or forkserver), so `__main__`
handling, authkey and objects inherited through ``initargs`` follow the stdlib exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from multiprocessing import util as mp_util
from multiprocessing.connection import Connection
from typing import Any

from rpool import _rpool
from rpool._codec import FRONT_EXECUTOR, encode_exception, worker_codec


def _own_fd(conn: Connection) -> int:
    """A descriptor of the connection's pipe for the native loop to own. The connection keeps
    its own until it is collected (closing it here cost a fresh worker ~20 us of Python calls
    each); it is made non-inheritable, as under spawn it arrives inheritable and programs a task
    starts would otherwise hold the pipe open."""
    fd = conn.fileno()
    os.set_inheritable(fd, False)
    return os.dup(fd)


def worker_main(
    task_conn: Connection,
    result_conn: Connection,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    max_tasks: int | None,
    expected_parent: int,
    front: int,
    pool_pid: int,
) -> None:
    """Runs one worker until the pool releases it, it reaches ``max_tasks``, or the parent dies."""
    task_fd = _own_fd(task_conn)
    result_fd = _own_fd(result_conn)
    # Also makes the worker ignore SIGINT: Ctrl+C reaches the whole process group, and the
    # parent decides what it means.
    _rpool.prepare_worker(task_fd, result_fd, expected_parent)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            if front == FRONT_EXECUTOR:
                # Also log it where the stdlib executor's workers do. Imported here: `logging`
                # costs ~3.7 ms of every worker's start-up and is only needed on this path.
                import logging

                logging.getLogger("concurrent.futures").critical(
                    "Exception in initializer:", exc_info=True
                )
            payload = encode_exception(exc)
            # Flush what this process still owes (multiprocessing queues fed by the initializer,
            # log records) before the parent learns that the pool is broken, as the stdlib's
            # parent only notices once the worker has exited.
            mp_util._run_finalizers()  # type: ignore[attr-defined]
            _rpool.send_init_failure(result_fd, payload)
            return
    _rpool.worker_loop(task_fd, result_fd, worker_codec(front), pool_pid, max_tasks)
