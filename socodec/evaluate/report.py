"""One self-contained ``report.html``: figures as base64 PNG, audio as base64 FLAC, no external requests.

The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) as PNG bytes.

``metrics.csv`` (one row per file and stream count) and ``metrics.json`` (means with 95 % CIs).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from socodec import __version__
from socodec.config import SAMPLE_RATE
from socodec.evaluate.metrics import HIGHER_IS_BETTER, RANGES, Summary, log_mel, summarise
from socodec.evaluate.run import EvalRun, FileResult, ROW_METRICS, worst_key
from socodec.fileio import atomic_write

__all__ = ["report_html", "write_report", "TABLE_ROWS", "rate_quality_png", "spectrogram_png", "CURVE_METRICS", "CSV_COLUMNS", "DEFINITIONS", "summaries", "models", "wer_definition", "csv_text", "json_document", "table_texts", "write_tables"]


TABLE_ROWS = 200  # the per-file table lists at most this many of the worst files (the CSV has all)
_COLUMNS = (
    ("token_bitrate", "tokens bit/s", 1),
    ("bitrate", "with speaker bit/s", 1),
    ("pesq", "PESQ", 3),
    ("stoi", "STOI", 3),
    ("estoi", "ESTOI", 3),
    ("mel_distance", "log-mel dist.", 3),
    ("si_sdr", "SI-SDR dB", 2),
    ("mrstft", "MR-STFT dist.", 3),
    ("dnsmos_ovrl", "DNSMOS OVRL", 2),
    ("dnsmos_sig", "DNSMOS SIG", 2),
    ("dnsmos_bak", "DNSMOS BAK", 2),
    ("resemblyzer_similarity", "speaker sim. (Resemblyzer)", 3),
    ("wer", "WER", 3),
    ("speaker_similarity", "speaker sim. (codec's own encoder)", 3),
)
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; font-size: 15px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f4f7; } td.name { text-align: left; font-family: monospace; }
.meta { color: #555; } .players { display: flex; flex-wrap: wrap; gap: 1em; }
.players figure { margin: 0; } .players figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; } .err { color: #a00; font-family: monospace; }
"""


def _fmt(value: float, digits: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_summary(s: Summary, digits: int) -> str:
    if not math.isfinite(s.mean):
        return "–"
    text = f"{s.mean:.{digits}f}"
    return text + (f" ± {s.half_width:.{digits}f}" if math.isfinite(s.half_width) else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _img_tag(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _audio_tag(wav: np.ndarray) -> str:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<audio controls preload="none" src="data:audio/flac;base64,{data}"></audio>'


def _means_table(run: EvalRun) -> str:
    table = summaries(run)
    head = "".join(f"<th>{label}</th>" for _, label, _ in _COLUMNS)
    rows = []
    for k in run.config.streams:
        cells = "".join(f"<td>{_fmt_summary(table[k][name], d)}</td>" for name, _, d in _COLUMNS)
        rows.append(f"<tr><th>{k}</th>{cells}</tr>")
    files = len(run.results)
    top = table[max(run.config.streams)]
    undefined = "".join(f"<td>{files - top[name].n or ''}</td>" for name, _, _ in _COLUMNS)
    rows.append(f"<tr><th title='files whose value is undefined (e.g. silent input), left out of the means'>"
                f"undefined</th>{undefined}</tr>")
    original = top["original_dnsmos_ovrl"]
    note = (f"<p>DNSMOS OVRL of the originals: {_fmt_summary(original, 2)} (the ceiling for the resyntheses).</p>"
            if original.n else "")
    return f"<table><tr><th>streams</th>{head}</tr>{''.join(rows)}</table>{note}"


def _file_table(results: list[FileResult], k: int) -> str:
    head = "".join(f"<th>{label}</th>" for name, label, _ in _COLUMNS if name != "token_bitrate")
    rows = []
    for r in results[:TABLE_ROWS]:
        cells = "".join(f"<td>{_fmt(r.rows[k][name], d)}</td>" for name, _, d in _COLUMNS if name != "token_bitrate")
        cut = r.rows[k].get("length_cut", 0.0)
        cut_cell = f"{cut:.0f}" if math.isfinite(cut) and cut > 1 else ""
        rows.append(f'<tr><td class="name">{html.escape(r.item.id)}</td><td>{r.duration:.2f}</td>{cells}'
                    f"<td>{cut_cell}</td></tr>")
    return (f"<table><tr><th>file</th><th>seconds</th>{head}"
            f"<th title='10 ms frames cut off the longer signal before measuring'>frames cut</th></tr>"
            f"{''.join(rows)}</table>")


def _examples(run: EvalRun) -> str:
    clip = run.config.clip_seconds
    parts = [f"<p>The {len(run.examples)} worst files (lowest PESQ with {max(run.config.streams)} streams) "
             f"with their audio: the first {clip:g} s of each, as 16-bit FLAC. The other files' numbers are in "
             "the table below and in <code>metrics.csv</code>.</p>"]
    for example in run.examples:
        r = example.result
        top = r.rows[max(r.rows)]
        players = [f"<figure><figcaption>original</figcaption>{_audio_tag(example.reference)}</figure>"]
        for k, wav in sorted(example.resyntheses.items()):
            row = r.rows[k]
            caption = f"{k} stream{'s' if k > 1 else ''}, {row['token_bitrate']:.0f} bit/s, PESQ {_fmt(row['pesq'], 2)}"
            players.append(f"<figure><figcaption>{caption}</figcaption>{_audio_tag(wav)}</figure>")
        parts.append(
            f"<h3>{html.escape(r.item.id)}</h3>"
            f"<p class='meta'>{r.duration:.2f} s; with {max(r.rows)} streams: PESQ {_fmt(top['pesq'], 2)}, "
            f"STOI {_fmt(top['stoi'], 3)}, speaker similarity {_fmt(top['speaker_similarity'], 3)}</p>"
            f"<div class='players'>{''.join(players)}</div>"
            f"{_img_tag(spectrogram_png(example), 'log-mel spectrograms of ' + r.item.id, 'image/jpeg')}"
        )
    return "".join(parts)


def _left_out(run: EvalRun) -> str:
    from socodec.evaluate.independent import GROUPS

    absent = [name for group, (names, _, _) in GROUPS.items() if group not in run.config.independent for name in names]
    return (f"<p class='meta'>Not measured in this run (their packages are not installed): {', '.join(absent)}; "
            "<code>pip install 'socodec[eval]'</code> adds them.</p>" if absent else "")


def report_html(run: EvalRun) -> str:
    """The whole report as one HTML document (nothing outside it is referenced)."""
    k_max = max(run.config.streams)
    worst = sorted(run.results, key=worst_key)
    seconds = sum(r.duration for r in run.results)
    model = ", ".join(f"{k} {v}" for k, v in sorted(run.model.items())) or "unknown"
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    errors = "".join(f"<li class='err'>{html.escape(e)}</li>" for e in run.errors)
    computed_by = models(run)
    definitions = "".join(
        f"<li><b>{html.escape(n)}</b>: {html.escape(wer_definition(run) if n == 'wer' else d)}"
        + (f"; computed by {html.escape(computed_by[n])}" if n in computed_by else "") + "</li>"
        for n, d in DEFINITIONS.items())
    shown = "" if len(worst) <= TABLE_ROWS else f" (the {TABLE_ROWS} worst of {len(worst)}; all in metrics.csv)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>socodec evaluation report</title>
<style>{_STYLE}</style></head><body>
<h1>socodec evaluation report</h1>
<p class="meta">{len(run.results)} files ({_duration(seconds)} of audio), {len(run.errors)} failed{
" (listed below)" if run.errors else ""};
decoded with {", ".join(map(str, run.config.streams))} streams. socodec {__version__}; model {html.escape(model)};
{html.escape(when)}.</p>
<h2>Rate-quality curve</h2>
{_img_tag(rate_quality_png(summaries(run)), "rate-quality curve")}
<h2>Means over files</h2>
<p>Mean ± half-width of the 95 % confidence interval over files (intervals are clipped to each metric's range).
Undefined values (e.g. on silent input) are left empty, left out of the means and counted in the last row.</p>
{_means_table(run)}
<h2>Worst files</h2>
{_examples(run)}
<h2>All files, worst first, with {k_max} streams{shown}</h2>
{_file_table(worst, k_max)}
{f"<h2>Failed inputs</h2><ul>{errors}</ul>" if errors else ""}
<h2>Metrics</h2><ul>{definitions}</ul>
{_left_out(run)}
</body></html>
"""


def write_report(run: EvalRun, folder: Path) -> Path:
    """Write ``folder/report.html`` atomically; returns its path."""
    text = report_html(run)
    return atomic_write(folder / "report.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))


if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from socodec.evaluate.run import Example
    from socodec.evaluate.metrics import Summary
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


CSV_COLUMNS = ("id", "path", "offset", "duration", "streams", *ROW_METRICS)
DEFINITIONS = {
    "token_bitrate": "bit/s of the kept token streams (14 bits per token, one frame per 120 ms)",
    "bitrate": "token_bitrate + the speaker vector's bits spread over the file's duration",
    "pesq": "wideband PESQ (ITU-T P.862.2) MOS-LQO, 1.04-4.64",
    "stoi": "short-time objective intelligibility, 0-1",
    "estoi": "extended STOI, 0-1",
    "mel_distance": "mean |log-mel difference|, natural log, the codec's 80-bin front end",
    "si_sdr": "scale-invariant signal-to-distortion ratio, dB",
    "mrstft": "multi-resolution STFT distance (FFT 512/1024/2048: spectral convergence + log-magnitude L1)",
    "speaker_similarity": "the codec's own speaker encoder (not independent): cosine similarity of the speaker "
                          "vectors of the original and the re-encoded resynthesis",
    "dnsmos_sig": "DNSMOS P.835 speech-signal quality of the resynthesis (non-intrusive), 1-5",
    "dnsmos_bak": "DNSMOS P.835 background-noise quality of the resynthesis, 1-5",
    "dnsmos_ovrl": "DNSMOS P.835 overall quality of the resynthesis, 1-5",
    "original_dnsmos_ovrl": "DNSMOS P.835 overall quality of the original (the ceiling for dnsmos_ovrl), 1-5",
    "resemblyzer_similarity": "cosine similarity of independent Resemblyzer speaker embeddings of the original and "
                              "the resynthesis, -1..1",
    "wer": "word error rate of the pocketsphinx recognition of the resynthesis (English), 0 = perfect",
    "length_cut": "10 ms frames cut off the longer of original and resynthesis before measuring (normally 0)",
}


def wer_definition(run: EvalRun) -> str:
    """The WER's definition for this run, naming its reference."""
    return f"{DEFINITIONS['wer']}, against {run.config.wer_reference}"


def models(run: EvalRun) -> dict[str, str]:
    """metric -> the model and version that computed it (the independent metrics this run measured)."""
    from socodec.evaluate.independent import versions

    return versions(run.config.independent)


def summaries(run: EvalRun) -> dict[int, dict[str, Summary]]:
    """``summaries[k][metric]``: mean and 95 % CI over the files, for each stream count ``k``."""
    return {k: {name: summarise((r.rows[k][name] for r in run.results), RANGES.get(name, (-math.inf, math.inf)))
                for name in ROW_METRICS}
            for k in run.config.streams}


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def csv_text(run: EvalRun) -> str:
    """The CSV: a header, then one row per file and stream count (files in input order; NaN -> empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in run.results:
        item = result.item
        for k in run.config.streams:
            base = [item.id, str(item.path), item.offset, result.duration, k]
            writer.writerow([_cell(v) for v in base + [result.rows[k][name] for name in ROW_METRICS]])
    return buf.getvalue()


def json_document(run: EvalRun) -> dict:
    """What ``metrics.json`` holds: counts, model identity, definitions and the means per stream count."""
    table = summaries(run)
    return {
        "socodec_version": __version__,
        "model": run.model,
        "files": len(run.results),
        "failed": len(run.errors),
        "errors": run.errors,
        "audio_seconds": sum(r.duration for r in run.results),
        "streams": list(run.config.streams),
        "lead": run.config.lead,
        "padding": run.config.padding,
        "confidence": "95 % Student-t interval of the mean over files, clipped to the metric's range; n counts the files "
                      "with a finite value (undefined values, e.g. on silent input, are left out of the means)",
        "higher_is_better": HIGHER_IS_BETTER,
        "definitions": {**DEFINITIONS, "wer": wer_definition(run)},
        "models": models(run),
        "wer_reference": run.config.wer_reference if "wer" in run.config.independent else None,
        "results": [
            {"streams": k, **{name: table[k][name].to_json() for name in ROW_METRICS}}
            for k in run.config.streams
        ],
    }


def table_texts(run: EvalRun) -> dict[str, str]:
    """file name -> text of ``metrics.csv`` and ``metrics.json``."""
    return {"metrics.csv": csv_text(run),
            "metrics.json": json.dumps(json_document(run), indent=2, allow_nan=False) + "\n"}


def write_tables(run: EvalRun, folder: Path) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` into ``folder`` atomically; returns their paths."""
    return tuple(atomic_write(folder / name, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8"))
                 for name, text in table_texts(run).items())
