"""Work items from corpora as they are shipped: WebDataset tars, Hugging Face Parquet, lhotse manifests.

**WebDataset tar shards** (a ``.tar`` path, or a brace pattern such as
``shards-{000000..000123}.tar``): the members are grouped into samples by their key (the
member's path up to the first dot of its file name, the WebDataset convention). A sample's
audio is its first member whose last suffix is an audio suffix (``KEY.flac``, ``KEY.mp3``,
...); the fields of its ``KEY.json`` member become the row's metadata. The id is the key.
The tar is never unpacked: a member is read from the tar when its item is encoded.

**Hugging Face Parquet** (a ``.parquet`` file, or a folder holding ``.parquet`` files and no
audio): the audio column (``audio`` by default) holds ``{bytes, path}`` structs, the storage of
the ``datasets.Audio`` feature. The id comes from the id column (by default the first of
``id``, ``key`` present), else from the stem of the struct's ``path``, else
``<file stem>/<row>``. Every other scalar column goes to the metadata.

**lhotse manifests** (``.jsonl.gz`` files, read with ``lhotse`` itself): a ``CutSet`` gives one
item per supervision segment (one per cut when it has none); a ``RecordingSet`` gives one per
supervision of the ``SupervisionSet`` beside it (the same name with ``supervisions`` for
``recordings``), else one per recording. Segments are read from the recording by seeking
(their ``offset`` and ``duration`` are kept in the row).

An item inside a container names its place in :attr:`~socodec.corpus.containers.WorkItem.member`
(a tar member's name, or ``<column>:<row>`` for Parquet); :func:`member_bytes` reads it.

Object storage (``s3://``, ``gs://``, ... any fsspec URL) for corpus inputs and the output folder.

Credentials and endpoint come from the store's standard environment (for S3, as botocore reads
them: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE``, ...); anything else goes in ``--storage-options JSON``
(passed to fsspec's filesystem; kept in the ``SOCODEC_STORAGE_OPTIONS`` environment variable so
worker processes see the same options). ``file://`` URLs are local paths.

A work item: one utterance to tokenise (a file, or a segment of one), and its id rules.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterable, Iterator

from socodec.config import AUDIO_SUFFIXES
from socodec.errors import AudioError, SoCodecError, one_line, require

__all__ = ["expand_braces", "tar_items", "parquet_items", "lhotse_items", "member_bytes", "is_lhotse_manifest", "ID_COLUMNS", "is_url", "local_path", "url_filesystem", "storage_options", "STORAGE_OPTIONS_ENV", "store_error", "check_store", "WorkItem", "check_unique", "relative_id", "metadata_text"]


ID_COLUMNS = ("id", "key")
"""Columns tried, in order, for a Parquet row's id when ``--id-column`` is not given."""
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` lists too (nested and repeated)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        lo, hi = ranged.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        choices = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise SoCodecError(f"{pattern}: braces hold neither a range ({{000..123}}) nor a list ({{a,b}})")
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def _sample_key(name: str) -> tuple[str, str]:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``), the WebDataset grouping rule."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


def _open_binary(source: Path | str) -> BinaryIO:
    """A seekable binary file: a local path, or an object-store URL read by ranges."""
    if is_url(source):
        fs, path = url_filesystem(str(source))
        try:
            return fs.open(path, "rb")
        except Exception as exc:  # noqa: BLE001 - every store failure becomes one line
            raise store_error(str(source), exc) from None
    return open(source, "rb")


@functools.lru_cache(maxsize=16)
def _tar_index(source: Path | str) -> dict[str, tuple[int, int]]:
    """``{member name: (data offset, size)}`` of a tar's regular files; headers only are read (once per process).

    A truncated tar lists the members before the break; a member cut short fails when it is read.
    """
    index: dict[str, tuple[int, int]] = {}
    with _open_binary(source) as raw, tarfile.open(fileobj=raw, mode="r:") as archive:
        try:
            for info in archive:
                if info.isfile():
                    index.setdefault(info.name, (info.offset_data, info.size))
        except tarfile.ReadError:
            pass
    return index


def tar_items(tar: Path | str) -> list[WorkItem]:
    """The samples of a WebDataset tar (see the module docstring); headers only are read."""
    source = tar if is_url(tar) else Path(tar).absolute()
    samples: dict[str, dict[str, str]] = {}
    try:
        names = list(_tar_index(source))
    except SoCodecError:
        raise
    except (tarfile.TarError, OSError) as exc:
        raise SoCodecError(f"{tar}: not a readable tar file ({exc})") from None
    for name in names:
        key, ext = _sample_key(name)
        samples.setdefault(key, {}).setdefault(ext, name)
    items = []
    for key, parts in samples.items():
        audio = next((name for ext, name in parts.items() if "." + ext.rsplit(".", 1)[-1] in AUDIO_SUFFIXES), None)
        if audio is None:
            audio = next((name for ext, name in parts.items() if ext not in ("json", "txt", "cls")), None)
        if audio is None:
            continue  # a sample without audio at all (e.g. only a .json): nothing to tokenise
        meta = None
        if "json" in parts:
            meta = _json_member(source, parts["json"])
        items.append(WorkItem(id=key, source=source, member=audio, metadata=meta, origin=str(tar)))
    if not items:
        raise SoCodecError(f"{tar}: no samples with audio in this tar")
    return items


def _json_member(tar: Path | str, name: str) -> str | None:
    try:
        fields = json.loads(member_bytes(tar, name))
    except (AudioError, ValueError):
        return None
    return metadata_text(fields) if isinstance(fields, dict) else metadata_text({"json": fields})


def parquet_items(path: Path | str, audio_column: str = "audio", id_column: str | None = None) -> list[WorkItem]:
    """The rows of a Hugging Face ``datasets`` Parquet file (see the module docstring).

    Only the small columns are read here (ids, metadata, the audio's ``path``); the audio bytes
    are read when an item is encoded.
    """
    pq = require("pyarrow.parquet")
    source = path if is_url(path) else Path(path).absolute()
    stem = PurePosixPath(str(path)).stem
    try:
        with _open_binary(source) as raw:
            schema = pq.read_schema(raw)
            names = schema.names
            if audio_column not in names:
                raise SoCodecError(f"{path}: no audio column '{audio_column}' (columns: {', '.join(names)}; "
                                   "choose one with --audio-column)")
            if id_column is not None and id_column not in names:
                raise SoCodecError(f"{path}: no id column '{id_column}' (columns: {', '.join(names)})")
            small = [n for n in names if n != audio_column]
            table = pq.read_table(raw, columns=small + ([f"{audio_column}.path"] if _has_path(schema, audio_column)
                                                        else []))
    except SoCodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable Parquet file: one line
        raise SoCodecError(f"{path}: not a readable Parquet file ({exc})") from None
    id_column = id_column or next((c for c in ID_COLUMNS if c in names), None)
    meta_columns = [c for c in names if c not in (audio_column, id_column)
                    and not _nested(schema.field(c).type)]
    audio_paths = (table.column(audio_column).combine_chunks().field("path").to_pylist()
                   if audio_column in table.column_names else [None] * table.num_rows)
    ids = table.column(id_column).to_pylist() if id_column else None
    meta_rows = table.select(meta_columns).to_pylist() if meta_columns else [{}] * table.num_rows
    items = []
    for row in range(table.num_rows):
        if ids is not None:
            item_id = str(ids[row])
        elif audio_paths[row]:
            item_id = PurePosixPath(audio_paths[row]).stem
        else:
            item_id = f"{stem}/{row}"
        items.append(WorkItem(id=item_id, source=source, member=f"{audio_column}:{row}",
                              metadata=metadata_text(meta_rows[row]), origin=str(path)))
    if not items:
        raise SoCodecError(f"{path}: the Parquet file has no rows")
    return items


def _has_path(schema: Any, column: str) -> bool:
    pa = require("pyarrow")
    kind = schema.field(column).type
    return pa.types.is_struct(kind) and kind.get_field_index("path") >= 0


def _nested(kind: Any) -> bool:
    pa = require("pyarrow")
    return pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def is_lhotse_manifest(path: Path) -> bool:
    """True for a ``.jsonl.gz`` file (lhotse's manifest format)."""
    return path.name.lower().endswith(".jsonl.gz")


def lhotse_items(path: Path) -> list[WorkItem]:
    """The segments of a lhotse ``CutSet`` or ``RecordingSet`` manifest (see the module docstring)."""
    lhotse = require("lhotse")
    try:
        manifest = lhotse.load_manifest(path)
    except Exception as exc:  # noqa: BLE001 - anything lhotse cannot read: one line
        raise SoCodecError(f"{path}: not a lhotse manifest lhotse can read ({exc})") from None
    if isinstance(manifest, lhotse.CutSet):
        items = list(_cut_items(manifest, path))
    elif isinstance(manifest, lhotse.RecordingSet):
        items = list(_recording_items(manifest, _supervisions_beside(path, lhotse), path))
    else:
        raise SoCodecError(f"{path}: a {type(manifest).__name__}; give a CutSet or a RecordingSet manifest")
    if not items:
        raise SoCodecError(f"{path}: the manifest lists no audio")
    return items


def _supervisions_beside(path: Path, lhotse: Any) -> Any:
    other = path.with_name(path.name.replace("recordings", "supervisions"))
    if other == path or not other.is_file():
        return None
    return lhotse.load_manifest(other)


def _audio_file(recording: Any, where: Path) -> Path:
    files = [s for s in recording.sources if s.type == "file"]
    if not files:
        kinds = ", ".join(sorted({s.type for s in recording.sources}))
        raise SoCodecError(f"{where}: recording '{recording.id}' is not a file ({kinds}); only file sources are read")
    audio = Path(files[0].source)
    return (audio if audio.is_absolute() or audio.exists() else where.parent / audio).absolute()


def _supervision_fields(sup: Any) -> dict[str, Any]:
    fields = {"text": sup.text, "spk": sup.speaker, "language": sup.language}
    fields.update(sup.custom or {})
    return {k: v for k, v in fields.items() if v is not None}


def _cut_items(cuts: Any, where: Path) -> Iterator[WorkItem]:
    for cut in cuts:
        recording = getattr(cut, "recording", None)
        if recording is None:
            raise SoCodecError(f"{where}: cut '{cut.id}' has no recording")
        audio = _audio_file(recording, where)
        if not cut.supervisions:
            yield WorkItem(id=cut.id, source=audio, offset=float(cut.start), duration=float(cut.duration),
                           origin=str(where))
            continue
        for sup in cut.supervisions:
            yield WorkItem(id=sup.id, source=audio, offset=float(cut.start + sup.start), duration=float(sup.duration),
                           metadata=metadata_text(_supervision_fields(sup)), origin=str(where))


def _recording_items(recordings: Any, supervisions: Any, where: Path) -> Iterator[WorkItem]:
    by_recording: dict[str, list[Any]] = {}
    for sup in supervisions or ():
        by_recording.setdefault(sup.recording_id, []).append(sup)
    for recording in recordings:
        audio = _audio_file(recording, where)
        sups = by_recording.get(recording.id)
        if not sups:
            yield WorkItem(id=recording.id, source=audio, origin=str(where))
            continue
        for sup in sups:
            yield WorkItem(id=sup.id, source=audio, offset=float(sup.start), duration=float(sup.duration),
                           metadata=metadata_text(_supervision_fields(sup)), origin=str(where))


def member_bytes(container: Path | str, member: str | None) -> bytes:
    """The bytes of ``member`` inside ``container`` (a tar member, or ``<column>:<row>`` of a Parquet file);
    with no member, the whole object at ``container`` (an audio file on object storage).

    Raises:
        AudioError: the member is missing, cut short, or holds no bytes (one line naming it).
    """
    name = f"{container}#{member}" if member is not None else str(container)
    try:
        if member is None:
            with _open_binary(container) as raw:
                return raw.read()
        if str(container).lower().endswith(".parquet"):
            return _parquet_cell(container, member, name)
        offset, size = _tar_index(container)[member]
        with _open_binary(container) as raw:
            raw.seek(offset)
            data = raw.read(size)
    except KeyError:
        raise AudioError(f"{name}: no such member in the tar") from None
    except SoCodecError as exc:
        raise AudioError(str(exc)) from None
    except (tarfile.TarError, OSError) as exc:
        raise AudioError(f"{name}: cannot read ({exc})") from None
    if len(data) < size:
        raise AudioError(f"{name}: the tar is truncated ({len(data)} of {size} bytes)")
    return data


@functools.lru_cache(maxsize=2)
def _row_group(container: Path | str, column: str, group: int) -> list[Any]:
    """One row group's cells of ``column`` (kept for the next items: rows of a group are read together)."""
    pq = require("pyarrow.parquet")
    with _open_binary(container) as raw:
        return pq.ParquetFile(raw).read_row_group(group, columns=[column]).column(0).to_pylist()


@functools.lru_cache(maxsize=16)
def _row_groups(container: Path | str) -> tuple[int, ...]:
    pq = require("pyarrow.parquet")
    with _open_binary(container) as raw:
        meta = pq.ParquetFile(raw).metadata
        return tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))


def _parquet_cell(path: Path | str, member: str, name: str) -> bytes:
    column, _, row_text = member.rpartition(":")
    row = int(row_text)
    start = 0
    for group, rows in enumerate(_row_groups(path)):
        if row < start + rows:
            cell = _row_group(path, column, group)[row - start]
            break
        start += rows
    else:
        raise AudioError(f"{name}: no such row")
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    local = Path(cell.get("path") or "") if isinstance(cell, dict) else Path()
    if not data and local.is_absolute() and local.is_file():  # datasets made from local files keep only the path
        data = local.read_bytes()
    if not data:
        raise AudioError(f"{name}: the row's audio bytes are empty")
    return bytes(data)


STORAGE_OPTIONS_ENV = "SOCODEC_STORAGE_OPTIONS"


def is_url(text: str | Path) -> bool:
    """True for a remote fsspec URL (``s3://b/k``); local paths and ``file://`` URLs are not."""
    text = str(text)
    return "://" in text and not text.startswith("file://")


def local_path(text: str | Path) -> Path:
    """A local path from a path or a ``file://`` URL."""
    text = str(text)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(text)


def storage_options() -> dict[str, Any]:
    """The ``--storage-options`` of this run (empty when none were given)."""
    text = os.environ.get(STORAGE_OPTIONS_ENV)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise SoCodecError(f"--storage-options: not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise SoCodecError("--storage-options: expected a JSON object")
    return options


def url_filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; one line naming the extra when it is missing."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # -v shows the clients' own logs
        for name in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import fsspec.core
    except ImportError:
        raise SoCodecError("object storage needs fsspec: pip install socodec[s3]") from None
    try:
        return fsspec.core.url_to_fs(url, **storage_options())
    except ImportError as exc:
        raise SoCodecError(f"{url}: this store needs a package that is not installed ({one_line(exc)}); "
                           "for S3: pip install socodec[s3]") from None
    except ValueError as exc:
        raise SoCodecError(f"{url}: {one_line(exc)}") from None


def store_error(url: str, exc: BaseException) -> SoCodecError:
    """One line for a failure talking to the store (missing bucket, credentials, endpoint)."""
    if isinstance(exc, FileNotFoundError):
        return SoCodecError(f"{url}: no such bucket or object")
    if isinstance(exc, PermissionError):
        return SoCodecError(f"{url}: access denied (check the store's credentials, e.g. AWS_ACCESS_KEY_ID)")
    return SoCodecError(f"{url}: cannot reach the store ({type(exc).__name__}: {one_line(exc)})")


def check_store(url: str) -> tuple[Any, str]:
    """The filesystem and path of ``url`` after checking that its bucket can be listed (else one line)."""
    fs, path = url_filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        fs.invalidate_cache()
        if not fs.exists(bucket):
            raise FileNotFoundError(bucket)
        fs.ls(bucket, detail=False)
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one line
        raise store_error(url, exc) from None
    return fs, path


@dataclass(frozen=True)
class WorkItem:
    """One utterance to tokenise.

    Attributes:
        id: unique name of the utterance (the ``id`` column of the shards).
        source: the audio file it is read from (absolute), or its URL on object storage (a ``str``).
        offset: seconds into ``source`` where the utterance starts.
        duration: seconds to read from ``offset``; None: to the end of the file.
        metadata: extra manifest fields as a JSON object text (None when there are none).
        origin: where the item was listed (e.g. ``data/wav.scp``), for error messages.
        member: the audio's place inside ``source`` when ``source`` is a container (a WebDataset
            tar's member name, ``<column>:<row>`` of a Parquet file); None for an audio file.
        fingerprint: what the item is read from, as JSON ``[location, size, mtime, offset, duration]``
            (set by :func:`~socodec.corpus.inputs.fingerprint`); resume compares it with the row's.
    """

    id: str
    source: Path | str
    offset: float = 0.0
    duration: float | None = None
    metadata: str | None = None
    origin: str = ""
    member: str | None = None
    fingerprint: str | None = None

    @property
    def location(self) -> str:
        """Where the audio is: the file, or ``<container>#<member>`` (the shards' ``source`` column)."""
        return f"{self.source}#{self.member}" if self.member is not None else str(self.source)

    @property
    def is_segment(self) -> bool:
        """True when only part of the file is read (an offset or a duration is set)."""
        return self.offset > 0 or self.duration is not None

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata as a dict (empty when there is none)."""
        return json.loads(self.metadata) if self.metadata else {}

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict; :meth:`from_json` gives the item back."""
        data = asdict(self)
        data["source"] = str(self.source)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkItem":
        source = data["source"]
        return cls(**{**data, "source": source if "://" in source else Path(source)})


def check_unique(items: Iterable[WorkItem]) -> None:
    """Raise :class:`SoCodecError` naming the first id listed twice (and both places)."""
    seen: dict[str, WorkItem] = {}
    for item in items:
        first = seen.setdefault(item.id, item)
        if first is not item:
            raise SoCodecError(
                f"duplicate id '{item.id}': {_where(first)} and {_where(item)}; ids must be unique "
                "(give manifest lines an \"id\", or tokenise the two inputs into separate folders)"
            )


def _where(item: WorkItem) -> str:
    where = item.location if item.origin in ("", str(item.source)) else f"{item.location} (from {item.origin})"
    return where + (f" at {item.offset:g} s" if item.offset else "")


def relative_id(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, without suffix, ``/``-separated (the path's stem if outside ``base``)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(base))
    except ValueError:
        return path.stem
    return rel.with_suffix("").as_posix()


def metadata_text(fields: dict[str, Any]) -> str | None:
    """Extra manifest fields as compact JSON with sorted keys (None when empty)."""
    return json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":")) if fields else None
