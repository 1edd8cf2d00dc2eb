"""``socodec IN -``: decode one input and stream raw 16-bit PCM to stdout as it is synthesised.

The output is headerless signed 16-bit little-endian mono at 16 kHz, converted exactly as
a 16-bit ``.wav`` output is (same library, same scale, samples clipped to [-1, 1]): the bytes
equal the ``.wav`` file's samples. E.g. ``socodec tokens.soc - | aplay -f S16_LE -r 16000``.
The tokens are fed to :meth:`SoCodec.decode_stream` :data:`STREAM_FRAMES` frames at a time,
so playback can start after the first chunk instead of after the whole file. An audio input
is analysed first (analysis is not streamed), then synthesised the same way. A reader that
stops early (``| head -c 1000``) ends the command quietly with exit status 0, as Unix tools do.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from socodec.cli.common import UsageError
from socodec.cli.jobs import Job, check_options, is_token_file
from socodec.cli.options import ConvertOptions
from socodec.cli.runner import Runner
from socodec.codes import load_codes
from socodec.config import SAMPLE_RATE
from socodec.errors import SoCodecError

__all__ = ["STREAM_FRAMES", "check_pcm_options", "pcm16_bytes", "stream_pcm"]

log = logging.getLogger("socodec")

STREAM_FRAMES = 8
"""Token frames (120 ms each) fed per step: ~1 s of audio per write after a 140 ms look-ahead."""

STDOUT = Path("stdout.wav")
"""How the jobs' planning and checks see ``-``: an audio output."""


def pcm16_bytes(wav: torch.Tensor) -> bytes:
    """``[n]`` float audio -> ``2 n`` bytes of signed 16-bit little-endian PCM, as a pcm16 ``.wav`` holds them."""
    samples = np.clip(wav.detach().to("cpu", torch.float32).numpy().reshape(-1), -1.0, 1.0)
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
