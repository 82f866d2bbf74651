"""rpool.Pool worker lifecycle: initializers, maxtasksperchild, what workers can receive
(queues, manager proxies) and how they look to multiprocessing in both processes."""

from __future__ import annotations

import multiprocessing

import _tasks
import pytest
import rpool
from _helpers import release, wait_started

GET_TIMEOUT = 30


def test_initializer_runs_once_per_worker_with_initargs(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    with rpool.Pool(2, initializer=_tasks.record_init, initargs=("tag",), context=ctx) as pool:
        states = pool.map(_tasks.worker_state, range(40), chunksize=1)
        assert {value for _, value, _ in states} == {"tag"}
        assert {count for _, _, count in states} == {1}
        # Occupy both workers at once to see each of them.
        blockers = [
            pool.apply_async(_tasks.block_until, (str(gate), str(started))) for _ in range(2)
        ]
        pids = wait_started(started, 2)
        release(gate)
        busy = [b.get(timeout=GET_TIMEOUT) for b in blockers]
        assert {pid for pid, _, _ in busy} == pids
        assert all(value == "tag" and count == 1 for _, value, count in busy)
        assert {pid for pid, _, _ in states} <= pids


def test_maxtasksperchild_replaces_workers(ctx):
    with rpool.Pool(2, maxtasksperchild=1, context=ctx) as pool:
        pids = pool.map(_tasks.getpid, range(6), chunksize=1)
        assert len(set(pids)) == 6
        pids = [pool.apply_async(_tasks.getpid).get(timeout=GET_TIMEOUT) for _ in range(4)]
        assert len(set(pids)) == 4


def test_maxtasksperchild_keeps_initializer(ctx):
    with rpool.Pool(
        2, initializer=_tasks.record_init, initargs=(7,), maxtasksperchild=2, context=ctx
    ) as pool:
        states = pool.map(_tasks.worker_state, range(10), chunksize=1)
        assert [(value, count) for _, value, count in states] == [(7, 1)] * 10
        assert len({pid for pid, _, _ in states}) >= 5


def test_queue_via_initargs(ctx):
    queue = ctx.Queue()
    with rpool.Pool(2, initializer=_tasks.init_queue, initargs=(queue,), context=ctx) as pool:
        assert pool.map(_tasks.put_in_global_queue, range(5)) == list(range(5))
        received = sorted(queue.get(timeout=GET_TIMEOUT) for _ in range(5))
    assert received == list(range(5))
    queue.close()
    queue.join_thread()


def test_queue_as_task_argument_raises(ctx):
    queue = ctx.Queue()
    with rpool.Pool(2, context=ctx) as pool:
        with pytest.raises(RuntimeError, match="inheritance"):
            pool.apply_async(_tasks.put_in_queue, (queue, 1)).get(timeout=GET_TIMEOUT)
        assert pool.apply(_tasks.square, (3,)) == 9
    queue.close()
    queue.join_thread()


def test_manager_dict_and_queue_proxies(ctx):
    with ctx.Manager() as manager, rpool.Pool(2, context=ctx) as pool:
        shared = manager.dict()
        keys = pool.starmap(_tasks.set_in_dict, [(shared, i, i * i) for i in range(5)])
        assert keys == list(range(5))
        assert dict(shared) == {i: i * i for i in range(5)}

        queue = manager.Queue()
        pool.starmap(_tasks.put_in_queue, [(queue, i) for i in range(5)])
        assert sorted(queue.get(timeout=GET_TIMEOUT) for _ in range(5)) == list(range(5))


def test_worker_process_name(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        names = pool.map(_tasks.current_process_name, range(4), chunksize=1)
    assert all(isinstance(name, str) and name for name in names)
    assert "MainProcess" not in names


def test_active_children_include_workers(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    with rpool.Pool(2, context=ctx) as pool:
        blockers = [
            pool.apply_async(_tasks.block_until, (str(gate), str(started))) for _ in range(2)
        ]
        pids = wait_started(started, 2)
        children = {p.pid for p in multiprocessing.active_children()}
        release(gate)
        for b in blockers:
            b.get(timeout=GET_TIMEOUT)
    assert pids <= children


def test_failing_initializer_fails_tasks_with_initializer_error(ctx):
    with rpool.Pool(2, initializer=_tasks.failing_initializer, context=ctx) as pool:
        # apply_async may raise at once if the pool is already known to be broken.
        with pytest.raises(rpool.InitializerError):
            pool.apply_async(_tasks.square, (2,)).get(timeout=GET_TIMEOUT)
        with pytest.raises(rpool.InitializerError):
            pool.map(_tasks.square, range(3))
        with pytest.raises(rpool.InitializerError):
            pool.apply_async(_tasks.square, (3,)).get(timeout=GET_TIMEOUT)
