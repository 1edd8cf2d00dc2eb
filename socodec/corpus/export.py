"""Token rows for language-model trainers: lhotse cuts and WebDataset tars, beside the Parquet shards.

The Parquet shards stay the record of what was done (resume reads them); with ``--format lhotse``
or ``--format webdataset`` each committed shard is also written in that format, once, atomically
(a rerun writes the shards still missing, so a killed run never leaves a half-written file):

* ``webdataset``: ``OUT/webdataset/tokens-NNNNN.tar`` per shard, each row two members:
  ``KEY.socodec.npz`` (``tokens`` int16 ``[T, S]``, ``speaker`` float32 ``[D]``, ``num_samples``,
  ``lead``, ``padding``, ``attention``, ``hubert_window``, ``model`` (the weight fingerprints as JSON)) and ``KEY.json`` (the row's
  metadata plus ``source``, ``offset``, ``duration``). ``KEY`` is the row's id.
* ``lhotse``: ``OUT/cuts.jsonl.gz``, a ``CutSet`` with one cut per row (id = the row's id,
  duration = ``T`` frames of 0.12 s) whose custom fields hold the tokens as a temporal array
  (``cut.load_custom("socodec_tokens")`` -> ``[T, S]``, ``frame_shift`` 0.12 s), the speaker
  vector (``socodec_speaker``), ``num_samples``, ``lead``, ``padding``, ``attention``, ``hubert_window``, ``socodec_model``,
  ``source``, ``offset``, ``duration_read`` and the metadata. The arrays are ``.npy`` files
  under ``OUT/lhotse/`` written with lhotse's own array writer.

:func:`read_exported` reads either back as ``(id, Codes)``.

Back to audio: the rows of a token shard (or a whole output folder) as one wav per id.

Each row is decoded on its own with :meth:`SoCodec.decode_iter`, so the audio equals the
per-file decoding of the same codes (``socodec utt.soc utt.wav``), and written atomically
to ``OUT_DIR/<id>.wav`` (an id with ``/`` goes into subfolders).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from socodec.audio import save_audio_stream
from socodec.codes import Codes
from socodec.config import SAMPLE_RATE
from socodec.corpus.schema import codes_from_table, pq, read_codes, shard_info
from socodec.errors import CodesError, SoCodecError, one_line, require
from socodec.fileio import atomic_path

__all__ = ["FORMATS", "export_shards", "read_exported", "is_exported", "FRAME_SHIFT", "decode_shard", "DecodeReport", "output_path"]


FORMATS = ("parquet", "lhotse", "webdataset")
FRAME_SHIFT = 0.12
"""Seconds per token frame."""
_ROW_FIELDS = ("source", "offset", "duration", "metadata")


def _rows(shard: Path) -> Iterator[tuple[str, Codes, dict[str, Any]]]:
    """``(id, Codes, {source, offset, duration, metadata})`` for each row of one Parquet shard."""
    table = pq.read_table(shard)
    extra = table.select([c for c in _ROW_FIELDS if c in table.column_names]).to_pylist()
    model = shard_info(shard).get("model") or {}
    for (utt, codes), fields in zip(codes_from_table(table, model), extra):
        yield utt, codes, fields


def export_shards(out_dir: Path, fmt: str) -> list[Path]:
    """Write every committed shard of ``out_dir`` in ``fmt`` that is not written yet; the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet":
        return []
    shards = sorted((out_dir / "shards").glob("tokens-*.parquet"))
    for leftover in [*out_dir.glob(f"{fmt}/.*.tmp-*"), *out_dir.glob(".cuts*.tmp-*")]:  # a killed export
        leftover.unlink(missing_ok=True)
    if fmt == "webdataset":
        target = out_dir / "webdataset"
        target.mkdir(exist_ok=True)
        written = [_write_tar(s, target / (s.stem + ".tar")) for s in shards if not (target / (s.stem + ".tar")).exists()]
        return written
    require("lhotse")
    target = out_dir / "lhotse"
    target.mkdir(exist_ok=True)
    written = [_write_cuts(s, target, target / f"{s.stem}.cuts.jsonl.gz") for s in shards
               if not (target / f"{s.stem}.cuts.jsonl.gz").exists()]
    combined = out_dir / "cuts.jsonl.gz"
    with atomic_path(combined) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as out:
        for s in shards:
            with gzip.open(target / f"{s.stem}.cuts.jsonl.gz", "rt", encoding="utf-8") as part:
                out.writelines(part)
    return [*written, combined]


def _npz(codes: Codes) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, tokens=codes.tokens.numpy().astype(np.int16), speaker=codes.speaker.numpy().astype(np.float32),
             num_samples=np.int64(-1 if codes.num_samples is None else codes.num_samples),
             lead=np.int64(-1 if codes.lead is None else codes.lead), padding=np.str_(codes.padding or ""),
             attention=np.str_(codes.attention or ""),
             hubert_window=np.float64(-1.0 if codes.hubert_window is None else codes.hubert_window),
             model=np.str_(json.dumps(dict(codes.model or {}), sort_keys=True)))
    return buf.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _row_json(fields: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads(fields["metadata"]) if fields.get("metadata") else {}
    return {**meta, "source": fields.get("source"), "offset": fields.get("offset"), "duration": fields.get("duration")}


def _write_tar(shard: Path, path: Path) -> Path:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for utt, codes, fields in _rows(shard):
            _member(tar, f"{utt}.socodec.npz", _npz(codes))
            _member(tar, f"{utt}.json", json.dumps(_row_json(fields), ensure_ascii=False).encode())
    return path


def _write_cuts(shard: Path, folder: Path, path: Path) -> Path:
    lhotse = require("lhotse")
    from lhotse.features.io import NumpyFilesWriter

    cuts = []
    with NumpyFilesWriter(str((folder / shard.stem).absolute())) as writer:
        for n, (utt, codes, fields) in enumerate(_rows(shard)):
            key = f"{shard.stem}-{n:07d}"
            tokens = writer.store_array(key, codes.tokens.numpy().astype(np.int16), frame_shift=FRAME_SHIFT,
                                        temporal_dim=0)
            speaker = writer.store_array(key + "-speaker", codes.speaker.numpy().astype(np.float32))
            custom = {"socodec_tokens": tokens, "socodec_speaker": speaker, "num_samples": codes.num_samples,
                      "lead": codes.lead, "padding": codes.padding, "attention": codes.attention,
                      "hubert_window": codes.hubert_window, "socodec_model": dict(codes.model or {}),
                      **{k: v for k, v in _row_json(fields).items() if k != "duration"},
                      "duration_read": fields.get("duration")}
            cuts.append(lhotse.MonoCut(id=utt, start=0.0, duration=round(codes.tokens.shape[0] * FRAME_SHIFT, 6),
                                       channel=0, custom=custom))
    with atomic_path(path) as tmp:
        lhotse.CutSet.from_cuts(cuts).to_file(str(tmp) + ".jsonl.gz")
        Path(str(tmp) + ".jsonl.gz").replace(tmp)
    return path


def is_exported(path: Path) -> bool:
    """A WebDataset token tar or a lhotse cuts manifest."""
    name = path.name.lower()
    return path.is_file() and (name.endswith(".tar") or name.endswith(".jsonl.gz"))


def read_exported(path: Path, ids: Iterable[str] | None = None) -> Iterator[tuple[str, Codes]]:
    """``(id, Codes)`` for each row of a token tar or cuts manifest written by :func:`export_shards`."""
    wanted = None if ids is None else set(ids)
    if path.name.lower().endswith(".jsonl.gz"):
        lhotse = require("lhotse")
        for cut in lhotse.load_manifest(path):
            if wanted is None or cut.id in wanted:
                c = cut.custom or {}
                yield cut.id, Codes(tokens=torch.from_numpy(cut.load_custom("socodec_tokens").astype(np.int64)),
                                    speaker=torch.from_numpy(cut.load_custom("socodec_speaker").astype(np.float32)),
                                    sample_rate=SAMPLE_RATE, num_samples=c.get("num_samples"), lead=c.get("lead"),
                                    padding=c.get("padding"), attention=c.get("attention"),
                                    hubert_window=c.get("hubert_window"), model=dict(c.get("socodec_model") or {}))
        return
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.name.endswith(".socodec.npz"):
                    continue
                utt = info.name[: -len(".socodec.npz")]
                if wanted is not None and utt not in wanted:
                    continue
                stream = tar.extractfile(info)
                yield utt, _codes_from_npz(stream.read() if stream else b"")
    except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
        raise CodesError(f"{path}: cannot read token rows ({exc})") from None


def _codes_from_npz(data: bytes) -> Codes:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        num_samples, lead = int(npz["num_samples"]), int(npz["lead"])
        return Codes(tokens=torch.from_numpy(npz["tokens"].astype(np.int64)),
                     speaker=torch.from_numpy(npz["speaker"].astype(np.float32)), sample_rate=SAMPLE_RATE,
                     num_samples=None if num_samples < 0 else num_samples, lead=None if lead < 0 else lead,
                     padding=str(npz["padding"]) or None, model=json.loads(str(npz["model"])),
                     attention=(str(npz["attention"]) or None) if "attention" in npz.files else None,
                     hubert_window=_window(npz))


def _window(npz) -> float | None:
    """``hubert_window`` of an npz (-1 or absent: none recorded)."""
    if "hubert_window" not in npz.files or float(npz["hubert_window"]) < 0:
        return None
    return float(npz["hubert_window"])


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
