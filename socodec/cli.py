"""The ``socodec`` command line.

Routes by suffix, like the published tool and EnCodec's:

* audio -> audio   analysis-synthesis (``speech.wav out.wav``)
* audio -> tokens  ``speech.wav tokens.soc`` / ``tokens.pt``
* tokens -> audio  ``tokens.soc out.wav``
* tokens -> tokens convert between ``.pt`` and ``.soc`` (no model needed)

Several inputs, a directory (recursive, mirrored) or a glob go to an output
directory. ``socodec info FILE`` describes a token file.
Exit status: 0 all done, 1 some input failed, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from socodec import __version__
from socodec.audio import AUDIO_SUFFIXES, SAMPLE_FORMATS, WRITE_SUFFIXES
from socodec.batch import Job, plan_jobs, run_jobs
from socodec.codes import TOKEN_SUFFIXES, load_codes
from socodec.errors import SoCodecError, one_line

log = logging.getLogger("socodec")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="socodec",
        description="SoCodec speech codec: 16 kHz speech <-> 4 x 16384-value token streams "
        "(120 ms frames, 467 bit/s) + a speaker vector.",
        epilog="Routes by suffix: audio->audio, audio->tokens (.soc/.pt), tokens->audio, tokens->tokens. "
        "'socodec info FILE' describes a token file.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio or token files, directories or globs")
    p.add_argument("output", type=Path, metavar="OUT",
                   help="output file, or directory for several inputs; '-' streams raw 16-bit PCM "
                        "(16 kHz mono, little-endian) to stdout while decoding one input")
    p.add_argument("-t", "--to", choices=sorted({*WRITE_SUFFIXES, *TOKEN_SUFFIXES}), default=None,
                   help="output suffix in directory mode (default: .soc for audio inputs, .wav for tokens)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists")
    model = p.add_argument_group("model")
    model.add_argument("--ckpt-dir", type=Path, default=None,
                       help="folder with the three released files (default: $SOCODEC_CKPT_DIR or ./ckpts)")
    model.add_argument("--analyzer-config", type=Path, help="JSON config for another analyzer size")
    model.add_argument("--vocoder-config", type=Path, help="JSON config for another vocoder size")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    model.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="HuBERT/vocoder precision; float16/bfloat16 on CUDA only (default: float32)")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    model.add_argument("--no-download", action="store_true", help="never download missing weights")
    model.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="run up to N files of similar length through the model together (default: 1)")
    codec = p.add_argument_group("coding")
    codec.add_argument("--streams", type=int, default=None, metavar="K",
                       help="decode with the first K streams only (1-4): 117 bit/s per stream")
    codec.add_argument("--speaker", type=Path, default=None, metavar="FILE",
                       help="decode with the speaker vector of this token or audio file (voice swap)")
    codec.add_argument("--no-lead", action="store_true",
                       help="skip the published model's 0.5 s lead of zeros before analysis")
    codec.add_argument("--sample-format", choices=sorted(SAMPLE_FORMATS), default="pcm16",
                       help="output wav sample format (default: pcm16)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"socodec {__version__}")
    return p


def build_info_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="socodec info", description="Describe token files (.soc or .pt).")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def info_main(argv: list[str]) -> int:
    args = build_info_parser().parse_args(argv)
    status = 0
    results = []
    for path in args.files:
        try:
            summary = load_codes(path).summary()
        except SoCodecError as exc:
            log.error("%s", one_line(exc))
            status = 1
            continue
        summary["file"] = str(path)
        results.append(summary)
        if not args.json:
            sys.stdout.write(_format_summary(summary))
    if args.json:
        sys.stdout.write(json.dumps(results[0] if len(args.files) == 1 and results else results, indent=2) + "\n")
    return status


def _format_summary(s: dict) -> str:
    model = ", ".join(f"{k} {v}" for k, v in (s.get("model") or {}).items()) or "unknown"
    lines = [
        f"{s['file']}:",
        f"  frames        {s['frames']} x {s['streams']} streams",
        f"  duration      {s['duration']:.3f} s",
        f"  bitrate       {s['bitrate_without_speaker']:.1f} bit/s tokens, {_rate(s['bitrate'])} with speaker",
        f"  speaker       {s['speaker_dim']} float32",
        f"  input length  {s['num_samples'] if s['num_samples'] is not None else 'unknown'} samples, "
        f"lead {s['lead'] if s['lead'] is not None else 'unknown'}",
        f"  model         {model}",
    ]
    return "\n".join(lines) + "\n"


def _rate(bitrate: float | None) -> str:
    return "n/a" if bitrate is None else f"{bitrate:.1f} bit/s"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = "-q" in argv or "--quiet" in argv
    verbose = "-v" in argv or "--verbose" in argv
    _setup_logging(quiet, verbose)
    try:
        if argv and argv[0] == "info":
            return info_main(argv[1:])
        args = build_parser().parse_args(argv)
        return _run(args)
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept, run again with --skip-existing to resume")
        return 130
    except SoCodecError as exc:
        log.error("%s", one_line(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug or an unexpected library error: one line, no traceback
        log.debug("unexpected error", exc_info=True)
        log.error("unexpected error (%s: %s); run with -v for details", type(exc).__name__, one_line(exc))
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.streams is not None and not 1 <= args.streams <= 4:
        log.error("--streams must be between 1 and 4")
        return 2
    if args.threads is not None:
        if args.threads < 1:
            log.error("--threads must be at least 1")
            return 2
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        log.error("--batch-size must be at least 1")
        return 2
    if str(args.output) == "-":
        from socodec.pcm_stream import stream_pcm

        return stream_pcm(args)
    jobs = plan_jobs(args.inputs, args.output, to=args.to)
    if args.skip_existing:
        todo = [job for job in jobs if not job.output.exists()]
        if len(todo) < len(jobs):
            log.info("skipping %d of %d files: their output exists", len(jobs) - len(todo), len(jobs))
        jobs = todo
    return run_jobs(jobs, args)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("socodec: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


__all__ = ["main", "build_parser", "Job", "AUDIO_SUFFIXES"]
