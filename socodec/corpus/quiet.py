"""Keeping a native library's chatter off the terminal: a filter on file descriptor 2.

Ray's C++ core worker, inside our process, writes some messages straight to file
descriptor 2 (no Python logger or setting turns them off), e.g. a warning about every
Ray Data actor pool. :func:`drop_stderr_lines` passes everything written to the
process's stderr through a pipe and drops the lines that match a pattern; the rest
(our progress bar and log lines, and Ray's own ERROR and FATAL lines) goes through
unchanged and at once. The filter is a small helper process, not a thread, so that what
was written last still reaches the terminal when this process dies (a fatal error in
native code, a kill): the helper reads the pipe to its end.

Run as a script (``python -I quiet.py PATTERN``) this module is that helper: standard input
to standard output, dropping lines that match ``PATTERN``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["drop_stderr_lines", "RAY_NATIVE_LOG"]

RAY_NATIVE_LOG = re.compile(
    rb"^\[\d{4}-\d\d-\d\d [\d:,]+ (?:[DIW] \d+ \d+\] "
    rb"|E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store)")
"""A debug, info or warning line of Ray's native log format (``[2025-01-01 12:00:00,000 W 123 123] file.cc:42: ...``),
and the one ERROR-level line Ray writes about every Ray Data actor pool (a notice, not an error).
Every other ERROR (``E``) and FATAL (``F``) line does not match: it always reaches stderr."""


@contextmanager
def drop_stderr_lines(pattern: re.Pattern[bytes]) -> Iterator[None]:
    """Within the block, lines written to file descriptor 2 that match ``pattern`` are dropped."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    try:
        helper = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), pattern.pattern.decode("latin-1")],
                                  stdin=subprocess.PIPE, stdout=saved, stderr=saved, start_new_session=True)
    except OSError:
        os.close(saved)
        yield
        return
    assert helper.stdin is not None
    os.dup2(helper.stdin.fileno(), 2)
    helper.stdin.close()  # fd 2 is now this process's only write end of the pipe
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # closes the pipe's last write end here: the helper sees the end and stops
        try:
            helper.wait(timeout=5)  # (longer only while a child process still holds the pipe)
        except subprocess.TimeoutExpired:
            pass
        os.close(saved)


def _forward(read_end: int, out: int, pattern: re.Pattern[bytes]) -> None:
    """Copy ``read_end`` to ``out`` line by line, dropping matching lines; partial lines go out at once
    unless they could be the start of a dropped line."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not pattern.match(line)]
            if pending and not pending.startswith(b"["):
                kept.append(pending)  # e.g. a progress bar redrawn with \r: no newline coming
                pending = b""
            if kept:
                _write_all(out, b"".join(kept))
    if pending and not pattern.match(pending):
        _write_all(out, pending)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


if __name__ == "__main__":  # the helper process of drop_stderr_lines
    _forward(0, 1, re.compile(sys.argv[1].encode("latin-1")))
