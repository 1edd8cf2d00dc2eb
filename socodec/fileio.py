"""Atomic file writing shared by the token writers, the audio writer and the CLI.

A file is first written to a hidden temporary file in the target's own
directory (``.<stem>.tmp-<pid>-<random><suffix>``, keeping the suffix so that
writers which infer the format from it still work) and then moved over the
target with :func:`os.replace`, which is atomic on POSIX and Windows within one
file system. If writing fails, the temporary file is removed and the target is
left untouched: readers never see a partial file.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger(__name__)


def temp_path_for(path: str | Path) -> Path:
    """A fresh hidden temporary path next to ``path`` with the same suffix (nothing is created)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{p.suffix}")


def write_reason(exc: BaseException) -> str:
    """Why a write failed, in a few words: a full disk (or a file-size limit) is said as such.

    Works for ``OSError`` with an errno and for libraries that only put the system's
    message in their text (pyarrow's ``OSError``, libsndfile).
    """
    text = " ".join(str(exc).split())
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "Disk quota" in text:
        return "no space left on the device"
    if code == errno.EFBIG or "File too large" in text:
        return "file too large for this file system or for the limits of this process"
    return text or type(exc).__name__


def _fsync_file(path: Path) -> None:
    """Flush ``path`` to stable storage where the file system supports it (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on file systems without fsync support
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists, logging (not raising) on failure."""
    if not os.path.lexists(path):  # never created (e.g. the write failed before opening it)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; it replaces ``path`` on clean exit.

    The body must create the temporary file. On an exception inside the body (or
    if the final :func:`os.replace` fails) the temporary file is removed, the
    exception propagates and ``path`` is unchanged. The parent directory must exist.

    Example::

        with atomic_path("out.wav") as tmp:
            soundfile.write(tmp, audio, 16000)
    """
    target = Path(path)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    logger.debug("wrote %s atomically", target)


def atomic_write(path: str | Path, write_fn: Callable[[Path], object], *, fsync: bool = True) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp)`` writes a temporary file that then replaces ``path``.

    Args:
        path: the final file. Its parent directory must exist.
        write_fn: called once with the temporary path (same directory and suffix
            as ``path``); it must create that file. Its return value is ignored.
        fsync: flush the temporary file to disk before the rename.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write_fn`` raises, or :class:`OSError` from the rename; in
        both cases no temporary file is left behind and ``path`` is unchanged.
    """
    target = Path(path)
    with atomic_path(target, fsync=fsync) as tmp:
        write_fn(tmp)
    return target
