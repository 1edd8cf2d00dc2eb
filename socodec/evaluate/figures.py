"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) as PNG bytes."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from socodec.evaluate.metrics import log_mel

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from socodec.evaluate.run import Example
    from socodec.evaluate.stats import Summary

__all__ = ["rate_quality_png", "spectrogram_png", "CURVE_METRICS"]

CURVE_METRICS = (
    ("pesq", "PESQ (wideband)"),
    ("stoi", "STOI"),
    ("mel_distance", "log-mel distance"),
    ("speaker_similarity", "speaker cosine similarity"),
)
_DPI = 100
_MEL_HOP_SECONDS = 0.01


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def rate_quality_png(summaries: dict[int, dict[str, Summary]]) -> bytes:
    """Quality against token bitrate over the stream counts, one panel per metric, 95 % CI bars.

    Args:
        summaries: ``summaries[k][metric]`` for each stream count ``k`` (``token_bitrate`` included).
    """
    from matplotlib.figure import Figure

    streams = sorted(summaries)
    rates = [summaries[k]["token_bitrate"].mean for k in streams]
    fig = Figure(figsize=(10, 6.4), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (name, label) in zip(axes, CURVE_METRICS):
        means = np.array([summaries[k][name].mean for k in streams])
        errs = np.array([summaries[k][name].half_width for k in streams])
        errs = np.where(np.isfinite(errs), errs, 0.0)
        ax.errorbar(rates, means, yerr=errs, marker="o", capsize=4, color="#1f5fa8")
        for k, x, y in zip(streams, rates, means):
            if math.isfinite(y):
                ax.annotate(f"{k} stream{'s' if k > 1 else ''}", (x, y), textcoords="offset points",
                            xytext=(6, 6), fontsize=8, color="#444")
        ax.margins(x=0.18, y=0.15)
        ax.set_title(label)
        ax.set_xlabel("token bitrate (bit/s)")
        ax.grid(alpha=0.3)
    fig.suptitle("Rate-quality curve (means over files, 95 % confidence intervals)")
    return _png(fig)


def spectrogram_png(example: Example) -> bytes:
    """Log-mel of the original and of each resynthesis side by side with their difference.

    One row per stream count: original | resynthesis | resynthesis - original (natural log units).
    """
    from matplotlib.figure import Figure

    ref = log_mel(example.reference)  # [frames, 80]
    streams = sorted(example.resyntheses)
    rows = len(streams)
    fig = Figure(figsize=(12, 1.9 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 3, sharex=True, sharey=True))
    lo, hi = float(np.percentile(ref, 1)), float(ref.max())
    extent = (0.0, ref.shape[0] * _MEL_HOP_SECONDS, 0, ref.shape[1])
    for row, k in enumerate(streams):
        deg = log_mel(example.resyntheses[k])
        n = min(ref.shape[0], deg.shape[0])
        diff = deg[:n] - ref[:n]
        panels = (
            (ref, "original", "magma", lo, hi),
            (deg, f"resynthesis, {k} stream{'s' if k > 1 else ''}", "magma", lo, hi),
            (diff, "difference (resynthesis - original)", "RdBu_r", -4.0, 4.0),
        )
        for col, (data, title, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[row, col]
            image = ax.imshow(data.T, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                              extent=extent, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel("mel bin")
            if row == rows - 1:
                ax.set_xlabel("time (s)")
        if row == 0:
            fig.colorbar(image, ax=axes[:, 2], shrink=0.8, label="log-mel difference")
    return _png(fig)
