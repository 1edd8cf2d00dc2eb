"""Running the convert command's jobs (:mod:`socodec.cli.jobs`) with one model.

Every job writes atomically, so a failed or interrupted job leaves no output;
one job's failure (a bad input) is reported on one line and the others go on, up to
``--max-errors``; a failure that is not the input's (out of memory, a bug) stops the run
at once (the outputs written so far are complete; ``--skip-existing`` resumes). With
``--batch-size`` the jobs are grouped by input size and each group goes through
the model as one batch first (:meth:`Runner.prefetch`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from tqdm import tqdm

from socodec.audio import file_duration, load_audio, save_audio, save_audio_stream
from socodec.cli.jobs import Job, is_audio_file, is_token_file
from socodec.cli.model import load_codec
from socodec.cli.options import ConvertOptions
from socodec.codes import Codes, load_codes, save_codes
from socodec.config import SAMPLE_RATE
from socodec.errors import Fallbacks, SoCodecError, is_item_error, one_line

if TYPE_CHECKING:
    from socodec.codec import SoCodec

__all__ = ["Runner", "run_jobs"]

log = logging.getLogger("socodec")


class Runner:
    """Runs jobs with one model, loaded by :meth:`prepare` before any input is read."""

    def __init__(self, opts: ConvertOptions) -> None:
        self.opts = opts
        self._codec: SoCodec | None = None
        self._speaker: torch.Tensor | None = None
        self._encoded: dict[Job, Codes] = {}  # filled by prefetch (--batch-size)
        self._decoded: dict[Job, torch.Tensor] = {}
        self._warned_model = False
        self.fallbacks = Fallbacks(log)
        self.chunk_bar = False  # run_jobs: one file, not quiet -> progress of its synthesis on a terminal

    @property
    def codec(self) -> SoCodec:
        if self._codec is None:
            self._codec = load_codec(self.opts.model)
        return self._codec

    def prepare(self, jobs: list[Job]) -> None:
        """Load what ``jobs`` need once, up front: the model (HuBERT only if audio is analysed)
        and the ``--speaker`` vector. A failure here concerns every job: it is raised (one
        line, exit status 1) before any input is touched, instead of failing job by job."""
        speaker = self.opts.coding.speaker
        analysis = any(job.needs_model and is_audio_file(job.input) for job in jobs)
        decoding = any(not is_token_file(job.output) for job in jobs)
        if decoding and speaker is not None and is_audio_file(speaker):
            analysis = True
        if self._codec is None and any(job.needs_model for job in jobs):
            self._codec = load_codec(self.opts.model, analysis=analysis)
        if decoding:
            self.speaker()

    def encode(self, path: Path) -> Codes:
        """Analyse the audio file ``path`` (long files stream from disk)."""
        return self.codec.encode(path, lead=self.opts.coding.lead, padding=self.opts.coding.padding)

    def speaker(self) -> torch.Tensor | None:
        """The ``--speaker`` override vector ``[D]``, computed once."""
        src = self.opts.coding.speaker
        if src is None or self._speaker is not None:
            return self._speaker
        if is_token_file(src):
            self._speaker = load_codes(src).speaker
        elif is_audio_file(src):
            self._speaker = self.encode(src).speaker
        else:
            raise SoCodecError(f"{src}: --speaker needs a token file (.soc, .pt) or an audio file")
        return self._speaker

    def run(self, job: Job) -> None:
        if job.output.resolve() == job.input.resolve():
            raise SoCodecError(f"{job.output}: output is the input file; choose another name")
        if job.output.exists() and not self.opts.force:
            raise SoCodecError(f"{job.output}: already exists (use -f/--force to overwrite, --skip-existing to skip)")
        _check_output_place(job.output)
        if job in self._encoded:
            codes = self._encoded.pop(job)
        elif is_token_file(job.input):
            codes = load_codes(job.input)
        else:
            codes = self.encode(job.input)
        if not is_token_file(job.output):
            self.check_model(codes, job.input)
            codes = self.adjust(codes)
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SoCodecError(f"{job.output}: cannot create the output folder ({one_line(exc)})") from None
        if is_token_file(job.output):
            save_codes(codes, job.output)
        else:
            fmt = self.opts.coding.audio_format
            if job in self._decoded:
                save_audio(job.output, self._decoded.pop(job), sample_format=fmt)
            else:  # written piece by piece: hours of audio are never held whole
                pieces = self.codec.decode_iter(codes)
                if self.chunk_bar:
                    pieces = _with_bar(pieces, codes.duration)
                save_audio_stream(job.output, pieces, sample_format=fmt)

    def check_model(self, codes: Codes, source: Path) -> None:
        """Warn (once a run) when ``codes`` were made by another analyzer than the one decoding them.

        Token files record the fingerprints of the weights that made them; a model of the same
        size but other weights (a fine-tuned export, say) decodes them without error, into
        other sounds than the tokens stood for.
        """
        made_by, ours = codes.model.get("analyzer"), self.codec.identity.get("analyzer")
        if self._warned_model or not made_by or not ours or made_by == ours:
            return
        self._warned_model = True
        log.warning("%s: made by another analyzer (%s) than the one decoding it (%s, from the model options); "
                    "the audio may not be what the tokens stood for: decode with the model that made them",
                    source, made_by, ours)

    def adjust(self, codes: Codes) -> Codes:
        """Apply ``--streams`` and ``--speaker`` to ``codes``."""
        streams = self.opts.coding.streams
        if streams is not None:
            codes = codes.with_streams(min(streams, codes.num_streams))
        speaker = self.speaker()
        if speaker is not None:
            codes = dataclasses.replace(codes, speaker=speaker)
        return codes

    def prefetch(self, group: list[Job]) -> None:
        """``--batch-size``: encode, then decode, the jobs of ``group`` as batches.

        Results wait for :meth:`run`. Anything that fails here is left to :meth:`run`, which
        processes that job alone and reports its error as usual.
        """
        todo = [job for job in group if job.needs_model and (self.opts.force or not job.output.exists())]
        if len(todo) < 2:
            return
        if self.fallbacks.batch(lambda: self._prefetch(todo), len(todo)) is None:
            for job in todo:  # they run one by one in run() and report their own errors
                self._encoded.pop(job, None)
                self._decoded.pop(job, None)

    def _prefetch(self, todo: list[Job]) -> bool:
        """The batched work of :meth:`prefetch` (True when done; it raises when the batch fails)."""
        audio = {}
        codec = self.codec
        for job in todo:
            if not is_token_file(job.input):
                try:
                    if codec.analysed_whole(math.ceil(file_duration(job.input) * SAMPLE_RATE)):
                        audio[job] = load_audio(job.input)  # longer files stream alone in run()
                except SoCodecError:
                    continue
        if len(audio) > 1:
            with _without_range_warning():
                encoded = codec.encode(list(audio.values()), lead=self.opts.coding.lead,
                                       padding=self.opts.coding.padding)
            self._encoded.update(zip(audio, encoded))
        decode = {}
        for job in todo:
            if not is_token_file(job.output) and (job in self._encoded or is_token_file(job.input)):
                try:
                    codes = self._encoded[job] if job in self._encoded else load_codes(job.input)
                    self.check_model(codes, job.input)
                    codes = self.adjust(codes)
                except SoCodecError:
                    continue
                if codec.decoded_whole(codes.num_frames):
                    decode[job] = codes  # longer ones are written piece by piece in run()
        if len(decode) > 1:
            self._decoded.update(zip(decode, codec.decode(list(decode.values()))))
        return True


def run_jobs(jobs: list[Job], opts: ConvertOptions) -> int:
    """Run every job; report failures one line each. Returns the exit status (0, 1, or 130 on Ctrl-C)."""
    runner = Runner(opts)
    runner.chunk_bar = len(jobs) == 1 and not opts.quiet
    runner.prepare(jobs)  # a model that cannot load: one line, before any input is read
    failed = 0
    batches = _batches(jobs, opts.model.batch_size)
    if batches:
        jobs = [job for group in batches for job in group]
    groups = {id(group[0]): group for group in batches}
    show_bar = len(jobs) > 1 and not opts.quiet
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
                failed += 1
                _report(bar, _naming(job, one_line(exc)))
            except Exception as exc:  # noqa: BLE001 - the input's fault: one line, go on; else stop here
                if not is_item_error(exc):
                    raise
                failed += 1
                log.debug("%s failed", job.input, exc_info=True)
                _report(bar, f"{job.input}: failed ({type(exc).__name__}: {one_line(exc)})")
            if failed and opts.max_errors.exceeded(failed, done + failed):
                raise SoCodecError(opts.max_errors.message(failed, done + failed, "the lines above"))
    except KeyboardInterrupt:
        bar.close()
        log.error("interrupted: %d of %d files done, no partial output left; "
                  "run again with --skip-existing to resume", done, len(jobs))
        return 130
    finally:
        bar.close()
    if len(jobs) > 1:
        fallbacks = f"; {runner.fallbacks.count} batches redone one by one" if runner.fallbacks.count else ""
        log.info("%d of %d files done, %d failed%s", len(jobs) - failed, len(jobs), failed, fallbacks)
    return 1 if failed else 0


def _with_bar(pieces: Iterator[torch.Tensor], seconds: float) -> Iterator[torch.Tensor]:
    """``pieces`` (audio ``[n]``) as they come, with a bar in seconds of audio: on a terminal only, and
    only once the work has taken more than a couple of seconds (short files stay silent)."""
    with tqdm(total=round(seconds, 1), unit="s", desc="decode", delay=2, leave=False, dynamic_ncols=True,
              disable=None, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                                       "[{elapsed}<{remaining}]") as bar:
        for piece in pieces:
            bar.update(min(piece.numel() / SAMPLE_RATE, bar.total - bar.n))
            yield piece


def _batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """``--batch-size``: jobs grouped by input file size, so similar lengths batch together."""
    if batch_size <= 1:
        return []
    from socodec.inference.batching import length_groups

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


def _report(bar: tqdm, message: str) -> None:
    if bar.disable:
        log.error("%s", message)
    else:
        bar.write(f"socodec: ERROR: {message}", file=sys.stderr)
