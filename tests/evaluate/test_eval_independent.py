"""The independent metrics (DNSMOS, Resemblyzer, pocketsphinx WER) on espeak-ng speech, and in ``socodec eval``.

Each metric equals its package called directly on the same audio; their orderings make sense
(clean > noisy > noise); the eval command degrades to one line when a package is missing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import GOLDEN, REPO, TINY_CONFIGS, chromium_path, tiny_ckpt_dir
from socodec.evaluate import independent

SENTENCE = "this is a test of the speech recognition system"
OTHER = "she sells sea shells by the sea shore on a sunny day"
TIMEOUT_S = 400


def _espeak(text: str, voice: str, tmp_path) -> np.ndarray:
    """espeak-ng speech ``[N]`` float32 at 16 kHz."""
    out = tmp_path / f"{voice}-{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(out), text], check=True, timeout=60)
    wav, sr = sf.read(out, dtype="float32")
    return soxr.resample(wav, sr, 16000).astype(np.float32)


def _with_noise(wav: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.random.default_rng(1).standard_normal(wav.shape[0])
    scale = math.sqrt(np.mean(wav**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return np.clip(wav + scale * noise, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("espeak")
    clean = _espeak(SENTENCE, "en", tmp)
    return {
        "clean": clean,
        "noisy": _with_noise(clean, 0.0),
        "white": (0.3 * np.random.default_rng(2).standard_normal(clean.shape[0])).clip(-1, 1).astype(np.float32),
        "same_speaker": _espeak(OTHER, "en", tmp),
        "other_speaker": _espeak(OTHER, "en+f4", tmp),
    }


def test_dnsmos_equals_speechmos(voices):
    from speechmos import dnsmos

    for name in ("clean", "noisy"):
        ours = independent.dnsmos(voices[name])
        theirs = dnsmos.run(voices[name], 16000)
        assert ours["dnsmos_ovrl"] == pytest.approx(theirs["ovrl_mos"], abs=1e-6)
        assert ours["dnsmos_sig"] == pytest.approx(theirs["sig_mos"], abs=1e-6)
        assert ours["dnsmos_bak"] == pytest.approx(theirs["bak_mos"], abs=1e-6)


def test_dnsmos_orders_clean_noisy_noise(voices):
    clean, noisy, white = (independent.dnsmos(voices[n])["dnsmos_ovrl"] for n in ("clean", "noisy", "white"))
    assert clean > noisy > white, (clean, noisy, white)


def test_speaker_similarity_equals_resemblyzer(voices):
    from resemblyzer import VoiceEncoder, preprocess_wav

    encoder = VoiceEncoder("cpu", verbose=False)
    a = encoder.embed_utterance(preprocess_wav(voices["clean"], 16000))
    b = encoder.embed_utterance(preprocess_wav(voices["same_speaker"], 16000))
    expected = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert independent.speaker_similarity(voices["clean"], voices["same_speaker"]) == pytest.approx(expected, abs=1e-6)


def test_same_voice_is_more_similar_than_another_voice(voices):
    same = independent.speaker_similarity(voices["clean"], voices["same_speaker"])
    other = independent.speaker_similarity(voices["clean"], voices["other_speaker"])
    assert -1 <= other < same <= 1, (same, other)


def test_wer_equals_pocketsphinx_and_jiwer(voices):
    import jiwer
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(np.round(voices["clean"] * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    text = decoder.hyp().hypstr
    assert independent.recognise(voices["clean"]) == text.lower()
    assert independent.word_error_rate(SENTENCE, independent.recognise(voices["clean"])) == pytest.approx(
        jiwer.wer(SENTENCE, text.lower()), abs=1e-6)


def test_wer_of_clean_speech_is_below_its_noisy_copy(voices):
    clean = independent.word_error_rate(SENTENCE, independent.recognise(voices["clean"]))
    noisy = independent.word_error_rate(SENTENCE, independent.recognise(voices["noisy"]))
    assert clean < noisy, (clean, noisy)


def test_silence_is_undefined_for_every_metric():
    silence = np.zeros(32000, dtype=np.float32)
    assert all(math.isnan(v) for v in independent.dnsmos(silence).values())
    assert math.isnan(independent.speaker_similarity(silence, silence))
    assert independent.recognise(silence) is None and math.isnan(independent.word_error_rate(SENTENCE, None))


# --- the command ---------------------------------------------------------------------------------------------


def _eval(*args, env=None, preexec_fn=None) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "socodec", "eval", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
                          preexec_fn=preexec_fn)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval-independent")
    speech, sr = sf.read(GOLDEN / "ground_truth.wav", dtype="float32")
    corpus = root / "corpus"
    corpus.mkdir()
    sf.write(corpus / "speech.wav", speech[: 3 * sr], sr)
    sf.write(corpus / "silent.wav", np.zeros(2 * sr, dtype=np.float32), sr)
    transcripts = root / "transcripts.tsv"
    transcripts.write_text("speech\tthe words of the golden utterance\nsilent\tnothing\n")
    model = ["--ckpt-dir", tiny_ckpt_dir(root / "ckpts"), *TINY_CONFIGS, "--no-download", "--streams", "1,4",
             "--examples", "1"]
    return {"root": root, "corpus": corpus, "transcripts": transcripts, "model": model}


@pytest.fixture(scope="module")
def without_speechmos(ws) -> dict:
    """``socodec eval`` with ``--transcripts`` where speechmos cannot be imported."""
    shim = ws["root"] / "shim" / "speechmos"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('speechmos is not installed here')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ws["root"] / "shim"), str(REPO)])}
    out = ws["root"] / "report"
    proc = _eval(ws["corpus"], "-o", out, "--transcripts", ws["transcripts"], *ws["model"], env=env)
    return {"proc": proc, "out": out, "rows": list(csv.DictReader((out / "metrics.csv").open())),
            "json": json.loads((out / "metrics.json").read_text()), "html": (out / "report.html").read_text()}


def test_missing_package_is_one_line_and_its_metrics_are_left_out(without_speechmos):
    proc = without_speechmos["proc"]
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "pip install" in line]
    assert len(lines) == 1 and "speechmos" in lines[0] and "dnsmos_ovrl" in lines[0], proc.stderr
    assert all(row["dnsmos_ovrl"] == "" for row in without_speechmos["rows"])
    assert "dnsmos_ovrl" not in without_speechmos["json"]["models"]
    assert "Resemblyzer" in without_speechmos["json"]["models"]["resemblyzer_similarity"]


def test_wer_against_the_transcripts_is_labelled_so(without_speechmos):
    doc = without_speechmos["json"]
    assert doc["wer_reference"] == "the transcripts" and "against the transcripts" in doc["definitions"]["wer"]
    speech = [row for row in without_speechmos["rows"] if row["id"] == "speech"]
    assert speech and all(float(row["wer"]) >= 0 for row in speech)


def test_silent_input_is_left_empty_counted_and_out_of_the_means(without_speechmos):
    rows = [row for row in without_speechmos["rows"] if row["id"] == "silent"]
    assert len(rows) == 2
    for row in rows:
        assert float(row["token_bitrate"]) > 0
        assert all(row[name] == "" for name in ("pesq", "stoi", "mrstft", "si_sdr", "speaker_similarity", "wer",
                                                 "resemblyzer_similarity"))
    speech = next(row for row in without_speechmos["rows"] if row["id"] == "speech" and row["streams"] == "4")
    top = without_speechmos["json"]["results"][-1]
    assert top["mrstft"]["n"] == 1 and top["mrstft"]["mean"] == pytest.approx(float(speech["mrstft"]), rel=1e-5)
    assert "undefined" in without_speechmos["html"]


def test_report_shows_the_new_columns_in_a_real_browser(without_speechmos):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto((without_speechmos["out"] / "report.html").as_uri())
            headers = page.locator("th").all_inner_texts()
            for label in ("DNSMOS OVRL", "speaker sim. (Resemblyzer)", "WER", "speaker sim. (codec's own encoder)",
                          "frames cut"):
                assert label in headers, headers
            text = page.locator("body").inner_text()
            assert "pocketsphinx" in text and "Resemblyzer 0.1.4" in text and "against the transcripts" in text
            assert page.locator("img").first.evaluate("i => i.naturalWidth") >= 1000
        finally:
            browser.close()


def test_a_report_that_cannot_be_written_is_one_line_and_leaves_nothing(ws):
    """A file-size limit makes writing report.html fail as a full disk would: no folder is left behind."""
    out = ws["root"] / "nested" / "report"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = _eval(ws["corpus"] / "speech.wav", "-o", out, *ws["model"], preexec_fn=limit)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "report.html" in errors[0] and "nothing written" in errors[0], proc.stderr
    assert not (ws["root"] / "nested").exists()
