"""Log-mel spectrogram front end (SPEC §2; BigVGAN style).

The speaker encoder consumes this log-mel, and it is the vocoder's input
domain. For a waveform of ``L`` samples (``L`` a multiple of the 160-sample
hop, as the codec always gives) it computes ``L / 160`` frames of 80 log-mel
bins:

1. reflect-pad ``(n_fft - hop) / 2 = 432`` samples on each side;
2. STFT, ``n_fft`` 1024, hop 160, periodic Hann window of 640 samples centred
   in the 1024-point frame, no further centring;
3. magnitude ``sqrt(re² + im² + 1e-9)``;
4. Slaney mel filterbank (the numbers of ``librosa.filters.mel`` with its
   defaults), natural ``log(max(mel, 1e-5))``;
5. keep the first ``ceil(L / 160)`` frames, layout ``[B, frames, n_mels]``.

Convention for other lengths (not used by the codec): a waveform whose length
is not a multiple of the hop is first right-padded with zeros to the next
multiple, so the output still has ``ceil(L / hop)`` frames (the codec pads
audio with zeros in the same way). The reflection needs the (hop-padded)
signal to be longer than the reflect padding (432 samples for the released
configuration); shorter inputs raise :class:`ValueError` instead of silently
changing the padding rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from socodec.config import MelConfig

__all__ = ["MelSpectrogram", "slaney_mel_filterbank", "hz_to_mel_slaney", "mel_to_hz_slaney"]

# Slaney's "Auditory Toolbox" mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels
_LOG_STEP = math.log(6.4) / 27.0  # mels per log-Hz above 1 kHz

MAG_EPS = 1e-9
LOG_CLAMP = 1e-5


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Hz → Slaney mels (float64, elementwise, any shape)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    with np.errstate(divide="ignore"):
        logpart = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-300) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, logpart, linear)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    """Slaney mels → Hz (float64, elementwise, any shape); inverse of :func:`hz_to_mel_slaney`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = _F_SP * mel
    logpart = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, logpart, linear)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> Tensor:
    """Triangular mel filterbank with Slaney mel scale and Slaney area normalisation.

    Gives the numbers of ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax)`` (``htk=False``, ``norm="slaney"``, float32 output),
    including its rounding: each triangle is computed in float64 and stored as
    float32, then scaled by the float64 area factor ``2 / (f[i+2] - f[i])``
    and stored as float32 again.

    Args:
        sr: sample rate in Hz.
        n_fft: FFT size; the filterbank covers ``n_fft // 2 + 1`` bins.
        n_mels: number of mel bands.
        fmin: lowest band edge in Hz.
        fmax: highest band edge in Hz (``None``: ``sr / 2``).

    Returns:
        float32 tensor [n_mels, n_fft // 2 + 1].
    """
    if fmax is None:
        fmax = sr / 2.0
    if n_mels < 1 or n_fft < 2 or not 0.0 <= fmin < fmax:
        raise ValueError(f"invalid mel filterbank parameters: n_mels={n_mels}, n_fft={n_fft}, fmin={fmin}, fmax={fmax}")
    fft_freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1, dtype=np.float64)
    mel_edges = np.linspace(hz_to_mel_slaney(np.float64(fmin)), hz_to_mel_slaney(np.float64(fmax)), n_mels + 2)
    hz_edges = mel_to_hz_slaney(mel_edges)  # [n_mels + 2]
    widths = np.diff(hz_edges)  # [n_mels + 1]
    ramps = hz_edges[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_bins]
    rising = -ramps[:-2] / widths[:-1, None]  # [n_mels, n_bins]
    falling = ramps[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (hz_edges[2:] - hz_edges[:-2])  # [n_mels]
    weights = (triangles.astype(np.float64) * area[:, None]).astype(np.float32)
    return torch.from_numpy(weights)


class MelSpectrogram(nn.Module):
    """Waveform → log-mel, SPEC §2.

    Window ([n_fft], the periodic Hann of ``win_length`` zero-padded to
    ``n_fft``, centred) and filterbank ([n_mels, n_fft // 2 + 1]) are
    non-persistent buffers built once: they are not part of any checkpoint.

    Args:
        config: mel parameters.
        chunk_frames: frames per STFT block. Frames are independent, so long
            inputs are transformed block by block (same numbers) and the
            complex spectrogram never exceeds [B, n_fft // 2 + 1, chunk_frames];
            an hour of audio would otherwise need ~1.5 GB for it alone.
    """

    def __init__(self, config: MelConfig, *, chunk_frames: int = 8192) -> None:
        super().__init__()
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
        self.chunk_frames = chunk_frames
        if config.win_length > config.n_fft or (config.n_fft - config.hop_length) % 2:
            raise ValueError(
                f"unsupported mel configuration: win_length {config.win_length}, "
                f"n_fft {config.n_fft}, hop {config.hop_length}"
            )
        self.config = config
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.n_mels = config.n_mels
        self.reflect_pad = (config.n_fft - config.hop_length) // 2
        window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float32)
        left = (config.n_fft - config.win_length) // 2
        window = F.pad(window, (left, config.n_fft - config.win_length - left))
        self.register_buffer("window", window, persistent=False)
        basis = slaney_mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
        self.register_buffer("mel_basis", basis, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples: ``(n - hop) // hop + 1`` (= n / hop on the grid).

        The STFT of the reflect-padded signal without centring; for a multiple of the hop this is
        ``n / hop``, otherwise the last partial hop gives no frame (the published arithmetic, SPEC §1).
        """
        return (num_samples + 2 * self.reflect_pad - self.n_fft) // self.hop_length + 1

    def forward(self, wav: Tensor) -> Tensor:
        """Compute the log-mel spectrogram.

        Args:
            wav: float waveform [B, L] (or [L]), 16 kHz, in [-1, 1].

        Returns:
            float32 log-mel [B, M, n_mels] ([M, n_mels] for 1-D input), M = :meth:`num_frames` (L / hop on the grid).

        Raises:
            ValueError: if the input is not 1-D/2-D, or too short for reflect
                padding (length <= ``(n_fft - hop) / 2``).
        """
        squeeze = wav.dim() == 1
        if squeeze:
            wav = wav.unsqueeze(0)
        if wav.dim() != 2:
            raise ValueError(f"MelSpectrogram expects a waveform [B, L] or [L], got shape {list(wav.shape)}")
        length = wav.shape[-1]
        if length <= self.reflect_pad:
            raise ValueError(
                f"waveform of {length} samples is too short for the mel front end "
                f"(needs more than {self.reflect_pad} samples for reflect padding)"
            )
        frames = self.num_frames(length)
        x = wav.to(torch.float32)
        x = F.pad(x.unsqueeze(1), (self.reflect_pad, self.reflect_pad), mode="reflect").squeeze(1)
        blocks = []
        for start in range(0, frames, self.chunk_frames):
            stop = min(start + self.chunk_frames, frames)
            segment = x[:, start * self.hop_length : (stop - 1) * self.hop_length + self.n_fft]
            blocks.append(self.log_mel(segment))
        logmel = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)
        logmel = logmel[..., :frames].transpose(1, 2).contiguous()
        return logmel.squeeze(0) if squeeze else logmel

    def log_mel(self, x: Tensor) -> Tensor:
        """Reflect-padded samples [B, (n - 1)·hop + n_fft] → log-mel [B, n_mels, n] (no centring)."""
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # [B, n_fft // 2 + 1, n]
        mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + MAG_EPS)
        mel = torch.matmul(self.mel_basis, mag)  # [B, n_mels, n]
        return torch.log(torch.clamp(mel, min=LOG_CLAMP))
