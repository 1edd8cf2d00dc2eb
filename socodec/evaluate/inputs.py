"""What ``socodec eval`` measures: audio files, folders, globs and JSONL manifests -> items.

A JSONL manifest (``.jsonl``, the convention ``socodec tokenize`` reads) holds one JSON
object per line with ``audio_filepath`` and optionally ``id``, ``offset`` and
``duration`` (seconds: a segment of the file). A relative ``audio_filepath`` is looked up
beside the manifest first, then from the current folder.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from socodec.audio import AUDIO_SUFFIXES, load_audio
from socodec.config import SAMPLE_RATE
from socodec.errors import AudioError, SoCodecError

__all__ = ["EvalItem", "expand_inputs", "read_item", "MANIFEST_SUFFIXES"]

MANIFEST_SUFFIXES = (".jsonl",)
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class EvalItem:
    """One utterance to measure: a whole file, or ``duration`` seconds from ``offset``.

    ``id`` names it in the tables: the manifest's ``id``; for a folder's files the path below
    the folder without suffix; otherwise the path (``path@offset`` for a segment). Ids that
    would clash fall back to the full path.
    """

    id: str
    path: Path
    offset: float = 0.0
    duration: float | None = None


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def expand_inputs(inputs: list[str | Path]) -> tuple[list[EvalItem], list[str]]:
    """Items for every input, in order, without duplicates; plus one error line per bad input.

    Files are taken as given (a file with an unknown suffix is an error), folders are searched
    recursively for audio files, quoted globs are expanded (``**`` too), ``.jsonl`` files are
    read as manifests. Nothing is opened beyond the manifests: unreadable audio is found later.
    The same item listed twice (e.g. by a folder and a glob) is kept once.
    """
    items: list[EvalItem] = []
    errors: list[str] = []
    for raw in inputs:
        path = Path(raw)
        try:
            items.extend(_expand_one(path))
        except SoCodecError as exc:
            errors.append(str(exc))
    first: dict[tuple[Path, float, float | None], EvalItem] = {}
    for item in items:  # the same file (or segment) listed twice is measured once
        first.setdefault((item.path.resolve(), item.offset, item.duration), item)
    unique = list(first.values())
    counts: dict[str, int] = {}
    for item in unique:
        counts[item.id] = counts.get(item.id, 0) + 1
    clashing = {name for name, n in counts.items() if n > 1}
    return [replace(item, id=_full_id(item)) if item.id in clashing else item for item in unique], errors


def _full_id(item: EvalItem) -> str:
    """An id naming the file by its path (and the segment's offset): used when short ids clash."""
    return str(item.path) if item.offset == 0 and item.duration is None else f"{item.path}@{item.offset:g}"


def _expand_one(path: Path) -> list[EvalItem]:
    text = str(path)
    if not path.exists() and _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        files = [m for m in matches if m.is_file() and _is_audio(m)]
        if not files:
            raise SoCodecError(f"{path}: no audio files match")
        return [EvalItem(str(m), m) for m in files]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_audio(p))
        if not files:
            raise SoCodecError(f"{path}: no audio files in this folder")
        return [EvalItem(p.relative_to(path).with_suffix("").as_posix(), p) for p in files]
    if not path.exists():
        raise SoCodecError(f"{path}: no such file")
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return _read_manifest(path)
    if not _is_audio(path):
        raise SoCodecError(f"{path}: not an audio file or manifest (audio: {' '.join(AUDIO_SUFFIXES)}; "
                           f"manifests: {' '.join(MANIFEST_SUFFIXES)})")
    return [EvalItem(str(path), path)]


def _read_manifest(path: Path) -> list[EvalItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SoCodecError(f"{path}: cannot read the manifest ({exc})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SoCodecError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("audio_filepath"), str):
            raise SoCodecError(f"{where}: each line needs a string 'audio_filepath'")
        audio = Path(row["audio_filepath"])
        if not audio.is_absolute() and (path.parent / audio).exists():
            audio = path.parent / audio
        offset = _seconds(row.get("offset", 0.0), where, "offset")
        duration = None if row.get("duration") is None else _seconds(row["duration"], where, "duration")
        item = EvalItem("", audio, offset, duration)
        items.append(replace(item, id=str(row["id"]) if row.get("id") is not None else _full_id(item)))
    if not items:
        raise SoCodecError(f"{path}: the manifest lists no audio")
    return items


def _seconds(value: object, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SoCodecError(f"{where}: '{key}' must be a number of seconds >= 0, got {value!r}")
    return float(value)


def read_item(item: EvalItem) -> torch.Tensor:
    """The item's samples ``[N]`` float32, 16 kHz mono (its segment when it has one)."""
    wav = load_audio(item.path)
    if item.offset == 0 and item.duration is None:
        return wav
    start = round(item.offset * SAMPLE_RATE)
    stop = wav.numel() if item.duration is None else start + round(item.duration * SAMPLE_RATE)
    segment = wav[start:stop]
    if segment.numel() == 0:
        raise AudioError(f"{item.path}: the segment from {item.offset:g} s is empty (the file lasts "
                         f"{wav.numel() / SAMPLE_RATE:.3f} s)")
    return segment
