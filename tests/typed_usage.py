"""Type-checks the public API as a user would write it (`mypy tests/typed_usage.py`); also a
tiny smoke test when run."""

from __future__ import annotations

import concurrent.futures

import rpool


def square(x: int) -> int:
    return x * x


def main() -> None:
    with rpool.Pool(2) as pool:
        total: list[int] = pool.map(square, range(10))
        result = pool.apply_async(square, (3,))
        value: int = result.get(timeout=10)
        lazy = list(pool.imap(square, range(5), chunksize=2))
        assert total[3] == 9 and value == 9 and lazy[-1] == 16
    with rpool.ProcessPoolExecutor(2) as ex:
        future: concurrent.futures.Future[int] = ex.submit(square, 4)
        assert future.result(timeout=10) == 16
        assert list(ex.map(square, [1, 2], timeout=10)) == [1, 4]


if __name__ == "__main__":
    main()
