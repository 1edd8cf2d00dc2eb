"""``metrics.csv`` (one row per file and stream count) and ``metrics.json`` (means with 95 % CIs)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from socodec import __version__
from socodec.evaluate.metrics import HIGHER_IS_BETTER, RANGES
from socodec.evaluate.run import ROW_METRICS, EvalRun
from socodec.evaluate.stats import Summary, summarise
from socodec.fileio import atomic_write

__all__ = ["CSV_COLUMNS", "DEFINITIONS", "summaries", "models", "wer_definition", "csv_text", "json_document", "table_texts", "write_tables"]

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
