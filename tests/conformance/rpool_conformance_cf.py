"""CPython 3.11's ``test_concurrent_futures``, loaded by path under this module's name.

The pyenv interpreter used here ships ``test._test_multiprocessing`` but not
``test_concurrent_futures``; Debian's ``libpython3.11-testsuite`` installs it as
``/usr/lib/python3.11/test/test_concurrent_futures.py``.  This shim compiles that file
with importlib's source loader and executes it in this module's namespace, so its
module-level helpers (``mul``, ``init``, ``_crash`` ...) get ``__module__ ==
"rpool_conformance_cf"`` and can be unpickled in spawned workers (``tests/conformance``
is on ``PYTHONPATH``).  No CPython code is stored in this repository.

Set ``RPOOL_CPYTHON_TEST_CONCURRENT_FUTURES`` to point at another copy of the file.
"""

import importlib.machinery

from _locate import ENV_VAR, cpython_test_concurrent_futures

CPYTHON_SOURCE = cpython_test_concurrent_futures()
if CPYTHON_SOURCE is None:
    raise ImportError(
        "CPython 3.11 test_concurrent_futures.py not found: "
        f"apt-get install libpython3.11-testsuite, or set {ENV_VAR}"
    )

_loader = importlib.machinery.SourceFileLoader(__name__, CPYTHON_SOURCE)
exec(_loader.get_code(__name__), globals())
del _loader
