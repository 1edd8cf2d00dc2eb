"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) as PNG bytes."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from socodec.evaluate.metrics import RANGES, log_mel

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from socodec.evaluate.run import Example
    from socodec.evaluate.stats import Summary

__all__ = ["rate_quality_png", "spectrogram_png", "CURVE_METRICS"]

CURVE_METRICS = (
    ("pesq", "PESQ (wideband)"),
    ("stoi", "STOI"),
    ("mel_distance", "log-mel distance (lower is better)"),
    ("dnsmos_ovrl", "DNSMOS OVRL"),
    ("resemblyzer_similarity", "speaker similarity (Resemblyzer)"),
    ("wer", "WER (pocketsphinx, lower is better)"),
)
_DPI = 100
_JPEG_QUALITY = 80
_MEL_HOP_SECONDS = 0.01


def _image(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG (line art) or JPEG (``fmt="jpeg"``: spectrograms, a fraction of the PNG's size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": _JPEG_QUALITY, "optimize": True}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=_DPI, **extra)
    return buf.getvalue()


def _y_limits(name: str, lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:
    """The metric's whole range where it is bounded; from its bound to the data (plus a margin) otherwise."""
    lo, hi = RANGES.get(name, (-math.inf, math.inf))
    seen = np.concatenate([lows, highs])
    seen = seen[np.isfinite(seen)]
    top = float(seen.max()) if seen.size else 1.0
    bottom = float(seen.min()) if seen.size else 0.0
    lo = lo if math.isfinite(lo) else bottom - 0.1 * max(top - bottom, 1e-3)
    hi = hi if math.isfinite(hi) else top + 0.15 * max(top - lo, 1e-3)
    return lo, hi


def rate_quality_png(summaries: dict[int, dict[str, Summary]]) -> bytes:
    """Quality against token bitrate over the stream counts, one panel per metric, 95 % CI bars.

    Each panel's y axis spans the metric's possible range (:data:`~socodec.evaluate.metrics.RANGES`),
    so that noise never looks like a trend; panels of metrics with no value are marked "not measured".

    Args:
        summaries: ``summaries[k][metric]`` for each stream count ``k`` (``token_bitrate`` included).
    """
    from matplotlib.figure import Figure

    streams = sorted(summaries)
    rates = [summaries[k]["token_bitrate"].mean for k in streams]
    fig = Figure(figsize=(13.4, 6.8), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    x_lo, x_hi = min(rates), max(rates)
    x_pad = max(0.15 * (x_hi - x_lo), 20.0)
    for ax, (name, label) in zip(axes, CURVE_METRICS):
        means = np.array([summaries[k][name].mean for k in streams])
        lows = np.array([summaries[k][name].low for k in streams])
        highs = np.array([summaries[k][name].high for k in streams])
        below = np.where(np.isfinite(lows), np.maximum(means - lows, 0.0), 0.0)  # clipped: asymmetric
        above = np.where(np.isfinite(highs), np.maximum(highs - means, 0.0), 0.0)
        ax.errorbar(rates, means, yerr=np.stack([below, above]), marker="o", capsize=4, color="#1f5fa8")
        ax.set_ylim(*_y_limits(name, np.concatenate([lows, means]), np.concatenate([highs, means])))
        for i, (k, x, y) in enumerate(zip(streams, rates, means)):
            if math.isfinite(y):
                right = x > (x_lo + x_hi) / 2  # labels of the right half point left: never cut at the edge
                ax.annotate(f"{k} stream{'s' if k > 1 else ''}", (x, y), textcoords="offset points",
                            xytext=(-6 if right else 6, 7 if i % 2 == 0 else -14),  # alternate: no overlap
                            ha="right" if right else "left", fontsize=8, color="#444")
        if not np.isfinite(means).any():
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="#888")
        ax.set_xlim(x_lo - x_pad, x_hi + x_pad)
        ax.set_title(label)
        ax.set_xlabel("token bitrate (bit/s)")
        ax.grid(alpha=0.3)
    fig.suptitle("Rate-quality curve (means over files, 95 % confidence intervals)")
    return _image(fig)


def spectrogram_png(example: Example) -> bytes:
    """Log-mel of the original (once, top left), then one row per stream count: resynthesis | difference.

    Returned as JPEG bytes (natural log units; the difference is resynthesis - original).
    """
    from matplotlib.figure import Figure

    ref = log_mel(example.reference)  # [frames, 80]
    streams = sorted(example.resyntheses)
    rows = len(streams) + 1
    fig = Figure(figsize=(12, 1.7 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 2, sharex=True, sharey=True))
    lo, hi = float(np.percentile(ref, 1)), float(ref.max())
    extent = (0.0, ref.shape[0] * _MEL_HOP_SECONDS, 0, ref.shape[1])

    def show(ax, data, title, cmap, vmin, vmax):
        image = ax.imshow(data.T, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                          extent=extent, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        return image

    show(axes[0, 0], ref, "original", "magma", lo, hi)
    axes[0, 0].set_ylabel("mel bin")
    axes[0, 1].set_axis_off()
    image = None
    for row, k in enumerate(streams, start=1):
        deg = log_mel(example.resyntheses[k])
        n = min(ref.shape[0], deg.shape[0])
        show(axes[row, 0], deg, f"resynthesis, {k} stream{'s' if k > 1 else ''}", "magma", lo, hi)
        image = show(axes[row, 1], deg[:n] - ref[:n], "difference (resynthesis - original)", "RdBu_r", -4.0, 4.0)
        axes[row, 0].set_ylabel("mel bin")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    if image is not None:
        fig.colorbar(image, ax=axes[1:, 1], shrink=0.8, label="log-mel difference")
    return _image(fig, "jpeg")
