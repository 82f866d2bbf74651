"""rpool extension ``cloudpickle=True``: any callable as task, argument, result, initializer.

Lambdas, closures, nested functions and bound methods of local classes, under fork and spawn,
for Pool and ProcessPoolExecutor; the callable is serialized once per pool; what neither
pickle nor cloudpickle accepts fails with an error naming it; off by default (stdlib errors).
"""

from __future__ import annotations

import multiprocessing.pool
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import _tasks
import pytest
import rpool

GET_TIMEOUT = 30


@pytest.fixture
def pool(ctx):
    with rpool.Pool(2, context=ctx, cloudpickle=True) as p:
        yield p


def test_lambda_in_every_map_form(pool):
    assert pool.map(lambda x: x * 2, range(20)) == [x * 2 for x in range(20)]
    assert pool.starmap(lambda a, b: a - b, [(5, 1), (9, 3)]) == [4, 6]
    assert list(pool.imap(lambda x: x + 1, iter(range(5)))) == [1, 2, 3, 4, 5]
    assert sorted(pool.imap_unordered(lambda x: -x, range(5))) == [-4, -3, -2, -1, 0]
    assert pool.map_async(lambda x: x, [1, 2]).get(timeout=GET_TIMEOUT) == [1, 2]


def test_closure_nested_function_and_bound_method(pool):
    offset = 10

    def nested(x):
        return x + offset

    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        def scale(self, x):
            return x * self.factor

    assert pool.apply_async(nested, (1,)).get(timeout=GET_TIMEOUT) == 11
    assert pool.map(_tasks.make_adder(3), [1, 2]) == [4, 5]
    assert pool.map(Scaler(3).scale, [1, 2]) == [3, 6]
    assert pool.apply(Scaler(4).scale, (2,)) == 8


def test_lambda_argument_and_lambda_result(pool):
    assert pool.apply(_tasks.call_with, (lambda v: v * 3, 5)) == 15
    adder = pool.apply(_tasks.make_adder, (7,))
    assert adder(1) == 8
    assert pool.map(_tasks.make_adder, [1, 2])[1](1) == 3


def test_callable_is_serialized_once_per_pool(pool):
    func = lambda x: x + 1  # noqa: E731 - the point of the test
    results = [pool.apply_async(func, (i,)) for i in range(50)]
    assert [r.get(timeout=GET_TIMEOUT) for r in results] == list(range(1, 51))
    runtime = pool._runtime
    assert runtime.func_id(func) != 0
    assert runtime.func_id(func) == runtime.func_id(func)


def test_lambda_initializer_and_initargs(ctx):
    with rpool.Pool(
        2,
        initializer=lambda value: _tasks.store_for_lambda_init(value),
        initargs=(lambda: 5,),
        context=ctx,
        cloudpickle=True,
    ) as pool:
        made = pool.apply(_tasks.read_lambda_init)
        assert made() == 5


def test_unserializable_callable_names_it(pool):
    lock = threading.Lock()

    def holds_lock(_):
        return lock

    result = pool.apply_async(holds_lock, (1,))
    with pytest.raises(pickle.PicklingError, match="holds_lock"):
        result.get(timeout=GET_TIMEOUT)
    with pytest.raises(pickle.PicklingError, match="argument 0"):
        pool.apply(_tasks.identity, (threading.Lock(),))
    errors = []
    failed = pool.apply_async(holds_lock, (1,), error_callback=errors.append)
    assert not failed.successful() and isinstance(errors[0], pickle.PicklingError)
    with pytest.raises(pickle.PicklingError, match="holds_lock"):
        pool.map(holds_lock, range(3))
    # An unpicklable result is still reported like the stdlib does.
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(_tasks.return_unpicklable)
    assert pool.apply(_tasks.square, (3,)) == 9


def test_default_sends_functions_but_keeps_the_stdlib_result_rules(ctx):
    with rpool.Pool(1, context=ctx) as pool:
        offset = 5
        assert pool.apply_async(lambda x: x + offset, (1,)).get(timeout=GET_TIMEOUT) == 6
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            pool.apply(_tasks.make_adder, (1,))


def test_false_keeps_stdlib_behaviour(ctx):
    with rpool.Pool(1, context=ctx, cloudpickle=False) as pool:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            pool.apply_async(lambda: 1).get(timeout=GET_TIMEOUT)


def test_executor(ctx):
    with rpool.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=lambda: None, cloudpickle=True
    ) as ex:
        k = 4
        assert ex.submit(lambda x: x * k, 3).result(timeout=GET_TIMEOUT) == 12
        assert list(ex.map(lambda a, b: a + b, [1, 2], [10, 20], timeout=GET_TIMEOUT)) == [11, 22]
        assert ex.submit(_tasks.make_adder, 1).result(timeout=GET_TIMEOUT)(1) == 2
        future = ex.submit(_tasks.identity, threading.Lock())
        with pytest.raises(pickle.PicklingError, match="argument 0"):
            future.result(timeout=GET_TIMEOUT)


INTERACTIVE = """
import multiprocessing, rpool

def triple(x):
    return helper(x) * 3

def helper(x):
    return x + 1

if __name__ == "__main__":
    with rpool.Pool(2, context=multiprocessing.get_context("{method}"), cloudpickle=True) as p:
        print(p.map(triple, range(4)), p.apply(lambda: helper(1)))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_functions_of_interactive_main(method):
    """``python -c`` has no __main__ file: workers could not import its functions."""
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(INTERACTIVE.format(method=method))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[3, 6, 9, 12] 2"
