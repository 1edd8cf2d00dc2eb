"""The evaluation metrics on real speech (the golden ground-truth utterance), their statistics and inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from conftest import GOLDEN
from socodec.errors import SoCodecError
from socodec.evaluate.run import EvalItem, expand_inputs, read_item
from socodec.evaluate.metrics import align, cosine_similarity, mel_distance, signal_metrics, si_sdr
from socodec.evaluate.metrics import summarise

SNRS_DB = (30, 20, 10, 0)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    wav, sr = sf.read(GOLDEN / "ground_truth.wav", dtype="float64")
    assert sr == 16000
    return wav


def _noisy(wav: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal(wav.shape[0])
    return wav + noise * math.sqrt(np.mean(wav**2) / np.mean(noise**2) / 10 ** (snr_db / 10))


@pytest.fixture(scope="module")
def noisy_metrics(speech) -> list[dict[str, float]]:
    return [signal_metrics(speech, _noisy(speech, snr)) for snr in SNRS_DB]


def test_identical_signals_score_perfectly(speech):
    m = signal_metrics(speech, speech.copy())
    assert m["pesq"] == pytest.approx(4.64, abs=0.01)
    assert m["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert m["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert m["mel_distance"] == 0.0 and m["mrstft"] == 0.0
    assert m["si_sdr"] > 100


@pytest.mark.parametrize("name", ["pesq", "stoi", "estoi", "si_sdr"])
def test_more_noise_scores_lower(speech, noisy_metrics, name):
    values = [signal_metrics(speech, speech)[name]] + [m[name] for m in noisy_metrics]
    assert all(a > b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("name", ["mel_distance", "mrstft"])
def test_more_noise_is_further(noisy_metrics, name):
    values = [m[name] for m in noisy_metrics]
    assert all(0 < a < b for a, b in zip(values, values[1:])), values


def test_si_sdr_equals_the_snr_of_white_noise_and_ignores_scale(speech, noisy_metrics):
    for snr, m in zip(SNRS_DB, noisy_metrics):
        assert m["si_sdr"] == pytest.approx(snr, abs=0.3)
    noisy = _noisy(speech, 10)
    assert si_sdr(speech, 0.25 * noisy) == pytest.approx(si_sdr(speech, noisy), abs=1e-9)
    assert si_sdr(speech, 0.5 * speech) > 100


def test_unmeasurable_pairs_give_nan_not_errors(speech):
    silence = signal_metrics(np.zeros(16000), np.zeros(16000))
    assert all(math.isnan(silence[k]) for k in ("pesq", "stoi", "estoi", "si_sdr", "mrstft"))
    short = signal_metrics(speech[20000:20200], speech[20000:20200])
    assert math.isnan(short["pesq"]) and math.isnan(short["stoi"]) and math.isnan(short["mel_distance"])


def test_lengths_are_aligned_to_the_shorter(speech):
    r, d = align(speech, speech[:-100])
    assert r.shape == d.shape == (speech.shape[0] - 100,)
    assert mel_distance(speech, speech[:-100]) == 0.0


def test_cosine_similarity():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert math.isnan(cosine_similarity(np.zeros(3), np.ones(3)))


def test_mean_and_95_percent_interval():
    s = summarise([1.0, 2.0, 3.0, math.nan])
    assert (s.mean, s.n) == (2.0, 3)
    assert s.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd 1 / sqrt(3)
    one = summarise([5.0])
    assert one.mean == 5.0 and math.isnan(one.low) and one.to_json()["ci95_low"] is None
    assert summarise([]).n == 0


def test_inputs_folders_globs_manifests(tmp_path, speech):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "a.wav", speech, 16000)
    sf.write(folder / "sub" / "b.flac", speech[:16000], 16000)
    (folder / "notes.txt").write_text("not audio")
    manifest = tmp_path / "list.jsonl"
    rows = [{"audio_filepath": "corpus/a.wav", "id": "seg", "offset": 1.0, "duration": 0.5},
            {"audio_filepath": str(folder / "sub" / "b.flac")}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    other = tmp_path / "other"
    other.mkdir()
    sf.write(other / "a.wav", speech[:8000], 16000)
    items, errors = expand_inputs([folder, str(tmp_path / "corpus" / "**" / "*.flac"), manifest,
                                   tmp_path / "missing.wav", folder / "notes.txt", other])
    # a folder's files are named below it; b.flac (folder, glob and manifest) is measured once;
    # the two a.wav files would both be "a": they are named by their paths
    assert [i.id for i in items] == [str(folder / "a.wav"), "sub/b", "seg", str(other / "a.wav")]
    assert len(errors) == 2 and "missing.wav: no such file" in errors[0] and "notes.txt" in errors[1]
    segment = read_item(items[2])
    assert segment.shape == (8000,)
    assert np.allclose(segment.numpy(), speech[16000:24000], atol=1 / 32768)


def test_bad_manifests_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, expected in [("{not json\n", "not JSON"), ('{"path": "x.wav"}\n', "audio_filepath"),
                           ('{"audio_filepath": "x.wav", "offset": -1}\n', '"offset"'), ("\n", "lists no audio")]:
        bad.write_text(text)
        items, errors = expand_inputs([bad])
        assert items == [] and len(errors) == 1 and expected in errors[0], errors
    with pytest.raises(SoCodecError, match="the segment starts after the end of the file"):
        read_item(EvalItem("x", GOLDEN / "ground_truth.wav", offset=9.0))
