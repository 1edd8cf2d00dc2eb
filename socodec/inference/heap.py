"""Handing freed heap memory back to the operating system between calls.

glibc's allocator keeps freed blocks for reuse, and tensors of ever-different sizes (clips of
different lengths, say) leave the heap fragmented, so that the resident memory of a process
that encodes many files creeps up by a few MiB per file. ``malloc_trim(0)`` returns the free
pages; it is called once at the end of every encode or decode call. (Not between the steps of
one long synthesis: the pages it returns fault back in on the next step, which cost ~10 % of
the synthesis time when tried.) A no-op where the C library has no ``malloc_trim`` (musl, macOS,
Windows).

Trimming is a process-wide side effect, so a library does not do it unasked: it is off until
:func:`trim_heap_after_calls` turns it on (the command line and the corpus workers do) or the
environment sets ``SOCODEC_TRIM_HEAP=1``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Callable

__all__ = ["release_heap", "trim_heap_after_calls", "heap_trimming"]

_TRIM = os.environ.get("SOCODEC_TRIM_HEAP", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def _trim_function() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc: int malloc_trim(size_t pad)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap_after_calls(on: bool = True) -> None:
    """Turn the trimming at the end of each encode/decode call on (or off) for this process."""
    global _TRIM
    _TRIM = on


def heap_trimming() -> bool:
    """Whether encode/decode calls trim the heap in this process."""
    return _TRIM


def release_heap() -> None:
    """Return the C heap's free pages to the operating system (glibc) when trimming is on, else do nothing."""
    if not _TRIM:
        return
    trim = _trim_function()
    if trim is not None:
        trim(0)
