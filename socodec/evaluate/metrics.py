"""Per-file quality metrics between a reference and its resynthesis, both 16 kHz mono.

Every function takes two waveforms ``[N]`` (numpy or torch, float, in [-1, 1]) and
returns one float; NaN marks a value that cannot be measured for this pair (e.g. PESQ on
silence), never a crash. A reference with no signal (peak below :data:`SILENCE_PEAK`,
-60 dBFS) leaves every metric undefined (NaN). The two signals are first cut to their
common length (:func:`align`): ``SoCodec.decode`` returns exactly the input's length, so
normally nothing is cut; :func:`signal_metrics` reports how much was (``length_cut``).

===================  =====================================================  =========
name                 definition                                             better
===================  =====================================================  =========
``pesq``             wideband PESQ (ITU-T P.862.2), MOS-LQO 1.0-4.64        higher
``stoi``             STOI (Taal et al. 2011), 0-1                           higher
``estoi``            extended STOI (Jensen & Taal 2016), 0-1                higher
``mel_distance``     mean |log-mel(ref) - log-mel(deg)| (natural log, the   lower
                     codec's own 80-bin front end)
``si_sdr``           scale-invariant SDR in dB (Le Roux et al. 2019)        higher
``mrstft``           multi-resolution STFT distance: mean over FFT sizes    lower
                     512/1024/2048 of spectral convergence + mean |log
                     magnitude difference|
===================  =====================================================  =========

``pesq`` and ``pystoi`` (the ``[eval]`` extra) are imported when first used.

Means with 95 % confidence intervals over files.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np
import torch

from socodec.config import MelConfig, SAMPLE_RATE
from socodec.nn.mel import MelSpectrogram

__all__ = ["SIGNAL_METRICS", "HIGHER_IS_BETTER", "align", "pesq_wb", "stoi", "si_sdr", "mel_distance", "mrstft_distance", "cosine_similarity", "signal_metrics", "RANGES", "SILENCE_PEAK", "is_silent", "MEL_FRAME", "Summary", "summarise"]


log = logging.getLogger(__name__)
SIGNAL_METRICS = ("pesq", "stoi", "estoi", "mel_distance", "si_sdr", "mrstft")
"""The metrics :func:`signal_metrics` computes, in report order."""
HIGHER_IS_BETTER = {
    "pesq": True, "stoi": True, "estoi": True, "mel_distance": False, "si_sdr": True, "mrstft": False,
    "speaker_similarity": True, "dnsmos_sig": True, "dnsmos_bak": True, "dnsmos_ovrl": True,
    "original_dnsmos_ovrl": True, "resemblyzer_similarity": True, "wer": False,
}
RANGES = {
    "pesq": (0.999, 4.644), "stoi": (0.0, 1.0), "estoi": (0.0, 1.0), "mel_distance": (0.0, math.inf),
    "si_sdr": (-math.inf, math.inf), "mrstft": (0.0, math.inf), "speaker_similarity": (-1.0, 1.0),
    "dnsmos_sig": (1.0, 5.0), "dnsmos_bak": (1.0, 5.0), "dnsmos_ovrl": (1.0, 5.0), "original_dnsmos_ovrl": (1.0, 5.0),
    "resemblyzer_similarity": (-1.0, 1.0), "wer": (0.0, math.inf),
}
"""Each metric's possible values: confidence intervals are clipped to them and plots use them."""
SILENCE_PEAK = 1e-3
"""Peak amplitude (-60 dBFS) below which a waveform counts as silence: reference metrics are undefined."""
MEL_FRAME = 160
"""Samples per log-mel frame (10 ms): the unit of ``length_cut``."""
# (n_fft, hop) pairs of the multi-resolution STFT distance; Hann windows of n_fft samples.
MRSTFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))
_MAG_FLOOR = 1e-7
_SDR_EPS = 1e-12
# pystoi needs 30 frames of 25.6 ms (hop 12.8 ms) at 10 kHz after dropping silent frames.
_STOI_MIN_SAMPLES = int(0.4 * SAMPLE_RATE)


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[N]`` float64 numpy copy of a waveform."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {list(arr.shape)}")
    return arr


def align(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Both waveforms as float64 ``[M]``, cut to their common length ``M = min(len)``."""
    r, d = _as_numpy(ref), _as_numpy(deg)
    if r.shape[0] != d.shape[0]:
        log.debug("lengths differ (%d vs %d samples); comparing the first %d", r.shape[0], d.shape[0],
                  min(r.shape[0], d.shape[0]))
        n = min(r.shape[0], d.shape[0])
        r, d = r[:n], d[:n]
    return r, d


def pesq_wb(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor) -> float:
    """Wideband PESQ (MOS-LQO) of ``deg`` against ``ref``; NaN for silence, or when PESQ finds no speech."""
    from pesq import PesqError, pesq

    r, d = align(ref, deg)
    if not np.any(r) or not np.any(d):
        return math.nan  # PESQ normalises by the peak: undefined for silence
    try:
        return float(pesq(SAMPLE_RATE, r, d, "wb"))
    except PesqError as exc:
        log.debug("PESQ not measurable: %s", exc)
        return math.nan


def stoi(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor, extended: bool = False) -> float:
    """(Extended) STOI of ``deg`` against ``ref``; NaN for silence or speech too short to measure (< ~0.4 s)."""
    from pystoi import stoi as _stoi

    r, d = align(ref, deg)
    if r.shape[0] < _STOI_MIN_SAMPLES or not np.any(r):
        return math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(r, d, SAMPLE_RATE, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return math.nan
    return value


def si_sdr(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor) -> float:
    """Scale-invariant SDR in dB: ``10 log10(|a r|² / |a r - d|²)``, ``a = <d, r> / |r|²``, both zero-mean.

    Identical signals give a large finite value (~+100 dB and up); a silent reference gives NaN.
    """
    r, d = align(ref, deg)
    r = r - r.mean()
    d = d - d.mean()
    energy = float(np.dot(r, r))
    if energy <= _SDR_EPS:
        return math.nan
    target = (float(np.dot(d, r)) / energy) * r
    noise = d - target
    return float(10.0 * np.log10((np.dot(target, target) + _SDR_EPS) / (np.dot(noise, noise) + _SDR_EPS)))


@lru_cache(maxsize=1)
def _mel_front_end() -> MelSpectrogram:
    return MelSpectrogram(MelConfig())


def log_mel(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    """The codec's log-mel front end: ``[N]`` waveform -> ``[ceil(N / 160), 80]`` float32 (natural log)."""
    x = torch.from_numpy(_as_numpy(wav).astype(np.float32))
    with torch.inference_mode():
        return _mel_front_end()(x).numpy()


def mel_distance(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor) -> float:
    """Mean absolute log-mel difference (natural log, 80 bins, 10 ms hop); NaN below ~30 ms of audio."""
    r, d = align(ref, deg)
    try:
        return float(np.mean(np.abs(log_mel(r) - log_mel(d))))
    except ValueError as exc:  # too short for the front end's reflect padding
        log.debug("mel distance not measurable: %s", exc)
        return math.nan


def mrstft_distance(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor) -> float:
    """Multi-resolution STFT distance (see the module table); NaN for a silent or too short reference."""
    r, d = align(ref, deg)
    x = torch.from_numpy(np.stack([r, d]).astype(np.float32))  # [2, M]
    total = []
    for n_fft, hop in MRSTFT_RESOLUTIONS:
        if x.shape[1] <= n_fft // 2:
            return math.nan  # reflect padding needs more samples
        spec = torch.stft(x, n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True)
        mag = spec.abs()  # [2, F, frames]
        ref_norm = float(torch.linalg.norm(mag[0]))
        if ref_norm <= _MAG_FLOOR:
            return math.nan
        convergence = float(torch.linalg.norm(mag[0] - mag[1])) / ref_norm
        log_mag = mag.clamp_min(_MAG_FLOOR).log()
        log_diff = float((log_mag[0] - log_mag[1]).abs().mean())
        total.append(convergence + log_diff)
    return float(np.mean(total))


def cosine_similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Cosine similarity of two vectors ``[D]`` (the speaker vectors); NaN if either is zero."""
    x, y = _as_numpy(a), _as_numpy(b)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(np.dot(x, y) / norm) if norm > 0 else math.nan


def is_silent(wav: np.ndarray | torch.Tensor) -> bool:
    """True when the waveform ``[N]`` is empty or its peak is below :data:`SILENCE_PEAK`."""
    x = _as_numpy(wav)
    return x.size == 0 or float(np.max(np.abs(x))) < SILENCE_PEAK


def signal_metrics(ref: np.ndarray | torch.Tensor, deg: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Every metric of :data:`SIGNAL_METRICS` for one pair of waveforms ``[N]``, and ``length_cut``:
    the 10 ms frames cut off the longer one. All metrics are NaN for a silent reference."""
    cut = abs(_as_numpy(ref).shape[0] - _as_numpy(deg).shape[0]) / MEL_FRAME
    r, d = align(ref, deg)
    if is_silent(r):
        return {**dict.fromkeys(SIGNAL_METRICS, math.nan), "length_cut": cut}
    return {
        "length_cut": cut,
        "pesq": pesq_wb(r, d),
        "stoi": stoi(r, d),
        "estoi": stoi(r, d, extended=True),
        "mel_distance": mel_distance(r, d),
        "si_sdr": si_sdr(r, d),
        "mrstft": mrstft_distance(r, d),
    }


@dataclass(frozen=True)
class Summary:
    """Mean of the measurable values and its 95 % confidence interval (Student's t).

    Attributes:
        mean: mean over the ``n`` finite values (NaN when there are none).
        low, high: the interval ``mean -/+ t(0.975, n-1) * sd / sqrt(n)``; NaN when ``n < 2``.
        n: how many files had a finite value (NaN values, e.g. PESQ on silence, are left out).
    """

    mean: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int | None]:
        """JSON-safe dict: NaN becomes None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in {"mean": self.mean, "ci95_low": self.low, "ci95_high": self.high, "n": self.n}.items()}

    @property
    def half_width(self) -> float:
        """Half the interval's width (the interval may be asymmetric once clipped to the metric's range)."""
        return (self.high - self.low) / 2


def summarise(values: Iterable[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> Summary:
    """Mean and 95 % confidence interval of the finite ``values``, the interval clipped to ``bounds``
    (the metric's possible values: an interval never claims an impossible score)."""
    from scipy.stats import t

    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, n)
    half = float(t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Summary(mean, min(max(mean - half, bounds[0]), mean), max(min(mean + half, bounds[1]), mean), n)
