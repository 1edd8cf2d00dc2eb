"""Back to audio: the rows of a token shard (or a whole output folder) as one wav per id.

Each row is decoded on its own with :meth:`SoCodec.decode_iter`, so the audio equals the
per-file decoding of the same codes (``socodec utt.soc utt.wav``), and written atomically
to ``OUT_DIR/<id>.wav`` (an id with ``/`` goes into subfolders).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import torch

from socodec.audio import save_audio_stream
from socodec.corpus.export import is_exported, read_exported
from socodec.corpus.schema import read_codes
from socodec.errors import SoCodecError, one_line

__all__ = ["decode_shard", "DecodeReport", "output_path"]

log = logging.getLogger(__name__)


@dataclass
class DecodeReport:
    """Files written, outputs skipped because they exist, and ``(id, reason)`` of rows that failed."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def output_path(out_dir: Path, utt_id: str, suffix: str = ".wav") -> Path:
    """``out_dir/<id><suffix>``; ids that would leave ``out_dir`` (absolute, ``..``, empty parts) are refused."""
    parts = PurePosixPath(utt_id).parts
    if not utt_id or utt_id.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in utt_id:
        raise SoCodecError(f"id '{utt_id}' cannot be used as a file name")
    return out_dir.joinpath(*parts[:-1], parts[-1] + suffix)


def decode_shard(
    codec,
    shard: str | Path,
    out_dir: str | Path,
    ids: Iterable[str] | None = None,
    *,
    streams: int | None = None,
    speaker: torch.Tensor | None = None,
    sample_format: str = "pcm16",
    suffix: str = ".wav",
    overwrite: bool = False,
    skip_existing: bool = False,
    on_row: Callable[[str], object] | None = None,
) -> DecodeReport:
    """Decode the rows of ``shard`` to audio files: a ``.parquet`` file, a tokenize output folder,
    or a ``--format webdataset`` token tar / ``--format lhotse`` ``cuts.jsonl.gz``.

    Args:
        codec: a loaded :class:`~socodec.SoCodec` (only its synthesis half is used).
        shard: token rows (:func:`socodec.corpus.read_codes` reads them).
        out_dir: folder for ``<id><suffix>`` files (created).
        ids: only these ids; an id that is not in ``shard`` is an error raised before anything is decoded.
        streams, speaker: as in :meth:`SoCodec.decode` (first K streams, voice swap).
        sample_format: ``pcm16``, ``pcm24`` or ``float`` (see :func:`socodec.audio.save_audio`).
        suffix: ``.wav`` or ``.flac``.
        overwrite: replace existing files; otherwise they are an error for their row
            (or skipped with ``skip_existing``).
        on_row: called with each row's id once it is done (written, skipped or failed), e.g. to
            advance a progress bar.
    Returns:
        A :class:`DecodeReport`; a row that fails is logged on one line and the others go on.
    """
    out = Path(out_dir)
    wanted = None if ids is None else list(dict.fromkeys(ids))
    report = DecodeReport()
    exported = is_exported(Path(shard))
    if wanted is not None and exported:  # read_codes raises for unknown ids itself
        missing = set(wanted) - {utt for utt, _ in read_exported(Path(shard))}
        if missing:
            raise SoCodecError(f"{shard}: no rows with id {', '.join(sorted(missing)[:5])}"
                               + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    rows = read_exported(Path(shard), wanted) if exported else read_codes(shard, wanted)
    for utt_id, codes in rows:
        try:
            path = output_path(out, utt_id, suffix)
            if path.exists() and not overwrite:
                if skip_existing:
                    report.skipped.append(path)
                    continue
                raise SoCodecError(f"{path}: exists (overwrite it with -f)")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_audio_stream(path, codec.decode_iter(codes, streams, speaker), sample_format=sample_format)
            report.written.append(path)
        except SoCodecError as exc:
            log.error("%s: %s", utt_id, one_line(exc))
            report.failed.append((utt_id, one_line(exc)))
        finally:
            if on_row is not None:
                on_row(utt_id)
    return report
