"""Where the CPython test modules this runner loads live (shared by run.py and workers)."""

from __future__ import annotations

import os
import sysconfig

ENV_VAR = "RPOOL_CPYTHON_TEST_CONCURRENT_FUTURES"
CANDIDATES = (
    # Debian/Ubuntu: apt-get install libpython3.11-testsuite
    "/usr/lib/python3.11/test/test_concurrent_futures.py",
    "/usr/local/lib/python3.11/test/test_concurrent_futures.py",
)


def cpython_test_concurrent_futures() -> str | None:
    """Path of CPython 3.11's test_concurrent_futures.py, or None if there is none."""
    override = os.environ.get(ENV_VAR)
    if override:
        return override if os.path.isfile(override) else None
    own = os.path.join(sysconfig.get_paths()["stdlib"], "test", "test_concurrent_futures.py")
    for path in (own, *CANDIDATES):
        if os.path.isfile(path):
            return path
    return None


def cpython_has_test_multiprocessing() -> bool:
    """True if this interpreter ships test._test_multiprocessing."""
    import importlib.util

    try:
        return importlib.util.find_spec("test._test_multiprocessing") is not None
    except ImportError:
        return False
