"""Synthesis skips what is trimmed: every path equals full synthesis then trim (tiny golden models).

Codes that know their lead and length are vocoded only over their output frames plus the
vocoder's receptive field; the samples must be those of synthesising every frame and cutting.
The exactness checks run the tiny models in float64, where float rounding (float32: up to
~1.5e-5 between two lengths of the same convolution on these weights) cannot hide a missing
frame of context; one check runs the float32 default at the golden tolerance.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import GOLDEN, assert_close_golden, load_tiny_codec
from socodec.config import PADDINGS
from socodec import Codes, SoCodec
from socodec.config import LEAD_SAMPLES, ChunkConfig, padded_length, token_frames
from socodec.inference.synthesis import VocoderStream

TOL = 1e-5
# (input samples, lead): one sample, within a mel frame, on the token grid, within the receptive
# field of a boundary, a few tenths of a second; leads of 0.5 s, none and off the frame grid
CASES = ((1, LEAD_SAMPLES), (159, 0), (1920, 3333), (2240, LEAD_SAMPLES), (5000, 0), (9_123, LEAD_SAMPLES))


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> SoCodec:
    """The tiny models with the decoders and the vocoder in float64 (exactness checks)."""
    model = load_tiny_codec(tmp_path_factory.mktemp("cache"))
    model.analyzer.double()
    model.vocoder.double()
    model.compute_dtype = torch.float64
    return model


def make_codes(codec: SoCodec, n: int, lead: int, padding: str, seed: int) -> Codes:
    """Random tokens with the frame count that encoding ``n`` samples would give."""
    g = torch.Generator().manual_seed(seed)
    frames = token_frames(padded_length(lead + n, padding))
    tokens = torch.randint(0, codec.analyzer.vq.cardinality, (frames, codec.num_streams), generator=g)
    speaker = torch.randn(codec.analyzer.cfg.model_size, generator=g)
    return Codes(tokens, speaker, num_samples=n, lead=lead, padding=padding)


def full_then_trim(codec: SoCodec, codes: Codes, streams: int | None = None) -> torch.Tensor:
    """The reference: every mel frame through the vocoder, then the output cut out."""
    item = codec.decode_inputs(codes, streams)
    with torch.inference_mode():
        mel = codec.analyzer.decode_mel(item.tokens, item.speaker, item.streams)
        wav = codec.synthesize(mel)[0]
    if item.num_samples is None:
        return wav
    return wav[item.lead : item.lead + item.num_samples]


@pytest.fixture(scope="module")
def cases(codec) -> dict[str, list[tuple[Codes, torch.Tensor]]]:
    """Per padding: (codes, full-then-trim reference) for every :data:`CASES` entry."""
    out = {}
    for padding in PADDINGS:
        codes = [make_codes(codec, n, lead, padding, seed) for seed, (n, lead) in enumerate(CASES)]
        out[padding] = [(c, full_then_trim(codec, c)) for c in codes]
    return out


def assert_equal_within(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel():
        err = (actual - expected).abs().max().item()
        assert err <= TOL, f"max abs error {err:.2e}"


@pytest.mark.parametrize("padding", PADDINGS)
def test_whole_decode_equals_full_then_trim(codec, cases, padding):
    for codes, expected in cases[padding]:
        assert_equal_within(codec.decode(codes), expected)


@pytest.mark.parametrize("padding", PADDINGS)
def test_batch_equals_full_then_trim(codec, cases, padding):
    """All lengths and leads in one list: windows of different widths, some cut at the item's end."""
    items = [codes for codes, _ in cases[padding]]
    for out, (_, expected) in zip(codec.decode(items), cases[padding]):
        assert_equal_within(out, expected)


@pytest.mark.parametrize("padding", PADDINGS)
def test_chunked_decode_equals_full_then_trim(codec, cases, padding):
    """Small chunks: the chunked path skips the lead and stops after the output too."""
    codec.chunks = ChunkConfig(decode_chunk=3, vocoder_chunk=40)
    try:
        for codes, expected in cases[padding][-3:]:
            assert_equal_within(codec.decode(codes), expected)
            assert_equal_within(torch.cat(list(codec.decode_iter(codes)) or [torch.zeros(0)]), expected)
    finally:
        codec.chunks = ChunkConfig()


def test_stream_equals_full_then_trim(codec, cases):
    codes, expected = cases["published"][-1]
    part_expected = full_then_trim(codec, dataclasses.replace(codes, lead=9000, num_samples=777))
    for size in (1, 4, 100):
        streamed = torch.cat(list(codec.decode_stream(codes.tokens.split(size), codes)))
        assert_equal_within(streamed, expected)
        part = torch.cat(list(codec.decode_stream(codes.tokens.split(size), codes.speaker, lead=9000, num_samples=777)))
        assert_equal_within(part, part_expected)


def test_streams_of_real_codes(codec):
    """The golden utterance's tokens (first 0.72 s), 1 to 4 streams: whole, batched and streamed."""
    from safetensors.torch import load_file

    case = load_file(str(GOLDEN / "golden_ground_truth.safetensors"))
    codes = Codes(case["tokens"][:6], case["speaker"], num_samples=6 * 1920 - LEAD_SAMPLES - 1000, lead=LEAD_SAMPLES)
    for streams in (1, 2, 3, 4):
        expected = full_then_trim(codec, codes, streams)
        assert_equal_within(codec.decode(codes, streams=streams), expected)
        if streams in (1, 4):
            assert_equal_within(codec.decode([codes, codes.with_streams(streams)], streams=streams)[1], expected)
            streamed = torch.cat(list(codec.decode_stream(codes.tokens.split(3), codes, streams=streams)))
            assert_equal_within(streamed, expected)


def test_unknown_length_still_synthesises_everything(codec):
    codes = dataclasses.replace(make_codes(codec, 2000, LEAD_SAMPLES, "published", 1), lead=None, num_samples=None)
    out = codec.decode(codes)
    assert out.shape == (codes.num_frames * 1920,)
    assert_equal_within(out, full_then_trim(codec, codes))


def test_vocoder_stream_synthesises_only_the_output_frames(codec):
    """Frames before ``first - R`` and after ``stop + R`` never reach the vocoder; output ends early."""
    r = codec.vocoder.receptive_field()
    mel = torch.randn(1, 200, codec.vocoder.cfg.num_mels, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    handle = codec.vocoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        stream = VocoderStream(codec.vocoder, torch.float64, chunk_frames=1000, first_frame=60, stop_frame=100)
        with torch.inference_mode():
            out = stream.push(mel[:, :120])  # 100 + R frames: everything is final already
            assert stream.push(mel[:, 120:], final=True).numel() == 0
    finally:
        handle.remove()
    with torch.inference_mode():
        full = codec.vocoder(mel)[0].float()
    assert seen == [100 + r - (60 - r)]
    assert_equal_within(out, full[60 * 160 : 100 * 160])


def test_float32_paths_agree_at_the_golden_tolerance(tmp_path):
    codec32 = load_tiny_codec(tmp_path)
    items = [make_codes(codec32, n, LEAD_SAMPLES, "published", seed) for seed, n in enumerate((5000, 1919))]
    for codes, batched in zip(items, codec32.decode(items)):
        expected = full_then_trim(codec32, codes)
        assert_close_golden(codec32.decode(codes), expected)
        assert_close_golden(batched, expected)
        assert_close_golden(torch.cat(list(codec32.decode_stream(codes.tokens.split(2), codes))), expected)


def test_bfloat16_on_cpu_follows_the_cpu(tmp_path, monkeypatch):
    """Allowed where the CPU has native bfloat16 (HuBERT in bfloat16, the vocoder in float32:
    decoding equals float32's), refused elsewhere with one line."""
    import socodec.inference.core as core
    from socodec.errors import SoCodecError

    wav = torch.sin(torch.arange(12_000) / 7.0) * 0.3
    codec32 = load_tiny_codec(tmp_path / "a")
    reference = codec32.encode(wav)
    if core.cpu_has_native_bf16():
        codec16 = load_tiny_codec(tmp_path / "b").to_device("cpu", torch.bfloat16)
        codes = codec16.encode(wav)
        assert {p.dtype for p in codec16.hubert.parameters()} == {torch.bfloat16}
        assert codec16.vocoder_dtype == torch.float32
        assert codes.tokens.shape == reference.tokens.shape
        assert torch.equal(codes.speaker, reference.speaker)  # the speaker encoder stays in float32
        assert torch.equal(codec16.decode(codes), codec32.decode(codes))
    monkeypatch.setattr(core, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SoCodecError, match="native bfloat16"):
        load_tiny_codec(tmp_path / "c").to_device("cpu", torch.bfloat16)
    with pytest.raises(SoCodecError, match="float16 is only supported on CUDA"):
        load_tiny_codec(tmp_path / "d").to_device("cpu", torch.float16)


def test_vocoder_caches_are_built_at_load(tmp_path, monkeypatch):
    """Loading builds the vocoder's weight and filter caches: the first decode computes none of them."""
    model = load_tiny_codec(tmp_path)
    codes = make_codes(model, 5000, 0, "grid", seed=3)
    computed = []
    real_weight_norm = torch._weight_norm

    def counting(*args, **kwargs):
        computed.append(1)
        return real_weight_norm(*args, **kwargs)

    monkeypatch.setattr(torch, "_weight_norm", counting)
    first = model.decode(codes)
    assert computed == []
    model.vocoder.clear_cache()  # the counter sees a rebuild, so it would have seen one at the first decode
    second = model.decode(codes)
    assert len(computed) == sum(1 for m in model.vocoder.modules() if hasattr(m, "weight_g"))
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(second))
