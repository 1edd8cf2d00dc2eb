"""The work list: what ``socodec tokenize`` reads, as one :class:`WorkItem` per utterance.

Inputs, in any mix:

* an audio file (id: its name without suffix);
* a folder, searched recursively for audio files (id: the path relative to the folder,
  without suffix, e.g. ``spk1/utt001``);
* a quoted glob (``'data/**/*.flac'``; id: the path relative to the glob's fixed leading folder);
* a Kaldi/WeNet data folder, recognised by its ``wav.scp`` (:func:`~socodec.corpus.manifests.kaldi_items`);
* a JSONL manifest, ``.jsonl`` or ``.json`` (:func:`~socodec.corpus.manifests.jsonl_items`);
* WebDataset ``.tar`` shards, also as a brace pattern (``shards-{000..123}.tar``; id: the sample key);
* Hugging Face Parquet: a ``.parquet`` file, or a folder of them holding no audio files
  (id: the id column, see :func:`~socodec.corpus.containers.parquet_items`);
* a lhotse ``CutSet`` / ``RecordingSet`` manifest, ``.jsonl.gz``
  (:func:`~socodec.corpus.containers.lhotse_items`).

Every source is stored as an absolute path, whatever folder the command runs in.

Every id must be unique across all inputs; a duplicate is reported before any work starts.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from socodec.config import AUDIO_SUFFIXES
from socodec.corpus.containers import expand_braces, is_lhotse_manifest, lhotse_items, parquet_items, tar_items
from socodec.corpus.items import WorkItem, check_unique
from socodec.corpus.manifests import jsonl_items, kaldi_items
from socodec.corpus.storage import is_url, local_path, store_error, url_filesystem
from socodec.errors import SoCodecError

__all__ = ["collect_work", "walk_files", "is_glob", "MANIFEST_SUFFIXES"]

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
