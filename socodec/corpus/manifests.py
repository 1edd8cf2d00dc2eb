"""Work items from corpus manifests: Kaldi/WeNet data folders and JSONL (NeMo) manifests.

**Kaldi/WeNet data folder** (a folder holding ``wav.scp``):

* ``wav.scp``: ``<recording-id> <path>`` per line; the audio is read from the file
  (command pipes ending in ``|`` are not supported);
* ``segments`` (optional): ``<utterance-id> <recording-id> <start> <end>`` in seconds
  (``end`` = -1: to the end of the recording); each segment is one item, read from its
  recording by seeking, never decoding the whole file. Without ``segments`` each recording
  is one item;
* ``text`` and ``utt2spk`` (optional) are carried along as the metadata keys ``text`` and ``spk``.

**JSONL manifest** (NeMo convention): one JSON object per line with ``audio_filepath``
and optionally ``id``, ``offset`` and ``duration`` (seconds: the item is ``duration``
seconds from ``offset``); every other key is carried along as metadata.

Relative audio paths are taken from the current folder when they exist there (as Kaldi
recipes do), else from the manifest's folder; either way the item holds the absolute path. Ids default to the audio path relative to
the manifest's folder, without suffix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from socodec.corpus.items import WorkItem, metadata_text, relative_id
from socodec.errors import SoCodecError

__all__ = ["kaldi_items", "jsonl_items"]


def kaldi_items(folder: Path) -> list[WorkItem]:
    """The items of a Kaldi/WeNet data folder (see the module docstring)."""
    scp = folder / "wav.scp"
    recordings: dict[str, Path] = {}
    for where, rec, rest in _table_lines(scp, 2):
        if rest.endswith("|"):
            raise SoCodecError(f"{where}: commands piped into wav.scp ('... |') are not supported; "
                               "list audio files instead")
        if rec in recordings:
            raise SoCodecError(f"{where}: recording id '{rec}' is listed twice")
        recordings[rec] = _resolve(rest, folder)
    extra = _utterance_fields(folder)
    seg_file = folder / "segments"
    if not seg_file.is_file():
        return [WorkItem(id=rec, source=path, metadata=metadata_text(extra.get(rec, {})), origin=str(scp))
                for rec, path in recordings.items()]
    items = []
    for where, utt, rest in _table_lines(seg_file, 4):
        rec, start_text, end_text = rest.split()
        if rec not in recordings:
            raise SoCodecError(f"{where}: recording '{rec}' is not in {scp}")
        start, end = _seconds(start_text, where), _seconds(end_text, where, allow_minus_one=True)
        if end != -1 and end <= start:
            raise SoCodecError(f"{where}: segment ends ({end:g} s) before it starts ({start:g} s)")
        items.append(WorkItem(id=utt, source=recordings[rec], offset=start,
                              duration=None if end == -1 else end - start,
                              metadata=metadata_text(extra.get(utt, {})), origin=str(seg_file)))
    return items


def _utterance_fields(folder: Path) -> dict[str, dict[str, str]]:
    """``{utterance id: {"text": ..., "spk": ...}}`` from the optional ``text`` and ``utt2spk`` files."""
    fields: dict[str, dict[str, str]] = {}
    for name, key in (("text", "text"), ("utt2spk", "spk")):
        path = folder / name
        if path.is_file():
            for _, utt, rest in _table_lines(path, 1):
                fields.setdefault(utt, {})[key] = rest
    return fields


def _table_lines(path: Path, min_fields: int) -> Iterator[tuple[str, str, str]]:
    """``(where, first field, rest of the line)`` for each non-blank line of a Kaldi table file."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{path} line {number}"
            parts = line.split(maxsplit=1)
            if len(line.split()) < min_fields or (min_fields > 1 and len(parts) < 2):
                raise SoCodecError(f"{where}: expected {min_fields} fields, got '{line[:80]}'")
            if min_fields == 4 and len(line.split()) != 4:
                raise SoCodecError(f"{where}: expected '<utterance> <recording> <start> <end>', got '{line[:80]}'")
            yield where, parts[0], parts[1] if len(parts) > 1 else ""


def _seconds(text: str, where: str, allow_minus_one: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SoCodecError(f"{where}: '{text}' is not a number of seconds") from None
    if allow_minus_one and value == -1:
        return value
    if not math.isfinite(value) or value < 0:
        raise SoCodecError(f"{where}: '{text}' is not a valid time in seconds")
    return value


def jsonl_items(manifest: Path) -> list[WorkItem]:
    """The items of a JSONL manifest (see the module docstring)."""
    items = []
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                items.append(_jsonl_item(line, f"{manifest} line {number}", manifest))
    if not items:
        raise SoCodecError(f"{manifest}: the manifest lists no audio")
    return items


def _jsonl_item(line: str, where: str, manifest: Path) -> WorkItem:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SoCodecError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(entry, dict):
        raise SoCodecError(f"{where}: expected a JSON object")
    entry = dict(entry)
    audio = entry.pop("audio_filepath", None)
    if not isinstance(audio, str) or not audio:
        raise SoCodecError(f"{where}: needs \"audio_filepath\" (a path)")
    source = _resolve(audio, manifest.parent)
    item_id = entry.pop("id", None)
    if item_id is None:
        item_id = relative_id(source, manifest.parent)
    elif isinstance(item_id, (str, int)) and not isinstance(item_id, bool) and str(item_id):
        item_id = str(item_id)
    else:
        raise SoCodecError(f"{where}: \"id\" must be a non-empty string")
    offset = _number(entry.pop("offset", None), "offset", where, 0.0)
    duration = entry.pop("duration", None)
    if duration is not None:
        duration = _number(duration, "duration", where, 0.0)
        if duration <= 0:
            raise SoCodecError(f"{where}: \"duration\" must be positive")
    return WorkItem(id=item_id, source=source, offset=offset, duration=duration,
                    metadata=metadata_text(entry), origin=str(manifest))


def _number(value: Any, key: str, where: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SoCodecError(f"{where}: \"{key}\" must be a non-negative number of seconds")
    return float(value)


def _resolve(text: str, folder: Path) -> Path:
    """An audio path from a manifest: absolute; relative to the current folder if it exists; else to ``folder``."""
    path = Path(text)
    if path.is_absolute() or path.exists():
        return path.absolute()
    return (folder / path).absolute()
