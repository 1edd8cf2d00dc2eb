"""Mel front end (SPEC §2) and ECAPA-TDNN speaker encoder (SPEC §6)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import GOLDEN, MANIFESTS, assert_close_golden
from socodec.loading.checkpoints import load_strict, read_safetensors
from socodec.config import AnalyzerConfig, MelConfig
from socodec.nn.mel import MelSpectrogram, slaney_mel_filterbank
from socodec.nn.speaker import MomentAccumulator, SpeakerEncoder, chunk_bounds

logger = logging.getLogger(__name__)

PREFIX = "speaker_encoder."


@pytest.fixture(scope="module")
def tiny_config() -> AnalyzerConfig:
    return AnalyzerConfig.from_json(GOLDEN / "analyzer_tiny.json")


@pytest.fixture(scope="module")
def tiny_speaker(tiny_config: AnalyzerConfig) -> SpeakerEncoder:
    path = GOLDEN / "analyzer_tiny.safetensors"
    model = SpeakerEncoder(tiny_config.mel.n_mels, tiny_config.model_size)
    load_strict(model, read_safetensors(path), source=path, prefix=PREFIX)
    return model.eval()


# ---------------------------------------------------------------- mel


def test_mel_parity(golden_case: dict[str, torch.Tensor], tiny_config: AnalyzerConfig) -> None:
    mel = MelSpectrogram(tiny_config.mel)
    with torch.no_grad():
        out = mel(golden_case["padded_wav"][None])
    assert out.dtype == torch.float32
    err = assert_close_golden(out[0], golden_case["mel"])
    logger.info("mel %s: max abs error %.3e", golden_case["name"], err)


def test_mel_shapes_and_short_input() -> None:
    mel = MelSpectrogram(MelConfig())
    assert not dict(mel.state_dict()), "window and filterbank must not be persistent"
    wav = torch.randn(2, 1920) * 0.1
    assert mel(wav).shape == (2, 12, 80)
    assert mel(wav[0]).shape == (12, 80)
    # lengths that are not a multiple of the hop: the published arithmetic (SPEC §1, golden/cli):
    # the raw signal is reflect-padded, the last partial hop gives no frame
    ragged = mel(wav[:, :1000])
    assert ragged.shape == (2, (1000 - 160) // 160 + 1, 80) == (2, 6, 80)
    torch.testing.assert_close(ragged[:, :3], mel(wav)[:, :3], rtol=0, atol=1e-6)  # frames clear of the end
    blocked = MelSpectrogram(MelConfig(), chunk_frames=5)
    torch.testing.assert_close(blocked(wav), mel(wav), rtol=0, atol=1e-6)
    torch.testing.assert_close(blocked(wav[:, :1000]), ragged, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="too short"):
        mel(torch.zeros(1, 432))  # no room to reflect 432 samples
    assert mel(torch.zeros(1, 433)).shape == (1, 2, 80)


def test_filterbank_sanity() -> None:
    fb = slaney_mel_filterbank(16000, 1024, 80, 0.0, 8000.0)
    assert fb.shape == (80, 513) and fb.dtype == torch.float32
    assert (fb >= 0).all()
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] > peaks[:-1]).all(), "filter centres must increase"
    for row in fb:
        nz = torch.nonzero(row).flatten()
        assert nz.numel() > 0
        assert (nz[1:] - nz[:-1] == 1).all(), "each filter is one contiguous triangle"
        inside = row[nz[0] : nz[-1] + 1]
        top = int(inside.argmax())
        assert (inside[1 : top + 1] >= inside[:top]).all() and (inside[top + 1 :] <= inside[top:-1]).all()
    # values of librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0, fmax=8000), computed offline
    known = {
        (0, 1): 0.011267280206084251,
        (0, 2): 0.022534560412168503,
        (1, 3): 0.006948424968868494,
        (20, 48): 0.0037611403968185186,
        (20, 50): 0.026295702904462814,
        (40, 108): 0.007159441243857145,
        (60, 229): 0.0003371286438778043,
        (79, 480): 0.0010662341956049204,
        (10, 20): 0.0,
    }
    for (i, j), value in known.items():
        assert fb[i, j].item() == pytest.approx(value, rel=1e-6, abs=1e-12), (i, j)
    assert fb.max().item() == pytest.approx(0.026662132, rel=1e-6)


# ---------------------------------------------------------------- speaker encoder


def test_speaker_parity(golden_case: dict[str, torch.Tensor], tiny_speaker: SpeakerEncoder) -> None:
    with torch.no_grad():
        out = tiny_speaker(golden_case["mel"][None])
    assert out.shape == (1, 64)
    err = assert_close_golden(out[0], golden_case["speaker"])
    logger.info("speaker %s: max abs error %.3e", golden_case["name"], err)


def test_speaker_end_to_end_from_wav(golden_case: dict[str, torch.Tensor], tiny_speaker: SpeakerEncoder) -> None:
    mel = MelSpectrogram(MelConfig())
    with torch.no_grad():
        out = tiny_speaker(mel(golden_case["padded_wav"][None]))
    assert_close_golden(out[0], golden_case["speaker"])


def test_speaker_manifest_keys() -> None:
    manifest = json.loads((MANIFESTS / "manifest_analyzer_real.json").read_text())
    expected = {k[len(PREFIX) :]: tuple(v["shape"]) for k, v in manifest.items() if k.startswith(PREFIX)}
    model = SpeakerEncoder(80, 1024)
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == expected


def test_speaker_rejects_bad_input(tiny_speaker: SpeakerEncoder) -> None:
    with pytest.raises(ValueError):
        tiny_speaker(torch.zeros(1, 12, 40))
    with pytest.raises(ValueError):
        tiny_speaker(torch.zeros(1, 4, 80))


# ---------------------------------------------------------------- long inputs


def _random_speaker(seed: int) -> SpeakerEncoder:
    torch.manual_seed(seed)
    model = SpeakerEncoder(80, 64)
    with torch.no_grad():
        # sharpen the attention so the online softmax is really exercised
        model.asp.conv.conv.weight.mul_(8.0)
    return model.eval()


def test_forward_long_matches_forward() -> None:
    model = _random_speaker(0)
    gen = torch.Generator().manual_seed(1)
    mel = torch.randn(1, 3007, 80, generator=gen) * 2.0 - 5.0
    mel[:, 1500:2000] = -11.5  # a long silent stretch
    with torch.no_grad():
        full = model(mel)
        # 500: ragged 7-frame last chunk; 11: the smallest chunk (= halo)
        for chunk in (500, 11):
            if chunk == 11:
                long = model.forward_long(mel[:, :200], chunk_frames=chunk)
                ref = model(mel[:, :200])
            else:
                long, ref = model.forward_long(mel, chunk_frames=chunk), full
            err = (long - ref).abs().max().item()
            assert err <= 1e-4 * ref.abs().max().item(), (chunk, err)
    with pytest.raises(ValueError):
        model.forward_long(mel, chunk_frames=5)


def test_forward_switches_to_chunked_above_threshold() -> None:
    model = _random_speaker(2)
    mel = torch.randn(2, 700, 80) - 4.0  # a batch: each item pools over its own frames
    mel[1, 400:] = -11.5
    with torch.no_grad():
        full = model(mel)
        model.long_threshold, model.chunk_frames = 600, 128
        switched = model(mel)
    assert (switched - full).abs().max().item() <= 1e-4 * full.abs().max().item()
    torch.testing.assert_close(model(mel[1:]), switched[1:], rtol=0, atol=1e-4 * full.abs().max().item())


def test_moment_accumulator_matches_direct() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 97, generator=gen, dtype=torch.float64) + 100.0
    logits = torch.randn(2, 5, 97, generator=gen, dtype=torch.float64) * 30.0
    plain, weighted = MomentAccumulator(), MomentAccumulator()
    for start, stop in chunk_bounds(97, 10):
        plain.update(x[..., start:stop])
        weighted.update(x[..., start:stop], logits[..., start:stop])
    mean, std = plain.mean_std(1e-12)
    torch.testing.assert_close(mean[..., 0], x.mean(-1))
    torch.testing.assert_close(std[..., 0], x.std(-1, unbiased=False))
    w = torch.softmax(logits, dim=-1)
    w_mean = (w * x).sum(-1)
    w_mean_acc, w_std_acc = weighted.mean_std(1e-12)
    torch.testing.assert_close(w_mean_acc[..., 0], w_mean)
    torch.testing.assert_close(w_std_acc[..., 0], ((w * (x - w_mean[..., None]) ** 2).sum(-1)).sqrt())
