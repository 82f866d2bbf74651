"""pytest entry point for the CPython conformance runner (``run.py``).

One test per suite x start method; each runs ``run.py`` in a subprocess and asserts
its verdict (no failure outside expected_failures.txt / deliberate_differences.txt).
The runner's summary is printed (``pytest -s`` shows it; it is also in the failure
message).  Skipped when rpool is not importable or the CPython test files are missing;
set RPOOL_CONFORMANCE_REQUIRE=1 to make those conditions fail instead.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "run.py")

# Per suite x start method: the runner's own overall budget, and pytest-timeout's limit
# on top of it (the runner kills whatever is still running when its budget is spent).
BUDGET = 240
CLASS_TIMEOUT = 150
TEST_TIMEOUT = 30
PYTEST_TIMEOUT = BUDGET + 90

sys.path.insert(0, HERE)
from _locate import cpython_has_test_multiprocessing, cpython_test_concurrent_futures  # noqa: E402


def _unavailable(suite: str) -> str | None:
    impl = os.environ.get("RPOOL_CONFORMANCE_IMPL", "rpool")
    if impl == "rpool" and importlib.util.find_spec("rpool") is None:
        return "rpool is not importable (pip install .)"
    if suite == "pool" and not cpython_has_test_multiprocessing():
        return "this interpreter has no test._test_multiprocessing"
    if suite == "executor" and cpython_test_concurrent_futures() is None:
        return (
            "CPython 3.11 test_concurrent_futures.py not found "
            "(apt-get install libpython3.11-testsuite)"
        )
    return None


@pytest.mark.timeout(PYTEST_TIMEOUT)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("suite", ["pool", "executor"])
def test_cpython_suite(suite: str, start_method: str, tmp_path) -> None:
    # The project's faulthandler_timeout (50 s) would dump every thread of this
    # (merely waiting) process; the runner keeps its own per-test stack dumps.
    faulthandler.cancel_dump_traceback_later()
    reason = _unavailable(suite)
    if reason:
        if os.environ.get("RPOOL_CONFORMANCE_REQUIRE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)

    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable,
        RUN,
        "--suite",
        suite,
        "--start-method",
        start_method,
        "--json",
        str(report_path),
        "--timeout",
        str(CLASS_TIMEOUT),
        "--test-timeout",
        str(TEST_TIMEOUT),
        "--budget",
        str(BUDGET),
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PYTEST_TIMEOUT - 20
    )
    print(proc.stdout)
    if proc.stderr:
        print(proc.stderr[-4000:], file=sys.stderr)
    assert report_path.exists(), f"runner wrote no report (exit {proc.returncode})"
    report = json.loads(report_path.read_text())
    assert proc.returncode == 0 and report["verdict"] == "ok", (
        f"conformance failures for {suite}/{start_method}:\n{proc.stdout[-6000:]}"
    )
