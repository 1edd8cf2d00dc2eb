"""HuBERT's native kernels (attention, bias + GELU, LayerNorm + GELU): equal to float64 references,
independent of threads and batching, checked before use, and with the PyTorch path as fallback."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from socodec.config import HubertConfig
from socodec.loading.native import NativeKernel, native_kernel, native_status
from socodec.nn.hubert import HubertNetwork, native_agrees, receptive_field

TINY = HubertConfig(conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2, embed_dim=64, ffn_dim=128,
                    num_layers=2, num_heads=4, conv_pos=16, conv_pos_groups=4)


def _kernel() -> NativeKernel:
    kernel = native_kernel()
    assert kernel is not None, native_status()
    return kernel


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """float64 softmax attention: q [B, Tq, H, D], k/v [B, H, Tk, D] -> [B, Tq, H D]."""
    batch, frames, heads, width = q.shape
    keep = torch.arange(k.shape[2])[None, :] < lengths[:, None]
    k, v = (t.double().masked_fill(~keep[:, None, :, None], 0.0) for t in (k, v))
    scores = torch.einsum("bthd,bhsd->bhts", q.double(), k) / math.sqrt(width)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = torch.einsum("bhts,bhsd->bthd", scores.softmax(-1), v)
    return out.reshape(batch, frames, heads * width)


def test_the_attention_kernel_runs_on_avx512_hosts_and_passes_its_check() -> None:
    kernel = _kernel()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert kernel.has_attention == (" avx512f" in flags and kernel.openmp)
    assert native_agrees(kernel)
    assert ("native attention" in native_status()) == kernel.has_attention


@pytest.mark.parametrize("width", [16, 32, 48, 64])
@pytest.mark.parametrize(("queries", "keys"), [(1, 1), (7, 9), (33, 31), (129, 257), (300, 300), (260, 1000)])
def test_attention_equals_float64(width: int, queries: int, keys: int) -> None:
    kernel = _kernel()
    if not kernel.has_attention:
        pytest.fail("this host runs PyTorch's attention; the kernel needs AVX-512 and OpenMP")
    gen = torch.Generator().manual_seed(queries * 7 + keys + width)
    q = torch.randn(2, queries, 3, width, generator=gen)
    k, v = torch.randn(2, 3, keys, width, generator=gen) * 1.5, torch.randn(2, 3, keys, width, generator=gen)
    lengths = torch.tensor([keys, max(1, keys // 3)])
    k[1, :, lengths[1]:] = float("nan")  # keys past an item's length are never read
    v[1, :, lengths[1]:] = float("nan")
    got = kernel.attention(q.reshape(2, queries, 3 * width), k, v, lengths)
    assert got is not None and got.shape == (2, queries, 3 * width)
    assert (got.double() - _reference_attention(q, k, v, lengths)).abs().max().item() < 2e-6


def test_attention_does_not_depend_on_threads_batching_or_query_blocks() -> None:
    kernel = _kernel()
    if not kernel.has_attention:
        pytest.fail("this host runs PyTorch's attention; the kernel needs AVX-512 and OpenMP")
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 700, 4 * 64, generator=gen)
    k, v = torch.randn(2, 4, 700, 64, generator=gen), torch.randn(2, 4, 700, 64, generator=gen)
    lengths = torch.tensor([700, 650])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.attention(q, k, v, lengths)
        torch.set_num_threads(3)
        three = kernel.attention(q, k, v, lengths)
        alone = kernel.attention(q[1:], k[1:].contiguous(), v[1:].contiguous(), lengths[1:])
        block = kernel.attention(q[:, 300:500], k, v, lengths)  # a block of queries, as long inputs run
    finally:
        torch.set_num_threads(threads)
    assert one is not None and three is not None and alone is not None and block is not None
    assert torch.equal(one, three) and torch.equal(alone, three[1:]) and torch.equal(block, three[:, 300:500])


def test_attention_declines_what_it_does_not_run_and_refuses_bad_lengths() -> None:
    kernel = _kernel()
    q, k = torch.randn(1, 5, 2 * 24), torch.randn(1, 2, 5, 24)
    assert kernel.attention(q, k, k, torch.tensor([5])) is None  # D = 24: not a multiple of 16
    q, k = torch.randn(1, 5, 2 * 16), torch.randn(1, 2, 5, 16)
    assert kernel.attention(q, k.transpose(2, 3).transpose(2, 3).double(), k, torch.tensor([5])) is None
    with pytest.raises(ValueError, match="lengths"):
        kernel.attention(q, k, k, torch.tensor([0]))
    with pytest.raises(ValueError, match="lengths"):
        kernel.attention(q, k, k, torch.tensor([6]))


def test_bias_gelu_equals_float64_in_place() -> None:
    kernel = _kernel()
    gen = torch.Generator().manual_seed(1)
    x, bias = torch.randn(37, 300, generator=gen) * 4, torch.randn(300, generator=gen)
    x[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4, -1e4])
    want = F.gelu((x + bias).double())
    h = x.clone()
    assert kernel.bias_gelu_(h, bias)
    assert torch.equal(h.isnan(), want.isnan()) and torch.equal(h[0, :5].isinf(), want[0, :5].isinf())
    finite = want.isfinite()
    assert (h.double()[finite] - want[finite]).abs().max().item() < 1e-6 * 4
    assert not kernel.bias_gelu_(torch.randn(4, 6).t(), torch.randn(4))  # not contiguous: declined


def test_layer_norm_gelu_equals_float64() -> None:
    kernel = _kernel()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 401, 512, generator=gen) * 3 + 0.5
    weight, bias = torch.randn(512, generator=gen), torch.randn(512, generator=gen)
    got = kernel.layer_norm_gelu(x, weight, bias, 1e-5)
    want = F.gelu(F.layer_norm(x.double(), (512,), weight.double(), bias.double(), 1e-5))
    assert got is not None and got.shape == x.shape
    assert (got.double() - want).abs().max().item() < 1e-5


def _network(seed: int) -> HubertNetwork:
    torch.manual_seed(seed)
    net = HubertNetwork(TINY, receptive_field(TINY)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def test_the_network_gives_the_pytorch_paths_numbers_with_the_kernels() -> None:
    net = _network(3)
    wav = torch.randn(2, 300 * 320 + 80, generator=torch.Generator().manual_seed(4))
    valid = torch.arange(300)[None, :] < torch.tensor([300, 211])[:, None]
    with torch.inference_mode():
        assert not net.use_native(None)
        plain, plain_masked = net(wav), net(wav, valid)
        assert net.use_native(_kernel())
        native, native_masked = net(wav), net(wav, valid)
        alone = net(wav[1:, : 211 * 320 + 80])
    assert (native - plain).abs().max().item() < 1e-4
    assert (native_masked - plain_masked).abs().max().item() < 1e-4
    assert (native_masked[1, :211] - alone[0]).abs().max().item() < 1e-4


def test_only_gradient_free_cpu_float32_calls_use_the_kernels() -> None:
    kernel = _kernel()
    calls: list[str] = []

    class Counting:
        def attention(self, *args: torch.Tensor) -> torch.Tensor | None:
            calls.append("attention")
            return kernel.attention(*args)

        def bias_gelu_(self, x: torch.Tensor, bias: torch.Tensor) -> bool:
            calls.append("bias_gelu")
            return kernel.bias_gelu_(x, bias)

        def layer_norm_gelu(self, *args: torch.Tensor | float) -> torch.Tensor | None:
            calls.append("layer_norm_gelu")
            return kernel.layer_norm_gelu(*args)  # type: ignore[arg-type]

    net = _network(6)
    assert net.use_native(Counting())
    wav = torch.randn(1, 40 * 320 + 80)
    calls.clear()
    with torch.enable_grad():
        net(wav)
    net.double()
    with torch.inference_mode():
        net(wav.double())
    assert calls == []
    net.float()
    with torch.inference_mode():
        net(wav)
    assert {"attention", "bias_gelu", "layer_norm_gelu"} <= set(calls) or not kernel.has_attention


def test_a_kernel_with_other_numbers_is_refused_and_one_without_attention_falls_back(
        caplog: pytest.LogCaptureFixture) -> None:
    kernel = _kernel()

    class Wrong:
        attention = staticmethod(kernel.attention)
        layer_norm_gelu = staticmethod(kernel.layer_norm_gelu)

        def bias_gelu_(self, x: torch.Tensor, bias: torch.Tensor) -> bool:
            x.zero_()
            return True

    class NoAttention:
        bias_gelu_ = staticmethod(kernel.bias_gelu_)
        layer_norm_gelu = staticmethod(kernel.layer_norm_gelu)

        def attention(self, *args: torch.Tensor) -> None:
            return None

    net = _network(7)
    assert not net.use_native(Wrong())
    assert net.encoder.layers[0].feed_forward.native is None and "not used" in caplog.text
    wav = torch.randn(1, 120 * 320 + 80, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        plain = net(wav)
        assert net.use_native(NoAttention())
        fallback = net(wav)
    assert (fallback - plain).abs().max().item() < 1e-4
