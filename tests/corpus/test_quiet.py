"""The stderr filter used while Ray runs: chatter dropped, errors kept, nothing lost when the process dies."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

PROGRAM = """
import os
from socodec.corpus.quiet import RAY_NATIVE_LOG, drop_stderr_lines
with drop_stderr_lines(RAY_NATIVE_LOG):
    os.write(2, b"[2025-01-01 12:00:00,000 W 11 11] pool.cc:1: chatter about an actor pool\\n")
    os.write(2, b"[2025-01-01 12:00:00,000 E 11 11] core_worker.cc:2465: Actor with class name: 'MapWorker' and "
                b"ID: '5f' has constructor arguments in the object store and max_restarts > 0. chatter\\n")
    os.write(2, b"[2025-01-01 12:00:00,001 E 11 11] core.cc:2: the object store is full\\n")
    os.write(2, b"[2025-01-01 12:00:00,002 F 11 11] core.cc:3: check failed\\n")
    os.write(2, b"x" * 300000 + b"\\n")
    os.write(2, b"last words\\n")
    os._exit(3)  # dies inside the block, as a fatal error in native code would
"""


def test_errors_pass_chatter_is_dropped_and_the_last_lines_survive_death() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 3
    assert "chatter" not in err
    assert "the object store is full" in err and "check failed" in err
    assert err.rstrip().endswith("last words")
