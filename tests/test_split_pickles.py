"""Split pickles (python/rpool/_split.py): large bytes/bytearrays pickled out of band into a
shared-memory segment, then loaded straight from a mapping of it.

What must hold: the layout round-trips every value exactly (types, nesting, aliasing, buffers of
objects that pickle their own out-of-band buffers); a damaged segment raises a clear
`UnpicklingError` instead of returning garbage; in a pool, large arguments (positional, keyword,
nested) and large results travel this way on both fronts and start methods, and values whose
search stops early still arrive through the ordinary path.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
import time
from typing import Any

import _tasks
import pytest
import rpool
from _helpers import wait_until
from rpool import _split

GET_TIMEOUT = 60
BIG = _split.SPLIT_MIN + 12_345


def write_parts(fd: int, split: _split.SplitPickle) -> int:
    """Writes a split pickle's parts at the start of `fd` (as rpool's engine does); returns its
    length."""
    data = b"".join(bytes(part) for part in split.parts())
    assert os.pwrite(fd, data, 0) == len(data)
    return len(data)


def round_trip(value: Any, search_depth: int = 3) -> tuple[Any, _split.SplitPickle]:
    split = _split.SplitPickle(value, search_depth)
    fd = os.memfd_create("rpool-test-split")
    try:
        length = write_parts(fd, split)
        assert split.size - 64 < length <= split.size
        return _split.loads_segment(fd, length), split
    finally:
        os.close(fd)


def test_large_bytes_go_out_of_band_and_come_back_equal():
    data = _tasks.pattern_bytes(BIG, 3)
    loaded, split = round_trip(("key", data, 42))
    assert loaded == ("key", data, 42)
    assert type(loaded[1]) is bytes
    assert len(split.buffers) == 1 and split.buffers[0].nbytes == BIG
    # The head pickle stays small: the payload is not in it.
    assert len(split.head) < 1024


def test_bytearray_keeps_its_type_and_is_writable():
    data = bytearray(_tasks.pattern_bytes(BIG, 5))
    loaded, _ = round_trip([data])
    assert type(loaded[0]) is bytearray and loaded[0] == data
    loaded[0][0] ^= 0xFF  # a private, writable copy, not a view of the segment


def test_nested_containers_and_small_neighbours():
    first = _tasks.pattern_bytes(BIG, 1)
    second = _tasks.pattern_bytes(BIG + 1, 2)
    value = {"a": (first, [second, b"tiny"]), "n": 1.5, "s": "text"}
    loaded, split = round_trip(value)
    assert loaded == value
    assert len(split.buffers) == 2


def test_the_same_buffer_twice_stays_one_object():
    data = _tasks.pattern_bytes(BIG)
    loaded, split = round_trip((data, data, [data]))
    assert loaded[0] == data
    assert loaded[0] is loaded[1] is loaded[2][0]
    assert len(split.buffers) == 1


def test_buffers_below_the_depth_limit_stay_in_band():
    data = _tasks.pattern_bytes(BIG)
    deep = [[[[data]]]]
    loaded, split = round_trip(deep, search_depth=2)
    assert loaded == deep
    assert split.buffers == []


def test_objects_with_their_own_buffers_get_a_private_copy():
    original = _tasks.OwnBuffer(_tasks.pattern_bytes(BIG, 9))
    loaded, split = round_trip((original,))
    assert split.flags == [0]
    assert isinstance(loaded[0].data, bytearray)
    assert loaded[0].data == original.data
    loaded[0].data[0] ^= 0xFF  # would fail on a read-only view of the mapping


def test_a_plain_pickle_in_a_segment_loads_too():
    fd = os.memfd_create("rpool-test-plain")
    try:
        payload = pickle.dumps({"plain": list(range(10))})
        os.write(fd, payload)
        assert _split.loads_segment(fd, len(payload)) == {"plain": list(range(10))}
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["short head", "entry past the end"])
def test_a_truncated_segment_raises_a_clear_error(damage):
    split = _split.SplitPickle((_tasks.pattern_bytes(BIG),))
    fd = os.memfd_create("rpool-test-damaged")
    try:
        length = write_parts(fd, split)
        if damage == "short head":
            header = struct.pack("<8sIIQ", b"rpoolSP1", 1, 0, 1 << 40)
            os.pwrite(fd, header, 0)
        else:
            length = length - 1000
        with pytest.raises(pickle.UnpicklingError, match="truncated split pickle"):
            _split.loads_segment(fd, length)
    finally:
        os.close(fd)


def test_the_plain_fallback_is_an_ordinary_pickle():
    value = (_tasks.pattern_bytes(BIG), "x")
    assert pickle.loads(_split.SplitPickle(value).plain()) == value


def test_which_values_are_large():
    big = _tasks.pattern_bytes(BIG)
    assert _split.call_is_large((big,), None)
    assert _split.call_is_large((1,), {"data": big})
    assert _split.call_is_large(([big],), None)
    assert not _split.call_is_large((b"small", "s", 3), {"k": b"v"})
    assert not _split.call_is_large((list(range(100)) + [big],), None)  # too many items to search
    assert _split.result_is_large(bytearray(big))
    assert _split.result_is_large(_tasks.OwnBuffer(big))
    assert not _split.result_is_large("x" * BIG)  # str has no buffer to hand out


def test_pool_arguments_positional_keyword_and_aliased(ctx):
    data = _tasks.pattern_bytes(BIG, 4)
    mutable = bytearray(_tasks.pattern_bytes(BIG, 6))
    with rpool.Pool(2, context=ctx) as pool:
        seen, named, same = pool.apply(
            _tasks.describe_values, (data, data), {"extra": mutable, "small": b"s"}
        )
        assert seen == [("bytes", BIG), ("bytes", BIG)]
        assert named == {"extra": ("bytearray", BIG), "small": ("bytes", 1)}
        assert same
        assert wait_until(lambda: pool.stats().shared_payloads == 1, GET_TIMEOUT)


def test_small_arguments_large_results_on_both_fronts(ctx):
    expected = _tasks.build_nested_result(BIG, 2)
    with rpool.Pool(2, context=ctx) as pool:
        results = [pool.apply_async(_tasks.build_nested_result, (BIG, 2)) for _ in range(4)]
        for result in results:
            value = result.get(GET_TIMEOUT)
            assert value == expected
            assert type(value["mutable"]) is bytearray
        # No large argument: the worker has no grant at first, so results may use the pipe;
        # either way every value is whole.
        assert pool.stats().shared_payloads == 0
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = [ex.submit(_tasks.build_nested_result, BIG, 2) for _ in range(3)]
        assert [f.result(GET_TIMEOUT) for f in futures] == [expected] * 3


def test_objects_with_their_own_buffers_cross_the_pool(ctx):
    value = _tasks.OwnBuffer(_tasks.pattern_bytes(BIG, 8))
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        sample, reversed_value = ex.submit(_tasks.own_buffer_sum, value).result(GET_TIMEOUT)
        assert sample == sum(value.data[::4096])
        assert reversed_value.data == value.data[::-1]
        assert wait_until(lambda: ex.stats().shared_payloads == 1, GET_TIMEOUT)


def test_callbacks_see_large_results(ctx):
    data = _tasks.pattern_bytes(BIG, 1)
    received: list[Any] = []
    with rpool.Pool(2, context=ctx) as pool:
        result = pool.apply_async(_tasks.identity, (data,), callback=received.append)
        assert result.get(GET_TIMEOUT) == data
        assert wait_until(lambda: len(received) == 1, GET_TIMEOUT)
        assert received[0] == data


def test_an_unpicklable_neighbour_fails_only_its_call(ctx):
    data = _tasks.pattern_bytes(BIG)
    with rpool.Pool(2, context=ctx) as pool:
        with pytest.raises((TypeError, pickle.PicklingError)) as info:
            pool.apply_async(_tasks.describe_values, (data, threading.Lock())).get(GET_TIMEOUT)
        assert "lock" in str(info.value)
        # The pool is still usable.
        assert pool.apply(_tasks.describe_values, (data,))[0] == [("bytes", BIG)]


def test_parts_are_the_segment_layout_and_load_inline_too():
    value = {"data": _tasks.pattern_bytes(BIG, 7), "mutable": bytearray(b"m" * BIG)}
    split = _split.SplitPickle(value)
    joined = b"".join(bytes(part) for part in split.parts())
    # `size` rounds the end up to the buffer alignment; the parts stop at the last byte.
    assert split.size - 64 < len(joined) <= split.size
    # What a worker gets through the pipe when no segment could be had at dispatch.
    loaded = _split.loads_buffer(joined)
    assert loaded == value and type(loaded["mutable"]) is bytearray
    assert _split.loads_buffer(pickle.dumps(value)) == value


def test_out_of_band_buffers_load_inline_into_private_bytearrays():
    original = _tasks.OwnBuffer(_tasks.pattern_bytes(BIG, 5))
    joined = b"".join(bytes(part) for part in _split.SplitPickle(original).parts())
    loaded = _split.loads_buffer(joined)
    assert type(loaded.data) is bytearray and loaded.data == original.data
    loaded.data[0] ^= 0xFF  # writable, and its own: the pickle it came from is untouched
    assert _split.loads_buffer(joined).data == original.data


def test_the_native_core_rejects_payloads_it_cannot_pin():
    with rpool.Pool(2) as pool:
        core = pool._runtime.core
        with pytest.raises(TypeError, match="bytes or a list of split pickle parts"):
            core.submit(1, 0, "not bytes", False, 0)
        with pytest.raises(TypeError, match="must be bytes or memoryview"):
            core.submit(1, 0, [b"ok", 12], False, 0)
        assert pool.apply(_tasks.square, (4,)) == 16


def test_large_calls_are_submitted_as_pinned_parts_and_small_ones_as_bytes():
    from rpool._fronts import pickle_call

    big = _tasks.pattern_bytes(BIG)
    with rpool.Pool(2) as pool:
        runtime = pool._runtime
        func_id = runtime.func_id(_tasks.identity)
        parts = pickle_call(runtime, _tasks.identity, func_id, (big,), None)
        assert isinstance(parts, list)
        assert all(type(part) in (bytes, memoryview) for part in parts)
        # The argument's bytes are referenced, not copied, until dispatch writes them.
        assert any(type(p) is memoryview and p.obj is not None and len(p) == BIG for p in parts)
        small = pickle_call(runtime, _tasks.identity, func_id, (b"small",), None)
        assert type(small) is bytes


def test_results_the_caller_loads_late_do_not_hold_back_the_others(ctx):
    # Small arguments, large results, no callback: results wait in segments until `get()`;
    # they must not stop the pool from granting segments for the rest.
    with rpool.Pool(2, context=ctx) as pool:
        results = [pool.apply_async(_tasks.build_nested_result, (BIG, i)) for i in range(12)]
        pool.close()
        pool.join()
        for i, result in enumerate(results):
            assert result.get(GET_TIMEOUT) == _tasks.build_nested_result(BIG, i)


def test_a_slow_callback_does_not_stall_large_results(ctx):
    # The notifier is busy in a slow callback, so large results wait for it; workers then
    # wait a moment for a segment and send their results through the pipe instead.
    payloads = [_tasks.pattern_bytes(BIG, seed) for seed in range(8)]
    seen: list[int] = []

    def slow_callback(value: bytes) -> None:
        if not seen:
            time.sleep(0.5)
        seen.append(len(value))

    with rpool.Pool(2, context=ctx) as pool:
        results = [
            pool.apply_async(_tasks.identity, (p,), callback=slow_callback) for p in payloads
        ]
        assert [r.get(GET_TIMEOUT) for r in results] == payloads
        assert wait_until(lambda: len(seen) == len(payloads), GET_TIMEOUT)
