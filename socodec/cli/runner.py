"""Running the convert command's jobs (:mod:`socodec.cli.jobs`) with one model.

Every job writes atomically, so a failed or interrupted job leaves no output;
one job's failure (a bad input) is reported on one line and the others go on, up to
``--max-errors``; a failure that is not the input's (out of memory, a bug) stops the run
at once (the outputs written so far are complete; ``--skip-existing`` resumes). With
``--batch-size`` the jobs are grouped by input size and each group goes through
the model as one batch first (:meth:`Runner.prefetch`).

``socodec IN -``: decode one input and stream raw 16-bit PCM to stdout as it is synthesised.

The output is headerless signed 16-bit little-endian mono at 16 kHz, converted exactly as
a 16-bit ``.wav`` output is (same library, same scale, samples clipped to [-1, 1]): the bytes
equal the ``.wav`` file's samples. E.g. ``socodec tokens.soc - | aplay -f S16_LE -r 16000``.
The tokens are fed to :meth:`SoCodec.decode_stream` :data:`STREAM_FRAMES` frames at a time,
so playback can start after the first chunk instead of after the whole file. An audio input
is analysed first (analysis is not streamed), then synthesised the same way. A reader that
stops early (``| head -c 1000``) ends the command quietly with exit status 0, as Unix tools do.

Token shards back to audio: ``socodec shard.parquet [more.parquet | TOKENIZE_DIR] OUT_DIR/ [--ids ...]``.

The rows of ``socodec tokenize`` shards (or of shards written with
:func:`socodec.corpus.write_codes`, e.g. from a language model's output) become one audio file
per row, ``OUT_DIR/<id>.wav`` (``-t .flac`` for FLAC), each equal to decoding that row's codes
alone. ``--ids`` picks rows; ``--streams``, ``--speaker``, ``--sample-format``, ``-f`` and
``--skip-existing`` work as for token files.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, TYPE_CHECKING

import numpy as np
import soundfile as sf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from socodec.audio import file_duration, load_audio, save_audio, save_audio_stream
from socodec.cli.common import UsageError, require_extra
from socodec.cli.jobs import Job, check_options, is_audio_file, is_token_file
from socodec.cli.options import ConvertOptions, load_codec
from socodec.codes import Codes, load_codes, save_codes
from socodec.config import SAMPLE_RATE, WRITE_SUFFIXES
from socodec.errors import Fallbacks, SoCodecError, is_item_error, one_line

__all__ = ["Runner", "run_jobs", "STREAM_FRAMES", "check_pcm_options", "pcm16_bytes", "stream_pcm", "SHARD_SUFFIX", "is_shard_input", "decode_shards"]


if TYPE_CHECKING:  # torch loads with the model: converting .soc files never imports it
    import torch

    from socodec.codec import SoCodec
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
        self.chunk_bar = False  # run_jobs: one file, not quiet -> progress of its analysis and synthesis on a terminal

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
        """Analyse the audio file ``path`` (long files stream from disk), with a bar as for decoding
        (:attr:`chunk_bar`)."""
        coding = self.opts.coding
        if not self.chunk_bar:
            return self.codec.encode(path, lead=coding.lead, padding=coding.padding)
        with _audio_bar("encode", file_duration(path)) as bar:
            return self.codec.encode(path, lead=coding.lead, padding=coding.padding,
                                     progress=lambda done: bar.update(done * bar.total - bar.n))

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
            codes = load_codes(job.input, as_numpy=is_token_file(job.output))  # .soc -> .soc: no torch
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


def _audio_bar(desc: str, seconds: float) -> tqdm:
    """A bar in seconds of audio: on a terminal only, and only once the work has taken more than a
    couple of seconds (short files stay silent); it is cleared when done."""
    return tqdm(total=round(seconds, 1), unit="s", desc=desc, delay=2, leave=False, dynamic_ncols=True,
                disable=None, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                                         "[{elapsed}<{remaining}]")


def _with_bar(pieces: Iterator[torch.Tensor], seconds: float) -> Iterator[torch.Tensor]:
    """``pieces`` (audio ``[n]``) as they come, with a decode bar (:func:`_audio_bar`)."""
    with _audio_bar("decode", seconds) as bar:
        for piece in pieces:
            bar.update(min(piece.numel() / SAMPLE_RATE, bar.total - bar.n))
            yield piece


def _batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """``--batch-size``: jobs grouped by input file size, so similar lengths batch together."""
    if batch_size <= 1:
        return []
    from socodec.inference.core import length_groups

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


STREAM_FRAMES = 8
"""Token frames (120 ms each) fed per step: ~1 s of audio per write after a 140 ms look-ahead."""
STDOUT = Path("stdout.wav")
"""How the jobs' planning and checks see ``-``: an audio output."""


def pcm16_bytes(wav: torch.Tensor) -> bytes:
    """``[n]`` float audio -> ``2 n`` bytes of signed 16-bit little-endian PCM, as a pcm16 ``.wav`` holds them."""
    samples = np.clip(wav.detach().cpu().float().numpy().reshape(-1), -1.0, 1.0)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=SAMPLE_RATE, channels=1, format="RAW", subtype="PCM_16",
                      endian="LITTLE") as out:
        out.write(samples)
    return buf.getvalue()


def check_pcm_options(opts: ConvertOptions) -> None:
    """Refuse (exit status 2) what ``-`` cannot do (several inputs, a sample format or suffix) and
    coding options that do not apply to its input (:func:`~socodec.cli.jobs.check_options`)."""
    if len(opts.inputs) != 1:
        raise UsageError("'-' (raw PCM to stdout) takes exactly one input file")
    fmt = opts.coding.sample_format
    if fmt not in (None, "pcm16"):
        raise UsageError(f"--sample-format {fmt} does not apply to '-': raw PCM on stdout is always 16-bit "
                         "(write a .wav file for other formats)")
    if opts.to is not None:
        raise UsageError("-t/--to does not apply to '-' (raw PCM on stdout)")
    check_options([Job(opts.inputs[0], STDOUT)], opts.coding)


def stream_pcm(opts: ConvertOptions, out: BinaryIO | None = None) -> int:
    """Decode ``opts.inputs[0]`` (tokens or audio) to raw PCM on ``out`` (default stdout). Returns the exit status."""
    check_pcm_options(opts)
    src = opts.inputs[0]
    if not src.is_file():
        raise SoCodecError(f"{src}: no such file")
    sink = out if out is not None else sys.stdout.buffer
    if out is None and sink.isatty():
        raise SoCodecError("refusing to write raw PCM to a terminal; pipe it into a player or a file")
    runner = Runner(opts)
    runner.prepare([Job(src, STDOUT)])  # the model, once, before the input is read
    codes = load_codes(src) if is_token_file(src) else runner.encode(src)
    codes = runner.adjust(codes)
    runner.codec.check_codes(codes)
    written = 0
    try:
        for chunk in runner.codec.decode_stream(codes.tokens.split(STREAM_FRAMES), codes):
            sink.write(pcm16_bytes(chunk))
            sink.flush()
            written += chunk.numel()
    except BrokenPipeError:  # the reader has all it wanted (e.g. `| head -c 1000`): not an error
        if out is None:  # keep the interpreter from complaining when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.debug("%s: the reader closed the pipe after %d samples", src, written)
        return 0
    log.info("%s: %d samples of raw 16-bit PCM at 16 kHz written to stdout", src, written)
    return 0


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
