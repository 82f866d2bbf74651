"""Reading a large value out of a shared-memory segment (`_rpool.pread_bytes`, src/py/fresh.rs).

What must hold: the exact bytes at the offset come back, as `bytes` or (writable) a private
`bytearray`, at every size (large reads are split between two threads); a file that ends early
raises `EOFError` (a split pickle then reports a truncated segment), a bad descriptor `OSError`,
a nonsensical size `ValueError`; and NumPy-style out-of-band buffers arrive as writable copies
that do not share memory.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
from collections.abc import Iterator

import _tasks
import pytest
from rpool import _rpool, _split

MIB = 1024 * 1024


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("rpool-test-fresh")
    try:
        yield fd
    finally:
        os.close(fd)


def fill(fd: int, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    assert os.pwrite(fd, data, 0) == size
    return data


# From 4 MiB on, the read is split between two threads at a page boundary near the middle.
@pytest.mark.parametrize("size", [0, 1, 4095, 3 * MIB + 17, 4 * MIB - 1, 4 * MIB, 9 * MIB + 5])
@pytest.mark.parametrize("writable", [False, True])
def test_reads_exactly_the_bytes_at_the_offset(memfd: int, size: int, writable: bool) -> None:
    data = fill(memfd, size + 300)
    got = _rpool.pread_bytes(memfd, size, 300, writable)
    assert type(got) is (bytearray if writable else bytes)
    assert got == data[300 : 300 + size]


def test_empty_reads_need_no_bytes_and_writable_ones_are_distinct(memfd: int) -> None:
    fill(memfd, 10)
    assert _rpool.pread_bytes(memfd, 0, 1000) == b""  # past the end, as os.pread
    first = _rpool.pread_bytes(memfd, 0, 0, True)
    second = _rpool.pread_bytes(memfd, 0, 0, True)
    assert first == second == bytearray()
    assert first is not second
    first.extend(b"abc")
    assert second == bytearray()


def test_writable_reads_are_private_buffers(memfd: int) -> None:
    data = fill(memfd, 5 * MIB)
    first = _rpool.pread_bytes(memfd, 5 * MIB, 0, True)
    second = _rpool.pread_bytes(memfd, 5 * MIB, 0, True)
    assert isinstance(first, bytearray)
    first[0] ^= 0xFF
    assert second == data
    assert os.pread(memfd, 1, 0) == data[:1]


def test_a_descriptor_without_pread_raises_oserror() -> None:
    # pread on a pipe fails (ESPIPE): an OSError, not a short or garbled result.
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"abc")
        with pytest.raises(OSError):
            _rpool.pread_bytes(read_end, 3, 0)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_file_that_ends_early_raises_eoferror(memfd: int) -> None:
    fill(memfd, 1000)
    with pytest.raises(EOFError, match="ended before"):
        _rpool.pread_bytes(memfd, 2000, 0)
    with pytest.raises(EOFError):
        _rpool.pread_bytes(memfd, 10, 995, True)


@pytest.mark.parametrize("file_size", [6 * MIB, 1 * MIB])
@pytest.mark.parametrize("writable", [False, True])
def test_a_split_read_whose_file_ends_early_raises_eoferror(
    memfd: int, file_size: int, writable: bool
) -> None:
    # 6 MiB: only the back half runs off the end; 1 MiB: both halves do.
    fill(memfd, file_size)
    with pytest.raises(EOFError, match="ended before"):
        _rpool.pread_bytes(memfd, 8 * MIB, 0, writable)


def test_a_split_read_from_a_descriptor_without_pread_raises_oserror() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as raised:
            _rpool.pread_bytes(read_end, 8 * MIB, 0)
        assert raised.value.errno == errno.ESPIPE
    finally:
        os.close(read_end)
        os.close(write_end)


def test_bad_descriptor_and_size_raise_clear_errors(memfd: int) -> None:
    with pytest.raises(OSError) as raised:
        _rpool.pread_bytes(-1, 10, 0)
    assert raised.value.errno == errno.EBADF
    with pytest.raises(OverflowError):
        _rpool.pread_bytes(memfd, -1, 0)
    with pytest.raises(ValueError, match="cannot read"):
        _rpool.pread_bytes(memfd, 2**63 + 1, 0)


def test_truncated_split_pickle_reports_the_segment(memfd: int) -> None:
    split = _split.SplitPickle([b"x" * (_split.SPLIT_MIN + 10)], 3)
    data = b"".join(bytes(part) for part in split.parts())
    os.pwrite(memfd, data[: len(data) - 100], 0)
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        # Claims the full length: the last buffer's read runs off the end of the file.
        _split.loads_segment(memfd, len(data))


def test_out_of_band_buffers_load_as_private_bytearrays() -> None:
    value = _tasks.OwnBuffer(bytes(range(256)) * (_split.SPLIT_MIN // 256 + 1))
    split = _split.SplitPickle(value, 3)
    fd = os.memfd_create("rpool-test-fresh-oob")
    try:
        data = b"".join(bytes(part) for part in split.parts())
        os.pwrite(fd, data, 0)
        loaded = _split.loads_segment(fd, len(data))
        again = _split.loads_segment(fd, len(data))
    finally:
        os.close(fd)
    assert isinstance(loaded.data, bytearray)
    assert loaded.data == value.data
    loaded.data[0] ^= 0xFF
    assert again.data == value.data
