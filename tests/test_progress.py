"""rpool extension ``progress=``: tqdm bars and callbacks on the map family.

Callbacks see a monotonic ``done`` that ends at the total (None until a lazy input is read to
its end); tqdm objects are advanced and left open; ``progress=True`` draws and closes a bar;
a failing callback does not break the map.
"""

from __future__ import annotations

import io
import threading

import _tasks
import pytest
import rpool

GET_TIMEOUT = 30
N = 500


class Recorder:
    """A progress callback that remembers every (done, total) it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int | None) -> None:
        with self.lock:
            self.calls.append((done, total))

    def check(self, total: int) -> None:
        dones = [done for done, _ in self.calls]
        assert dones == sorted(dones)
        assert self.calls[-1] == (total, total)


@pytest.fixture
def pool(ctx):
    with rpool.Pool(2, context=ctx) as p:
        yield p


def test_map_and_starmap(pool):
    rec = Recorder()
    assert pool.map(_tasks.square, range(N), chunksize=7, progress=rec) == [x * x for x in range(N)]
    rec.check(N)
    assert all(total == N for _, total in rec.calls)
    rec = Recorder()
    assert pool.starmap(_tasks.add, [(i, i) for i in range(N)], progress=rec)[-1] == 2 * (N - 1)
    rec.check(N)


def test_async_forms(pool):
    rec = Recorder()
    result = pool.map_async(_tasks.square, range(N), progress=rec)
    assert len(result.get(timeout=GET_TIMEOUT)) == N
    rec.check(N)
    rec = Recorder()
    result = pool.starmap_async(_tasks.add, [(1, 2)] * N, chunksize=10, progress=rec)
    assert result.get(timeout=GET_TIMEOUT) == [3] * N
    rec.check(N)


def test_imap_sized_and_lazy(pool):
    rec = Recorder()
    assert list(pool.imap(_tasks.square, range(N), progress=rec)) == [x * x for x in range(N)]
    rec.check(N)
    rec = Recorder()
    assert sorted(pool.imap_unordered(_tasks.identity, iter(range(N)), progress=rec)) == list(
        range(N)
    )
    rec.check(N)
    assert rec.calls[0][1] in (None, N)  # unknown until the generator is exhausted


def test_executor_map(ctx):
    rec = Recorder()
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        out = list(ex.map(_tasks.add, range(N), range(N), progress=rec, timeout=GET_TIMEOUT))
    assert out == [2 * i for i in range(N)]
    rec.check(N)


def test_tqdm_object_is_advanced_and_left_open(pool):
    tqdm = pytest.importorskip("tqdm").tqdm
    bar = tqdm(file=io.StringIO())
    try:
        pool.map(_tasks.identity, range(N), progress=bar)
        assert bar.n == N
        assert bar.total == N  # filled in because the bar had none
        list(pool.imap(_tasks.identity, range(10), progress=bar))
        assert bar.n == N + 10
    finally:
        bar.close()


def test_progress_true_draws_a_bar(pool, capsys):
    pytest.importorskip("tqdm")
    pool.map(_tasks.identity, range(N), progress=True)
    assert "100%" in capsys.readouterr().err


def test_failing_callback_does_not_break_the_map(pool, capsys):
    def broken(done, total):
        raise RuntimeError("progress display failed")

    assert pool.map(_tasks.square, range(50), chunksize=5, progress=broken) == [
        x * x for x in range(50)
    ]
    assert "progress display failed" in capsys.readouterr().err


def test_failed_map_and_bad_argument(pool):
    rec = Recorder()
    with pytest.raises(ValueError):
        pool.map(_tasks.raise_value_error_if_odd, range(10), chunksize=1, progress=rec)
    with pytest.raises(TypeError, match="progress"):
        pool.map(_tasks.square, range(3), progress=42)
    assert pool.map(_tasks.square, [], progress=rec) == []
