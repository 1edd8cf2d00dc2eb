"""Batched encode/decode: every item equals its single-item result (tiny golden models)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import GOLDEN, assert_close_golden, tiny_ckpt_dir
from socodec import Codes, SoCodec
from socodec.inference.core import decode_batch, encode_batch, length_groups
from socodec.errors import CodesError
from socodec.config import ChunkConfig


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> SoCodec:
    return SoCodec.from_files(
        GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
        GOLDEN / "analyzer_tiny.json", GOLDEN / "vocoder_tiny.json", cache_dir=tmp_path_factory.mktemp("cache"),
    )


def clip(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    tone = torch.sin(2 * math.pi * (180 + 60 * seed) * t * (1 + 0.2 * t))
    return 0.3 * tone * (0.6 + 0.4 * torch.sin(2 * math.pi * 2.3 * t)) + 0.03 * torch.randn(n, generator=g)


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    """Three lengths: 0.43 s (5 frames with the lead), 1.7 s and 1.0 s."""
    return [clip(0.43, 0), clip(1.7, 1), clip(1.0, 2)]


@pytest.fixture(scope="module")
def singles(codec, clips) -> list[Codes]:
    return [codec.encode(c) for c in clips]


def test_batched_encode_equals_single(codec, clips, singles):
    batch = codec.encode(clips)
    assert isinstance(batch, list) and len(batch) == 3
    assert len({c.num_frames for c in batch}) == 3
    for one, many in zip(singles, batch):
        assert torch.equal(one.tokens, many.tokens)
        assert_close_golden(many.speaker, one.speaker)
        assert (many.num_samples, many.lead, many.model) == (one.num_samples, one.lead, one.model)


def test_batched_encode_options(codec, clips):
    stereo_44k = torch.stack([clips[0], clips[0]])  # [C, N]
    batch = codec.encode([stereo_44k, clips[2].numpy()], sample_rate=16000, lead=False)
    assert [c.lead for c in batch] == [0, 0]
    assert torch.equal(batch[0].tokens, codec.encode(clips[0], lead=False).tokens)
    assert codec.encode([]) == []


def test_batched_decode_equals_single(codec, singles):
    one = [codec.decode(c) for c in singles]
    many = codec.decode(singles)
    assert isinstance(many, list) and len(many) == 3
    for a, b in zip(one, many):
        assert b.shape == a.shape
        assert_close_golden(b, a)


def test_batched_decode_streams_speaker_and_mixed_widths(codec, singles):
    other = singles[1].speaker
    items = [singles[0], singles[1].with_streams(2), dataclasses.replace(singles[2], lead=None, num_samples=None)]
    many = codec.decode(items, speaker=other)
    for item, b in zip(items, many):
        assert_close_golden(b, codec.decode(item, speaker=other))
    many = codec.decode(singles, streams=1)
    for item, b in zip(singles, many):
        assert_close_golden(b, codec.decode(item, streams=1))
    with pytest.raises(CodesError, match="streams must be between 1 and 2"):
        codec.decode(items, streams=3)


def test_long_items_in_a_batch_take_the_chunked_path(codec, clips, singles):
    saved = codec.chunks
    codec.chunks = ChunkConfig(hubert_window=5, hubert_context=2, vocoder_chunk=100, decode_chunk=4)
    try:
        batch = codec.encode(clips)  # the 1.7 s clip (19 frames) is windowed, the others batched
        assert torch.equal(batch[0].tokens, singles[0].tokens)
        assert batch[1].num_frames == singles[1].num_frames
        decoded = codec.decode(singles)  # items over 100 mel frames are synthesised in chunks
    finally:
        codec.chunks = saved
    for item, b in zip(singles, decoded):
        assert_close_golden(b, codec.decode(item))


def test_length_groups():
    assert length_groups([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]
    assert length_groups([], 3) == []
    with pytest.raises(ValueError):
        length_groups([1], 0)


def _run_cli(args: list) -> int:
    """``socodec.cli.main`` in-process, restoring the root logger and the thread count afterwards."""
    import logging

    from socodec.cli import main

    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    try:
        return main([str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)


def test_cli_batch_size_matches_one_by_one(tmp_path, clips, monkeypatch):
    import soundfile as sf

    from socodec.codes import load_codes

    monkeypatch.setenv("SOCODEC_CACHE_DIR", str(tmp_path / "cache"))
    ckpts = tiny_ckpt_dir(tmp_path / "ckpts")
    model = ["--ckpt-dir", ckpts, "--analyzer-config", GOLDEN / "analyzer_tiny.json",
             "--vocoder-config", GOLDEN / "vocoder_tiny.json", "--no-download", "-q"]
    src = tmp_path / "in"
    src.mkdir()
    for i, c in enumerate(clips):
        sf.write(src / f"clip{i}.wav", c.numpy(), 16000, subtype="FLOAT")
    import socodec.codec as codec_mod

    batches = []
    monkeypatch.setattr(codec_mod, "encode_batch", lambda c, w, *a: batches.append(len(w)) or encode_batch(c, w, *a))
    monkeypatch.setattr(codec_mod, "decode_batch", lambda c, x, *a: batches.append(-len(x)) or decode_batch(c, x, *a))
    for n in (1, 3):
        assert _run_cli([src, tmp_path / f"soc{n}", "--batch-size", n, *model]) == 0
        assert _run_cli([src, tmp_path / f"wav{n}", "-t", ".wav", "--sample-format", "float",
                         "--batch-size", n, *model]) == 0
    assert batches == [3, 3, -3]  # --batch-size 3: one encode batch per run, one decode batch for the wavs
    for i in range(3):
        one, three = load_codes(tmp_path / "soc1" / f"clip{i}.soc"), load_codes(tmp_path / "soc3" / f"clip{i}.soc")
        assert torch.equal(one.tokens, three.tokens)
        assert_close_golden(three.speaker, one.speaker)
        a, _ = sf.read(tmp_path / "wav1" / f"clip{i}.wav", dtype="float32")
        b, _ = sf.read(tmp_path / "wav3" / f"clip{i}.wav", dtype="float32")
        assert a.shape == b.shape == (clips[i].numel(),)
        assert_close_golden(torch.from_numpy(b), torch.from_numpy(a))
    assert _run_cli([src, tmp_path / "bad", "--batch-size", 0, *model]) == 2
