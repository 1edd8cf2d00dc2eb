"""Vocoder (SPEC §8): golden parity, checkpoint layout, strict loading, chunked synthesis."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN, MANIFESTS, assert_close_golden
from socodec.loading.checkpoints import load_strict, read_safetensors
from socodec.config import VocoderConfig
from socodec.errors import CheckpointError
from socodec.nn.vocoder import Activation1d, Vocoder, WNConv1d, kaiser_sinc_filter

TINY_WEIGHTS = GOLDEN / "vocoder_tiny.safetensors"


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return read_safetensors(TINY_WEIGHTS)


@pytest.fixture(scope="module")
def tiny_vocoder(tiny_state) -> Vocoder:
    model = Vocoder(VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json"))
    load_strict(model, tiny_state, source=TINY_WEIGHTS)
    return model.eval()


def test_golden_parity(tiny_vocoder, golden_case):
    with torch.inference_mode():
        wav = tiny_vocoder(golden_case["mel_pred"][None])
    assert wav.shape == (1, golden_case["output_wav"].numel())
    assert_close_golden(wav[0], golden_case["output_wav"])


def test_state_dict_matches_released_manifest():
    manifest = json.loads((MANIFESTS / "manifest_vocoder_real.json").read_text())
    state = Vocoder(VocoderConfig.released()).state_dict()  # CPU build: 0.1 s (first meta build: ~2 s)
    assert {k: list(v.shape) for k, v in state.items()} == {k: e["shape"] for k, e in manifest.items()}
    assert list(state) == list(manifest)  # same order as the released file's state dict
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(e["dtype"] == "float32" for e in manifest.values())


def test_tiny_state_dict_matches_file(tiny_state):
    model = Vocoder(VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json"))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in tiny_state.items()}


def test_filter_buffers_are_loaded_and_match_design(tiny_vocoder, tiny_state):
    for key in ("activation_post.upsample.filter", "resblocks.4.activations.1.downsample.lowpass.filter"):
        assert torch.equal(tiny_vocoder.state_dict()[key], tiny_state[key])
        assert torch.allclose(kaiser_sinc_filter(), tiny_state[key], atol=1e-7)


@pytest.mark.parametrize("damage", ["missing", "shape", "unexpected"])
def test_bad_checkpoint_raises(tiny_state, damage):
    state = dict(tiny_state)
    if damage == "missing":
        del state["resblocks.7.convs.1.weight_v"]
    elif damage == "shape":
        state["ups.2.0.weight_g"] = torch.zeros(3, 1, 1)
    else:
        state["resblocks.15.convs.0.bias"] = torch.zeros(4)
    model = Vocoder(VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json"))
    with pytest.raises(CheckpointError, match="vocoder_tiny.safetensors"):
        load_strict(model, state, source=TINY_WEIGHTS)


def test_receptive_field():
    assert Vocoder(VocoderConfig.released()).receptive_field() == 14
    assert Vocoder(VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json")).receptive_field() == 14


def test_chunked_equals_whole_float64(tiny_state):
    """In float64 (no float32 noise, which this random network amplifies to ~1e-5) chunks with
    receptive_field() context reproduce whole-sequence synthesis to rounding; less context does not."""
    model = Vocoder(VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json"))
    load_strict(model, tiny_state, source=TINY_WEIGHTS)
    model = model.double().eval()
    mel = torch.randn(1, 300, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    with torch.inference_mode():
        whole = model(mel)
        chunked = model.forward_chunked(mel, 64)
        short = model.forward_chunked(mel, 64, context_frames=8)
    assert chunked.shape == whole.shape == (1, 300 * 160)
    assert (chunked - whole).abs().max().item() < 1e-9
    assert (short - whole).abs().max().item() > 1e-5


def test_chunked_equals_whole_float32(tiny_vocoder, golden_dir):
    mel = torch.randn(2, 300, 80, generator=torch.Generator().manual_seed(1)) * 1.5
    with torch.inference_mode():
        whole = tiny_vocoder(mel)
        assert_close_golden(tiny_vocoder.forward_chunked(mel, 64), whole)
        assert torch.equal(tiny_vocoder.forward_chunked(mel, 300), whole)


def _activation_spec(act: Activation1d, x: torch.Tensor) -> torch.Tensor:
    """SPEC §8 anti-aliased activation, literally (depthwise convolutions, replicate padding)."""
    c = x.shape[1]
    up, down = act.upsample.filter.expand(c, 1, 12), act.downsample.lowpass.filter.expand(c, 1, 12)
    y = 2.0 * F.conv_transpose1d(F.pad(x, (5, 5), mode="replicate"), up, stride=2, groups=c)
    y = act.act(y[..., 15:-15])
    return F.conv1d(F.pad(y, (5, 6), mode="replicate"), down, stride=2, groups=c)


@pytest.mark.parametrize("length", [1, 2, 5, 15, 16, 17, 33, 250])
def test_fast_activation_equals_spec(length):
    gen = torch.Generator().manual_seed(length)
    act = Activation1d(3)
    with torch.no_grad():
        act.act.alpha.copy_(torch.randn(3, generator=gen) * 0.5)
        act.act.beta.copy_(torch.randn(3, generator=gen) * 0.5)
    x = torch.randn(2, 3, length, generator=gen)
    expected = _activation_spec(act, x).detach()
    with torch.inference_mode():
        assert (act(x) - expected).abs().max().item() < 1e-5
    xg = x.clone().requires_grad_()
    out = act(xg)  # autograd path
    out.sum().backward()
    assert (out.detach() - expected).abs().max().item() < 1e-5
    assert xg.grad is not None and act.act.alpha.grad is not None


def test_weight_cache_follows_parameter_updates():
    conv = WNConv1d(4, 5, 3, dilation=3).eval()
    x = torch.randn(1, 4, 20)
    with torch.no_grad():
        conv(x)
        conv.load_state_dict({k: v * 2.5 for k, v in conv.state_dict().items()})
        got = conv(x)
    weight = torch._weight_norm(conv.weight_v, conv.weight_g, 0)
    assert torch.equal(got, F.conv1d(x, weight, conv.bias, padding=3, dilation=3))


def test_bad_input_shape(tiny_vocoder):
    with pytest.raises(ValueError, match="mel"):
        tiny_vocoder(torch.zeros(1, 80, 50))


@pytest.mark.parametrize("key, value, words", [
    ("snake_logscale", False, "snake_logscale true"),    # read, and refused: the model has no linear-scale snake
    ("snake_logscale", "false", "true or false"),        # bool("false") would be True
    ("use_tanh_at_final", "no", "true or false"),
    ("use_bias_at_final", 1, "true or false"),
    ("num_mels", "80", "integer"),
    ("upsample_initial_channel", True, "integer"),
])
def test_vocoder_config_types_are_checked(key: str, value: object, words: str) -> None:
    from socodec.errors import ConfigError

    data = json.loads((GOLDEN / "vocoder_tiny.json").read_text())
    assert VocoderConfig.from_dict(data).snake_logscale is True
    data[key] = value
    with pytest.raises(ConfigError, match=words):
        VocoderConfig.from_dict(data)


def test_analyzer_config_refuses_strings_for_numbers() -> None:
    from socodec.config import AnalyzerConfig
    from socodec.errors import ConfigError

    data = json.loads((GOLDEN / "analyzer_tiny.json").read_text())
    AnalyzerConfig.from_dict(data)
    data["n_model_size"] = str(data["n_model_size"])
    with pytest.raises(ConfigError, match="integer"):
        AnalyzerConfig.from_dict(data)
