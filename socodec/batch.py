"""The command line's work list: which input goes to which output, and running it.

Every job writes atomically, so a failed or interrupted job leaves no output;
one job's failure is reported on one line and the others go on.
"""

from __future__ import annotations

import argparse
import glob
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from socodec.audio import AUDIO_SUFFIXES, WRITE_SUFFIXES, load_audio, save_audio
from socodec.codes import TOKEN_SUFFIXES, Codes, load_codes, save_codes
from socodec.errors import SoCodecError

log = logging.getLogger("socodec")

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Job:
    """One input file and the file it becomes."""

    input: Path
    output: Path

    @property
    def needs_model(self) -> bool:
        return not (_is_tokens(self.input) and _is_tokens(self.output))


def _is_tokens(path: Path) -> bool:
    return path.suffix.lower() in TOKEN_SUFFIXES


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def _expand(item: Path) -> list[tuple[Path, Path]]:
    """``(file, path relative to its root)`` pairs for a file, a directory (recursive) or a glob."""
    text = str(item)
    if not item.exists() and _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        if not matches:
            raise SoCodecError(f"{item}: no files match")
        return [(m, Path(m.name)) for m in matches]
    if item.is_dir():
        files = sorted(p for p in item.rglob("*") if p.is_file() and (_is_audio(p) or _is_tokens(p)))
        if not files:
            raise SoCodecError(f"{item}: no audio or token files in this directory")
        return [(p, p.relative_to(item)) for p in files]
    return [(item, Path(item.name))]


def plan_jobs(inputs: list[Path], output: Path, to: str | None = None) -> list[Job]:
    """Pair inputs with outputs.

    One input file and an output that is not a directory: one job. Otherwise
    ``output`` is a directory, directory inputs are mirrored into it, and each
    output gets suffix ``to`` (default ``.soc`` for audio, ``.wav`` for tokens).
    """
    single = len(inputs) == 1 and not inputs[0].is_dir() and not output.is_dir() and output.suffix != ""
    if single and not (not inputs[0].exists() and _GLOB_CHARS & set(str(inputs[0]))):
        jobs = [Job(inputs[0], output)]
    else:
        if output.exists() and not output.is_dir():
            raise SoCodecError(f"{output}: several inputs need an output directory, and this is a file")
        jobs = []
        for item in inputs:
            for path, rel in _expand(item):
                suffix = to or (".wav" if _is_tokens(path) else ".soc")
                jobs.append(Job(path, output / rel.with_suffix(suffix)))
    for job in jobs:
        _check_route(job)
    return jobs


def _check_route(job: Job) -> None:
    if not (_is_audio(job.input) or _is_tokens(job.input)):
        raise SoCodecError(
            f"{job.input}: unsupported input suffix '{job.input.suffix}' "
            f"(audio: {' '.join(AUDIO_SUFFIXES)}; tokens: {' '.join(TOKEN_SUFFIXES)})"
        )
    if job.output.suffix.lower() not in WRITE_SUFFIXES and not _is_tokens(job.output):
        raise SoCodecError(
            f"{job.output}: unsupported output suffix '{job.output.suffix}' "
            f"(audio: {' '.join(WRITE_SUFFIXES)}; tokens: {' '.join(TOKEN_SUFFIXES)})"
        )


class Runner:
    """Runs jobs with one lazily loaded model."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._codec = None
        self._speaker: torch.Tensor | None = None

    @property
    def codec(self):
        if self._codec is None:
            from socodec.codec import SoCodec
            from socodec.weights import resolve_checkpoints

            paths = resolve_checkpoints(self.args.ckpt_dir, allow_download=not self.args.no_download)
            from socodec.cli import DTYPES

            self._codec = SoCodec.from_files(
                paths.hubert, paths.analyzer, paths.vocoder,
                analyzer_config=self.args.analyzer_config, vocoder_config=self.args.vocoder_config,
                device=self.args.device, dtype=DTYPES[self.args.dtype],
            )
        return self._codec

    def speaker(self) -> torch.Tensor | None:
        """The ``--speaker`` override vector ``[D]``, computed once."""
        if self.args.speaker is None or self._speaker is not None:
            return self._speaker
        src = self.args.speaker
        if _is_tokens(src):
            self._speaker = load_codes(src).speaker
        elif _is_audio(src):
            self._speaker = self.codec.encode(load_audio(src), lead=not self.args.no_lead).speaker
        else:
            raise SoCodecError(f"{src}: --speaker needs a token file (.soc, .pt) or an audio file")
        return self._speaker

    def run(self, job: Job) -> None:
        if job.output.resolve() == job.input.resolve():
            raise SoCodecError(f"{job.output}: output is the input file; choose another name")
        if job.output.exists() and not self.args.force:
            raise SoCodecError(f"{job.output}: already exists (use -f/--force to overwrite, --skip-existing to skip)")
        if _is_tokens(job.input):
            codes = load_codes(job.input)
        else:
            codes = self.codec.encode(load_audio(job.input), lead=not self.args.no_lead)
        if self.args.streams is not None:
            codes = codes.with_streams(min(self.args.streams, codes.num_streams))
        speaker = self.speaker()
        if speaker is not None:
            codes = Codes(codes.tokens, speaker, codes.sample_rate, codes.num_samples, codes.lead, codes.model)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        if _is_tokens(job.output):
            save_codes(codes, job.output)
        else:
            wav = self.codec.decode(codes)
            save_audio(job.output, wav, sample_format=self.args.sample_format)


def run_jobs(jobs: list[Job], args: argparse.Namespace) -> int:
    """Run every job; report failures one line each. Returns the exit status (0 or 1)."""
    runner = Runner(args)
    failed = 0
    show_bar = len(jobs) > 1 and not args.quiet
    bar = tqdm(jobs, unit="file", disable=not show_bar or None, dynamic_ncols=True)
    for job in bar:
        try:
            runner.run(job)
        except SoCodecError as exc:
            failed += 1
            _report(bar, f"{exc}")
            if runner._codec is None and job.needs_model and _model_error(exc):
                raise
        except (OSError, RuntimeError, ValueError) as exc:  # anything else the libraries raise
            failed += 1
            _report(bar, f"{job.input}: failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
    if len(jobs) > 1:
        log.info("%d of %d files done, %d failed", len(jobs) - failed, len(jobs), failed)
    return 1 if failed else 0


def _model_error(exc: SoCodecError) -> bool:
    from socodec.errors import CheckpointError, ConfigError

    return isinstance(exc, (CheckpointError, ConfigError))


def _report(bar: tqdm, message: str) -> None:
    if bar.disable:
        log.error("%s", message)
    else:
        bar.write(f"socodec: ERROR: {message}")
