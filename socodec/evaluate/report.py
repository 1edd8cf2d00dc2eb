"""One self-contained ``report.html``: figures as base64 PNG, audio as base64 FLAC, no external requests."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from socodec import __version__
from socodec.config import SAMPLE_RATE
from socodec.evaluate.figures import rate_quality_png, spectrogram_png
from socodec.evaluate.run import EvalRun, FileResult, worst_key
from socodec.evaluate.stats import Summary
from socodec.evaluate.tables import DEFINITIONS, models, summaries, wer_definition
from socodec.fileio import atomic_write

__all__ = ["report_html", "write_report", "TABLE_ROWS"]

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
