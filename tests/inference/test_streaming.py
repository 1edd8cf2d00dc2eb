"""Streaming synthesis (``SoCodec.decode_stream``) against offline decode, on the tiny golden models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import GOLDEN, assert_close_golden, tiny_ckpt_dir
from socodec import Codes, SoCodec
from socodec.errors import CodesError
from socodec.inference.synthesis import LOOKAHEAD_MEL_FRAMES, SynthesisStream

HOP = 1920
LATENCY = 14 * 160  # samples of vocoder look-ahead


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> SoCodec:
    return SoCodec.from_files(
        GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
        GOLDEN / "analyzer_tiny.json", GOLDEN / "vocoder_tiny.json", cache_dir=tmp_path_factory.mktemp("cache"),
    )


@pytest.fixture(scope="module")
def codes() -> Codes:
    """The golden ground-truth tokens and speaker: 34 frames, lead 8000, 56960 input samples."""
    from safetensors.torch import load_file

    case = load_file(str(GOLDEN / "golden_ground_truth.safetensors"))
    return Codes(case["tokens"], case["speaker"], num_samples=case["input_wav"].numel(), lead=8000)


def _split(tokens: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, pos = [], 0
    for n in sizes:
        out.append(tokens[pos : pos + n])
        pos += n
    out.append(tokens[pos:])
    return out


@pytest.mark.parametrize("sizes", [[0, 2, 1, 5, 0, 3, 11], [34]], ids=["ragged", "one"])
def test_stream_equals_offline_decode(codec, codes, sizes):
    untrimmed = dataclasses.replace(codes, lead=None, num_samples=None)
    offline = codec.decode(untrimmed)
    pieces = list(codec.decode_stream(_split(codes.tokens, sizes), codes.speaker))
    assert all(p.dim() == 1 and p.numel() > 0 and p.dtype == torch.float32 for p in pieces)
    streamed = torch.cat(pieces)
    assert streamed.shape == (codes.num_frames * HOP,)
    assert_close_golden(streamed, offline)


def test_stream_with_codes_metadata_trims_like_decode(codec, codes):
    offline = codec.decode(codes, streams=2)
    streamed = torch.cat(list(codec.decode_stream(codes.tokens.split(3), codes, streams=2)))
    assert streamed.shape == offline.shape == (codes.num_samples,)
    assert_close_golden(streamed, offline)
    # explicit lead / length override the Codes' own
    part = torch.cat(list(codec.decode_stream(codes.tokens.split(5), codes.speaker, lead=8000, num_samples=1000)))
    assert_close_golden(part, codec.decode(codes)[:1000])


def test_frame_by_frame_latency_is_fourteen_mel_frames(codec, codes):
    """One token at a time: after T frames the audio is final up to sample 1920 T - 2240."""
    assert codec.vocoder.receptive_field() == LOOKAHEAD_MEL_FRAMES
    tokens = codes.tokens[:12]
    stream = SynthesisStream(codec, codes.speaker)
    assert stream.latency_samples == LATENCY
    pieces = []
    for t in range(tokens.shape[0]):
        pieces.append(stream.push(tokens[t : t + 1]))
        assert sum(p.numel() for p in pieces) == max(0, (t + 1) * HOP - LATENCY)
    pieces.append(stream.finish())
    offline = codec.decode(Codes(tokens, codes.speaker))
    assert_close_golden(torch.cat(pieces), offline)


def test_fewer_streams_and_voice_swap(codec, codes):
    other = torch.randn(codes.speaker.shape, generator=torch.Generator().manual_seed(3))
    offline = codec.decode(codes.with_streams(3), speaker=other)
    streamed = torch.cat(list(codec.decode_stream(codes.tokens[:, :3].split(4), other, lead=codes.lead,
                                                  num_samples=codes.num_samples)))
    assert_close_golden(streamed, offline)


def test_empty_stream_yields_nothing(codec, codes):
    assert list(codec.decode_stream([], codes.speaker)) == []
    assert list(codec.decode_stream([codes.tokens[:0]], codes.speaker)) == []


@pytest.mark.parametrize(
    "chunks, match",
    [
        ([torch.zeros(2, 4)], "integer"),
        ([torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)], "earlier chunks had 4"),
        ([torch.full((2, 4), 16384)], r"\[0, 16384\)"),
        ([torch.zeros(2, 5, dtype=torch.long)], "1 to 4 streams"),
        ([torch.zeros(4, dtype=torch.long)], r"\[frames, streams\]"),
    ],
)
def test_bad_chunks_are_clear_errors(codec, codes, chunks, match):
    with pytest.raises(CodesError, match=match):
        list(codec.decode_stream(chunks, codes.speaker))


def test_bad_speaker_and_streams(codec, codes):
    with pytest.raises(CodesError, match="speaker"):
        list(codec.decode_stream([codes.tokens], codes.speaker[:10]))
    with pytest.raises(CodesError, match="streams must be between 1 and 4"):
        list(codec.decode_stream([codes.tokens], codes.speaker, streams=5))


def test_cli_dash_streams_raw_pcm16_to_stdout(codec, codes, tmp_path, monkeypatch):
    """``socodec tokens.soc -``: headerless s16le at 16 kHz, equal to the decoded audio."""
    import io
    import logging
    import sys
    import types

    from socodec.cli import main
    from socodec.codes import save_codes

    monkeypatch.setenv("SOCODEC_CACHE_DIR", str(tmp_path / "cache"))
    ckpts = tiny_ckpt_dir(tmp_path / "ckpts")
    save_codes(codes, tmp_path / "gt.soc")
    sink = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=sink, isatty=lambda: False))
    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    try:
        status = main([str(tmp_path / "gt.soc"), "-", "--ckpt-dir", str(ckpts), "--no-download", "-q", "--streams", "3",
                       "--analyzer-config", str(GOLDEN / "analyzer_tiny.json"),
                       "--vocoder-config", str(GOLDEN / "vocoder_tiny.json")])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
    assert status == 0
    pcm = torch.frombuffer(bytearray(sink.getvalue()), dtype=torch.int16)
    expected = codec.decode(codes, streams=3)
    assert pcm.shape == expected.shape == (codes.num_samples,)
    assert (pcm.float() - (expected.clamp(-1, 1) * 32768).floor().clamp(max=32767)).abs().max().item() <= 1
