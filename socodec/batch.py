"""The command line's work list: which input goes to which output, and running it.

Every job writes atomically, so a failed or interrupted job leaves no output;
one job's failure is reported on one line and the others go on.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from socodec.audio import AUDIO_SUFFIXES, WRITE_SUFFIXES, load_audio, save_audio, save_audio_stream
from socodec.codes import TOKEN_SUFFIXES, Codes, load_codes, save_codes
from socodec.config import SAMPLE_RATE
from socodec.errors import SoCodecError, one_line
from socodec.sources import file_duration

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
    writers: dict[Path, Path] = {}
    for job in jobs:
        _check_route(job)
        other = writers.setdefault(job.output.resolve(), job.input)
        if other != job.input:
            raise SoCodecError(f"{job.output}: both {other} and {job.input} would be written to this file; "
                               "rename one of them")
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
        self._encoded: dict[Job, Codes] = {}  # filled by prefetch (--batch-size)
        self._decoded: dict[Job, torch.Tensor] = {}

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
            self._speaker = self.codec.encode(src, lead=not self.args.no_lead).speaker
        else:
            raise SoCodecError(f"{src}: --speaker needs a token file (.soc, .pt) or an audio file")
        return self._speaker

    def run(self, job: Job) -> None:
        if job.output.resolve() == job.input.resolve():
            raise SoCodecError(f"{job.output}: output is the input file; choose another name")
        if job.output.exists() and not self.args.force:
            raise SoCodecError(f"{job.output}: already exists (use -f/--force to overwrite, --skip-existing to skip)")
        _check_output_place(job.output)
        if job in self._encoded:
            codes = self._encoded.pop(job)
        elif _is_tokens(job.input):
            codes = load_codes(job.input)
        else:
            codes = self.codec.encode(job.input, lead=not self.args.no_lead)  # long files stream from disk
        codes = self.adjust(codes)
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SoCodecError(f"{job.output}: cannot create the output folder ({one_line(exc)})") from None
        if _is_tokens(job.output):
            save_codes(codes, job.output)
        else:
            fmt = self.args.sample_format
            if job in self._decoded:
                save_audio(job.output, self._decoded.pop(job), sample_format=fmt)
            else:  # written piece by piece: hours of audio are never held whole
                save_audio_stream(job.output, self.codec.decode_iter(codes), sample_format=fmt)

    def adjust(self, codes: Codes) -> Codes:
        """Apply ``--streams`` and ``--speaker`` to ``codes``."""
        if self.args.streams is not None:
            codes = codes.with_streams(min(self.args.streams, codes.num_streams))
        speaker = self.speaker()
        if speaker is not None:
            codes = Codes(codes.tokens, speaker, codes.sample_rate, codes.num_samples, codes.lead, codes.model)
        return codes

    def prefetch(self, group: list[Job]) -> None:
        """``--batch-size``: encode, then decode, the jobs of ``group`` as batches (:mod:`socodec.batching`).

        Results wait for :meth:`run`. Anything that fails here is left to :meth:`run`, which
        processes that job alone and reports its error as usual.
        """
        todo = [job for job in group if job.needs_model and (self.args.force or not job.output.exists())]
        if len(todo) < 2:
            return
        try:
            audio = {}
            codec = self.codec
            for job in todo:
                if not _is_tokens(job.input):
                    try:
                        if codec.analysed_whole(math.ceil(file_duration(job.input) * SAMPLE_RATE)):
                            audio[job] = load_audio(job.input)  # longer files stream alone in run()
                    except SoCodecError:
                        continue
            if len(audio) > 1:
                with _without_range_warning():
                    encoded = self.codec.encode(list(audio.values()), lead=not self.args.no_lead)
                self._encoded.update(zip(audio, encoded))
            decode = {}
            for job in todo:
                if not _is_tokens(job.output) and (job in self._encoded or _is_tokens(job.input)):
                    try:
                        codes = self.adjust(self._encoded[job] if job in self._encoded else load_codes(job.input))
                    except SoCodecError:
                        continue
                    if codec.decoded_whole(codes.num_frames):
                        decode[job] = codes  # longer ones are written piece by piece in run()
            if len(decode) > 1:
                self._decoded.update(zip(decode, self.codec.decode(list(decode.values()))))
        except Exception as exc:  # noqa: BLE001 - the jobs then run one by one and report their own errors
            log.debug("batch of %d files failed (%s); running them one by one", len(todo), one_line(exc))
            for job in todo:
                self._encoded.pop(job, None)
                self._decoded.pop(job, None)


def run_jobs(jobs: list[Job], args: argparse.Namespace) -> int:
    """Run every job; report failures one line each. Returns the exit status (0, 1, or 130 on Ctrl-C)."""
    runner = Runner(args)
    failed = 0
    batches = _batches(jobs, getattr(args, "batch_size", 1) or 1)
    if batches:
        jobs = [job for group in batches for job in group]
    groups = {id(group[0]): group for group in batches}
    show_bar = len(jobs) > 1 and not args.quiet
    bar = tqdm(jobs, unit="file", disable=not show_bar or None, dynamic_ncols=True)
    done = 0
    try:
        for job in bar:
            if id(job) in groups:
                runner.prefetch(groups[id(job)])
            try:
                runner.run(job)
                done += 1
            except SoCodecError as exc:
                if runner._codec is None and job.needs_model and _model_error(exc):
                    raise  # no model for any job: main() reports it once and exits
                failed += 1
                _report(bar, _naming(job, one_line(exc)))
            except Exception as exc:  # noqa: BLE001 - anything else the libraries raise: one line, go on
                failed += 1
                log.debug("%s failed", job.input, exc_info=True)
                _report(bar, f"{job.input}: failed ({type(exc).__name__}: {one_line(exc)})")
    except KeyboardInterrupt:
        bar.close()
        log.error("interrupted: %d of %d files done, no partial output left; "
                  "run again with --skip-existing to resume", done, len(jobs))
        return 130
    finally:
        bar.close()
    if len(jobs) > 1:
        log.info("%d of %d files done, %d failed", len(jobs) - failed, len(jobs), failed)
    return 1 if failed else 0


def _batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """``--batch-size``: jobs grouped by input file size, so similar lengths batch together."""
    if batch_size <= 1:
        return []
    from socodec.batching import length_groups

    def size(job: Job) -> int:
        try:
            return job.input.stat().st_size
        except OSError:
            return 0

    return [[jobs[i] for i in g] for g in length_groups([size(j) for j in jobs], batch_size)]


def _check_output_place(output: Path) -> None:
    """Fail before any work when ``output`` cannot be created (its nearest existing ancestor is a file or read-only)."""
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise SoCodecError(f"{output}: cannot write here, {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SoCodecError(f"{output}: cannot write here, the folder {folder} is not writable")


def _naming(job: Job, message: str) -> str:
    """``message``, prefixed with the input file unless it already names the input or the output."""
    return message if str(job.input) in message or str(job.output) in message else f"{job.input}: {message}"


class _RangeWarningFilter(logging.Filter):
    """Drops the codec's repeat of the [-1, 1] warning: :func:`load_audio` gave it already, naming the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "socodec_range_warning", False)


@contextmanager
def _without_range_warning() -> Iterator[None]:
    audio_log = logging.getLogger("socodec.audio")
    flt = _RangeWarningFilter()
    audio_log.addFilter(flt)
    try:
        yield
    finally:
        audio_log.removeFilter(flt)


def _model_error(exc: SoCodecError) -> bool:
    from socodec.errors import CheckpointError, ConfigError

    return isinstance(exc, (CheckpointError, ConfigError))


def _report(bar: tqdm, message: str) -> None:
    if bar.disable:
        log.error("%s", message)
    else:
        bar.write(f"socodec: ERROR: {message}", file=sys.stderr)
