"""``socodec eval`` run for real (``python -m socodec eval`` in subprocesses) on the tiny models."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import GOLDEN, REPO, TINY_CONFIGS, tiny_ckpt_dir
from socodec import SoCodec
from socodec.audio import load_audio
from socodec.evaluate.metrics import signal_metrics

STREAMS = (1, 2, 4)
TIMEOUT_S = 300


def _run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "socodec", "eval", *map(str, args)], cwd=REPO,
                          env=env or _env(), capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if "ERROR" in line or "error:" in line]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    speech, sr = sf.read(GOLDEN / "ground_truth.wav", dtype="float32")
    corpus = root / "corpus"
    corpus.mkdir()
    sf.write(corpus / "a.wav", speech, sr)
    stereo = soxr.resample(speech[: 2 * sr], sr, 22050)
    sf.write(corpus / "b.flac", np.stack([stereo, 0.5 * stereo], axis=1), 22050)  # resampled + downmixed
    (corpus / "broken.wav").write_bytes(b"RIFF\x00\x00")
    manifest = root / "segments.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "corpus/a.wav", "id": "a-middle", "offset": 0.8,
                                    "duration": 2.0}) + "\n")
    return {"root": root, "corpus": corpus, "manifest": manifest, "ckpts": tiny_ckpt_dir(root / "ckpts")}


@pytest.fixture(scope="module")
def report(ws) -> dict:
    out = ws["root"] / "report"
    model = ["--ckpt-dir", ws["ckpts"], *TINY_CONFIGS, "--no-download", "--batch-size", "2"]
    proc = _run(ws["corpus"], ws["manifest"], "-o", out, "--streams", ",".join(map(str, STREAMS)),
                "--examples", "2", *model)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return {"proc": proc, "out": out, "model": model, "rows": rows,
            "json": json.loads((out / "metrics.json").read_text()), "html": (out / "report.html").read_text()}


def test_a_bad_file_is_reported_on_one_line_and_skipped(report, ws):
    proc = report["proc"]
    assert proc.returncode == 1, proc.stderr
    errors = _errors(proc)
    assert len(errors) == 1 and "broken.wav" in errors[0], proc.stderr
    assert report["json"]["failed"] == 1 and "broken.wav" in report["json"]["errors"][0]


def test_one_csv_row_per_file_and_stream_count(report, ws):
    ids = ["a", "b", "a-middle"]  # a folder's files are named by their path in it, without suffix
    pairs = [(row["id"], int(row["streams"])) for row in report["rows"]]
    assert sorted(pairs) == sorted((i, k) for i in ids for k in STREAMS)
    for row in report["rows"]:
        k = int(row["streams"])
        assert float(row["token_bitrate"]) == pytest.approx(k * 14 / 0.12, rel=1e-5)
        assert float(row["bitrate"]) == pytest.approx(k * 14 / 0.12 + 64 * 32 / float(row["duration"]), rel=1e-5)
        assert 1.0 <= float(row["pesq"]) <= 4.64 and -1 <= float(row["speaker_similarity"]) <= 1
    durations = {row["id"]: float(row["duration"]) for row in report["rows"]}
    assert durations["a-middle"] == pytest.approx(2.0) and durations[ids[1]] == pytest.approx(2.0)


def test_csv_numbers_are_the_codecs_resynthesis(report, ws):
    """The batched command's row equals measuring ``decode(encode(x), streams=k)`` here, one file alone."""
    codec = SoCodec.from_pretrained(ws["ckpts"], analyzer_config=GOLDEN / "analyzer_tiny.json",
                                    vocoder_config=GOLDEN / "vocoder_tiny.json")
    wav = load_audio(ws["corpus"] / "a.wav")
    expected = signal_metrics(wav, codec.decode(codec.encode(wav), streams=2))
    row = next(r for r in report["rows"] if r["id"] == "a" and r["streams"] == "2")
    for name in ("pesq", "stoi", "mel_distance", "mrstft"):
        assert float(row[name]) == pytest.approx(expected[name], rel=2e-3, abs=1e-4), name


def test_json_means_with_confidence_intervals(report):
    doc = report["json"]
    assert doc["files"] == 3 and doc["streams"] == list(STREAMS)
    assert [r["streams"] for r in doc["results"]] == list(STREAMS)
    for result in doc["results"]:
        k = result["streams"]
        pesq = [float(r["pesq"]) for r in report["rows"] if int(r["streams"]) == k]
        s = result["pesq"]
        assert s["n"] == 3 and s["mean"] == pytest.approx(np.mean(pesq), rel=1e-5)
        assert s["ci95_low"] <= s["mean"] <= s["ci95_high"] and 0.999 <= s["ci95_low"] and s["ci95_high"] <= 4.644


def test_report_is_self_contained(report):
    html = report["html"]
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html, flags=re.I)
    assert refs and all(ref.startswith("data:") for ref in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", html, flags=re.I)
    assert "url(" not in html and "@import" not in html
    players = re.findall(r'<audio[^>]*src="data:audio/flac;base64,', html)
    assert len(players) == 2 * (1 + len(STREAMS))  # --examples 2: original + each resynthesis
    assert html.count('src="data:image/png;base64,') == 1  # the rate-quality curve
    assert html.count('src="data:image/jpeg;base64,') == 2  # one spectrogram per example
    assert "broken.wav" in html and "a-middle" in html


def test_an_existing_report_needs_force(report):
    proc = _run(report["out"] / "..", "-o", report["out"], *report["model"])
    assert proc.returncode == 1 and len(_errors(proc)) == 1 and "--force" in proc.stderr, proc.stderr


def test_bad_streams_is_a_usage_error(ws):
    proc = _run(ws["corpus"], "-o", ws["root"] / "x", "--streams", "0,5")
    assert proc.returncode == 2 and "between 1 and 4" in proc.stderr and not (ws["root"] / "x").exists()


def test_missing_extra_is_one_line(ws, tmp_path):
    shim = tmp_path / "shim" / "pesq"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('pesq is not installed here')\n")
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), str(REPO)])}
    proc = _run(ws["corpus"], "-o", tmp_path / "out", env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "pip install 'socodec[eval]'" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
