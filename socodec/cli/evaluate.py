"""``socodec eval INPUT... -o REPORT_DIR``: how good is the codec on these files, at 1-4 streams?

Every input is analysed once and resynthesised with each ``--streams`` count; the
command writes ``metrics.csv`` (one row per file and stream count), ``metrics.json``
(means with 95 % confidence intervals) and a self-contained ``report.html`` into
``REPORT_DIR`` and prints the table of means. Needs the ``[eval]`` extra.
Exit status: 0 all measured, 1 some input failed (the report covers the others), 2 bad options.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from socodec.cli.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Parser, UsageError,
                                 add_max_errors_argument, require_extra)
from socodec.cli.options import add_model_arguments, apply_threads, load_codec, model_options
from socodec.cli.options import ModelOptions
from socodec.config import DEFAULT_PADDING, PADDINGS
from socodec.errors import ErrorLimit, SoCodecError

if TYPE_CHECKING:  # pragma: no cover
    from socodec.evaluate.run import EvalRun

__all__ = ["EvalOptions", "build_parser", "parse_options", "main", "OUTPUT_FILES", "EXTRA_MODULES"]

log = logging.getLogger("socodec")

OUTPUT_FILES = ("metrics.csv", "metrics.json", "report.html")
EXTRA_MODULES = ("pesq", "pystoi", "scipy", "matplotlib")
MAX_STREAMS = 4


@dataclass(frozen=True)
class EvalOptions:
    """What ``socodec eval`` was asked to do."""

    inputs: tuple[Path, ...]
    report_dir: Path
    streams: tuple[int, ...] = (1, 2, 3, 4)
    examples: int = 5
    clip_seconds: float = 15.0
    lead: bool = True
    padding: str = DEFAULT_PADDING
    force: bool = False
    quiet: bool = False
    transcripts: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    max_errors: ErrorLimit = field(default_factory=ErrorLimit)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="socodec eval",
        description="Analysis-synthesis of every input at each stream count, with PESQ, STOI, ESTOI, log-mel "
                    "distance, SI-SDR, multi-resolution STFT distance, bitrate and speaker similarity. "
                    "Writes metrics.csv, metrics.json and a self-contained report.html.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="audio files, folders (recursive), quoted globs, or JSONL manifests (audio_filepath, "
                        "optional id/offset/duration)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="REPORT_DIR",
                   help="folder for metrics.csv, metrics.json and report.html")
    p.add_argument("--streams", default="1,2,3,4", metavar="K,K,...",
                   help="stream counts to decode with (default: 1,2,3,4)")
    p.add_argument("--examples", type=int, default=5, metavar="N",
                   help="the N worst files get audio players and spectrograms in the report (default: 5)")
    p.add_argument("--clip-seconds", type=float, default=15.0, metavar="S",
                   help="embed at most the first S seconds of each example's audio (default: 15)")
    p.add_argument("--no-lead", action="store_true",
                   help="skip the published model's 0.5 s lead of zeros before analysis")
    p.add_argument("--padding", choices=PADDINGS, default=DEFAULT_PADDING,
                   help="'published' (default): the published tool's tokens; 'grid': pad to the 1920-sample grid")
    p.add_argument("--transcripts", type=Path, metavar="FILE",
                   help="reference texts for the WER: lines 'id<TAB>text', or JSONL with 'id' and 'text' "
                        "(default: WER against the recognition of the original)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing report in REPORT_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bar or table")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_max_errors_argument(p)
    add_model_arguments(p)
    return p


def _streams(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--streams takes stream counts separated by commas, e.g. 1,2,4; got '{text}'") from None
    if not values or not all(1 <= k <= MAX_STREAMS for k in values):
        raise UsageError(f"--streams: each stream count must be between 1 and {MAX_STREAMS}; got '{text}'")
    return tuple(values)


def parse_options(argv: list[str]) -> EvalOptions:
    """The typed options of a ``socodec eval`` command line (:class:`UsageError` when they make no sense)."""
    ns = build_parser().parse_args(argv)
    if ns.examples < 0:
        raise UsageError("--examples must be 0 or more")
    if not ns.clip_seconds > 0:
        raise UsageError("--clip-seconds must be positive")
    return EvalOptions(
        inputs=tuple(ns.inputs), report_dir=ns.output, streams=_streams(ns.streams), examples=ns.examples,
        clip_seconds=ns.clip_seconds, lead=not ns.no_lead, padding=ns.padding, force=ns.force, quiet=ns.quiet,
        transcripts=ns.transcripts, model=model_options(ns), max_errors=ns.max_errors,
    )


def _check_report_dir(opts: EvalOptions) -> None:
    """Fail before any work when the report cannot be written, or would replace one without ``--force``."""
    folder = opts.report_dir
    if folder.exists() and not folder.is_dir():
        raise SoCodecError(f"{folder}: exists and is not a folder; the report needs a folder")
    existing = [name for name in OUTPUT_FILES if (folder / name).exists()]
    if existing and not opts.force:
        raise SoCodecError(f"{folder}: already holds {', '.join(existing)} (use -f/--force to replace them)")
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SoCodecError(f"{folder}: cannot write here ({ancestor} is not a writable folder)")


def read_transcripts(path: Path) -> dict[str, str]:
    """id -> text from ``id<TAB>text`` lines or JSONL objects with ``id`` and ``text`` (one line per error)."""
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SoCodecError(f"{path}: cannot read the transcripts ({getattr(exc, 'strerror', None) or exc})") from None
    out = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("{"):
                obj = json.loads(line)
                key, text = str(obj["id"]), str(obj["text"])
            else:
                key, text = line.split("\t", 1)
        except (ValueError, KeyError, TypeError):
            raise SoCodecError(f"{path}:{number}: expected 'id<TAB>text' or a JSON object with id and text") from None
        out[key.strip()] = text.strip()
    return out


def _print_means(run: EvalRun) -> None:
    """The table of means (and 95 % CI half-widths) per stream count, on stdout."""
    from socodec.evaluate.report import summaries

    table = summaries(run)
    names = ("token_bitrate", "pesq", "stoi", "estoi", "mel_distance", "si_sdr", "mrstft", "dnsmos_ovrl",
             "resemblyzer_similarity", "wer", "speaker_similarity")
    sys.stdout.write("streams " + " ".join(f"{n:>18}" for n in names) + "\n")
    for k in run.config.streams:
        cells = []
        for n in names:
            s = table[k][n]
            cells.append(f"{s.mean:10.3f} ±{s.half_width:6.3f}" if s.n > 1 else f"{s.mean:18.3f}" if s.n else "-")
        sys.stdout.write(f"{k:>7} " + " ".join(f"{c:>18}" for c in cells) + "\n")


def _write_all(run: EvalRun, folder: Path) -> Path:
    """Write the tables and the report into ``folder``; on failure (disk full) one line naming the file,
    and nothing left behind: no partial file, and no folder this call created. Returns the report's path."""
    from socodec.evaluate.report import report_html
    from socodec.evaluate.report import table_texts
    from socodec.fileio import atomic_write

    texts = {**table_texts(run), "report.html": report_html(run)}
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    written: list[Path] = []
    path = folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            path = folder / name
            written.append(atomic_write(path, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8")))
    except OSError as exc:
        for done in written:
            done.unlink(missing_ok=True)
        for made in created:  # innermost first
            try:
                made.rmdir()
            except OSError:
                break
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise SoCodecError(f"{path}: cannot write the report ({reason}); nothing written") from None
    return written[-1]


def main(argv: list[str]) -> int:
    """Run ``socodec eval``; returns the exit status."""
    opts = parse_options(argv)
    require_extra("'socodec eval'", "eval", *EXTRA_MODULES)
    for noisy in ("matplotlib", "numba"):  # font-cache notices and compiler dumps are not for users
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tqdm import tqdm

    from socodec.evaluate.run import expand_inputs
    from socodec.evaluate.run import EvalConfig, evaluate

    from socodec.evaluate.independent import GROUPS, missing

    _check_report_dir(opts)
    transcripts = read_transcripts(opts.transcripts) if opts.transcripts is not None else None
    absent = missing()
    for line in absent.values():
        log.warning("%s", line)
    items, errors = expand_inputs(list(opts.inputs))
    for line in errors:
        log.error("%s", line)
    if not items:
        log.error("nothing to measure: no usable input")
        return EXIT_FAILED
    apply_threads(opts.model)
    codec = load_codec(opts.model)
    config = EvalConfig(streams=opts.streams, batch_size=opts.model.batch_size, examples=opts.examples,
                        clip_seconds=opts.clip_seconds, lead=opts.lead, padding=opts.padding,
                        max_errors=opts.max_errors,
                        independent=tuple(g for g in GROUPS if g not in absent), transcripts=transcripts)
    bar = tqdm(total=len(items), unit="file", disable=opts.quiet or None, dynamic_ncols=True)

    def report(line: str) -> None:
        if bar.disable:
            log.error("%s", line)
        else:
            bar.write(f"socodec: ERROR: {line}", file=sys.stderr)

    try:
        run = evaluate(codec, items, config, on_done=bar.update, on_error=report)
    except KeyboardInterrupt:
        bar.close()
        log.error("interrupted: no report written")
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    run.errors[:0] = errors
    if not run.results:
        log.error("no input could be measured; no report written")
        return EXIT_FAILED
    html = _write_all(run, opts.report_dir)
    if not opts.quiet:
        _print_means(run)
    fallbacks = f"; {run.fallbacks} batches redone one by one" if run.fallbacks else ""
    log.info("%d of %d files measured, %d failed%s; report: %s", len(run.results), len(run.results) + len(run.errors),
             len(run.errors), fallbacks, html)
    return EXIT_FAILED if run.errors else EXIT_OK
