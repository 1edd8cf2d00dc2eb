"""Audio file input/output, downmixing and resampling to the model rate.

Reading uses libsndfile (wav, flac, ogg, mp3, ... whatever the installed
libsndfile supports); resampling uses soxr (VHQ). Writing is atomic: the output
appears under its final name only once it is complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from socodec.config import SAMPLE_RATE
from socodec.errors import AudioError
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
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioError(f"{p}: not a readable audio file ({_one_line(exc)})") from None
    return data, int(sr)


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
        log.warning("%s: samples reach %.3g, outside [-1, 1]; the model expects [-1, 1] audio", name, peak)
    if sample_rate != SAMPLE_RATE:
        arr = soxr.resample(arr, sample_rate, SAMPLE_RATE, quality="VHQ").astype(np.float32, copy=False)
    return torch.from_numpy(arr)


def load_audio(path: str | Path) -> torch.Tensor:
    """Read any supported file and return 16 kHz mono float32 ``[N]``."""
    data, sr = read_audio(path)
    return to_model_input(data, sr, name=str(path))


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, sample_format: str = "pcm16") -> None:
    """Write mono ``[N]`` audio atomically as wav or flac.

    ``sample_format`` is ``pcm16`` (default, like the published tool), ``pcm24`` or
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

    def write(tmp: Path) -> None:
        sf.write(str(tmp), arr, sample_rate, format=fmt, subtype=subtype)

    try:
        atomic_write(p, write)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{p}: cannot write ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
