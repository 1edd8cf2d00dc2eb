"""HuBERT's native kernels (attention, bias + GELU, LayerNorm + GELU): equal to float64 references,
independent of threads and batching, checked before use, and with the PyTorch path as fallback."""

from __future__ import annotations

import dataclasses
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


def _attention_kernel() -> NativeKernel:
    """The kernel, where its attention runs on this host (the first test checks that it does exactly
    where the CPU has AVX-512 and the library OpenMP, so a skip here cannot hide a failed build)."""
    kernel = _kernel()
    if not kernel.has_attention:
        pytest.skip("the native attention needs AVX-512 and OpenMP; PyTorch's runs on this host")
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
    kernel = _attention_kernel()
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
    kernel = _attention_kernel()
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 700, 4 * 64, generator=gen)
    k, v = torch.randn(2, 4, 700, 64, generator=gen), torch.randn(2, 4, 700, 64, generator=gen)
    lengths = torch.tensor([700, 650])
    one, three, alone, block = _attention_variants(kernel, q, k, v, lengths, (300, 500))
    assert torch.equal(one, three) and torch.equal(alone, three[1:]) and torch.equal(block, three[:, 300:500])


def _attention_variants(kernel, q, k, v, lengths, span):
    """The kernel's output on 1 and 3 threads, for the second item alone (3 threads) and for the
    queries ``span`` only (a block of queries, as long inputs run; 3 threads)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.attention(q, k, v, lengths)
        torch.set_num_threads(3)
        three = kernel.attention(q, k, v, lengths)
        alone = kernel.attention(q[1:], k[1:].contiguous(), v[1:].contiguous(), lengths[1:])
        block = kernel.attention(q[:, span[0] : span[1]], k, v, lengths)
    finally:
        torch.set_num_threads(threads)
    assert one is not None and three is not None and alone is not None and block is not None
    return one, three, alone, block


def test_attention_declines_what_it_does_not_run_and_refuses_bad_lengths() -> None:
    kernel = _attention_kernel()
    q, k = torch.randn(1, 5, 2 * 16), torch.randn(1, 2, 5, 16)
    lengths = torch.tensor([5])
    assert kernel.attention(q, k, k, lengths) is not None
    declined = {
        "D = 24": (torch.randn(1, 5, 2 * 24), torch.randn(1, 2, 5, 24), torch.randn(1, 2, 5, 24)),
        "D = 80": (torch.randn(1, 5, 2 * 80), torch.randn(1, 2, 5, 80), torch.randn(1, 2, 5, 80)),
        "float64": (q.double(), k.double(), k.double()),
        "keys not contiguous": (q, k.transpose(2, 3).contiguous().transpose(2, 3), k),
        "values not contiguous": (q, k, k.transpose(2, 3).contiguous().transpose(2, 3)),
        "values of another shape": (q, k, torch.randn(1, 2, 6, 16)),
        "query values strided": (torch.randn(1, 5, 2 * 16, 2)[..., 0], k, k),
        "queries of another width": (torch.randn(1, 5, 3 * 16), k, k),
    }
    for name, (qq, kk, vv) in declined.items():
        assert kernel.attention(qq, kk, vv, lengths) is None, name
    for bad in ([0], [6], [5, 5]):
        with pytest.raises(ValueError, match="lengths"):
            kernel.attention(q, k, k, torch.tensor(bad))


def test_a_nan_key_reaches_the_output_as_in_pytorch() -> None:
    kernel = _attention_kernel()
    gen = torch.Generator().manual_seed(9)
    q, k, v = torch.randn(1, 20, 64, generator=gen), torch.randn(1, 1, 200, 64, generator=gen), torch.randn(1, 1, 200, 64, generator=gen)
    for position in (3, 7, 150, 199):
        bad = k.clone()
        bad[0, 0, position, 5] = float("nan")
        got = kernel.attention(q, bad, v, torch.tensor([200]))
        want = F.scaled_dot_product_attention(q.view(1, 20, 1, 64).transpose(1, 2), bad, v)
        assert got is not None and torch.equal(got.isnan(), want.transpose(1, 2).reshape(1, 20, 64).isnan()), position


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


def _network(seed: int, cfg: HubertConfig = TINY) -> HubertNetwork:
    torch.manual_seed(seed)
    net = HubertNetwork(cfg, receptive_field(cfg)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


class _Counting:
    """The kernel, counting the calls of each of its functions that it answers."""

    def __init__(self, kernel: NativeKernel) -> None:
        self.kernel, self.has_attention, self.calls = kernel, kernel.has_attention, []

    def attention(self, *args: torch.Tensor) -> torch.Tensor | None:
        out = self.kernel.attention(*args)
        self.calls += ["attention"] if out is not None else []
        return out

    def bias_gelu_(self, x: torch.Tensor, bias: torch.Tensor) -> bool:
        done = self.kernel.bias_gelu_(x, bias)
        self.calls += ["bias_gelu"] if done else []
        return done

    def layer_norm_gelu(self, *args: torch.Tensor | float) -> torch.Tensor | None:
        out = self.kernel.layer_norm_gelu(*args)  # type: ignore[arg-type]
        self.calls += ["layer_norm_gelu"] if out is not None else []
        return out


@pytest.mark.parametrize("width", [16, 64])
def test_the_network_gives_the_pytorch_paths_numbers_with_the_kernels(width: int) -> None:
    cfg = dataclasses.replace(TINY, embed_dim=4 * width, num_heads=4, conv_pos_groups=4)
    net = _network(3, cfg)
    wav = torch.randn(2, 300 * 320 + 80, generator=torch.Generator().manual_seed(4))
    valid = torch.arange(300)[None, :] < torch.tensor([300, 211])[:, None]
    kernel = _Counting(_kernel())
    with torch.inference_mode():
        assert not net.use_native(None)
        plain, plain_masked = net(wav), net(wav, valid)
        assert net.use_native(kernel)
        native = net(wav)
        kernel.calls.clear()
        native_masked = net(wav, valid)
        calls = list(kernel.calls)
        alone = net(wav[1:, : 211 * 320 + 80])
    # every layer of the padded batch on the kernels (the attention where it runs here)
    expected = {"bias_gelu", "layer_norm_gelu"} | ({"attention"} if kernel.has_attention else set())
    assert set(calls) == expected and calls.count("bias_gelu") == cfg.num_layers
    assert calls.count("attention") == (cfg.num_layers if kernel.has_attention else 0)
    assert (native - plain).abs().max().item() < 1e-4
    assert (native_masked - plain_masked).abs().max().item() < 1e-4
    assert (native_masked[1, :211] - alone[0]).abs().max().item() < 1e-4


def test_only_gradient_free_cpu_float32_calls_use_the_kernels() -> None:
    kernel = _Counting(_kernel())
    net = _network(6)
    assert net.use_native(kernel)
    kernel.calls.clear()  # the check before use
    wav = torch.randn(1, 40 * 320 + 80)
    with torch.enable_grad():
        net(wav)
    net.double()
    with torch.inference_mode():
        net(wav.double())
    assert kernel.calls == []
    net.float()
    with torch.inference_mode():
        net(wav)
    assert {"bias_gelu", "layer_norm_gelu"} <= set(kernel.calls)
    assert ("attention" in kernel.calls) == kernel.has_attention


def test_a_kernel_with_other_numbers_is_refused_and_one_without_attention_falls_back(
        caplog: pytest.LogCaptureFixture) -> None:
    kernel = _kernel()

    class Wrong:
        has_attention = kernel.has_attention
        attention = staticmethod(kernel.attention)
        layer_norm_gelu = staticmethod(kernel.layer_norm_gelu)

        def bias_gelu_(self, x: torch.Tensor, bias: torch.Tensor) -> bool:
            x.zero_()
            return True

    class NoAttention:
        has_attention = False
        bias_gelu_ = staticmethod(kernel.bias_gelu_)
        layer_norm_gelu = staticmethod(kernel.layer_norm_gelu)

        def attention(self, *args: torch.Tensor) -> None:
            raise AssertionError("not called where the kernel has no attention")

    net = _network(7)
    assert not net.use_native(Wrong())
    assert net.encoder.layers[0].feed_forward.native is None and "not used" in caplog.text
    wav = torch.randn(1, 120 * 320 + 80, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        plain = net(wav)
        assert net.use_native(NoAttention())
        fallback = net(wav)
    assert (fallback - plain).abs().max().item() < 1e-4


def test_attention_with_scores_far_above_the_first_blocks_maximum() -> None:
    """A key past the first block whose score exceeds a query's running maximum by far (2^64 and more in
    base 2) moves that query's maximum alone: the numbers stay those of float64, and they still do not
    depend on threads, batching or query blocks."""
    kernel = _attention_kernel()
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, 600, 2 * 64, generator=gen)
    k, v = torch.randn(2, 2, 600, 64, generator=gen), torch.randn(2, 2, 600, 64, generator=gen)
    heads = q.view(2, 600, 2, 64)
    spikes = {5: 300, 417: 599, 131: 130, 300: 520}  # query: key, the keys past the first block of 128
    for query, key in spikes.items():
        k[:, :, key] = heads[:, query] * 16  # a score of ~64 * 16 / 8 = 128 nats (185 in base 2) above the rest
    lengths = torch.tensor([600, 560])
    want = _reference_attention(q.view(2, 600, 2, 64), k, v, lengths)
    one, three, alone, block = _attention_variants(kernel, q, k, v, lengths, (100, 450))
    assert (one.double() - want).abs().max().item() < 2e-5 * want.abs().max().item()
    for query, key in spikes.items():  # all of the query's weight is on its key
        assert torch.allclose(one[0, query].view(2, 64), v[0, :, key], atol=1e-5)
    assert torch.equal(one, three) and torch.equal(alone, three[1:]) and torch.equal(block, three[:, 100:450])


@pytest.mark.parametrize("batch, span", [(1, (0, 40)), (1, (10, 30)), (2, (0, 40)), (2, (10, 30))])
@pytest.mark.parametrize("bias", [True, False])
def test_products_added_in_place_equal_the_out_of_place_sum(batch, span, bias) -> None:
    """The inference path's residual additions (into the whole tensor or a block of its frames, one
    matrix in memory or not) give x + linear(h), and touch nothing outside the block."""
    from socodec.nn.hubert import add_linear_

    gen = torch.Generator().manual_seed(batch * 10 + span[0])
    linear = torch.nn.Linear(48, 32, bias=bias)
    x, h = torch.randn(batch, 40, 32, generator=gen), torch.randn(batch, span[1] - span[0], 48, generator=gen)
    want = x.clone()
    with torch.no_grad():
        want[:, span[0] : span[1]] = x[:, span[0] : span[1]] + linear(h)
        add_linear_(x[:, span[0] : span[1]], h, linear)
    assert torch.allclose(x, want, atol=1e-5, rtol=0)
    assert torch.equal(x[:, : span[0]], want[:, : span[0]]) and torch.equal(x[:, span[1] :], want[:, span[1] :])


def test_flop_counters_see_every_product_of_an_inference_layer() -> None:
    """The benchmarks' compute floor counts FLOPs with torch's counter: the in-place residual products
    must stay visible to it (the projections and the feed-forward, 2 T E (4 E + 2 F))."""
    from torch.utils.flop_counter import FlopCounterMode

    from socodec.nn.hubert import EncoderLayer

    layer = EncoderLayer(64, 4, 256).eval()
    x = torch.randn(1, 50, 64)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        layer(x)
    attention = 4 * 50 * 50 * 64  # PyTorch's attention path, where the counter sees it
    assert counter.get_total_flops() in (2 * 50 * 64 * (4 * 64 + 2 * 256), 2 * 50 * 64 * (4 * 64 + 2 * 256) + attention)


def test_inference_layer_under_autocast_and_with_gradients() -> None:
    """The in-place inference sums keep working where dtypes differ (autocast) or autograd records."""
    from socodec.nn.hubert import EncoderLayer

    layer = EncoderLayer(64, 4, 256).eval()
    kernel = _kernel()
    layer.feed_forward.native = kernel
    layer.attention.native = kernel if kernel.has_attention else None  # keys and values fold their bias
    x = torch.randn(1, 30, 64)
    with torch.no_grad():
        want = layer(x.clone())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x.clone())
    assert got.dtype == torch.float32 and (got - want).abs().max().item() < 0.1
    with torch.enable_grad():
        y = x.clone().requires_grad_()
        layer.feed_forward.add_to(out := y * 1.0, y)
        out.sum().backward()
    assert y.grad is not None and bool(torch.isfinite(y.grad).all())
