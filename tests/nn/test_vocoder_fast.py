"""The vocoder's inference path (channels-last layout, folded SnakeBeta filters) against the plain spec path."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from socodec.config import VocoderConfig
from socodec.nn.vocoder import Activation1d, Vocoder
from socodec.nn.vocoder import channels_last_1d

from conftest import GOLDEN


@pytest.fixture(scope="module")
def tiny() -> Vocoder:
    model = Vocoder(VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json"))
    model.load_state_dict(load_file(str(GOLDEN / "vocoder_tiny.safetensors")))
    return model.eval()


def _spec_path(model: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """Run with gradients enabled on the parameters: the plain [B, C, T] spec formulation."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            return model(*args).detach()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def test_fast_vocoder_equals_spec_path(tiny):
    """Both float32 paths land ~1e-5 from a float64 run of the spec path (the tiny model amplifies)."""
    mel = torch.randn(2, 37, 80, generator=torch.Generator().manual_seed(0))
    expected = _spec_path(tiny, mel)
    exact = _spec_path(copy.deepcopy(tiny).double(), mel.double())
    with torch.inference_mode():
        fast = tiny(mel)
    assert fast.shape == expected.shape == (2, 37 * 160)
    assert (fast.double() - exact).abs().max().item() < 2e-5
    assert (fast - expected).abs().max().item() < 3e-5


def _activation(channels: int, seed: int, scale: float = 0.5) -> Activation1d:
    gen = torch.Generator().manual_seed(seed)
    act = Activation1d(channels)
    with torch.no_grad():
        act.act.alpha.copy_(torch.randn(channels, generator=gen) * scale)
        act.act.beta.copy_(torch.randn(channels, generator=gen) * scale)
    return act


@pytest.mark.parametrize("length", [1, 4, 15, 16, 29, 70])
def test_activation_layouts_agree(length):
    act = _activation(5, length)
    x = torch.randn(2, 5, length, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        flat = act(x)
        cl = act(channels_last_1d(x))
    assert cl.shape == (2, 5, 1, length) and cl.is_contiguous(memory_format=torch.channels_last)
    assert flat.shape == (2, 5, length)
    assert (cl.squeeze(2) - flat).abs().max().item() == 0.0
    assert (flat - act.reference(x)).abs().max().item() < 1e-5


def test_bfloat16_activation_runs_in_float32_on_cpu():
    """A bfloat16 channels-last input is activated in float32 and rounded once (the CPU fast path)."""
    act = _activation(6, 11)
    x = channels_last_1d(torch.randn(1, 6, 50, generator=torch.Generator().manual_seed(4))).bfloat16()
    with torch.inference_mode():
        out = act(x)
        wide = act(x.float())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, wide.bfloat16())


def test_activation_extreme_alpha_takes_the_plain_path():
    act = _activation(3, 7)
    with torch.no_grad():
        act.act.alpha[1] = -90.0  # exp(alpha) underflows: folding 1/exp(alpha) would give inf
    x = torch.randn(1, 3, 40, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = act(x)
    assert torch.isfinite(out).all()
    assert (out - act.reference(x)).abs().max().item() == 0.0


def test_activation_cache_follows_parameter_updates():
    act = _activation(4, 3)
    x = torch.randn(1, 4, 30, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before = act(x)
    other = _activation(4, 4)
    act.load_state_dict(other.state_dict())
    with torch.inference_mode():
        after = act(x)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - other.reference(x)).abs().max().item() < 1e-5


def test_real_size_fast_path_matches_spec_path():
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig.released()).eval()  # random weight-normed init, 512 channels
    for module in model.modules():
        if isinstance(module, Activation1d):
            with torch.no_grad():
                module.act.alpha.normal_(0.0, 0.3)
                module.act.beta.normal_(0.0, 0.3)
    mel = torch.randn(1, 12, 80) * 0.5
    expected = _spec_path(model, mel)
    with torch.inference_mode():
        fast = model(mel)
    assert (fast - expected).abs().max().item() < 1e-5
