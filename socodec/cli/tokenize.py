"""``socodec tokenize INPUT... -o OUT_DIR``: a speech corpus -> Parquet token shards.

Inputs: audio files, folders, quoted globs, Kaldi/WeNet data folders (``wav.scp``,
``segments``) and JSONL manifests, in any mix. Output: ``OUT_DIR/shards/*.parquet``,
``manifest.json`` and ``errors.jsonl`` (see :mod:`socodec.corpus`). Rerunning the same
command resumes. Exit status: 0 all done, 1 some input failed (listed in errors.jsonl)
or the model could not be loaded, 2 usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from pathlib import Path

from socodec.cli.common import Parser, UsageError, add_max_errors_argument, require_extra
from socodec.cli.options import add_model_arguments, load_codec, model_options
from socodec.config import DEFAULT_PADDING, PADDINGS
from socodec.corpus.containers import STORAGE_OPTIONS_ENV, is_url

__all__ = ["build_parser", "main"]

log = logging.getLogger("socodec")

DEFAULT_BATCH_SIZE = 8
DEFAULT_SHARD_SIZE = 1000


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="socodec tokenize",
        description="Tokenise a speech corpus into Parquet shards (one row per utterance: id, tokens, speaker "
        "vector, ...). Rerun the same command to resume after an interruption.",
        epilog="Inputs: audio files, folders (recursive), quoted globs, Kaldi/WeNet data folders (wav.scp, "
        "optional segments), JSONL manifests (.jsonl: audio_filepath, optional id, offset, duration), "
        "WebDataset shards (.tar, or a quoted brace pattern such as 'shards-{000..123}.tar'; id: the sample key), "
        "Hugging Face Parquet (.parquet files or a folder of them; audio column of {bytes, path} structs) and "
        "lhotse CutSet/RecordingSet manifests (.jsonl.gz). Inputs and OUT_DIR may also be object-store URLs "
        "(s3://bucket/key; pip install socodec[s3]).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders, globs, manifests, tars, Parquet files; paths or URLs (s3://...)")
    p.add_argument("--format", choices=("parquet", "lhotse", "webdataset"), default="parquet",
                   help="also write the rows as a lhotse CutSet (OUT_DIR/cuts.jsonl.gz) or WebDataset tars "
                        "(OUT_DIR/webdataset/); the Parquet shards are always written (default: parquet only)")
    p.add_argument("--redo-changed", action="store_true",
                   help="on resume, tokenise again the ids whose audio changed (another file, size, time or "
                        "segment bounds) and drop their old rows; without it they are reported and kept")
    p.add_argument("--audio-column", default="audio", metavar="NAME",
                   help="Parquet inputs: the column holding the audio (default: audio)")
    p.add_argument("--id-column", default=None, metavar="NAME",
                   help="Parquet inputs: the column holding the id (default: id, then key, then the audio's path stem)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="output folder, or an object-store URL (s3://bucket/prefix)")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="object storage options for fsspec, as a JSON object; credentials and endpoint otherwise "
                        "come from the store's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                        "AWS_ENDPOINT_URL, ...)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: Ray Data, local or a cluster")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes / Ray actors, each holding the model (default: 1 per 2 CPU cores, "
                        "1 per GPU)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="ROWS",
                   help=f"utterances per Parquet shard (default: {DEFAULT_SHARD_SIZE})")
    p.add_argument("--padding", choices=PADDINGS, default=DEFAULT_PADDING,
                   help="published: the published command line's tokens (default); grid: pad to the 120 ms grid")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local Ray")
    add_max_errors_argument(p)
    add_model_arguments(p, threads_default="the CPU cores divided among the workers")
    p.set_defaults(batch_size=DEFAULT_BATCH_SIZE)
    p.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str]) -> int:
    """Run ``socodec tokenize``; 0 when every input was tokenised, 1 when some failed."""
    args = build_parser().parse_args(argv)
    for name in ("workers", "shard_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.ray_address and args.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    model = model_options(args)

    require_extra("'socodec tokenize'", "corpus", "pyarrow")
    if args.storage_options is not None:
        try:
            options = json.loads(args.storage_options)
        except ValueError:
            raise UsageError("--storage-options must be a JSON object") from None
        if not isinstance(options, dict):
            raise UsageError("--storage-options must be a JSON object")
        os.environ[STORAGE_OPTIONS_ENV] = args.storage_options  # worker processes read the same options
    remote = [x for x in (*args.inputs, args.output) if is_url(x)]
    if remote:
        require_extra("object storage", "s3", "fsspec")
    if args.format != "parquet" and is_url(args.output):
        raise UsageError(f"--format {args.format} writes to a local folder; on object storage the output is Parquet")
    if args.format == "lhotse":
        require_extra("'socodec tokenize --format lhotse'", "lhotse", "lhotse")
    if args.engine == "ray":
        require_extra("'socodec tokenize --engine ray'", "ray", "ray.data")
    from socodec.corpus.run import TokenizeOptions, tokenize

    opts = TokenizeOptions(
        inputs=tuple(args.inputs), out_dir=args.output if is_url(args.output) else Path(args.output), engine=args.engine, workers=args.workers,
        threads=model.threads, shard_size=args.shard_size, batch_size=model.batch_size, padding=args.padding,
        device=model.device, ray_address=args.ray_address, quiet=args.quiet, max_errors=args.max_errors,
        audio_column=args.audio_column, id_column=args.id_column, format=args.format,
        redo_changed=args.redo_changed,
    )
    try:
        summary = tokenize(opts, functools.partial(load_codec, model))
    except KeyboardInterrupt:
        log.error("interrupted; the complete shards are kept: run the same command again to resume")
        return 130
    if summary.failed:
        log.error("%s", summary.describe())
        return 1
    log.info("%s", summary.describe())
    return 0
