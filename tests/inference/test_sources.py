"""Long files analysed from disk: FileSource, LazyMel, and ``SoCodec.encode(path)`` (tiny golden models)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from socodec.audio import load_audio
from socodec.errors import AudioError
from socodec.config import ChunkConfig
from socodec.inference.longform import LazyMel, PaddedSignal, long_mel
from socodec.audio import FileSource, TensorSource
from test_long_audio import speechlike, tiny_codec


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    model = tiny_codec(tmp_path_factory.mktemp("cache"))
    model.chunks = ChunkConfig(hubert_window=34, hubert_context=9, decode_chunk=7, vocoder_chunk=50, mel_chunk=100)
    return model


def write(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


def test_16k_mono_file_is_read_in_place(tmp_path):
    wav = write(tmp_path / "a.wav", speechlike(3.0).numpy(), 16000)
    whole = load_audio(wav)
    with FileSource(wav, temp_dir=tmp_path / "none") as source:  # no temp folder needed: nothing converted
        assert source.num_samples == whole.numel()
        assert torch.equal(source.read(0, source.num_samples), whole)
        assert torch.equal(source.read(12345, 23456), whole[12345:23456])
        with pytest.raises(ValueError):
            source.read(0, source.num_samples + 1)


def test_other_rates_and_channels_convert_like_load_audio(tmp_path):
    rng = np.random.default_rng(0)
    stereo = np.stack([speechlike(2.5).numpy(), 0.1 * rng.standard_normal(40000).astype(np.float32)], axis=1)
    stereo = np.repeat(stereo, 3, axis=0)[: int(2.5 * 44100)]  # some 44.1 kHz-ish material
    path = write(tmp_path / "b.flac", stereo, 44100, "PCM_24")
    whole = load_audio(path)
    temp = tmp_path / "temp"
    temp.mkdir()
    with FileSource(path, temp_dir=temp) as source:
        assert len(list(temp.iterdir())) == 1  # the converted samples
        assert source.num_samples == whole.numel()
        assert torch.equal(source.read(0, source.num_samples), whole)  # streaming soxr == one-shot soxr
    assert list(temp.iterdir()) == []


def test_bad_samples_fail_cleanly_and_loud_ones_warn_once(tmp_path, caplog):
    bad = np.zeros(32000, dtype=np.float32)
    bad[20000] = np.nan
    temp = tmp_path / "temp"
    temp.mkdir()
    for rate in (16000, 22050):
        with pytest.raises(AudioError, match="NaN or infinite"):
            FileSource(write(tmp_path / f"nan{rate}.wav", bad, rate, "FLOAT"), temp_dir=temp)
    assert list(temp.iterdir()) == []
    loud = write(tmp_path / "loud.wav", np.full(16000, 1.5, dtype=np.float32), 16000, "FLOAT")
    with caplog.at_level(logging.WARNING, logger="socodec.audio"), FileSource(loud):
        pass
    warnings = [r for r in caplog.records if "outside [-1, 1]" in r.getMessage()]
    assert len(warnings) == 1 and str(loud) in warnings[0].getMessage()
    with pytest.raises(AudioError, match="no such file"):
        FileSource(tmp_path / "missing.wav")


def test_lazy_mel_equals_the_whole_log_mel(codec):
    signal = PaddedSignal(TensorSource(speechlike(4.0, seed=1)), 8000, 1920 * 38)
    whole = long_mel(codec.mel, signal, 100).t()[None]  # [1, n_mels, frames]
    lazy = LazyMel(codec.mel, signal)
    assert lazy.shape == whole.shape
    for lo, hi in ((0, 50), (123, 456), (whole.shape[-1] - 7, whole.shape[-1])):
        assert (lazy[..., lo:hi] - whole[..., lo:hi]).abs().max() < 1e-5  # FFT rounding of other block sizes
    encoder = codec.analyzer.speaker_encoder
    with torch.inference_mode():
        assert (encoder.forward_frames(lazy, 64) - encoder.forward_frames(whole, 64)).abs().max() < 1e-5
    with pytest.raises(TypeError):
        lazy[0]


@pytest.mark.parametrize("rate, channels", [(16000, 1), (24000, 2)])
def test_encode_path_streams_long_files_and_equals_encode_of_samples(codec, tmp_path, monkeypatch, rate, channels):
    audio = speechlike(7.5, seed=rate)
    if rate != 16000:
        audio = torch.nn.functional.interpolate(audio[None, None], scale_factor=rate / 16000)[0, 0]
    data = audio.numpy() if channels == 1 else np.stack([audio.numpy(), 0.5 * audio.numpy()], axis=1)
    path = write(tmp_path / "long.wav", data, rate)
    expected = codec.encode(load_audio(path))
    monkeypatch.setattr(codec.analyzer.speaker_encoder, "long_threshold", 100)  # exercise LazyMel too
    expected_lazy = codec.encode(load_audio(path))
    loads = []
    monkeypatch.setattr("socodec.codec.load_audio", lambda p: loads.append(p))
    got = codec.encode(path)
    assert loads == []  # never loaded whole
    assert torch.equal(got.tokens, expected.tokens)
    assert got.num_samples == expected.num_samples and got.lead == expected.lead
    assert torch.allclose(got.speaker, expected.speaker, atol=1e-5)
    assert torch.equal(got.speaker, expected_lazy.speaker)


def test_encode_path_short_file_is_loaded_whole(codec, tmp_path):
    path = write(tmp_path / "short.wav", speechlike(1.0).numpy(), 16000)
    got, want = codec.encode(path), codec.encode(load_audio(path))
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.speaker, want.speaker)
