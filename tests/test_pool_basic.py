"""rpool.Pool basics: the multiprocessing.pool.Pool API surface under fork and spawn.

apply/map families, ordering, empty and generator inputs, chunksize, callbacks,
AsyncResult states and timeouts, close/terminate/join, argument validation, repr.
"""

from __future__ import annotations

import multiprocessing
import re
import threading

import _tasks
import pytest
import rpool
from _helpers import release

GET_TIMEOUT = 30


@pytest.fixture
def pool(ctx):
    with rpool.Pool(2, context=ctx) as p:
        yield p


# --- apply / map families ----------------------------------------------------------------


def test_apply(pool):
    assert pool.apply(_tasks.square, (7,)) == 49
    assert pool.apply(_tasks.add, (1,), {"b": 2}) == 3


def test_apply_async(pool):
    result = pool.apply_async(_tasks.add, (2, 3))
    assert result.get(timeout=GET_TIMEOUT) == 5
    assert result.ready()
    assert result.successful()


def test_map(pool):
    assert pool.map(_tasks.square, range(50)) == [i * i for i in range(50)]


def test_result_types(pool):
    applied = pool.apply_async(_tasks.square, (2,))
    mapped = pool.map_async(_tasks.square, [1, 2])
    starred = pool.starmap_async(_tasks.add, [(1, 2)])
    assert isinstance(applied, rpool.AsyncResult)
    assert isinstance(mapped, rpool.MapResult)
    assert isinstance(starred, rpool.MapResult)
    assert applied.get(timeout=GET_TIMEOUT) == 4
    assert mapped.get(timeout=GET_TIMEOUT) == [1, 4]
    assert starred.get(timeout=GET_TIMEOUT) == [3]


def test_map_async(pool):
    result = pool.map_async(_tasks.square, range(20))
    assert result.get(timeout=GET_TIMEOUT) == [i * i for i in range(20)]
    assert result.successful()


def test_imap_keeps_input_order(pool):
    # Later items finish first; imap must still yield in input order.
    assert list(pool.imap(_tasks.reverse_delay, range(20), chunksize=1)) == list(range(20))


def test_imap_unordered_yields_every_result(pool):
    results = list(pool.imap_unordered(_tasks.reverse_delay, range(20), chunksize=1))
    assert len(results) == 20
    assert set(results) == set(range(20))


def test_starmap(pool):
    assert pool.starmap(_tasks.add, [(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]


def test_starmap_async(pool):
    result = pool.starmap_async(_tasks.add, [(i, i) for i in range(10)])
    assert result.get(timeout=GET_TIMEOUT) == [2 * i for i in range(10)]


def test_empty_inputs(pool):
    assert pool.map(_tasks.square, []) == []
    assert pool.map_async(_tasks.square, []).get(timeout=GET_TIMEOUT) == []
    assert list(pool.imap(_tasks.square, [])) == []
    assert list(pool.imap_unordered(_tasks.square, [])) == []
    assert pool.starmap(_tasks.add, []) == []
    assert pool.starmap_async(_tasks.add, []).get(timeout=GET_TIMEOUT) == []


def test_generator_inputs(pool):
    assert pool.map(_tasks.square, (i for i in range(30))) == [i * i for i in range(30)]
    assert list(pool.imap(_tasks.square, (i for i in range(30)))) == [i * i for i in range(30)]
    assert sorted(pool.imap_unordered(_tasks.square, (i for i in range(30)))) == [
        i * i for i in range(30)
    ]
    assert pool.starmap(_tasks.add, ((i, 1) for i in range(5))) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("chunksize", [1, 3, 1000], ids=["one", "three", "larger_than_input"])
def test_explicit_chunksize(pool, chunksize):
    expected = [i * i for i in range(40)]
    assert pool.map(_tasks.square, range(40), chunksize=chunksize) == expected
    assert list(pool.imap(_tasks.square, range(40), chunksize=chunksize)) == expected
    assert sorted(pool.imap_unordered(_tasks.square, range(40), chunksize=chunksize)) == expected
    pairs = [(i, i) for i in range(40)]
    assert pool.starmap(_tasks.add, pairs, chunksize=chunksize) == [2 * i for i in range(40)]


# --- callbacks ---------------------------------------------------------------------------


class CallbackRecorder:
    """Records each call with the thread it ran on; `done` is set on the first call."""

    def __init__(self):
        self.calls = []
        self.done = threading.Event()

    def __call__(self, value):
        self.calls.append((value, threading.current_thread() is threading.main_thread()))
        self.done.set()


def _finish(pool):
    pool.close()
    pool.join()


def test_apply_async_callback_called_once_off_main_thread(pool):
    recorder = CallbackRecorder()
    pool.apply_async(_tasks.square, (6,), callback=recorder).get(timeout=GET_TIMEOUT)
    assert recorder.done.wait(GET_TIMEOUT)
    _finish(pool)
    assert recorder.calls == [(36, False)]


def test_apply_async_error_callback_called_once_off_main_thread(pool):
    recorder = CallbackRecorder()
    errors = CallbackRecorder()
    result = pool.apply_async(
        _tasks.raise_value_error, ("nope",), callback=recorder, error_callback=errors
    )
    with pytest.raises(ValueError, match="nope"):
        result.get(timeout=GET_TIMEOUT)
    assert errors.done.wait(GET_TIMEOUT)
    _finish(pool)
    assert recorder.calls == []
    assert len(errors.calls) == 1
    exc, on_main = errors.calls[0]
    assert isinstance(exc, ValueError) and exc.args == ("nope",)
    assert on_main is False


def test_map_chunks_finishing_while_the_map_is_still_sent(pool):
    # The last chunk is slow to pickle, so the others finish while the caller still sends:
    # they wait unpickled until sending ends, then complete in the background as usual.
    items = list(range(40)) + [_tasks.SlowToPickle(40, 0.5)]
    recorder = CallbackRecorder()
    result = pool.map_async(_tasks.square, items, chunksize=4, callback=recorder)
    expected = [i * i for i in range(41)]
    assert result.get(timeout=GET_TIMEOUT) == expected
    assert recorder.done.wait(GET_TIMEOUT)
    assert recorder.calls == [(expected, False)]


def test_map_chunk_failing_while_the_map_is_still_sent(pool):
    items = [1, 3, 5, 7] + [2] * 36 + [_tasks.SlowToPickle(2, 0.5)]
    errors = CallbackRecorder()
    result = pool.map_async(
        _tasks.raise_value_error_if_odd, items, chunksize=4, error_callback=errors
    )
    with pytest.raises(ValueError, match="odd"):
        result.get(timeout=GET_TIMEOUT)
    assert errors.done.wait(GET_TIMEOUT)
    assert len(errors.calls) == 1 and errors.calls[0][1] is False


def test_map_async_callback_gets_whole_list(pool):
    recorder = CallbackRecorder()
    pool.map_async(_tasks.square, range(10), callback=recorder).get(timeout=GET_TIMEOUT)
    assert recorder.done.wait(GET_TIMEOUT)
    _finish(pool)
    assert recorder.calls == [([i * i for i in range(10)], False)]


def test_starmap_async_error_callback(pool):
    recorder = CallbackRecorder()
    errors = CallbackRecorder()
    result = pool.starmap_async(
        _tasks.raise_value_error, [(1,), (2,)], callback=recorder, error_callback=errors
    )
    with pytest.raises(ValueError):
        result.get(timeout=GET_TIMEOUT)
    assert errors.done.wait(GET_TIMEOUT)
    _finish(pool)
    assert recorder.calls == []
    assert len(errors.calls) == 1
    assert isinstance(errors.calls[0][0], ValueError)
    assert errors.calls[0][1] is False


# --- AsyncResult states and timeouts -----------------------------------------------------


def test_async_result_not_ready(pool, tmp_path):
    gate = tmp_path / "release"
    result = pool.apply_async(_tasks.block_until, (str(gate),))
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()
    assert result.wait(0.2) is None
    assert not result.ready()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.2)
    release(gate)
    pid, _, _ = result.get(timeout=GET_TIMEOUT)
    assert isinstance(pid, int)
    assert result.ready()
    assert result.successful()
    result.wait(GET_TIMEOUT)


def test_async_result_failed(pool):
    result = pool.apply_async(_tasks.raise_value_error, ("x",))
    result.wait(GET_TIMEOUT)
    assert result.ready()
    assert not result.successful()
    with pytest.raises(ValueError):
        result.get(timeout=GET_TIMEOUT)


def test_map_async_result_not_ready(pool, tmp_path):
    gate = tmp_path / "release"
    result = pool.map_async(_tasks.block_on, [(str(gate), None)] * 3)
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.2)
    release(gate)
    assert len(result.get(timeout=GET_TIMEOUT)) == 3
    assert result.successful()


def test_imap_next_timeout(pool, tmp_path):
    gate = tmp_path / "release"
    it = pool.imap(_tasks.block_on, [(str(gate), None)])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.2)
    release(gate)
    pid, _, _ = it.next(timeout=GET_TIMEOUT)
    assert isinstance(pid, int)
    with pytest.raises(StopIteration):
        it.next(timeout=GET_TIMEOUT)


def test_imap_unordered_next_timeout(pool, tmp_path):
    gate = tmp_path / "release"
    it = pool.imap_unordered(_tasks.block_on, [(str(gate), None)])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.2)
    release(gate)
    assert isinstance(it.next(timeout=GET_TIMEOUT)[0], int)


# --- lifecycle ---------------------------------------------------------------------------


def test_close_lets_pending_tasks_finish(ctx):
    pool = rpool.Pool(2, context=ctx)
    try:
        results = [pool.apply_async(_tasks.sleep_and_return, (0.05, i)) for i in range(6)]
        pool.close()
        pool.join()
        assert all(r.ready() for r in results)
        assert [r.get(timeout=GET_TIMEOUT) for r in results] == list(range(6))
    finally:
        pool.terminate()
        pool.join()


@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_pool_not_running_after_stop(ctx, stop):
    pool = rpool.Pool(2, context=ctx)
    try:
        getattr(pool, stop)()
        with pytest.raises(ValueError, match="Pool not running"):
            pool.apply_async(_tasks.square, (1,))
        with pytest.raises(ValueError, match="Pool not running"):
            pool.apply(_tasks.square, (1,))
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map(_tasks.square, [1, 2])
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map_async(_tasks.square, [1, 2])
        with pytest.raises(ValueError, match="Pool not running"):
            pool.imap(_tasks.square, [1, 2])
        with pytest.raises(ValueError, match="Pool not running"):
            pool.imap_unordered(_tasks.square, [1, 2])
        with pytest.raises(ValueError, match="Pool not running"):
            pool.starmap(_tasks.add, [(1, 2)])
        pool.join()
    finally:
        pool.terminate()
        pool.join()


def test_join_before_close_raises(ctx):
    pool = rpool.Pool(2, context=ctx)
    try:
        with pytest.raises(ValueError):
            pool.join()
        assert pool.apply(_tasks.square, (3,)) == 9  # still usable
    finally:
        pool.terminate()
        pool.join()


def test_terminate_after_close(ctx):
    pool = rpool.Pool(2, context=ctx)
    assert pool.map(_tasks.square, range(4)) == [0, 1, 4, 9]
    pool.close()
    pool.terminate()
    pool.join()


@pytest.mark.parametrize("processes", [0, -1])
def test_processes_must_be_positive(ctx, processes):
    with pytest.raises(ValueError):
        rpool.Pool(processes, context=ctx)


def test_initializer_must_be_callable(ctx):
    with pytest.raises(TypeError):
        rpool.Pool(2, initializer=42, context=ctx)


def test_context_manager(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        assert isinstance(pool, rpool.Pool)
        assert pool.apply(_tasks.square, (5,)) == 25
    # __exit__ terminates the pool.
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(_tasks.square, (1,))
    pool.join()


def test_repr_shows_state_and_worker_count(ctx):
    pool = rpool.Pool(2, context=ctx)
    try:
        running = repr(pool)
        assert re.search(r"run", running, re.IGNORECASE), running
        assert "2" in running, running
        pool.close()
        closed = repr(pool)
        assert re.search(r"clos", closed, re.IGNORECASE), closed
        assert closed != running
    finally:
        pool.terminate()
        pool.join()
