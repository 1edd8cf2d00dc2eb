"""The published command line's padding (1919 zeros appended, SPEC §1) against ``golden/cli``.

Per stage (each stage fed the golden input of that stage) and end to end through the API, on
every path: whole, windowed (long), batched, from a file. ``padding="published"`` is the default.
"""

from __future__ import annotations

import dataclasses

import pytest
import soundfile as sf
import torch

from conftest import GOLDEN_CLI, assert_close_golden, load_tiny_codec
from socodec import Codes, SoCodec
from socodec.codes import load_codes
from socodec.config import ChunkConfig, padded_length, token_frames
from socodec.errors import SoCodecError

LEAD = 8000


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> SoCodec:
    return load_tiny_codec(tmp_path_factory.mktemp("cache"))


def test_lengths_follow_the_published_arithmetic(golden_cli_case):
    n = golden_cli_case["input_wav"].numel()
    length = padded_length(n + LEAD, "published")
    assert length == n + LEAD + 1919
    assert golden_cli_case["hubert_features"].shape[0] == -(-length // 320)
    assert golden_cli_case["mel"].shape[0] == (length - 160) // 160 + 1
    assert golden_cli_case["tokens"].shape[0] == token_frames(length)
    assert golden_cli_case["output_wav"].numel() == 1920 * token_frames(length)


@torch.inference_mode()
def test_each_stage_matches(codec, golden_cli_case):
    g = golden_cli_case
    padded = codec.pad(g["input_wav"], LEAD, "published")
    assert_close_golden(codec.features(padded[None])[0], g["hubert_features"])
    assert_close_golden(codec.mel(padded[None])[0], g["mel"])
    assert torch.equal(codec.analyzer.tokens(g["hubert_features"][None])[0], g["tokens"])
    assert_close_golden(codec.analyzer.speaker(g["mel"][None])[0], g["speaker"])
    mel_pred = codec.analyzer.decode_mel(g["tokens"][None], g["speaker"][None])[0]
    assert_close_golden(mel_pred, g["mel_pred"])
    assert_close_golden(codec.vocoder(g["mel_pred"][None])[0], g["output_wav"])


def test_encode_default_is_published(codec, golden_cli_case):
    g = golden_cli_case
    codes = codec.encode(g["input_wav"])
    assert codes.padding == "published"
    assert torch.equal(codes.tokens, g["tokens"])
    assert_close_golden(codes.speaker, g["speaker"])
    assert (codes.num_samples, codes.lead) == (g["input_wav"].numel(), LEAD)
    audio = codec.decode(codes)
    assert audio.shape == g["input_wav"].shape  # trimmed to the input's duration in both modes
    assert_close_golden(audio, g["output_wav"][LEAD : LEAD + g["input_wav"].numel()])


def test_published_feature_files_decode_to_output_wav(codec, golden_cli_case):
    ref = load_codes(GOLDEN_CLI / f"reference_cli_features_{golden_cli_case['name']}.pt")
    assert torch.equal(ref.tokens, golden_cli_case["tokens"])
    assert_close_golden(codec.decode(ref), golden_cli_case["output_wav"])


def test_grid_and_published_differ_by_the_padding_only(codec):
    x = load_codes(GOLDEN_CLI / "reference_cli_features_tone.pt")  # any input will do: use its speaker length
    wav = torch.sin(torch.arange(21111) / 7.0) * 0.3
    grid, published = codec.encode(wav, padding="grid"), codec.encode(wav, padding="published")
    assert (grid.padding, published.padding) == ("grid", "published")
    assert grid.num_frames == -(-(21111 + LEAD) // 1920) and published.num_frames == grid.num_frames + 1
    assert x.speaker_dim == published.speaker_dim
    with pytest.raises(SoCodecError, match="padding"):
        codec.encode(wav, padding="cli")


def test_batch_equals_single_items(codec):
    clips = [torch.randn(n) * 0.1 for n in (5000, 21111, 9000)]
    batch = codec.encode(clips)
    for clip, got in zip(clips, batch):
        want = codec.encode(clip)
        assert got.padding == "published" and torch.equal(got.tokens, want.tokens)
        assert_close_golden(got.speaker, want.speaker)


def test_file_equals_samples(codec, tmp_path):
    path = GOLDEN_CLI / "cli_tone.wav"
    data, rate = sf.read(path, dtype="float32")
    assert torch.equal(codec.encode(path).tokens, codec.encode(torch.from_numpy(data), rate).tokens)


def test_windowed_path_keeps_the_published_frame_count(codec):
    """A long input (tiny 1.2 s windows): T = ceil(ceil(L/320)/6), L = n + 8000 + 1919; windowing costs no more
    agreement than on the grid (white noise through 1.2 s windows: ~88 % either way)."""
    saved = codec.chunks
    x = torch.randn(16000 * 7 + 123, generator=torch.Generator().manual_seed(0)) * 0.1
    whole = codec.encode(x)
    codec.chunks = ChunkConfig(hubert_window=10, hubert_context=3, decode_chunk=7, vocoder_chunk=50)
    try:
        assert not codec.analysed_whole(LEAD + x.numel())
        windowed = codec.encode(x)
        audio = codec.decode(windowed)
    finally:
        codec.chunks = saved
    frames = token_frames(x.numel() + LEAD + 1919)
    assert windowed.num_frames == whole.num_frames == frames
    agreement = (windowed.tokens == whole.tokens).float().mean().item()
    assert agreement >= 0.8
    assert audio.shape == x.shape


@pytest.mark.parametrize("suffix", [".soc", ".pt"])
def test_token_files_record_the_padding(codec, tmp_path, suffix):
    codes = codec.encode(torch.randn(4000) * 0.1, padding="grid")
    back = Codes.load(codes.save(tmp_path / f"c{suffix}"))
    assert back.padding == "grid" and torch.equal(back.tokens, codes.tokens)
    unknown = Codes.load(dataclasses.replace(codes, padding=None).save(tmp_path / f"u{suffix}"))
    assert unknown.padding is None


def test_soundfile_layout_is_not_misread(codec, tmp_path):
    """``soundfile.read`` gives ``[N, C]``: same codes as ``[C, N]``, never 5 frames of 2 samples."""
    stereo = (torch.randn(2, 12000) * 0.1).numpy()
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo.T, 16000, subtype="FLOAT")
    data, rate = sf.read(path, dtype="float32")  # [N, 2]
    from_file = codec.encode(data, rate)
    assert from_file.num_samples == 12000
    assert torch.equal(from_file.tokens, codec.encode(stereo, 16000).tokens)
    for shape in [(8, 8), (100, 200), (2, 3, 400)]:
        with pytest.raises(SoCodecError, match="shape"):
            codec.encode(torch.zeros(shape))
