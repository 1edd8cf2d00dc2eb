"""Token shards back to audio: ``socodec shard.parquet [more.parquet | TOKENIZE_DIR] OUT_DIR/ [--ids ...]``.

The rows of ``socodec tokenize`` shards (or of shards written with
:func:`socodec.corpus.write_codes`, e.g. from a language model's output) become one audio file
per row, ``OUT_DIR/<id>.wav`` (``-t .flac`` for FLAC), each equal to decoding that row's codes
alone. ``--ids`` picks rows; ``--streams``, ``--speaker``, ``--sample-format``, ``-f`` and
``--skip-existing`` work as for token files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from socodec.cli.common import UsageError, require_extra
from socodec.cli.jobs import is_audio_file, is_token_file
from socodec.cli.model import load_codec
from socodec.cli.options import ConvertOptions
from socodec.codes import load_codes
from socodec.config import WRITE_SUFFIXES
from socodec.errors import SoCodecError

__all__ = ["SHARD_SUFFIX", "is_shard_input", "decode_shards"]

log = logging.getLogger("socodec")

SHARD_SUFFIX = ".parquet"


def is_shard_input(path: Path) -> bool:
    """A Parquet token shard, a ``socodec tokenize`` output folder (it has ``shards/``), or a token tar /
    lhotse ``cuts.jsonl.gz`` written by ``tokenize --format``."""
    name = path.name.lower()
    return path.suffix.lower() == SHARD_SUFFIX or name.endswith((".tar", ".jsonl.gz")) or (path.is_dir() and (path / "shards").is_dir()
                                                   and (path / "manifest.json").is_file())


def decode_shards(opts: ConvertOptions) -> int:
    """Decode every row of the shard inputs into ``opts.output`` (a folder); exit status 0 or 1."""
    require_extra("reading token shards", "corpus", "pyarrow")
    from socodec.corpus import decode_shard

    if not all(is_shard_input(p) for p in opts.inputs):
        raise UsageError("token shards (.parquet) cannot be mixed with other inputs in one command")
    if opts.output.suffix and not opts.output.is_dir():
        raise UsageError(f"{opts.output}: shards decode to a folder (one file per row); give a folder name")
    suffix = opts.to or ".wav"
    if suffix not in WRITE_SUFFIXES:
        raise UsageError(f"shards decode to audio: -t must be one of {', '.join(WRITE_SUFFIXES)}")
    coding = opts.coding
    if not coding.lead or coding.padding != "published":
        raise UsageError("--no-lead and --padding apply to audio inputs only")
    speaker_src = coding.speaker
    codec = load_codec(opts.model, analysis=speaker_src is not None and is_audio_file(speaker_src))
    speaker = None
    if speaker_src is not None:
        if is_token_file(speaker_src):
            speaker = load_codes(speaker_src).speaker
        elif is_audio_file(speaker_src):
            speaker = codec.encode(speaker_src).speaker
        else:
            raise SoCodecError(f"{speaker_src}: --speaker needs a token file (.soc, .pt) or an audio file")
    opts.output.mkdir(parents=True, exist_ok=True)
    written = failed = skipped = 0
    # a bar on a terminal (tqdm leaves it out elsewhere), as long as rows are decoded
    bar = tqdm(total=_row_count(opts), unit="file", disable=True if opts.quiet else None, dynamic_ncols=True,
               desc="decode")
    with bar, logging_redirect_tqdm():
        for shard in opts.inputs:
            report = decode_shard(
                codec, shard, opts.output, ids=opts.ids, streams=coding.streams, speaker=speaker,
                sample_format=coding.audio_format, suffix=suffix, overwrite=opts.force,
                skip_existing=opts.skip_existing, on_row=lambda _: bar.update(),
            )
            written += len(report.written)
            failed += len(report.failed)
            skipped += len(report.skipped)
    log.info("%d files written to %s%s%s", written, opts.output,
             f", {skipped} skipped (they exist)" if skipped else "", f", {failed} rows failed" if failed else "")
    return 1 if failed else 0


def _row_count(opts: ConvertOptions) -> int | None:
    """How many rows the shard inputs will decode (None when their metadata cannot be read)."""
    from socodec.corpus.schema import pq, shard_files

    if opts.ids is not None:
        return len(opts.ids) * len(opts.inputs)
    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for shard in opts.inputs for f in shard_files(shard))
    except (OSError, SoCodecError, ValueError):
        return None
