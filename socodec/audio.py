"""Audio file input/output, downmixing and resampling to the model rate.

Reading uses libsndfile (wav, flac, ogg, mp3, ... whatever the installed
libsndfile supports); resampling uses soxr (VHQ). Writing is atomic: the output
appears under its final name only once it is complete.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from socodec.config import SAMPLE_RATE
from socodec.errors import AudioError, one_line
from socodec.fileio import atomic_write

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")
WRITE_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}
SAMPLE_FORMATS = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a file as float32 ``[N, C]`` plus its sample rate.

    Raises :class:`AudioError` with one line naming the file for anything that is
    not a readable audio file.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, expected an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file")
    try:
        tag, announced, present = _wav_layout(p) or (None, None, 0)
    except OSError as exc:
        raise AudioError(f"{p}: cannot read ({_one_line(exc)})") from None
    if announced is not None and announced not in _UNKNOWN_SIZE and present < announced:
        raise AudioError(f"{p}: truncated wav file: the header announces {announced} bytes of audio, "
                         f"only {present} are present")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        if tag is not None and tag not in _WAV_TAGS:
            raise AudioError(f"{p}: unsupported wav codec (format tag 0x{tag:04x}; readable: "
                             f"{', '.join(_WAV_TAGS.values())})") from None
        detail = exc.error_string if isinstance(exc, sf.LibsndfileError) else _one_line(exc)
        raise AudioError(f"{p}: not a readable audio file ({detail})") from None
    return data, int(sr)


_WAV_TAGS = {1: "PCM", 2: "MS ADPCM", 3: "float", 6: "A-law", 7: "u-law", 0x11: "IMA ADPCM", 0x31: "GSM 6.10",
             0xFFFE: "extensible"}
_UNKNOWN_SIZE = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset


def _wav_layout(path: Path) -> tuple[int | None, int | None, int] | None:
    """``(format tag, data bytes announced, data bytes present)`` of a RIFF/WAVE file, None for other files.

    Only chunk headers are read (at most 64 chunks); a missing ``fmt``/``data`` chunk gives None fields.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        tag, pos = None, 12
        for _ in range(64):
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                break
            cid, clen = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt " and clen >= 2:
                tag = int.from_bytes(f.read(2), "little")
            if cid == b"data":
                return tag, clen, size - pos - 8
            pos += 8 + clen + (clen & 1)
    return tag, None, 0


def to_model_input(data: np.ndarray | torch.Tensor, sample_rate: int, name: str = "input") -> torch.Tensor:
    """Downmix and resample to 16 kHz mono float32.

    Args:
        data: ``[N]`` mono or ``[N, C]`` samples (soundfile layout).
        sample_rate: rate of ``data`` in Hz.
        name: used in error messages.
    Returns:
        ``[N']`` float32 tensor at 16 kHz.
    """
    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if arr.ndim == 2:
        arr = arr.mean(axis=1) if arr.shape[1] > 1 else arr[:, 0]
    elif arr.ndim != 1:
        raise AudioError(f"{name}: expected [samples] or [samples, channels] audio, got shape {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate}")
    if arr.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if not np.isfinite(arr).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    peak = float(np.abs(arr).max())
    if peak > 1.0:
        log.warning("%s: samples reach %.3g, outside [-1, 1]; the model expects [-1, 1] audio", name, peak,
                    extra={"socodec_range_warning": True})
    if sample_rate != SAMPLE_RATE:
        arr = soxr.resample(arr, sample_rate, SAMPLE_RATE, quality="VHQ").astype(np.float32, copy=False)
    return torch.from_numpy(arr)


def load_audio(path: str | Path) -> torch.Tensor:
    """Read any supported file and return 16 kHz mono float32 ``[N]``."""
    data, sr = read_audio(path)
    return to_model_input(data, sr, name=str(path))


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, sample_format: str = "pcm16") -> None:
    """Write mono ``[N]`` audio atomically as wav or flac.

    ``sample_format`` is ``pcm16`` (default), ``pcm24`` or
    ``float`` (wav only). Samples are clipped to [-1, 1] for PCM formats.
    """
    p = Path(path)
    fmt = WRITE_SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise AudioError(f"{p}: cannot write audio with suffix '{p.suffix}' (use .wav or .flac)")
    subtype = SAMPLE_FORMATS.get(sample_format)
    if subtype is None:
        raise AudioError(f"unknown sample format '{sample_format}' (choose from {', '.join(SAMPLE_FORMATS)})")
    if fmt == "FLAC" and subtype == "FLOAT":
        raise AudioError(f"{p}: flac cannot hold float samples; use pcm16 or pcm24")
    arr = wav.detach().to("cpu", torch.float32).numpy().reshape(-1)
    if subtype != "FLOAT":
        arr = np.clip(arr, -1.0, 1.0)

    try:
        buf = io.BytesIO()  # encode in memory: a failing disk then raises the real OSError (ENOSPC, ...)
        sf.write(buf, arr, sample_rate, format=fmt, subtype=subtype)
        data = buf.getvalue()
        atomic_write(p, lambda tmp: tmp.write_bytes(data))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{p}: cannot write ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return one_line(exc)
