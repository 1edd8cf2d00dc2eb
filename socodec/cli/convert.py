"""The convert command, ``socodec IN... OUT``: routes by suffix, like the published tool.

* audio -> audio   analysis-synthesis (``speech.wav out.wav``)
* audio -> tokens  ``speech.wav tokens.soc`` / ``tokens.pt``
* tokens -> audio  ``tokens.soc out.wav``
* tokens -> tokens convert between ``.pt`` and ``.soc`` (no model needed)

Several inputs, a directory (recursive, mirrored) or a glob go to an output
directory; ``OUT`` = ``-`` streams raw PCM to stdout (:mod:`socodec.cli.runner`); token
shards (``.parquet``) decode to one audio file per row (:mod:`socodec.cli.runner`).
Options that cannot apply to any job are refused (exit status 2) rather than ignored;
``--streams``/``--speaker`` that apply to some jobs of a batch only get a warning.

Arguments of the convert command (``socodec IN... OUT``) and their typed form.

:func:`build_parser` describes the command line; :func:`parse_convert` parses it and
returns a :class:`~socodec.cli.options.ConvertOptions`, the only thing the rest of
the command sees.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from socodec import __version__
from socodec.cli.common import Parser, UsageError, add_max_errors_argument
from socodec.cli.jobs import check_options, plan_jobs
from socodec.cli.options import CodingOptions, ConvertOptions, add_model_arguments, apply_threads, model_options
from socodec.config import PADDINGS, SAMPLE_FORMATS, TOKEN_SUFFIXES, WRITE_SUFFIXES

__all__ = ["main", "convert"]


log = logging.getLogger("socodec")


def main(argv: list[str]) -> int:
    """Parse ``argv`` and convert; returns the exit status."""
    return convert(parse_convert(argv))


def convert(opts: ConvertOptions) -> int:
    """Plan and run the jobs of ``opts``; returns the exit status (0 all done, 1 some failed)."""
    from socodec.cli.runner import run_jobs  # torch and the model code: not for --help or --version
    from socodec.cli.runner import decode_shards, is_shard_input

    apply_threads(opts.model)
    if opts.to_stdout:
        from socodec.cli.runner import stream_pcm

        return stream_pcm(opts)
    if any(is_shard_input(p) for p in opts.inputs):
        return decode_shards(opts)
    if opts.ids is not None:
        raise UsageError("--ids applies to token shard inputs (.parquet) only")
    jobs = plan_jobs(opts.inputs, opts.output, to=opts.to)
    check_options(jobs, opts.coding)
    if opts.skip_existing:
        todo = [job for job in jobs if not job.output.exists()]
        if len(todo) < len(jobs):
            log.info("skipping %d of %d files: their output exists", len(jobs) - len(todo), len(jobs))
        jobs = todo
    new_folder = bool(jobs) and jobs[0].output != opts.output and not opts.output.exists()
    status = run_jobs(jobs, opts)
    if new_folder and opts.output.is_dir():  # said once it exists, never for a folder left uncreated
        log.info("%s/: new folder with %d output file%s", opts.output, len(jobs), "s" if len(jobs) > 1 else "")
    return status


#: The subcommands as ``socodec --help`` lists them (``socodec COMMAND --help`` tells more).
COMMAND_SUMMARIES: dict[str, str] = {
    "info": "describe token files (.soc, .pt)",
    "tokenize": "a speech corpus -> Parquet token shards (extra: corpus)",
    "eval": "quality report of the codec on your audio (extra: eval)",
    "demo": "a local web app to try the codec (extra: demo)",
    "train": "fine-tune the analyzer (extra: train)",
    "serve": "encode, decode and stream speech over HTTP / WebSocket (extra: serve)",
}


def commands_text() -> str:
    """The subcommand list of ``socodec --help`` and of ``socodec`` run without arguments."""
    width = max(map(len, COMMAND_SUMMARIES))
    rows = "\n".join(f"  socodec {name:<{width}}  {what}" for name, what in COMMAND_SUMMARIES.items())
    return f"commands ('socodec COMMAND --help' for each):\n{rows}"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="socodec",
        description="SoCodec speech codec: 16 kHz speech <-> 4 x 16384-value token streams "
        "(120 ms frames, 467 bit/s) + a speaker vector.",
        epilog="Routes by suffix: audio->audio, audio->tokens (.soc/.pt), tokens->audio, tokens->tokens.\n\n"
        + commands_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio or token files, directories or globs")
    p.add_argument("output", type=Path, metavar="OUT",
                   help="output file, or directory for several inputs; '-' streams raw 16-bit PCM "
                        "(16 kHz mono, little-endian) to stdout while decoding one input")
    p.add_argument("-t", "--to", choices=sorted({*WRITE_SUFFIXES, *TOKEN_SUFFIXES}), default=None,
                   help="output suffix in directory mode (default: .soc for audio inputs, .wav for tokens)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists")
    add_max_errors_argument(p)
    add_model_arguments(p)
    coding = p.add_argument_group("coding")
    coding.add_argument("--streams", type=int, default=None, metavar="K",
                        help="decode with the first K streams only (1-4): 117 bit/s per stream")
    coding.add_argument("--speaker", type=Path, default=None, metavar="FILE",
                        help="decode with the speaker vector of this token or audio file (voice swap)")
    coding.add_argument("--no-lead", action="store_true",
                        help="skip the published model's 0.5 s lead of zeros before analysis")
    coding.add_argument("--sample-format", choices=sorted(SAMPLE_FORMATS), default=None,
                        help="sample format of .wav/.flac outputs (default: pcm16)")
    coding.add_argument("--padding", choices=PADDINGS, default="published",
                        help="how analysis pads the signal: 'published' gives the published command line's "
                             "tokens (default), 'grid' pads to the 1920-sample frame grid")
    p.add_argument("--ids", default=None, metavar="ID,ID,...",
                   help="token shard inputs (.parquet): decode only the rows with these ids")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"socodec {__version__}")
    return p


def coding_options(ns: argparse.Namespace) -> CodingOptions:
    """The typed coding options of a namespace parsed by :func:`build_parser`."""
    if ns.streams is not None and not 1 <= ns.streams <= 4:
        raise UsageError("--streams must be between 1 and 4")
    return CodingOptions(streams=ns.streams, speaker=ns.speaker, lead=not ns.no_lead, sample_format=ns.sample_format,
                         padding=ns.padding)


def convert_options(ns: argparse.Namespace) -> ConvertOptions:
    """The typed options of a namespace parsed by :func:`build_parser`."""
    coding = coding_options(ns)
    return ConvertOptions(
        inputs=tuple(ns.inputs),
        output=ns.output,
        to=ns.to,
        force=ns.force,
        skip_existing=ns.skip_existing,
        quiet=ns.quiet,
        model=model_options(ns),
        coding=coding,
        ids=None if ns.ids is None else tuple(i for i in ns.ids.split(",") if i),
        max_errors=ns.max_errors,
    )


def parse_convert(argv: list[str]) -> ConvertOptions:
    """Parse ``socodec IN... OUT [options]`` (argparse exits 2 on bad options)."""
    return convert_options(build_parser().parse_args(argv))
