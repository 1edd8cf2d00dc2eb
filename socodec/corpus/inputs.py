"""The work list: what ``socodec tokenize`` reads, as one :class:`WorkItem` per utterance.

Inputs, in any mix:

* an audio file (id: its name without suffix);
* a folder, searched recursively for audio files (id: the path relative to the folder,
  without suffix, e.g. ``spk1/utt001``);
* a quoted glob (``'data/**/*.flac'``; id: the path relative to the glob's fixed leading folder);
* a Kaldi/WeNet data folder, recognised by its ``wav.scp`` (:func:`~socodec.corpus.inputs.kaldi_items`);
* a JSONL manifest, ``.jsonl`` or ``.json`` (:func:`~socodec.corpus.inputs.jsonl_items`);
* WebDataset ``.tar`` shards, also as a brace pattern (``shards-{000..123}.tar``; id: the sample key);
* Hugging Face Parquet: a ``.parquet`` file, or a folder of them holding no audio files
  (id: the id column, see :func:`~socodec.corpus.containers.parquet_items`);
* a lhotse ``CutSet`` / ``RecordingSet`` manifest, ``.jsonl.gz``
  (:func:`~socodec.corpus.containers.lhotse_items`).

Every source is stored as an absolute path, whatever folder the command runs in.

Every id must be unique across all inputs; a duplicate is reported before any work starts.

Work items from corpus manifests: Kaldi/WeNet data folders and JSONL (NeMo) manifests.

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

A work item's audio: the whole file, or only its segment, read by seeking.

The samples go through the same downmix and resampling as :func:`socodec.audio.load_audio`,
so a segment gives exactly the tokens of a file holding the cut audio (at the file's own
rate and sample format).

**The plan**: cutting the work list into shards and each shard into length-bucketed batches.

The plan is computed once, in the main process, and every engine runs exactly its
batches: the same items meet in the same batch whatever the engine, so the rows are
the same bit for bit. Shard ``k`` holds the next ``shard_size`` items of the work list
(in order); inside it, items are sorted by length and taken ``batch_size`` at a time,
so a batch pads little.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import soundfile as sf

from socodec.audio import open_audio, read_block, to_model_input
from socodec.config import AUDIO_SUFFIXES
from socodec.corpus.containers import (
    expand_braces, is_lhotse_manifest, lhotse_items, member_bytes, parquet_items, tar_items,
)
from socodec.corpus.containers import WorkItem, check_unique, metadata_text, relative_id
from socodec.corpus.containers import is_url, local_path, store_error, url_filesystem
from socodec.errors import AudioError, SoCodecError

if TYPE_CHECKING:
    import torch

__all__ = ["Batch", "ShardPlan", "plan_shards", "LONG_SECONDS", "collect_work", "walk_files", "is_glob", "MANIFEST_SUFFIXES", "kaldi_items", "jsonl_items", "read_item", "probe_seconds", "item_name", "fingerprint"]


MANIFEST_SUFFIXES = (".jsonl", ".json")
_GLOB_CHARS = frozenset("*?[")


def collect_work(inputs: Sequence[str | Path], audio_column: str = "audio",
                 id_column: str | None = None) -> list[WorkItem]:
    """All work items of ``inputs``, in order (folders and globs sorted by path).

    Args:
        inputs: paths, globs, brace patterns (see the module docstring).
        audio_column: the audio column of Parquet inputs.
        id_column: the id column of Parquet inputs (None: ``id``, ``key``, else the audio's path stem).

    Raises:
        SoCodecError: an input that does not exist, matches nothing or cannot be parsed,
            or two items with the same id (nothing has been read yet).
    """
    expanded = [part for raw in inputs for part in
                (expand_braces(str(raw)) if "{" in str(raw) and (is_url(raw) or not Path(raw).exists()) else [raw])]
    items: list[WorkItem] = []
    for raw in expanded:
        text = str(raw)
        if is_url(text):
            items.extend(_url_items(text, audio_column, id_column))
            continue
        path = local_path(text)
        suffix = path.suffix.lower()
        if is_glob(text):
            items.extend(_walk_items(text))
        elif path.is_file() and suffix == ".tar":
            items.extend(tar_items(path))
        elif path.is_file() and suffix == ".parquet":
            items.extend(parquet_items(path, audio_column, id_column))
        elif path.is_file() and is_lhotse_manifest(path):
            items.extend(lhotse_items(path))
        elif path.is_dir() and _parquet_folder(path):
            for file in sorted(path.rglob("*.parquet")):
                items.extend(parquet_items(file, audio_column, id_column))
        elif path.is_dir() and (path / "wav.scp").is_file():
            items.extend(kaldi_items(path))
        elif path.is_dir():
            items.extend(_walk_items(path))
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            items.extend(jsonl_items(path))
        elif path.is_file():
            items.append(WorkItem(id=path.stem, source=path.absolute(), origin=text))
        else:
            raise SoCodecError(f"{path}: no such file or folder")
    check_unique(items)
    return items


def _url_items(url: str, audio_column: str, id_column: str | None) -> list[WorkItem]:
    """Items of an object-store URL: a tar, a Parquet file, a folder of Parquet files or tars, or an audio file."""
    suffix = PurePosixPath(url).suffix.lower()
    if suffix == ".tar":
        return tar_items(url)
    if suffix == ".parquet":
        return parquet_items(url, audio_column, id_column)
    if suffix in AUDIO_SUFFIXES:
        return [WorkItem(id=PurePosixPath(url).stem, source=url, origin=url)]
    fs, path = url_filesystem(url)
    protocol = url.split("://", 1)[0]
    try:
        found = sorted(fs.find(path))
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one line
        raise store_error(url, exc) from None
    items: list[WorkItem] = []
    for key in found:
        if PurePosixPath(key).name.startswith((".", "_")):
            continue
        if key.endswith(".parquet"):
            items.extend(parquet_items(f"{protocol}://{key}", audio_column, id_column))
        elif key.endswith(".tar"):
            items.extend(tar_items(f"{protocol}://{key}"))
    if not items:
        raise SoCodecError(f"{url}: no .parquet or .tar files here")
    return items


def _parquet_folder(folder: Path) -> bool:
    """A folder of Parquet files (and no audio files): a Hugging Face dataset's files."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return any(p.suffix.lower() == ".parquet" for p in files) and not any(_is_audio(p) for p in files)


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def is_glob(path: str | Path) -> bool:
    """``path`` does not exist and holds glob characters: a pattern for socodec to expand."""
    return not Path(path).exists() and bool(_GLOB_CHARS & set(str(path)))


def walk_files(root: str | Path, keep: Callable[[Path], bool]) -> list[tuple[Path, Path]]:
    """``(file, path relative to the root)`` for the files ``keep`` accepts, sorted by path.

    ``root`` is a folder (searched recursively) or a glob (``**`` too), whose root is its leading
    folders without glob characters, so ``data/**/*.wav`` mirrors subfolders as ``data/`` does.
    Hidden files are skipped. Every command lists folders and globs this way, and an item's id is
    the relative path without suffix.

    Raises:
        SoCodecError: nothing matches (naming the pattern or the folder).
    """
    text = str(root)
    if is_glob(text):
        base = _glob_base(text)
        files = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        found = [p for p in files if keep(p) and not p.name.startswith(".")]
        if not found:
            raise SoCodecError(f"{text}: no files match" if not files else f"{text}: no usable files match")
    else:
        base = Path(root)
        found = sorted(p for p in base.rglob("*") if p.is_file() and keep(p) and not p.name.startswith("."))
        if not found:
            raise SoCodecError(f"{root}: nothing usable in this folder")
    return [(p, _relative(p, base)) for p in found]


def _relative(path: Path, base: Path) -> Path:
    """``path`` below ``base`` (its name alone if it is not below it)."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(base))
    except ValueError:
        return Path(path.name)


def _walk_items(root: str | Path) -> list[WorkItem]:
    try:
        pairs = walk_files(root, _is_audio)
    except SoCodecError:
        kind = "match" if is_glob(root) else "in this folder"
        raise SoCodecError(f"{root}: no audio files {kind} ({' '.join(AUDIO_SUFFIXES)})") from None
    return [WorkItem(id=rel.with_suffix("").as_posix(), source=p.absolute(), origin=str(root)) for p, rel in pairs]


def _glob_base(pattern: str) -> Path:
    """The leading folders of ``pattern`` without glob characters (``data/a/**/*.wav`` -> ``data/a``)."""
    parts: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


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


log = logging.getLogger(__name__)


def item_name(item: WorkItem) -> str:
    """The item's audio for messages: the file, plus the segment's times when there is one."""
    if not item.is_segment:
        return item.location
    end = "end" if item.duration is None else f"{item.offset + item.duration:g} s"
    return f"{item.location} [{item.offset:g} s - {end}]"


def read_item(item: WorkItem) -> tuple[torch.Tensor, float]:
    """The item's audio as ``[N]`` float32 at 16 kHz mono, and the seconds of the source read.

    Raises:
        AudioError: the file cannot be read, the segment lies outside it, or the audio is
            empty or holds NaN/infinite samples (one line naming the file).
    """
    name = item_name(item)
    with _open(item) as f:
        rate = int(f.samplerate)
        frames = -1
        if item.is_segment:
            start = round(item.offset * rate)
            if start:
                if f.frames > 0 and start >= f.frames:
                    raise AudioError(f"{name}: the segment starts after the end of the file "
                                     f"({f.frames / rate:.3f} s)")
                _skip(f, item, start)
            if item.duration is not None:
                frames = round(item.duration * rate)
        data = read_block(f, Path(item.location), frames)
    if data.shape[0] == 0:
        raise AudioError(f"{name}: no audio samples")
    if frames > 0 and data.shape[0] < frames:
        log.debug("%s: the file ends %.3f s before the segment", name, (frames - data.shape[0]) / rate)
    return to_model_input(data, rate, name=name), data.shape[0] / rate


def _open(item: WorkItem) -> sf.SoundFile:
    """The item's audio opened for reading: the file, or the member's bytes from its container."""
    if item.member is None and not is_url(item.source):
        return open_audio(item.source)
    data = member_bytes(item.source, item.member)
    try:
        return sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        reason = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc).splitlines()[0]
        raise AudioError(f"{item.location}: not a readable audio file ({reason})") from None


def _skip(f: sf.SoundFile, item: WorkItem, start: int) -> None:
    """Position ``f`` at frame ``start``: a seek, or reading past the frames where seeking is impossible."""
    if f.seekable():
        try:
            f.seek(start)
            return
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{item_name(item)}: cannot seek to the segment ({exc})") from None
    left = start
    while left > 0:
        got = read_block(f, Path(item.location), min(left, 1 << 20)).shape[0]
        if got == 0:
            raise AudioError(f"{item_name(item)}: the segment starts after the end of the file")
        left -= got


def probe_seconds(item: WorkItem) -> float:
    """Seconds of audio the item will give, from the manifest or the file's header (0 if unknown).

    Used only to group items of similar length into batches; a file that cannot be probed
    is reported when it is read.
    """
    if item.duration is not None:
        return item.duration
    if item.member is not None or is_url(item.source):
        return 0.0  # inside a container or on object storage: not read twice just to batch by length
    try:
        info = sf.info(str(item.source))
    except Exception:  # noqa: BLE001 - any unreadable file: reported later, by read_item
        return 0.0
    return max(0.0, info.frames / info.samplerate - item.offset) if info.samplerate else 0.0


def fingerprint(item: WorkItem) -> str:
    """A cheap fingerprint of the item's audio: JSON ``[location, size, mtime, offset, duration]``.

    Size and modification time come from the file (or the container, or the object's listing on
    object storage); a file that cannot be examined gets nulls (it is reported when it is read).
    """
    size: int | None = None
    mtime: float | str | None = None
    try:
        if is_url(item.source):
            fs, path = url_filesystem(str(item.source))
            info = fs.info(path)
            size, mtime = info.get("size"), str(info.get("LastModified") or info.get("mtime") or info.get("ETag"))
        else:
            stat = Path(item.source).stat()
            size, mtime = stat.st_size, stat.st_mtime_ns / 1e9
    except Exception:  # noqa: BLE001 - any file that cannot be examined: reported later, by read_item
        pass
    return json.dumps([item.location, size, mtime, item.offset, item.duration], separators=(",", ":"))


# ---------------------------------------------------------------- the plan


LONG_SECONDS = 60.0
"""Whole files longer than this are encoded alone, read from disk as needed (bounded memory)."""


@dataclass(frozen=True)
class Batch:
    """Items encoded together; ``positions`` are their places in the work list (the row order)."""

    shard: int
    positions: tuple[int, ...]
    items: tuple[WorkItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "positions": list(self.positions), "items": [i.to_json() for i in self.items]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Batch":
        return cls(int(data["shard"]), tuple(int(p) for p in data["positions"]),
                   tuple(WorkItem.from_json(i) for i in data["items"]))


@dataclass(frozen=True)
class ShardPlan:
    """One shard file to write: its index and its batches."""

    index: int
    batches: tuple[Batch, ...]

    @property
    def size(self) -> int:
        """Items planned for the shard (rows, less the items that fail)."""
        return sum(len(b.items) for b in self.batches)


def plan_shards(
    items: Sequence[WorkItem], seconds: Sequence[float], shard_size: int, batch_size: int, first_index: int = 0
) -> list[ShardPlan]:
    """Shards of ``shard_size`` consecutive items, numbered from ``first_index``, each in batches.

    Args:
        items: the work list (items already done excluded).
        seconds: each item's expected length (0 when unknown), to batch similar lengths.
        shard_size: items per shard (the last one may be smaller).
        batch_size: items per batch at most; whole files over :data:`LONG_SECONDS` go alone.
        first_index: index of the first new shard.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}")
    if len(seconds) != len(items):
        raise ValueError("one length per item is needed")
    plans = []
    for k, start in enumerate(range(0, len(items), shard_size)):
        index = first_index + k
        positions = sorted(range(start, min(start + shard_size, len(items))), key=lambda p: (seconds[p], p))
        batches: list[Batch] = []
        group: list[int] = []
        for p in positions:
            if seconds[p] > LONG_SECONDS and not items[p].is_segment:
                batches.append(Batch(index, (p,), (items[p],)))
                continue
            group.append(p)
            if len(group) == batch_size:
                batches.append(Batch(index, tuple(group), tuple(items[q] for q in group)))
                group = []
        if group:
            batches.append(Batch(index, tuple(group), tuple(items[q] for q in group)))
        plans.append(ShardPlan(index, tuple(batches)))
    return plans
