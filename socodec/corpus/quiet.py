"""Keeping a native library's log lines off the terminal: a filter on file descriptor 2.

Ray's C++ core worker, inside our process, writes some messages straight to file
descriptor 2 (no Python logger or setting turns them off), e.g. a warning about every
Ray Data actor pool. :func:`drop_stderr_lines` passes everything written to the
process's stderr through a pipe and drops the lines that match a pattern; the rest
(our progress bar and log lines) goes through unchanged and at once.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["drop_stderr_lines", "RAY_NATIVE_LOG"]

RAY_NATIVE_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] ")
"""A line of Ray's native log format: ``[2025-01-01 12:00:00,000 E 123 123] file.cc:42: ...``."""


@contextmanager
def drop_stderr_lines(pattern: re.Pattern[bytes]) -> Iterator[None]:
    """Within the block, lines written to file descriptor 2 that match ``pattern`` are dropped."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_forward, args=(read_end, saved, pattern), daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread sees the end and stops
        thread.join(timeout=5)
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
