"""rpool extension: asyncio. ``await rpool.wrap_async(result)`` and ``async for`` over imap.

Results and exceptions arrive in the coroutine, the event loop keeps running while tasks run,
results finishing out of order are delivered, and an abandoned ``async for`` leaves no mess.
"""

from __future__ import annotations

import asyncio

import _tasks
import pytest
import rpool

TIMEOUT = 30


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


@pytest.fixture
def pool(ctx):
    with rpool.Pool(2, context=ctx) as p:
        yield p


def test_await_apply_async_and_map_async(pool):
    async def main():
        value = await rpool.wrap_async(pool.apply_async(_tasks.square, (6,)))
        mapped = await rpool.wrap_async(pool.map_async(_tasks.square, range(5)))
        with_callback = await rpool.wrap_async(
            pool.apply_async(_tasks.add, (1, 2), callback=lambda _: None)
        )
        return value, mapped, with_callback

    assert run(main()) == (36, [0, 1, 4, 9, 16], 3)


def test_results_are_awaitable_directly(pool):
    async def main():
        value = await pool.apply_async(_tasks.square, (7,))
        mapped = await pool.map_async(_tasks.square, range(4))
        with pytest.raises(ValueError, match="direct"):
            await pool.apply_async(_tasks.raise_value_error, ("direct",))
        return value, mapped

    assert run(main()) == (49, [0, 1, 4, 9])


def test_exceptions_are_raised_in_the_coroutine(pool):
    async def main():
        with pytest.raises(ValueError, match="boom"):
            await rpool.wrap_async(pool.apply_async(_tasks.raise_value_error, ("boom",)))
        with pytest.raises(ValueError):
            await rpool.wrap_async(pool.map_async(_tasks.raise_value_error_if_odd, range(4)))

    run(main())


def test_many_results_out_of_order(pool):
    async def main():
        results = [pool.apply_async(_tasks.reverse_delay, (i,)) for i in range(20)]
        return await asyncio.gather(*(rpool.wrap_async(r) for r in results))

    assert run(main()) == list(range(20))


def test_loop_keeps_running_while_waiting(pool):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await rpool.wrap_async(pool.apply_async(_tasks.sleep_and_return, (0.5, "done")))
        task.cancel()
        return ticks

    assert run(main()) > 5


def test_executor_futures_and_bad_argument(ctx):
    async def main():
        with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            assert await rpool.wrap_async(ex.submit(_tasks.square, 9)) == 81
        with pytest.raises(TypeError, match="pool result"):
            rpool.wrap_async(42)

    run(main())


def test_async_for_imap(pool):
    async def main():
        ordered = [x async for x in pool.imap(_tasks.square, range(100), chunksize=3)]
        unordered = [x async for x in pool.imap_unordered(_tasks.reverse_delay, range(10))]
        lazy = [x async for x in pool.imap(_tasks.identity, iter(range(30)))]
        return ordered, sorted(unordered), lazy

    ordered, unordered, lazy = run(main())
    assert ordered == [x * x for x in range(100)]
    assert unordered == list(range(10))
    assert lazy == list(range(30))


def test_async_for_raises_and_can_stop_early(pool):
    async def main():
        seen = []
        with pytest.raises(ValueError):
            async for x in pool.imap(_tasks.raise_value_error_if_odd, range(10), chunksize=1):
                seen.append(x)
        first = []
        async for x in pool.imap(_tasks.identity, range(1000)):
            first.append(x)
            if len(first) == 3:
                break
        return seen, first

    assert run(main()) == ([0], [0, 1, 2])
