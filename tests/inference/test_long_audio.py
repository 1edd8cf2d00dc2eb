"""Long inputs: windowed HuBERT, exact chunked encoder / mel / synthesis (tiny golden models)."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import GOLDEN, assert_close_golden
from socodec import SoCodec
from socodec.nn.causal import CausalStreamer, causal_context
from socodec.errors import SoCodecError
from socodec.config import ChunkConfig
from socodec.inference.longform import (
    PaddedSignal,
    hubert_windows,
    long_mel,
    stream_tokens,
    windowed_features,
)

LEAD = 8000
HOP = 1920


def tiny_codec(cache) -> SoCodec:
    return SoCodec.from_files(
        GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
        GOLDEN / "analyzer_tiny.json", GOLDEN / "vocoder_tiny.json", cache_dir=cache,
    )


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> SoCodec:
    return tiny_codec(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def small_chunks(codec):
    """Tiny chunk sizes for the duration of one test."""
    saved = codec.chunks
    codec.chunks = ChunkConfig(hubert_window=34, hubert_context=9, decode_chunk=7, vocoder_chunk=50, mel_chunk=100)
    yield codec.chunks
    codec.chunks = saved


def speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    """Gliding two-partial tone, syllable-like envelope and pauses, light noise: ``[16000 * seconds]``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    f0 = 200 + 150 * torch.sin(2 * math.pi * 0.3 * t) + 80 * torch.sin(2 * math.pi * 1.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / 16000
    gates = (torch.rand(int(seconds * 4) + 1, generator=g) > 0.2).float().repeat_interleave(4000)[:n]
    env = (0.5 + 0.5 * torch.sin(2 * math.pi * 3.1 * t)) * gates
    return 0.3 * env * (torch.sin(phase) + 0.5 * torch.sin(2.03 * phase)) + 0.02 * torch.randn(n, generator=g)


def test_chunk_config_validates():
    assert ChunkConfig().hubert_span == 167 + 18
    with pytest.raises(SoCodecError, match="hubert_window"):
        ChunkConfig(hubert_window=0)
    with pytest.raises(SoCodecError, match="hubert_context"):
        ChunkConfig(hubert_context=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChunkConfig().decode_chunk = 3  # type: ignore[misc]


@pytest.mark.parametrize("frames", [1, 33, 34, 35, 100, 505])
def test_hubert_windows_tile_the_grid(frames):
    windows = hubert_windows(frames, 34, 9)
    assert len(windows) == math.ceil(frames / 34)
    assert windows[0][0] == 0 and windows[-1][1] == frames
    for (lo, hi, in_lo, in_hi), nxt in zip(windows, windows[1:] + [None]):
        assert hi - lo <= 34 and in_lo == max(0, lo - 9) and in_hi == min(frames, hi + 9)
        if nxt is not None:
            assert nxt[0] == hi


def test_padded_signal_slices_stats_and_reflection():
    x = torch.randn(5000)
    sig = PaddedSignal(x, LEAD, 7 * HOP)
    full = F.pad(x, (LEAD, 7 * HOP - LEAD - 5000))
    assert torch.equal(sig.segment(0, sig.length), full)
    assert torch.equal(sig.segment(7990, 8020), full[7990:8020])
    reflected = F.pad(full[None, None], (432, 432), mode="reflect")[0, 0]
    assert torch.equal(sig.reflect_segment(-432, 1000), reflected[:1432])
    assert torch.equal(sig.reflect_segment(sig.length - 900, sig.length + 432), reflected[-1332:])
    mean, std = sig.norm_stats().tolist()
    with_tail = F.pad(full, (0, 3200))
    assert mean == pytest.approx(with_tail.double().mean().item(), abs=1e-9)
    assert std == pytest.approx(math.sqrt(with_tail.double().var(unbiased=False).item() + 1e-5), rel=1e-6)


def test_short_input_is_analysed_whole_golden_unchanged(codec, monkeypatch):
    import socodec.codec as codec_mod
    from safetensors.torch import load_file

    def refuse(*args, **kwargs):
        raise AssertionError("short inputs must not take the windowed path")

    monkeypatch.setattr(codec_mod, "encode_long", refuse)
    case = load_file(str(GOLDEN / "golden_ground_truth.safetensors"))
    codes = codec.encode(case["input_wav"], padding="grid")
    assert torch.equal(codes.tokens, case["tokens"])
    assert_close_golden(codes.speaker, case["speaker"])
    # one window over the whole signal (global statistics, true tail) equals the unchunked features
    sig = PaddedSignal(case["input_wav"], LEAD, case["padded_wav"].numel())
    with torch.inference_mode():
        feats = torch.cat(list(windowed_features(codec, sig)), dim=1)[0]
    assert_close_golden(feats, case["hubert_features"])


def test_windowed_hubert_close_to_full_attention(codec, small_chunks):
    """60 s, 4 s windows with 1.08 s context: tokens agree on >= 95 % of frames in every stream."""
    x = speechlike(60.0)
    with torch.inference_mode():
        padded = codec.pad(x, LEAD, "grid")[None]
        full_feats = codec.features(padded)
        full_tokens = codec.analyzer.tokens(full_feats)[0]
        pieces = list(windowed_features(codec, PaddedSignal(x, LEAD, padded.shape[1])))
        tokens = stream_tokens(codec, pieces)
    feats = torch.cat(pieces, dim=1)
    assert len(pieces) == math.ceil(padded.shape[1] / HOP / small_chunks.hubert_window)
    assert feats.shape == full_feats.shape
    assert tokens.shape == full_tokens.shape == (padded.shape[1] // HOP, 4)
    agreement = (tokens == full_tokens).float().mean(dim=0)
    assert (agreement >= 0.95).all(), agreement
    rel = ((feats - full_feats).norm() / full_feats.norm()).item()
    assert rel < 0.02, rel
    # the chunked causal encoder is exact: the stitched features through the whole-sequence encoder
    assert torch.equal(codec.analyzer.tokens(feats)[0], tokens)


def test_long_encode_is_exact_by_default(codec, small_chunks, monkeypatch, caplog):
    """Beyond one window the analysis runs stage by stage, with full attention: the whole-path tokens."""
    import socodec.codec as codec_mod

    calls = []
    real = codec_mod.encode_long
    monkeypatch.setattr(codec_mod, "encode_long", lambda c, sig, window, **kw: calls.append((sig.length, window))
                        or real(c, sig, window, **kw))
    x = speechlike(7.0, seed=4)
    with caplog.at_level(logging.WARNING, logger="socodec"):
        codes = codec.encode(x, padding="grid")
    assert not caplog.records
    total = codec.padded_length(LEAD + x.numel(), "grid")
    assert calls == [(total, None)] and codes.num_frames == total // HOP > small_chunks.hubert_span
    assert (codes.num_samples, codes.lead, codes.attention, codes.hubert_window) == (x.numel(), LEAD, "full", None)
    with torch.inference_mode():
        whole = codec.encode_whole(x, LEAD, "grid")
    assert torch.equal(codes.tokens, whole.tokens)
    assert torch.allclose(codes.speaker, whole.speaker, atol=1e-5, rtol=0)


def test_windowed_attention_on_request_is_recorded(codec, small_chunks):
    x = speechlike(7.0, seed=4)
    exact = codec.encode(x, padding="grid")
    windowed = codec.encode(x, padding="grid", hubert_window=2.4)
    assert (windowed.attention, windowed.hubert_window) == ("windowed", 2.4)
    assert windowed.num_frames == exact.num_frames
    assert not torch.equal(windowed.tokens, exact.tokens)  # windows change some frames
    with torch.inference_mode():
        want = stream_tokens(codec, windowed_features(codec, PaddedSignal(x, LEAD, windowed.num_frames * HOP), 20))
    assert torch.equal(windowed.tokens, want)
    # a window longer than the input (plus its context): attention spans everything anyway
    short = codec.encode(x[:16000], padding="grid", hubert_window=30)
    assert (short.attention, short.hubert_window) == ("full", None)
    assert torch.equal(short.tokens, codec.encode(x[:16000], padding="grid").tokens)
    # the codec-wide setting is what encode uses when not told
    codec.chunks = dataclasses.replace(codec.chunks, hubert_window_seconds=2.4)
    assert torch.equal(codec.encode(x, padding="grid").tokens, windowed.tokens)
    for bad in (0, -1.0, 0.01, float("nan"), float("inf"), "2"):
        with pytest.raises(SoCodecError, match="hubert_window"):
            codec.encode(x, hubert_window=bad)


def test_encode_reports_its_progress(codec):
    """A long input (``golden_cli_long40``, 40 s): the fraction done grows step by step to 1.0, as HuBERT's
    front end and layers advance (full attention) or window by window; the tokens are unchanged."""
    g = load_file(str(GOLDEN / "cli" / "golden_cli_long40.safetensors"))
    net = codec.hubert.model
    for window, least_steps in ((None, len(net.encoder.layers) + 10), (20, 3)):
        seen: list[float] = []
        codes = codec.encode(g["input_wav"], hubert_window=window, progress=seen.append)
        assert len(seen) >= least_steps, seen
        assert all(0 < a < b for a, b in zip(seen, seen[1:])) and seen[-1] == 1.0, seen
        assert max(seen[:-1]) < 1.0
        if window is None:
            assert torch.equal(codes.tokens, g["tokens"])
    assert not any(m._forward_hooks for m in net.modules())  # nothing left on the shared model
    short: list[float] = []
    codec.encode(g["input_wav"][:16000], progress=short.append)
    assert short == [1.0]
    batch: list[float] = []
    clips = [g["input_wav"][:16000], g["input_wav"], g["input_wav"][:32000]]
    both = codec.encode(clips, progress=batch.append)
    assert all(a < b for a, b in zip(batch, batch[1:])) and batch[-1] == 1.0 and len(batch) > 10
    assert torch.equal(both[1].tokens, g["tokens"])


def test_exact_limit_falls_back_to_windows_with_one_warning(codec, small_chunks, caplog):
    x = speechlike(7.0, seed=4)
    codec.chunks = dataclasses.replace(codec.chunks, exact_max_seconds=5.0)
    with caplog.at_level(logging.WARNING, logger="socodec"):
        codes = codec.encode(x, padding="grid")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "exact_max_seconds" in warnings[0] and "--exact-max-seconds" in warnings[0]
    assert (codes.attention, codes.hubert_window) == ("windowed", round(small_chunks.hubert_window * 0.12, 6))
    with pytest.raises(SoCodecError, match="exact_max_seconds"):
        ChunkConfig(exact_max_seconds=0)


def test_causal_streamer_equals_whole_sequence(codec):
    a = codec.analyzer
    torch.manual_seed(0)
    with torch.inference_mode():
        feats = torch.randn(2, 6 * 37, 64)
        whole = a.encoder(feats)
        streamer = CausalStreamer()
        sizes = [1, 5, 6, 7, 0, 13, 60, 130]
        parts, pos = [], 0
        for n in sizes:
            parts.append(streamer.encoder(a.encoder, feats[:, pos : pos + n]))
            pos += n
        assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=0)
        x = torch.randn(2, 40, 64)
        whole = a.decoder_2.project(a.decoder_2(a.decoder_1(x)))
        streamer, parts, pos = CausalStreamer(), [], 0
        for n in [1, 1, 3, 0, 10, 25]:
            h = streamer.decoder_body(a.decoder_2, streamer.decoder_body(a.decoder_1, x[:, pos : pos + n]))
            parts.append(streamer.decoder_project(a.decoder_2, h))
            pos += n
        assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=0)
    assert causal_context(a.encoder) == 51  # HuBERT frames of left context of one token frame


def test_long_mel_equals_whole(codec):
    x = speechlike(7.3, seed=1)
    total = codec.padded_length(LEAD + x.numel(), "grid")
    with torch.inference_mode():
        whole = codec.mel(codec.pad(x, LEAD, "grid")[None])[0]
        chunked = long_mel(codec.mel, PaddedSignal(x, LEAD, total), 97)
    assert torch.allclose(chunked, whole, atol=1e-5, rtol=0)


def test_blockwise_hubert_extractor_is_exact(codec):
    extractor = codec.hubert.model.feature_extractor
    wav = torch.randn(2, 160 * 320 + 80)
    with torch.inference_mode():
        whole = extractor._run(wav)
        saved = extractor.block_frames
        extractor.block_frames = 7
        try:
            blocks = extractor(wav)
        finally:
            extractor.block_frames = saved
    assert blocks.shape == whole.shape == (2, 32, 160)
    assert torch.allclose(blocks, whole, atol=1e-6, rtol=0)


def test_chunked_decode_equals_whole(codec, small_chunks, tmp_path):
    """Chunked decoders + vocoder == whole sequence: ~1e-14 in float64, float32 within the golden 1e-4."""
    codes = dataclasses.replace(codec.encode(speechlike(1.5, seed=2)), lead=None, num_samples=None)
    assert codes.num_frames * 12 > small_chunks.vocoder_chunk
    chunked = codec.decode(codes)
    codec.chunks = ChunkConfig()
    whole = codec.decode(codes)
    assert chunked.shape == whole.shape == (codes.num_frames * HOP,)
    assert_close_golden(chunked, whole)
    # the mel decoders alone are exact in float32 too
    with torch.inference_mode():
        tokens, spk = codes.tokens[None], codes.speaker[None, None]
        whole_mel = codec.analyzer.decode_mel(tokens, codes.speaker[None])
        streamer, parts = CausalStreamer(), []
        for start in range(0, codes.num_frames, 3):
            x = codec.analyzer.vq.decode(tokens[:, start : start + 3]) + spk
            h = streamer.decoder_body(codec.analyzer.decoder_1, x) + spk
            h = streamer.decoder_body(codec.analyzer.decoder_2, h)
            parts.append(streamer.decoder_project(codec.analyzer.decoder_2, h))
    assert (torch.cat(parts, dim=1) - whole_mel).abs().max().item() < 1e-5
    # float64: the algorithm is exact; float32 differences are rounding noise of the random vocoder
    c64 = tiny_codec(tmp_path).double()
    c64.compute_dtype = torch.float64
    short = dataclasses.replace(codes, tokens=codes.tokens[:5], speaker=codes.speaker.double())
    whole64 = c64.decode(short)
    c64.chunks = ChunkConfig(decode_chunk=2, vocoder_chunk=20)
    chunked64 = c64.decode(short)
    assert chunked64.shape == (5 * HOP,)
    assert (chunked64 - whole64).abs().max().item() < 1e-10


def test_chunked_decode_trims_like_whole(codec, small_chunks):
    codes = codec.encode(speechlike(1.3, seed=3))
    chunked = codec.decode(codes, streams=2)
    codec.chunks = ChunkConfig()
    whole = codec.decode(codes, streams=2)
    assert chunked.shape == whole.shape == (codes.num_samples,)
    assert_close_golden(chunked, whole)


def test_decode_iter_pieces_equal_decode(codec, small_chunks):
    """Long codes come out in several pieces that concatenate to exactly ``decode``; short ones in one."""
    codes = codec.encode(speechlike(1.3, seed=4))
    pieces = list(codec.decode_iter(codes, streams=3))
    assert len(pieces) > 1 and all(p.numel() for p in pieces)
    assert torch.equal(torch.cat(pieces), codec.decode(codes, streams=3))
    codec.chunks = ChunkConfig()
    (whole,) = list(codec.decode_iter(codes))
    assert torch.equal(whole, codec.decode(codes))


def test_decode_iter_checks_codes_before_yielding(codec):
    codes = codec.encode(speechlike(0.5, seed=5))
    bad = dataclasses.replace(codes, tokens=codes.tokens.clone().fill_(1 << 20))
    with pytest.raises(SoCodecError):
        next(codec.decode_iter(bad))


def test_save_audio_stream_equals_whole_write(tmp_path):
    import soundfile as sf

    from socodec.audio import save_audio, save_audio_stream

    wav = speechlike(2.0, seed=6)
    save_audio(tmp_path / "whole.wav", wav)
    save_audio_stream(tmp_path / "pieces.wav", wav.split(3001))
    save_audio_stream(tmp_path / "pieces.flac", iter(wav.split(4096)), sample_format="pcm24")
    whole, rate = sf.read(tmp_path / "whole.wav", dtype="int16")
    assert rate == 16000 and whole.shape == (wav.numel(),)
    assert (sf.read(tmp_path / "pieces.wav", dtype="int16")[0] == whole).all()
    assert abs(sf.read(tmp_path / "pieces.flac")[0] - wav.numpy()).max() < 2 ** -22


def test_save_audio_stream_leaves_nothing_when_the_producer_fails(tmp_path):
    from socodec.audio import save_audio_stream

    def pieces():
        yield torch.zeros(1000)
        raise SoCodecError("model broke half way")

    with pytest.raises(SoCodecError, match="half way"):
        save_audio_stream(tmp_path / "out.wav", pieces())
    assert list(tmp_path.iterdir()) == []


def test_long_attention_runs_queries_in_blocks_with_the_same_numbers(codec, monkeypatch):
    """Above ATTENTION_BLOCK_FRAMES, queries go in blocks against all keys: same features, same tokens."""
    import socodec.nn.hubert as hubert_mod

    x = speechlike(9.0, seed=7)
    with torch.inference_mode():
        padded = codec.pad(x, LEAD, "published")[None]
        whole = codec.features(padded)
        calls = []
        real = hubert_mod.SelfAttention.add_to
        monkeypatch.setattr(hubert_mod, "ATTENTION_BLOCK_FRAMES", 100)
        monkeypatch.setattr(hubert_mod.SelfAttention, "add_to", lambda *a, **k: calls.append(1) or real(*a, **k))
        blocked = codec.features(padded)
    assert calls and whole.shape[1] > 100
    assert (blocked - whole).abs().max().item() < 1e-5
    assert torch.equal(codec.analyzer.tokens(blocked), codec.analyzer.tokens(whole))
