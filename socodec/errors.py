"""Exception types. Every failure socodec reports to users is a :class:`SoCodecError`."""

import re


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
