"""Exception types, and how a failure is judged: one bad input, or the whole run.

Every failure socodec reports to users is a :class:`SoCodecError`. :func:`is_item_error`
tells a failure that belongs to one input (it is recorded and the run goes on) from a
systematic one (out of memory, a full disk, a bug: the run stops at once);
:class:`Fallbacks` is the one batch-then-one-by-one retry of the batch commands and
:class:`ErrorLimit` their ``--max-errors`` threshold.

Optional dependencies of the corpus tools, each with the one line that says how to get it.
"""

from __future__ import annotations

import errno
import importlib
import logging
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable, TypeVar

__all__ = ["MissingExtraError", "require"]


T = TypeVar("T")
R = TypeVar("R")


class SoCodecError(Exception):
    """Base class: a problem with the user's input, files or settings (not a bug)."""


class ConfigError(SoCodecError):
    """A model configuration is missing keys or describes an unsupported model."""


class CheckpointError(SoCodecError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the model."""


class AudioError(SoCodecError):
    """An audio file cannot be read or written."""


class CodesError(SoCodecError):
    """A token file is corrupt or holds invalid codes."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PICKLE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_PICKLE_OPCODE = re.compile(r"Unsupported operand (\d+)")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``str(exc)`` without terminal escape codes (else the type's name).

    A foreign (library) message is also cut to its first sentence when long, and to ``limit``
    characters; our own :class:`SoCodecError` messages are kept whole.
    """
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if isinstance(exc, SoCodecError):
        return line
    if len(line) > 120 and ". " in line[60:]:  # keep the first sentence of a long-winded message
        line = line[: line.index(". ", 60) + 1]
    return line[:limit]


def unpickle_reason(exc: BaseException) -> str:
    """One clean line for a failed ``torch.load(weights_only=True)``.

    torch's own message spans many lines, holds ANSI codes and advises turning
    safe loading off; this keeps only what is wrong with the file.
    """
    if isinstance(exc, EOFError):
        return "the file is empty or ends too early"
    text = _ANSI.sub("", str(exc))
    if match := _PICKLE_GLOBAL.search(text):
        return f"it needs the Python global '{match.group(1)}', which token files never hold (refused, not run)"
    if match := _PICKLE_OPCODE.search(text):
        return f"not a torch file (pickle opcode {match.group(1)} is not allowed)"
    return one_line(exc, 200).replace("Weights only load failed. ", "")


#: an OSError with one of these concerns the one file it names (missing, unreadable, a folder, ...)
_ITEM_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                          errno.ENAMETOOLONG, errno.ELOOP})


def is_item_error(exc: BaseException) -> bool:
    """Whether ``exc`` belongs to one input (bad, unreadable, too short) rather than to the whole run.

    A :class:`SoCodecError` about the input (not the model: :class:`CheckpointError` and
    :class:`ConfigError` are systematic), a missing or unreadable input file, a file that ends
    early: per item. Anything else (out of memory, a full disk, a bug) is systematic.
    """
    if isinstance(exc, (CheckpointError, ConfigError)):
        return False
    if isinstance(exc, SoCodecError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _ITEM_ERRNOS
    return isinstance(exc, (EOFError, UnicodeDecodeError))


class Fallbacks:
    """A batch tried as a whole first, then item by item when it fails; counted.

    The first fallback is a WARNING naming its cause (a bug in the batched path must not pass
    as a mere slowdown); later ones are DEBUG lines, and :attr:`count` goes into the run's
    summary. In the one-by-one pass only :func:`is_item_error` failures are kept per item;
    anything else is raised and stops the run.

    Args:
        logger: where the fallback lines go (the caller's module logger).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.count = 0
        self._log = logger

    def batch(self, run: Callable[[], T], size: int) -> T | None:
        """``run()``, or None (logged, counted) when it raises: the caller then goes one by one."""
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - any cause: each item alone tells which one is to blame
            self.count += 1
            level = logging.WARNING if self.count == 1 else logging.DEBUG
            self._log.log(level, "a batch of %d failed (%s: %s); its items run one by one "
                          "(fallbacks are counted in the summary)", size, type(exc).__name__, one_line(exc),
                          exc_info=self._log.isEnabledFor(logging.DEBUG))
            return None

    @staticmethod
    def each(items: Iterable[T], work: Callable[[T], R]) -> list[R | BaseException]:
        """``work(item)`` for each item; a per-item failure is returned in its place, others are raised."""
        out: list[R | BaseException] = []
        for item in items:
            try:
                out.append(work(item))
            except Exception as exc:  # noqa: BLE001 - judged right here
                if not is_item_error(exc):
                    raise
                out.append(exc)
        return out


@dataclass(frozen=True)
class ErrorLimit:
    """``--max-errors``: how many failed inputs a run accepts before it stops.

    Either a count (``count``: more than that many failures stop the run) or a fraction of the
    inputs processed so far (``fraction``), judged once ``after`` inputs are done, so that a
    broken set-up is not mistaken for a bad corpus.
    """

    count: int | None = None
    fraction: float | None = 0.01
    after: int = 100

    @classmethod
    def parse(cls, text: str) -> ErrorLimit:
        """``"25"`` (a count), ``"2%"`` (a fraction) or ``"none"`` (no limit); ValueError otherwise."""
        text = text.strip().lower()
        if text in ("none", "off", "inf"):
            return cls(count=None, fraction=None)
        try:
            if text.endswith("%"):
                value = float(text[:-1])
                if 0 <= value <= 100:
                    return cls(count=None, fraction=value / 100)
            elif text.isdigit():
                return cls(count=int(text), fraction=None)
        except ValueError:
            pass
        raise ValueError(f"--max-errors takes a count (25), a percentage (2%) or 'none', not {text!r}")

    def exceeded(self, failed: int, processed: int) -> bool:
        """Whether ``failed`` failures out of ``processed`` inputs go past the limit."""
        if self.count is not None:
            return failed > self.count
        if self.fraction is None or processed < self.after:
            return False
        return failed > self.fraction * processed

    def describe(self) -> str:
        if self.count is not None:
            return str(self.count)
        return "none" if self.fraction is None else f"{self.fraction * 100:g}%"

    def message(self, failed: int, processed: int, where: str) -> str:
        """The one line that stops a run."""
        return (f"stopped: {failed} of {processed} inputs failed, more than --max-errors {self.describe()} "
                f"(a broken set-up rather than bad inputs?); see {where}; what was written is kept")


#: top-level module -> the message when it is missing
_MESSAGES = {
    "pyarrow": "Parquet shards need pyarrow: pip install socodec[corpus]",
    "ray": "the ray engine needs Ray Data: pip install socodec[ray]",
    "lhotse": "lhotse manifests need lhotse: pip install socodec[lhotse]",
}


class MissingExtraError(SoCodecError):
    """An optional dependency is not installed (the message names the ``pip install`` line)."""


def require(module: str) -> ModuleType:
    """Import ``module`` (``pyarrow``, ``ray``) or raise :class:`MissingExtraError` with one line to fix it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(_MESSAGES.get(top, f"{top} is not installed: pip install {top}")) from None
