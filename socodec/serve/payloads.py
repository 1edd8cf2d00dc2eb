"""What travels over the wire: request bodies -> audio / :class:`Codes`, and back to bytes.

Every function here is plain and blocking (the app runs them on its model threads). Bodies
go through the same readers and writers as the command line (a body is written to a private
temporary file, read with :func:`~socodec.codes.load_codes` or encoded from its path), so a
route's answer is byte for byte what ``socodec IN OUT`` writes. Problems with a body are
:class:`BadRequest` (HTTP 422) with one line that never names a temporary path.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from socodec.audio import save_audio_stream
from socodec.codes import SOC_MAGIC, Codes, load_codes, save_codes
from socodec.config import SAMPLE_RATE
from socodec.errors import SoCodecError, one_line
from socodec.fileio import is_plain_int

if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec

__all__ = ["BadRequest", "StreamStart", "encode_body", "decode_body", "parse_codes", "codes_json",
           "parse_stream_start", "parse_frames", "pcm_bytes", "CODE_FORMATS", "AUDIO_FORMATS", "PCM_FORMATS"]

CODE_FORMATS = ("soc", "pt", "json")
AUDIO_FORMATS = ("wav", "flac")
PCM_FORMATS = ("s16le", "f32le")
MEDIA_TYPES = {"soc": "application/octet-stream", "pt": "application/octet-stream", "json": "application/json",
               "wav": "audio/wav", "flac": "audio/flac"}
_MAX_FRAMES_PER_MESSAGE = 10_000


class BadRequest(SoCodecError):
    """The request cannot be served as sent (HTTP 422, WebSocket close 1007)."""


def _scrubbed(exc: Exception, folder: Path) -> BadRequest:
    """``exc`` as a :class:`BadRequest` whose message names the body, not the temporary file."""
    text = one_line(exc)
    for name in sorted((str(p) for p in folder.iterdir()), key=len, reverse=True):
        text = text.replace(name, "body")
    return BadRequest(text.replace(str(folder), "body"))


# ---------------------------------------------------------------------- encode
def encode_body(codec: SoCodec, body: bytes, fmt: str, padding: str) -> bytes:
    """An audio file's bytes -> the token file (``soc``/``pt``) or JSON (``json``) of its codes."""
    if not body:
        raise BadRequest("empty body: send an audio file (wav, flac, ogg, ...)")
    with tempfile.TemporaryDirectory(prefix="socodec-serve-") as tmp:
        folder = Path(tmp)
        audio = folder / "input"
        audio.write_bytes(body)
        try:
            codes = codec.encode(audio, padding=padding)
        except SoCodecError as exc:
            raise _scrubbed(exc, folder) from None
        if fmt == "json":
            return json.dumps(codes_json(codes)).encode()
        out = save_codes(codes, folder / f"codes.{fmt}")
        return out.read_bytes()


def codes_json(codes: Codes) -> dict[str, Any]:
    """The JSON form of :class:`Codes`: tokens ``[[s1, .., sS], ...]``, speaker, length, lead, padding, and
    how HuBERT's attention saw the input (``attention``: ``full`` = the published tokens, or ``windowed``)."""
    return {"tokens": codes.tokens.tolist(), "speaker": codes.speaker.tolist(), "num_samples": codes.num_samples,
            "lead": codes.lead, "padding": codes.padding, "attention": codes.attention,
            "hubert_window": codes.hubert_window, "sample_rate": codes.sample_rate}


# ---------------------------------------------------------------------- decode
def parse_codes(body: bytes) -> Codes:
    """A ``.soc`` / ``.pt`` file's bytes or the JSON of :func:`codes_json` -> validated :class:`Codes`."""
    if not body:
        raise BadRequest("empty body: send a .soc or .pt token file, or the JSON of /v1/encode?format=json")
    if body.lstrip()[:1] == b"{":
        return _codes_from_json(body)
    suffix = ".soc" if body.startswith(SOC_MAGIC) else ".pt"
    with tempfile.TemporaryDirectory(prefix="socodec-serve-") as tmp:
        folder = Path(tmp)
        path = folder / f"codes{suffix}"
        path.write_bytes(body)
        try:
            return load_codes(path)
        except SoCodecError as exc:
            raise _scrubbed(exc, folder) from None


def _codes_from_json(body: bytes) -> Codes:
    obj = _json_object(body)
    tokens = _int_matrix(obj.get("tokens"), "tokens")
    speaker = _float_vector(obj.get("speaker"), "speaker")
    codes = Codes(tokens=tokens, speaker=speaker, sample_rate=obj.get("sample_rate", SAMPLE_RATE),
                  num_samples=obj.get("num_samples"), lead=obj.get("lead"), padding=obj.get("padding"),
                  attention=obj.get("attention"), hubert_window=obj.get("hubert_window"))
    try:
        return codes.validate()
    except SoCodecError as exc:
        raise BadRequest(one_line(exc)) from None


def decode_body(codec: SoCodec, codes: Codes, streams: int | None, fmt: str) -> tuple[bytes, float]:
    """Codes -> a ``wav``/``flac`` file's bytes (16-bit PCM, as the command line writes), and its seconds."""
    total = 0

    def pieces():
        nonlocal total
        for piece in codec.decode_iter(codes, streams=streams):
            total += piece.numel()
            yield piece

    with tempfile.TemporaryDirectory(prefix="socodec-serve-") as tmp:
        out = Path(tmp) / f"audio.{fmt}"
        try:
            save_audio_stream(out, pieces())
        except SoCodecError as exc:
            raise _scrubbed(exc, Path(tmp)) from None
        return out.read_bytes(), total / SAMPLE_RATE


# ---------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class StreamStart:
    """The first message of a ``/v1/stream`` session.

    Attributes:
        speaker: speaker vector ``[D]`` float32.
        streams: how many of the token streams to decode with (None: as many as the frames carry).
        sample_format: ``s16le`` (16-bit PCM, default) or ``f32le`` (float32) binary messages.
        lead: samples dropped at the start (8000 drops the published 0.5 s lead; default 0).
        num_samples: stop after this many samples (after the lead); None: no limit.
    """

    speaker: torch.Tensor
    streams: int | None = None
    sample_format: str = "s16le"
    lead: int = 0
    num_samples: int | None = None


def parse_stream_start(text: str | bytes, speaker_dim: int, max_streams: int) -> StreamStart:
    """The first WebSocket message -> :class:`StreamStart` (BadRequest on any problem)."""
    obj = _json_object(text)
    unknown = sorted(set(obj) - {"speaker", "streams", "sample_format", "lead", "num_samples"})
    if unknown:
        raise BadRequest(f"unknown field(s) in the first message: {', '.join(unknown)}")
    speaker = _float_vector(obj.get("speaker"), "speaker")
    if speaker.shape[0] != speaker_dim:
        raise BadRequest(f"speaker must hold {speaker_dim} values, got {speaker.shape[0]}")
    streams = obj.get("streams")
    if streams is not None and not (is_plain_int(streams) and 1 <= streams <= max_streams):
        raise BadRequest(f"streams must be an integer from 1 to {max_streams}, got {streams!r}"[:200])
    fmt = obj.get("sample_format", "s16le")
    if fmt not in PCM_FORMATS:
        raise BadRequest(f"sample_format must be one of {', '.join(PCM_FORMATS)}, got {fmt!r}"[:200])
    lead, num = obj.get("lead", 0), obj.get("num_samples")
    if not (is_plain_int(lead) and lead >= 0) or not (num is None or (is_plain_int(num) and num >= 0)):
        raise BadRequest("lead and num_samples must be non-negative integers")
    return StreamStart(speaker, streams, fmt, lead, num)


def parse_frames(text: str | bytes) -> torch.Tensor | None:
    """A ``{"tokens": [[..], ..]}`` message -> token frames ``[t, S]`` int64; ``{"end": true}`` -> None.

    Values and widths are checked by the synthesis stream (the same S in every message).
    """
    obj = _json_object(text)
    if obj.get("end") is True and set(obj) <= {"end", "tokens"} and not obj.get("tokens"):
        return None
    if set(obj) != {"tokens"}:
        raise BadRequest('a message must be {"tokens": [[...], ...]} or {"end": true}')
    tokens = _int_matrix(obj["tokens"], "tokens")
    if tokens.shape[0] > _MAX_FRAMES_PER_MESSAGE:
        raise BadRequest(f"at most {_MAX_FRAMES_PER_MESSAGE} frames per message, got {tokens.shape[0]}")
    return tokens


def pcm_bytes(audio: torch.Tensor, sample_format: str) -> bytes:
    """Audio ``[n]`` float32 -> little-endian ``f32le`` bytes, or ``s16le`` (clipped, scaled by 32767, rounded)."""
    arr = audio.detach().to("cpu", torch.float32).numpy().reshape(-1)
    if sample_format == "f32le":
        return arr.astype("<f4").tobytes()
    return np.round(np.clip(arr, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


# ---------------------------------------------------------------------- JSON checks
def _json_object(body: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON ({one_line(exc, 120)})") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _int_matrix(value: object, name: str) -> torch.Tensor:
    """A list of equal-length lists of integers -> ``[T, S]`` int64 (T may be 0)."""
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of frames [[s1, s2, s3, s4], ...]")
    if not value:
        return torch.zeros(0, 0, dtype=torch.int64)
    width = len(value[0]) if isinstance(value[0], list) else -1
    for row in value:
        if not isinstance(row, list) or len(row) != width or not all(is_plain_int(v) for v in row):
            raise BadRequest(f"{name} must be a list of frames of equally many integers")
    if width < 1:
        raise BadRequest(f"{name}: frames must hold at least one token")
    try:
        return torch.tensor(value, dtype=torch.int64)
    except (OverflowError, RuntimeError):
        raise BadRequest(f"{name}: token values out of range") from None


def _float_vector(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, list) or not value or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise BadRequest(f"{name} must be a non-empty list of numbers")
    if not all(math.isfinite(v) for v in value):
        raise BadRequest(f"{name} holds NaN or infinite values")
    return torch.tensor(value, dtype=torch.float32)
