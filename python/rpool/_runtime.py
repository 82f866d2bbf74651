"""The machinery shared by `Pool` and `ProcessPoolExecutor`: one native `Core`, the worker
processes, and two Python threads.

- The **supervisor** thread starts every worker (so the parent-death signal is tied to one
  long-lived thread), reaps dead ones through `multiprocessing` (``Process.join``), reports
  their exit status to the core, and starts replacements.
- The **notifier** thread takes batches of completed tasks that need Python work in the parent
  (callbacks, map groups, Futures) and runs it.

Neither thread refers to the `Pool`/executor object itself, so an abandoned pool can be
garbage-collected and cleaned up.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import util as mp_util
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from rpool import _cloud, _rpool
from rpool._remote import PROTOCOL, InitializerError, rebuild_exception
from rpool._worker import worker_main

# Task kinds understood by the native core.
KIND_CALL = 1
KIND_MAP = 2
KIND_STARMAP = 3

# Callables pickled once and cached in workers by id; beyond this many distinct ones (e.g. a
# program creating partials in a loop) callables travel inline with each task instead.
FUNC_CACHE_LIMIT = 1024

# How long background threads sleep between checks of their stop flags.
THREAD_POLL_SECONDS = 0.1

# Kernel buffer of each task/result pipe (default 64 KiB): up to 1 MiB (the default
# pipe-max-size for users) lets a large payload cross in a few big writes instead of many
# wake-ups. A pool enlarges its pipes to at most PIPE_BUDGET_BYTES together: the kernel counts
# pipe buffers per user, and once a user's pipes pass 64 MiB (pipe-user-pages-soft) every new
# pipe of that user, in any program, gets 8 KiB, and no pipe can be enlarged.
PIPE_BYTES = 1 << 20
PIPE_DEFAULT_BYTES = 64 << 10
PIPE_BUDGET_BYTES = 16 << 20


def pipe_bytes(processes: int) -> int:
    """Buffer size for each of a pool's pipes (two per worker): a power of two between the
    kernel's default and `PIPE_BYTES`, so that all of them stay within `PIPE_BUDGET_BYTES`."""
    share = PIPE_BUDGET_BYTES // (2 * max(processes, 1))
    size = PIPE_DEFAULT_BYTES
    while size * 2 <= min(share, PIPE_BYTES):
        size *= 2
    return size


# Retry interval for completion notices that arrived before their entry was registered.
UNMATCHED_RETRY_SECONDS = 0.001

# A notice whose entry never appears (the submitting thread died in between) is dropped.
UNMATCHED_GIVE_UP = 10.0

# After an initializer failure, workers get this long to exit on their own before being killed.
INIT_FAILURE_GRACE_SECONDS = 1.0

# A terminated worker that ignores SIGTERM this long is killed.
TERMINATE_GRACE_SECONDS = 1.0

_CACHEABLE_FUNC_TYPES = (types.FunctionType, types.BuiltinFunctionType, type)

# Bumped in a child made by os.fork(): pools inherited from the parent refuse to work there.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)

_live_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


class PoolForkedError(RuntimeError):
    """The pool was created in another process and was inherited through ``os.fork()``."""


class Runtime:
    """Workers, native core and background threads of one pool or executor."""

    def __init__(
        self,
        *,
        processes: int,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        max_tasks: int | None,
        ctx: BaseContext,
        retries: int,
        front: int,
        daemon: bool,
        worker_label: str,
    ) -> None:
        self.processes = processes
        self.front = front
        self.core = _rpool.Core(processes, retries, max_tasks)
        self._ctx = ctx
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks
        self._daemon = daemon
        self._worker_label = worker_label
        self._start_method = ctx.get_start_method()
        self._generation = _fork_generation
        self._owner_pid = os.getpid()
        self._funcs: dict[int, tuple[object, int]] = {}
        self._funcs_lock = threading.Lock()
        # rpool extension (``cloudpickle=True``): what pickle refuses goes by cloudpickle.
        self.cloudpickle = False
        # task id -> object whose ``_rpool_complete()`` the notifier calls
        self.pending: dict[int, Any] = {}
        self._procs: dict[int, BaseProcess] = {}
        self._procs_lock = threading.Lock()
        self._stopping = False  # terminate: no more workers, kill the ones there are
        self._kill_after = 0.0  # monotonic time from which stopping workers are killed
        self._closing = False  # close: finish the queue, then release the workers
        self._finished = threading.Event()  # supervisor and core are done
        self._notifier_stop = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # Set once the initializer failed: fronts then take their slow, checking path.
        self.broken = False
        # At interpreter exit: finish queued work (executor) instead of terminating (Pool).
        self.graceful_exit = False
        self._supervisor = threading.Thread(
            target=self._supervise, name="rpool-supervisor", daemon=True
        )
        self._notifier = threading.Thread(target=self._notify, name="rpool-notifier", daemon=True)
        self._notifier.start()
        self._supervisor.start()
        self._started.wait()
        if self._start_error is not None:
            self.terminate()
            self.join()
            raise self._start_error
        _live_runtimes.add(self)

    # --- checks ----------------------------------------------------------------------------

    def check_usable(self) -> None:
        """Raises if this pool was inherited by a forked child, or does not accept tasks."""
        if self._generation != _fork_generation:
            raise PoolForkedError(
                "this rpool pool was created by process "
                f"{self._owner_pid} and cannot be used in a child made by os.fork(); "
                "create a new pool in the child"
            )
        try:
            self.core.check_running()
        except InitializerError as exc:
            payload = self.core.broken_payload()
            if payload is not None:
                exc.__cause__ = rebuild_exception(payload, self.front)
            raise

    @property
    def forked_away(self) -> bool:
        return self._generation != _fork_generation

    # --- pickling --------------------------------------------------------------------------

    def func_id(self, func: object) -> int:
        """Id of `func` in the workers' cache, registering it once; 0 = send it inline."""
        key = id(func)
        entry = self._funcs.get(key)
        if entry is not None and entry[0] is func:
            return entry[1]
        if not isinstance(func, _CACHEABLE_FUNC_TYPES):
            return 0
        with self._funcs_lock:
            entry = self._funcs.get(key)
            if entry is not None and entry[0] is func:
                return entry[1]
            if len(self._funcs) >= FUNC_CACHE_LIMIT:
                return 0
            try:
                if self.cloudpickle:
                    pickled = _cloud.dumps_callable(func)
                else:
                    pickled = pickle.dumps(func, PROTOCOL)
            except Exception:
                return 0  # report the failure with the task, like any pickling error
            fid: int = self.core.register_func(pickled)
            self._funcs[key] = (func, fid)
            return fid

    # --- workers ---------------------------------------------------------------------------

    def _start_worker(self) -> None:
        ctx = self._ctx
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        size = pipe_bytes(self.processes)
        if size > PIPE_DEFAULT_BYTES:
            for fd in (task_write, result_write):
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
                except OSError:
                    pass  # above this user's pipe limits: keep the default
        child_task = Connection(task_read, writable=False)
        child_result = Connection(result_write, readable=False)
        expected_parent = os.getpid() if self._start_method in ("fork", "spawn") else 0
        try:
            proc = ctx.Process(  # type: ignore[attr-defined]
                target=worker_main,
                args=(
                    child_task,
                    child_result,
                    self._initializer,
                    self._initargs,
                    self._max_tasks,
                    expected_parent,
                    self.front,
                    os.getpid(),
                ),
                daemon=self._daemon,
            )
            proc.name = proc.name.replace("Process", self._worker_label)
            proc.start()
        except BaseException:
            for fd in (task_write, result_read):
                os.close(fd)
            raise
        finally:
            child_task.close()
            child_result.close()
        sentinel = os.dup(proc.sentinel)
        pid = proc.pid if proc.pid is not None else 0
        worker_id = self.core.add_worker(pid, task_write, result_read, sentinel)
        with self._procs_lock:
            self._procs[worker_id] = proc

    def _supervise(self) -> None:
        try:
            for _ in range(self.processes):
                self._start_worker()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the constructor
            self._start_error = exc
            self._started.set()
            self._stopping = True
        else:
            self._started.set()
        try:
            self._supervise_loop()
        except BaseException:  # noqa: BLE001 - a dying supervisor must not hang waiters
            traceback.print_exc()
            self.core.terminate()
            self._kill_all()
        finally:
            self._reap_all()
            self._notifier_stop = True
            self.core.shutdown()  # also wakes the notifier, which then sees the stop flag
            self._finished.set()

    def _supervise_loop(self) -> None:
        core = self.core
        while True:
            event = core.next_event(THREAD_POLL_SECONDS)
            if event is not None:
                kind, worker_id, _pid = event
                if kind == "died":
                    with self._procs_lock:
                        proc = self._procs.pop(worker_id, None)
                    exitcode = None
                    if proc is not None:
                        proc.join(5)
                        exitcode = proc.exitcode
                        _close_process(proc)
                    core.worker_exited(worker_id, exitcode)
                    if not self._stopping and core.wants_workers():
                        try:
                            self._start_worker()
                        except Exception:
                            traceback.print_exc()
                elif kind == "init_failed":
                    self.broken = True
                    # Workers whose initializer failed exit by themselves; killing them at once
                    # would lose what they were still flushing (e.g. queued log records).
                    self._kill_after = time.monotonic() + INIT_FAILURE_GRACE_SECONDS
                    self._stopping = True
            with self._procs_lock:
                alive = len(self._procs)
            if alive == 0 and (self._stopping or (self._closing and core.outstanding() == 0)):
                return
            if self._stopping and time.monotonic() >= self._kill_after:
                self._kill_all()

    def _kill_all(self) -> None:
        with self._procs_lock:
            procs = list(self._procs.values())
        for proc in procs:
            try:
                if proc.exitcode is None:
                    proc.terminate()
            except (OSError, ValueError):
                pass

    def _reap_all(self) -> None:
        with self._procs_lock:
            procs = list(self._procs.items())
            self._procs.clear()
        for worker_id, proc in procs:
            try:
                proc.join(TERMINATE_GRACE_SECONDS)
                if proc.exitcode is None:
                    proc.kill()
                    proc.join(5)
                self.core.worker_exited(worker_id, proc.exitcode)
                _close_process(proc)
            except (OSError, ValueError):
                pass

    def processes_alive(self) -> list[BaseProcess]:
        with self._procs_lock:
            return list(self._procs.values())

    # --- notifier --------------------------------------------------------------------------

    def _notify(self) -> None:
        core = self.core
        pending = self.pending
        # A notice can overtake the submitting thread's ``pending[task_id] = entry``; such ids
        # are kept and looked up again on the next rounds.
        unmatched: dict[int, float] = {}
        while True:
            ids = core.take_notices(UNMATCHED_RETRY_SECONDS if unmatched else THREAD_POLL_SECONDS)
            if unmatched:
                ids = list(unmatched) + ids
            for task_id in ids:
                entry = pending.pop(task_id, None)
                if entry is None:
                    first_seen = unmatched.setdefault(task_id, time.monotonic())
                    if self._notifier_stop or time.monotonic() - first_seen > UNMATCHED_GIVE_UP:
                        del unmatched[task_id]
                    continue
                unmatched.pop(task_id, None)
                try:
                    entry._rpool_complete()
                except BaseException:  # noqa: BLE001 - one bad callback must not stop the rest
                    traceback.print_exc()
            # Drop references to the last result so the caller's objects can be freed.
            entry = None
            if not ids and not unmatched and self._notifier_stop:
                return

    def hand_back(self, entries: Sequence[Any]) -> None:
        """Gives the notifier completed entries it set aside (``entry.handle.task_id`` names
        each). If the notifier is stopping it may never look again: whichever of it and this
        thread takes an entry out of ``pending`` first completes it."""
        pending = self.pending
        for entry in entries:
            pending[entry.handle.task_id] = entry
        self.core.renotify([entry.handle.task_id for entry in entries])
        if self._notifier_stop:
            for entry in entries:
                if pending.pop(entry.handle.task_id, None) is entry:
                    entry._rpool_complete()

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._closing = True
        self.core.close()

    def terminate(self) -> None:
        self._kill_after = 0.0
        self._stopping = True
        self.core.terminate()
        self._kill_all()

    def kill_workers(self, signum: int) -> None:
        self.core.signal_workers(signum)

    def join(self, timeout: float | None = None) -> bool:
        """Waits for every worker to be reaped and the background threads to finish."""
        current = threading.current_thread()
        if current is self._notifier or current is self._supervisor:
            return self._finished.is_set()
        if not self._finished.wait(timeout):
            return False
        self._supervisor.join()
        self._notifier.join()
        _live_runtimes.discard(self)
        return True

    @property
    def finished(self) -> bool:
        return self._finished.is_set()


class CallbackEntry:
    """Runs `apply_async`'s callbacks in the notifier thread, then makes the result visible."""

    __slots__ = ("handle", "callback", "error_callback")

    def __init__(
        self,
        handle: Any,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self.handle = handle
        self.callback = callback
        self.error_callback = error_callback

    def _rpool_complete(self) -> None:
        handle = self.handle
        try:
            ok, value = handle._resolve()
            if ok:
                if self.callback is not None:
                    self.callback(value)
            elif self.error_callback is not None:
                self.error_callback(value)
        finally:
            handle._publish()


def _close_process(proc: BaseProcess) -> None:
    try:
        proc.close()
    except ValueError:
        pass


def _terminate_live_runtimes_at_exit() -> None:
    for runtime in list(_live_runtimes):
        if runtime.forked_away:
            continue
        try:
            if runtime.graceful_exit:
                runtime.close()
            else:
                runtime.terminate()
            runtime.join()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


# Registered after multiprocessing's own exit hook, so it runs first (atexit is LIFO) and no
# worker is left for multiprocessing to wait on.
mp_util.Finalize(None, _terminate_live_runtimes_at_exit, exitpriority=100)
