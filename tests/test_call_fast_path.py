"""Per-task calls' fast path: when every positional argument is a plain number or a `str`,
`submit`/`apply_async` pickle the call in Rust (`rpool._rpool.pickle_call_args`) instead of
through `pickle`. What the worker receives must equal what was passed, value and type;
anything else (keyword arguments, subclasses, big ints, lone surrogates, containers) takes the
`pickle` path."""

from __future__ import annotations

import enum
import pickle

import _tasks
import pytest
import rpool
import rpool._fronts
from _helpers import assert_same_values
from rpool import _rpool

PLAIN = [
    0,
    255,
    256,
    65536,
    -1,
    2**31,
    -(2**31) - 1,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    float("inf"),
    float("nan"),
    None,
    True,
    False,
    "",
    "text",
    "päivää ☃ 😀",
    "x" * 255,
    "y" * 256,
    "z" * 70_000,
]


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


NOT_PLAIN = [2**64, -(2**63) - 1, Colour.RED, Name("n"), "\udc80", b"raw", [1], (1,), {"a": 1}]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 7])
def test_plain_arguments_round_trip(count):
    args = tuple(PLAIN[:count]) if count < 7 else tuple(PLAIN)
    data = _rpool.pickle_call_args(args)
    assert data is not None
    loaded_args, kwargs = pickle.loads(data)
    assert kwargs is None
    assert_same_values(loaded_args, args)


def test_every_plain_value_alone_round_trips():
    for value in PLAIN:
        data = _rpool.pickle_call_args((value,))
        assert data is not None, value
        assert_same_values(pickle.loads(data)[0], (value,))


def test_a_string_passed_twice_is_left_to_pickle():
    # pickle sends it once and the worker gets one object twice; the native path would not.
    text = "".join(["shared"] * 10)
    equal = "".join(["shared"] * 10)
    assert text == equal and text is not equal
    assert _rpool.pickle_call_args((text, 1, text)) is None
    assert _rpool.pickle_call_args((text, 1, equal)) is not None
    assert _rpool.pickle_call_args(tuple(str(i) for i in range(17))) is None


@pytest.mark.parametrize("odd", NOT_PLAIN, ids=repr)
def test_anything_else_is_left_to_pickle(odd):
    assert _rpool.pickle_call_args((1, odd)) is None
    assert _rpool.pickle_call_args((odd,)) is None


@pytest.fixture
def pickled_calls(monkeypatch):
    """Records the calls that went through `pickle_call` (the non-native path, taken by
    `rpool._fronts.queue_call` for both `submit` and `apply_async`)."""
    seen = []
    original = rpool._fronts.pickle_call

    def recording(runtime, func, func_id, args, kwds):
        seen.append(args)
        return original(runtime, func, func_id, args, kwds)

    monkeypatch.setattr(rpool._fronts, "pickle_call", recording)
    return seen


@pytest.mark.timeout(60)
def test_executor_submit_delivers_arguments_unchanged(ctx, pickled_calls):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        plain = [ex.submit(_tasks.echo_args, value, 7, "k") for value in PLAIN]
        odd = [ex.submit(_tasks.echo_args, value) for value in NOT_PLAIN]
        keyword = ex.submit(_tasks.sleep_and_return, 0, value="kw")
        for value, future in zip(PLAIN, plain, strict=True):
            assert_same_values(future.result(timeout=30), (value, 7, "k"))
        for value, future in zip(NOT_PLAIN, odd, strict=True):
            result = future.result(timeout=30)
            assert type(result[0]) is type(value) and result == (value,)
        assert keyword.result(timeout=30) == "kw"
    # Only the calls that are not all plain (and the one with a keyword) went through pickle.
    assert pickled_calls == [(value,) for value in NOT_PLAIN] + [(0,)]


@pytest.mark.timeout(60)
def test_pool_apply_async_delivers_arguments_unchanged(ctx, pickled_calls):
    done = []
    with rpool.Pool(2, context=ctx) as pool:
        plain = [pool.apply_async(_tasks.echo_args, (value, "v")) for value in PLAIN]
        with_callback = pool.apply_async(_tasks.echo_args, [5, 6], callback=done.append)
        odd = [pool.apply_async(_tasks.echo_args, (value,)) for value in NOT_PLAIN]
        for value, result in zip(PLAIN, plain, strict=True):
            assert_same_values(result.get(timeout=30), (value, "v"))
        assert with_callback.get(timeout=30) == (5, 6)
        for value, result in zip(NOT_PLAIN, odd, strict=True):
            got = result.get(timeout=30)
            assert type(got[0]) is type(value) and got == (value,)
        assert pool.apply(_tasks.add, (2, 3)) == 5
    assert done == [(5, 6)]
    assert pickled_calls == [(value,) for value in NOT_PLAIN]


@pytest.mark.timeout(60)
def test_single_plain_results_arrive_unchanged(ctx):
    # A lone plain number or str result is decoded without pickle; everything else with it.
    values = PLAIN + NOT_PLAIN + [2**70, "\ud800x", Name("sub")]
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = [ex.submit(_tasks.identity, value) for value in values]
        results = [future.result(timeout=30) for future in futures]
    assert_same_values(results[: len(PLAIN)], PLAIN)
    for value, result in zip(values[len(PLAIN) :], results[len(PLAIN) :], strict=True):
        assert type(result) is type(value) and result == value
    with rpool.Pool(2, context=ctx) as pool:
        assert_same_values([pool.apply(_tasks.identity, (value,)) for value in PLAIN], PLAIN)
