"""``socodec IN -``: decode one input and stream raw 16-bit PCM to stdout as it is synthesised.

The output is headerless signed 16-bit little-endian mono at 16 kHz (samples ×32767,
rounded, clipped to [-1, 1]), e.g. ``socodec tokens.soc - | aplay -f S16_LE -r 16000``.
The tokens are fed to :meth:`SoCodec.decode_stream` :data:`STREAM_FRAMES` frames at a time,
so playback can start after the first chunk instead of after the whole file. An audio input
is analysed first (analysis is not streamed), then synthesised the same way.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import BinaryIO

import torch

from socodec.cli.jobs import is_token_file
from socodec.cli.options import ConvertOptions
from socodec.cli.runner import Runner
from socodec.codes import load_codes
from socodec.errors import SoCodecError

__all__ = ["STREAM_FRAMES", "pcm16_bytes", "stream_pcm"]

log = logging.getLogger("socodec")

STREAM_FRAMES = 8
"""Token frames (120 ms each) fed per step: ~1 s of audio per write after a 140 ms look-ahead."""


def pcm16_bytes(wav: torch.Tensor) -> bytes:
    """``[n]`` float audio -> ``2 n`` bytes of signed 16-bit little-endian PCM."""
    pcm = (wav.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)
    return pcm.numpy().astype("<i2", copy=False).tobytes()


def stream_pcm(opts: ConvertOptions, out: BinaryIO | None = None) -> int:
    """Decode ``opts.inputs[0]`` (tokens or audio) to raw PCM on ``out`` (default stdout). Returns the exit status."""
    if len(opts.inputs) != 1:
        raise SoCodecError("'-' (raw PCM to stdout) takes exactly one input file")
    src = opts.inputs[0]
    if not src.is_file():
        raise SoCodecError(f"{src}: no such file")
    sink = out if out is not None else sys.stdout.buffer
    if out is None and sink.isatty():
        raise SoCodecError("refusing to write raw PCM to a terminal; pipe it into a player or a file")
    runner = Runner(opts)
    codes = load_codes(src) if is_token_file(src) else runner.encode(src)
    codes = runner.adjust(codes)
    runner.codec.check_codes(codes)
    written = 0
    try:
        for chunk in runner.codec.decode_stream(codes.tokens.split(STREAM_FRAMES), codes):
            sink.write(pcm16_bytes(chunk))
            sink.flush()
            written += chunk.numel()
    except BrokenPipeError:
        if out is None:  # keep the interpreter from complaining again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.error("%s: the output pipe was closed after %d samples", src, written)
        return 1
    log.info("%s: %d samples of raw 16-bit PCM at 16 kHz written to stdout", src, written)
    return 0
