"""How task failures cross back from rpool.Pool workers.

Remote exceptions keep type and args and carry the worker traceback as __cause__;
unpicklable results, arguments and exceptions fail only their own task; a raising
callback does not take the pool down.
"""

from __future__ import annotations

import multiprocessing.pool
import pickle
import threading

import _tasks
import pytest
import rpool

GET_TIMEOUT = 30


@pytest.fixture
def pool(ctx):
    with rpool.Pool(2, context=ctx) as p:
        yield p


def _check_remote(exc: BaseException, args: tuple) -> None:
    assert type(exc) is ValueError
    assert exc.args == args
    cause = exc.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    text = str(cause)
    assert "Traceback (most recent call last)" in text
    assert "raise_value_error" in text
    assert "_tasks.py" in text


def test_apply_async_exception_keeps_type_args_and_traceback(pool):
    result = pool.apply_async(_tasks.raise_value_error, ("boom", 1))
    with pytest.raises(ValueError) as info:
        result.get(timeout=GET_TIMEOUT)
    _check_remote(info.value, ("boom", 1))


def test_apply_exception(pool):
    with pytest.raises(ValueError) as info:
        pool.apply(_tasks.raise_value_error, ("apply",))
    _check_remote(info.value, ("apply",))


def test_map_exception(pool):
    with pytest.raises(ValueError) as info:
        pool.map(_tasks.raise_value_error, ["m1"])
    _check_remote(info.value, ("m1",))


def test_imap_exception_after_good_results(pool):
    it = pool.imap(_tasks.raise_value_error_if_odd, range(4), chunksize=1)
    assert it.next(timeout=GET_TIMEOUT) == 0
    with pytest.raises(ValueError) as info:
        it.next(timeout=GET_TIMEOUT)
    assert info.value.args == ("odd", 1)
    assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)


def test_starmap_exception(pool):
    with pytest.raises(ValueError) as info:
        pool.starmap(_tasks.raise_value_error, [("s", 2)])
    _check_remote(info.value, ("s", 2))


def test_pool_usable_after_task_exception(pool):
    with pytest.raises(ValueError):
        pool.apply(_tasks.raise_value_error, ("x",))
    assert pool.map(_tasks.square, range(10)) == [i * i for i in range(10)]


def test_unpicklable_result_fails_only_that_task(pool):
    results = [pool.apply_async(_tasks.unpicklable_if, (i, 3)) for i in range(6)]
    for i, result in enumerate(results):
        if i == 3:
            with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
                result.get(timeout=GET_TIMEOUT)
            assert "lock" in str(info.value)
        else:
            assert result.get(timeout=GET_TIMEOUT) == i
    assert pool.apply(_tasks.square, (4,)) == 16


def test_unpicklable_result_in_map(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.map(_tasks.return_unpicklable, [0])
    assert pool.map(_tasks.square, [1, 2]) == [1, 4]


def test_unpicklable_argument_names_type_and_pool_survives(pool):
    with pytest.raises((TypeError, pickle.PicklingError)) as info:
        pool.apply_async(_tasks.identity, (threading.Lock(),)).get(timeout=GET_TIMEOUT)
    assert "lock" in str(info.value)
    assert pool.apply_async(_tasks.square, (3,)).get(timeout=GET_TIMEOUT) == 9
    with pytest.raises((TypeError, pickle.PicklingError)) as info:
        pool.map(_tasks.identity, [1, threading.Lock(), 3])
    assert "lock" in str(info.value)
    assert pool.map(_tasks.square, range(5)) == [0, 1, 4, 9, 16]


def test_exception_that_cannot_be_unpickled_becomes_remote_error(pool):
    result = pool.apply_async(_tasks.raise_unpicklable_exception, ("left", "right"))
    with pytest.raises(rpool.RemoteError) as info:
        result.get(timeout=GET_TIMEOUT)
    text = str(info.value)
    assert "TwoArgError" in text
    assert "bad pair: left/right" in text
    # Other tasks and later tasks are unaffected.
    assert pool.apply_async(_tasks.square, (5,)).get(timeout=GET_TIMEOUT) == 25


def test_exception_in_callback_does_not_kill_pool(pool):
    called = threading.Event()

    def bad_callback(_value):
        called.set()
        raise RuntimeError("callback failed on purpose")

    pool.apply_async(_tasks.square, (2,), callback=bad_callback)
    assert called.wait(GET_TIMEOUT)
    assert pool.apply_async(_tasks.square, (3,)).get(timeout=GET_TIMEOUT) == 9
    assert pool.map_async(_tasks.square, range(4)).get(timeout=GET_TIMEOUT) == [0, 1, 4, 9]


def test_exception_in_error_callback_does_not_kill_pool(pool):
    called = threading.Event()

    def bad_error_callback(_exc):
        called.set()
        raise RuntimeError("error callback failed on purpose")

    pool.apply_async(_tasks.raise_value_error, ("x",), error_callback=bad_error_callback)
    assert called.wait(GET_TIMEOUT)
    assert pool.apply_async(_tasks.square, (3,)).get(timeout=GET_TIMEOUT) == 9
