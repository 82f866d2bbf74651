"""Work stealing: tasks queued on a worker behind a slow task are taken back and run elsewhere
instead of waiting for the slow task (the stdlib's shared queue never has that problem)."""

from concurrent.futures import FIRST_COMPLETED, wait

import _tasks
import pytest
import rpool
from _helpers import release, wait_started

GET_TIMEOUT = 20


@pytest.mark.timeout(60)
def test_tasks_behind_a_blocked_task_run_on_the_idle_worker(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    with rpool.Pool(2, context=ctx) as pool:
        # Teach the workers that tasks are fast, so the pool queues many per worker.
        assert pool.map(_tasks.square, range(200), chunksize=1) == [i * i for i in range(200)]
        blocker = pool.apply_async(_tasks.block_until, (str(gate), str(started)))
        quick = [pool.apply_async(_tasks.square, (i,)) for i in range(40)]
        wait_started(started, 1)
        # Every quick task finishes while the blocker still holds its worker; without
        # stealing, those queued behind the blocker would wait for the gate forever.
        assert [r.get(timeout=GET_TIMEOUT) for r in quick] == [i * i for i in range(40)]
        assert not blocker.ready()
        release(gate)
        blocker.get(timeout=GET_TIMEOUT)


@pytest.mark.timeout(60)
def test_executor_futures_behind_a_blocked_task_complete(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(_tasks.square, range(200), chunksize=1)) == [i * i for i in range(200)]
        blocker = ex.submit(_tasks.block_until, str(gate), str(started))
        quick = [ex.submit(_tasks.square, i) for i in range(40)]
        wait_started(started, 1)
        assert [f.result(timeout=GET_TIMEOUT) for f in quick] == [i * i for i in range(40)]
        assert not blocker.done()
        release(gate)
        blocker.result(timeout=GET_TIMEOUT)


@pytest.mark.timeout(60)
def test_slow_tasks_after_fast_ones_are_shared_by_both_workers(ctx):
    # One worker has measured a microsecond task, so the pool believes it can queue hundreds
    # on it; the tasks that follow take 30 ms each. Both workers must end up running a fair
    # part of them: before the fix one worker could take almost all of them and, since none
    # of its tasks ever ran long, nothing was taken back while the other worker idled.
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.apply(_tasks.square, (3,)) == 9
        assert pool.map(_tasks.sleep_and_return, [0.03] * 40, chunksize=1) == [None] * 40
        done = [w.tasks_done for w in pool.stats().workers]  # 41 tasks in all
    assert len(done) == 2
    assert min(done) >= 12, done


@pytest.mark.timeout(60)
def test_a_finished_result_does_not_wait_for_the_next_task(ctx):
    # One worker that has only seen quick tasks gets a quick and a slow one back to back. The
    # quick result used to sit in the worker's output buffer until the slow task finished.
    with rpool.Pool(1, context=ctx) as pool:
        assert pool.map(_tasks.square, range(200), chunksize=1) == [i * i for i in range(200)]
        quick = pool.apply_async(_tasks.square, (7,))
        slow = pool.apply_async(_tasks.sleep_and_return, (5.0, "slow"))
        assert quick.get(timeout=2.5) == 49
        assert not slow.ready()
        assert slow.get(timeout=GET_TIMEOUT) == "slow"


@pytest.mark.timeout(60)
def test_executor_reports_a_quick_future_while_a_slow_one_runs(ctx):
    with rpool.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert list(ex.map(_tasks.square, range(200), chunksize=1)) == [i * i for i in range(200)]
        quick = ex.submit(_tasks.square, 8)
        slow = ex.submit(_tasks.sleep_and_return, 5.0, "slow")
        done, _ = wait([quick, slow], timeout=2.5, return_when=FIRST_COMPLETED)
        assert done == {quick}
        assert quick.result() == 64
        assert slow.result(timeout=GET_TIMEOUT) == "slow"
