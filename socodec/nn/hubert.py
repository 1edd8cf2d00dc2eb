"""HuBERT feature extraction as SoCodec calls it (SPEC §3): padded waveform -> features.

The network itself is :class:`~socodec.nn.hubert.HubertNetwork` (no ``transformers``
needed); its parameter names are those of ``transformers``' ``HubertModel`` ("HF names").
:class:`HubertFeatures` wraps it with the published standardisation, tail and masking.
Reading checkpoints (fairseq names, the conversion cache) is :mod:`socodec.loading.hubert`.

HuBERT-large's network (fairseq ``layer_norm_first`` variant, SPEC §3), written for inference.

Submodule names follow ``transformers``' ``HubertModel`` (the converted weight cache uses
them), but nothing here imports ``transformers``. Shapes: B batch, N samples, T frames
(20 ms), C extractor channels (512), E model width (1024).

For CPU float32 inference the attention, the feed-forward's bias + GELU and the front end's
LayerNorm + GELU can run on native kernels (:meth:`HubertNetwork.use_native`, given by
:mod:`socodec.loading`), each checked against the PyTorch path here before use.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from socodec.config import HUBERT_TAIL_SAMPLES, HubertConfig, NORMALIZE_EPS

__all__ = ["BlockwiseFeatureEncoder", "HubertNetwork", "NativeTransformer", "native_agrees"]


logger = logging.getLogger(__name__)


def receptive_field(cfg: HubertConfig) -> int:
    """Samples seen by one extractor frame (400 for HuBERT)."""
    field, jump = 1, 1
    for _, kernel, stride in cfg.conv_layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


class NativeTransformer(Protocol):
    """Native kernels for the transformer's hot loops (see :mod:`socodec.loading.native`); each
    answers None (False) where it does not apply, and the PyTorch path then runs."""

    #: whether :meth:`attention` runs on this machine (else PyTorch's attention is used throughout)
    has_attention: bool

    def attention(self, q: Tensor, k: Tensor, v: Tensor, kv_len: Tensor) -> Tensor | None:
        """``q`` ``[B, Tq, H·D]``, ``k``/``v`` ``[B, H, Tk, D]`` contiguous, keys ``[0, kv_len[b])`` -> ``[B, Tq, H·D]``."""
        ...

    def bias_gelu_(self, x: Tensor, bias: Tensor) -> bool:
        """``x <- GELU(x + bias)`` in place, ``x`` ``[..., C]`` contiguous, ``bias`` ``[C]``."""
        ...

    def layer_norm_gelu(self, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor | None:
        """``GELU(LayerNorm(x))`` over the last axis of a contiguous ``[..., C]``."""
        ...


def _native_for(native: NativeTransformer | None, x: Tensor) -> NativeTransformer | None:
    """``native`` where it may serve ``x``: CPU float32 inference (gradients need PyTorch's operators)."""
    if native is None or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
        return None
    return native


def native_agrees(kernel: NativeTransformer) -> bool:
    """Whether ``kernel`` gives the PyTorch path's numbers (to 1e-4 relative) on test inputs: attention
    with 16 and 64 values per head (two items, one with padded keys; where it runs here), bias + GELU,
    LayerNorm + GELU."""
    gen = torch.Generator().manual_seed(0)
    agree = True
    with torch.inference_mode():
        for width in (16, 64) if kernel.has_attention else ():
            q, k, v = (torch.randn(2, 2, n, width, generator=gen) for n in (37, 300, 300))
            lengths = torch.tensor([300, 123])
            mask = (torch.arange(300)[None, :] < lengths[:, None])[:, None, None, :]
            want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(2, 37, 2 * width)
            got = kernel.attention(q.transpose(1, 2).reshape(2, 37, 2 * width), k, v, lengths)
            agree &= got is not None and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))
        x, bias = torch.randn(5, 48, generator=gen) * 3, torch.randn(48, generator=gen)
        h = x.clone()
        agree &= kernel.bias_gelu_(h, bias) and bool(torch.allclose(h, F.gelu(x + bias), rtol=1e-4, atol=1e-5))
        weight = torch.randn(48, generator=gen)
        got = kernel.layer_norm_gelu(x, weight, bias, LAYER_NORM_EPS)
        want = F.gelu(F.layer_norm(x, (48,), weight, bias, LAYER_NORM_EPS))
        agree &= got is not None and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))
    return agree


class HubertFeatures(nn.Module):
    """HuBERT as SoCodec calls it (SPEC §3): padded waveform → final-LayerNorm features.

    Args:
        cfg: the checkpoint's HuBERT configuration.
    """

    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = HubertNetwork(cfg, receptive_field(cfg))
        self.hop = cfg.hop
        self.mask_extra = receptive_field(cfg) - cfg.hop  # length + 80 samples → length/320 frames

    def forward(self, wav: Tensor, lengths: Tensor | None = None, norm_stats: Tensor | None = None) -> Tensor:
        """Features of a batch of padded signals.

        Args:
            wav: [B, L] float waveforms at 16 kHz (any L >= 1); item b is ``wav[b, :lengths[b]]``,
                anything after it is ignored.
            lengths: [B] per-item lengths in samples, each in 1..L; None means every item has length L.
            norm_stats: [B, 2] per-item ``(mean, sqrt(biased var + 1e-5))`` to standardise with
                instead of the item's own (when the config normalises): a window of a long signal
                is standardised with the whole signal's statistics (see :mod:`socodec.inference.longform`).

        Returns:
            [B, ceil(L/320), C] features; item b has ``ceil(lengths[b]/320)`` valid frames, the
            frames after them are zero. (SoCodec's grid padding makes L a multiple of 1920; the
            published command line's makes it ``n + 1919``: SPEC §1, §3.)
        """
        if wav.dim() != 2:
            raise ValueError(f"expected a [batch, samples] waveform, got shape {list(wav.shape)}")
        batch, length = wav.shape
        if length == 0:
            raise ValueError("empty waveform")
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        lengths = lengths.to(device="cpu", dtype=torch.long)
        if lengths.shape != (batch,) or (lengths <= 0).any() or (lengths > length).any():
            raise ValueError(f"lengths must be {batch} positive lengths up to {length}, got {lengths}")

        frames = -(-length // self.hop)
        item_frames = -(-lengths // self.hop)  # [B]
        # Frame f sees samples [320 f, 320 f + 400): the last frame kept needs mask_extra samples past
        # the frame grid, all inside the (standardised) 3200-sample tail.
        keep = frames * self.hop + self.mask_extra
        x = wav.new_zeros(batch, max(keep, length + HUBERT_TAIL_SAMPLES), dtype=torch.float32)
        for b, n in enumerate(lengths.tolist()):
            item = F.pad(wav[b, :n].float(), (0, HUBERT_TAIL_SAMPLES))  # [n + 3200]
            if self.cfg.normalize and norm_stats is not None:
                item = (item - norm_stats[b, 0].float()) / norm_stats[b, 1].float()
            elif self.cfg.normalize:
                item = F.layer_norm(item, item.shape, eps=NORMALIZE_EPS)
            x[b, : n + HUBERT_TAIL_SAMPLES] = item
        # Frames from item b's end on are padding: HuBERT zeroes them and never attends to them.
        valid = torch.arange(frames, device=wav.device)[None, :] < item_frames.to(wav.device)[:, None]
        dtype = next(self.model.parameters()).dtype
        x = x[:, :keep].to(dtype)
        hidden = self.model(x, None if bool(valid.all()) else valid)  # [B, ceil(L/320), C]
        return hidden.masked_fill(~valid[..., None], 0.0)

    def use_native(self, kernel: NativeTransformer | None) -> bool:
        """See :meth:`HubertNetwork.use_native`."""
        return self.model.use_native(kernel)


#: the positional convolution inside :class:`HubertNetwork` (its weight is stored folded)
POS_CONV = "encoder.pos_conv_embed.conv"


LAYER_NORM_EPS = 1e-5
FFN_BLOCK_FRAMES = 512
#: longer inputs run attention's queries in blocks of this many frames (41 s), bounding its memory
ATTENTION_BLOCK_FRAMES = 2048


class ConvLayer(nn.Module):
    """Conv1d → LayerNorm over channels (per frame) → GELU: ``[B, C_in, N] -> [B, C_out, N']``.

    Runs time-major. The first layer (one input channel) is a matrix product of the signal's
    overlapping windows ``[B, N', k]`` with the ``[k, C_out]`` kernel, which gives ``[B, N', C_out]``
    directly; the others are channels-last 2-D convolutions on ``[B, C, 1, N]`` (oneDNN's fast
    layout) whose output is ``[B, N', C_out]`` in memory. So the LayerNorm over channels and the
    GELU read it without a transposed copy, and the returned ``[B, C_out, N']`` tensor is a view
    of that time-major memory, which the next layer takes as it is. Without gradients the
    kernel in the convolution's layout is built once and kept (:meth:`kernel`).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.layer_norm = nn.LayerNorm(out_dim, eps=LAYER_NORM_EPS)
        self._kernel: tuple[tuple[object, ...], Tensor] | None = None
        #: LayerNorm + GELU in one native pass for CPU float32 inference (:meth:`HubertNetwork.use_native`)
        self.native: NativeTransformer | None = None

    def kernel(self) -> Tensor:
        """The weight as the forward uses it: ``[C_out, k]`` for one input channel, else channels-last
        ``[C_out, C_in, 1, k]``; cached while no gradient is needed (keyed on the weight's version)."""
        weight = self.conv.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return self._layout(weight)
        key = (id(weight), weight._version, weight.data_ptr(), weight.dtype, weight.device)
        if self._kernel is None or self._kernel[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                kernel = self._layout(weight)
                self._kernel = (key, kernel.clone() if kernel.data_ptr() == weight.data_ptr() else kernel)
        return self._kernel[1]

    def _layout(self, weight: Tensor) -> Tensor:
        if weight.shape[1] == 1:
            return weight.reshape(weight.shape[0], -1)
        return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        stride = self.conv.stride[0]
        if x.shape[1] == 1:  # [B, 1, N] -> windows [B, N', k] @ [k, C_out] = time-major [B, N', C_out]
            weight = self.kernel()
            h = F.linear(x[:, 0].unfold(-1, weight.shape[1], stride), weight, self.conv.bias)
        else:
            h = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # [B, C_in, 1, N], time-major
            h = F.conv2d(h, self.kernel(), self.conv.bias, stride=(1, stride))
            h = h.contiguous(memory_format=torch.channels_last).squeeze(2).transpose(1, 2)  # [B, N', C_out]
        native = _native_for(self.native, h)
        if native is not None and (y := native.layer_norm_gelu(h, self.layer_norm.weight, self.layer_norm.bias,
                                                               self.layer_norm.eps)) is not None:
            return y.transpose(1, 2)
        return F.gelu(self.layer_norm(h)).transpose(1, 2)


class BlockwiseFeatureEncoder(nn.Module):
    """HuBERT's conv feature extractor run over blocks of output frames: same numbers, bounded memory.

    Every extractor frame i depends only on samples [320 i, 320 i + 400) (convs, then LayerNorm
    over channels per frame), so blocks of ``block_frames`` frames, each computed from its own
    samples, reproduce the whole-signal output while the 512-channel activations at 3.2 kHz
    (~20 MB per second of audio for the real model) never exceed one block.
    ``[B, N] -> [B, C, (N - 400) // 320 + 1]``.
    """

    def __init__(self, conv_layers: nn.ModuleList, hop: int, field: int, block_frames: int = 50) -> None:
        super().__init__()
        self.conv_layers = conv_layers
        self.hop, self.field, self.block_frames = hop, field, block_frames

    def _run(self, wav: Tensor) -> Tensor:
        h = wav[:, None]
        for layer in self.conv_layers:
            h = layer(h)
        return h

    def forward(self, wav: Tensor) -> Tensor:
        frames = (wav.shape[-1] - self.field) // self.hop + 1
        if frames <= self.block_frames:
            return self._run(wav)
        blocks = []
        for start in range(0, frames, self.block_frames):
            stop = min(frames, start + self.block_frames)
            blocks.append(self._run(wav[:, start * self.hop : (stop - 1) * self.hop + self.field]).transpose(1, 2))
        return torch.cat(blocks, dim=1).transpose(1, 2)  # time-major memory, like each block


class FeatureProjection(nn.Module):
    """LayerNorm(C) → Linear(C, E): ``[B, T, C] -> [B, T, E]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS)
        self.projection = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.layer_norm(x))


class PositionalConv(nn.Module):
    """Grouped conv over time → drop the last frame if the kernel is even → GELU: ``[B, T, E] -> [B, T, E]``.

    The checkpoint stores its weight as a weight norm (g, v over dim 2); the loader folds it into
    ``conv.weight`` once (:func:`socodec.nn.hubert.build_hubert`).
    """

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x.transpose(1, 2))
        if self.trim:
            h = h[..., : -self.trim]
        return F.gelu(h).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``[B, T, E]`` (+ key mask ``[B, 1, 1, T]`` bool, True = attend) -> ``[B, T, E]``.

    For CPU float32 inference a native kernel (:meth:`HubertNetwork.use_native`) attends where it runs
    here and the mask keeps a prefix of the keys per item (as :class:`Encoder`'s does); otherwise
    PyTorch's ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.native: NativeTransformer | None = None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        native = _native_for(self.native, x)
        k, v = self._keys_values(x, native)
        return self.out_proj(self._attend(self.q_proj(x), k, v, mask, native))

    def add_to(self, residual: Tensor, x: Tensor, mask: Tensor | None = None, block: int = 2048) -> None:
        """``residual += forward(x, mask)`` in place, queries ``block`` frames at a time.

        Every query still attends to all ``T`` keys (the same numbers per frame); only the keys and
        values are held whole, so a long input needs ~4 ``[B, T, E]`` tensors per layer instead of ~7.
        """
        frames = x.shape[1]
        native = _native_for(self.native, x)
        k, v = self._keys_values(x, native)
        for start in range(0, frames, block):
            stop = min(frames, start + block)
            add_linear_(residual[:, start:stop], self._attend(self.q_proj(x[:, start:stop]), k, v, mask, native),
                        self.out_proj)

    def _keys_values(self, x: Tensor, native: NativeTransformer | None) -> tuple[Tensor, Tensor]:
        """``[B, T, E]`` -> keys and values ``[B, H, T, E/H]`` (contiguous for the native kernel: the
        product without its bias, then the bias added on the way into that layout, one pass)."""
        batch, frames, dim = x.shape
        heads, width = self.heads, dim // self.heads
        if native is None:
            return tuple(t.view(batch, frames, heads, width).transpose(1, 2) for t in (self.k_proj(x), self.v_proj(x)))
        out = []
        for proj in (self.k_proj, self.v_proj):
            t = F.linear(x, proj.weight).view(batch, frames, heads, width).transpose(1, 2)
            bias = proj.bias.view(1, heads, 1, width)
            if t.dtype != bias.dtype:  # autocast: the product in another dtype
                out.append((t + bias.to(t.dtype)).contiguous())
            else:
                out.append(torch.add(t, bias, out=t.new_empty(batch, heads, frames, width)))
        return out[0], out[1]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, native: NativeTransformer | None) -> Tensor:
        """Queries ``[B, t, E]`` against keys and values ``[B, H, T, E/H]`` -> ``[B, t, E]``."""
        batch, frames, dim = q.shape
        if native is not None and (lengths := _prefix_lengths(mask, batch, k.shape[2])) is not None:
            if (out := native.attention(q, k, v, lengths)) is not None:
                return out
        h = F.scaled_dot_product_attention(q.view(batch, frames, self.heads, dim // self.heads).transpose(1, 2), k, v,
                                           attn_mask=mask)  # [B, H, t, E/H]
        return h.transpose(1, 2).reshape(batch, frames, dim)


def _prefix_lengths(mask: Tensor | None, batch: int, keys: int) -> Tensor | None:
    """``[B]`` keys attended per item when ``mask`` (``[B, 1, 1, T]``, True = attend) keeps a non-empty
    prefix of each item's keys (all of them for None); None for any other mask."""
    if mask is None:
        return torch.full((batch,), keys, dtype=torch.long)
    if mask.shape != (batch, 1, 1, keys) or mask.dtype != torch.bool:
        return None
    keep = mask.view(batch, keys).cpu()
    lengths = keep.sum(1)
    prefix = torch.arange(keys)[None, :] < lengths[:, None]
    return lengths if bool((lengths > 0).all()) and torch.equal(keep, prefix) else None


def add_linear_(residual: Tensor, x: Tensor, linear: nn.Linear) -> None:
    """``residual += linear(x)`` in place (inference): ``[B, t, E]`` += ``[B, t, F]`` @ W^T + b. Where
    ``residual`` is one matrix in memory the product accumulates into it (no output tensor, no
    separate addition), then the bias is added."""
    rows = residual.shape[0] * residual.shape[1]
    same_dtype = residual.dtype == x.dtype == linear.weight.dtype  # not under autocast
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (residual, x, linear.weight))
    if same_dtype and not tracked and (residual.shape[0] == 1 or residual.is_contiguous()):
        flat = residual.view(rows, residual.shape[2])
        # addmm with out= (not addmm_): the same product, and FLOP counters see it
        torch.addmm(flat, x.reshape(rows, x.shape[2]), linear.weight.t(), out=flat)
        if linear.bias is not None:
            flat += linear.bias
    else:
        residual += linear(x)


class FeedForward(nn.Module):
    """Linear(E, F) → GELU → Linear(F, E): ``[B, T, E] -> [B, T, E]``.

    For CPU float32 inference the first layer's bias and the GELU are one native pass over its
    output, in place (:meth:`HubertNetwork.use_native`).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)
        self.native: NativeTransformer | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dense(self.hidden(x))

    def add_to(self, residual: Tensor, x: Tensor) -> None:
        """``residual += forward(x)`` in place (inference; see :func:`add_linear_`)."""
        add_linear_(residual, self.hidden(x), self.output_dense)

    def hidden(self, x: Tensor) -> Tensor:
        """``[B, T, E] -> [B, T, F]``: GELU of the first layer."""
        native = _native_for(self.native, x)
        if native is None:
            return F.gelu(self.intermediate_dense(x))
        h = F.linear(x, self.intermediate_dense.weight)
        if not native.bias_gelu_(h, self.intermediate_dense.bias):
            h = F.gelu(h + self.intermediate_dense.bias)
        return h


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: ``x + attn(LN(x))``, then ``+ ffn(LN(.))``. ``[B, T, E] -> [B, T, E]``.

    Without gradients both sums are made in place: ``x`` itself is updated and returned (the
    :class:`Encoder` passes its own tensor).
    """

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention = SelfAttention(dim, heads)
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        inference = not torch.is_grad_enabled()
        if inference:
            # added in place (x is this encoder's own tensor); long inputs: queries in blocks
            self.attention.add_to(x, self.layer_norm(x), mask, ATTENTION_BLOCK_FRAMES)
        else:
            x = x + self.attention(self.layer_norm(x), mask)
        h = self.final_layer_norm(x)
        # frame-wise: blocks of frames bound the [B, T, 4096] intermediate (same numbers per frame);
        # equal blocks of FFN_BLOCK_FRAMES..2*FFN_BLOCK_FRAMES-1 frames (no short, slow tail block)
        frames = h.shape[1]
        block = -(-frames // max(1, frames // FFN_BLOCK_FRAMES))
        for start in range(0, frames, block):
            if inference:
                self.feed_forward.add_to(x[:, start : start + block], h[:, start : start + block])
            else:
                x[:, start : start + block] += self.feed_forward(h[:, start : start + block])
        return x


class Encoder(nn.Module):
    """Positional conv added to the input, the layers, a final LayerNorm: ``[B, T, E] -> [B, T, E]``."""

    def __init__(self, cfg: HubertConfig) -> None:
        super().__init__()
        self.pos_conv_embed = PositionalConv(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.embed_dim, cfg.num_heads, cfg.ffn_dim) for _ in range(cfg.num_layers)
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid``: ``[B, T]`` bool, False for padding frames (zeroed, and never attended to)."""
        mask = None
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)
            mask = valid[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x)


class HubertNetwork(nn.Module):
    """Standardised waveform ``[B, N]`` -> last-layer features ``[B, (N - 400) // 320 + 1, E]``.

    Args:
        cfg: the checkpoint's HuBERT configuration.
        field: samples seen by one extractor frame (400).
    """

    def __init__(self, cfg: HubertConfig, field: int) -> None:
        super().__init__()
        layers, in_dim = nn.ModuleList(), 1
        for dim, kernel, stride in cfg.conv_layers:
            layers.append(ConvLayer(in_dim, dim, kernel, stride, cfg.conv_bias))
            in_dim = dim
        self.feature_extractor = BlockwiseFeatureEncoder(layers, cfg.hop, field)
        self.feature_projection = FeatureProjection(cfg.extractor_dim, cfg.embed_dim)
        self.encoder = Encoder(cfg)

    def forward(self, wav: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid``: optional ``[B, T]`` bool frame mask (False: padding) for batches of unequal lengths."""
        features = self.feature_extractor(wav).transpose(1, 2)  # [B, T, C]
        return self.encoder(self.feature_projection(features), valid)

    def use_native(self, kernel: NativeTransformer | None) -> bool:
        """Run the attention, the feed-forward's bias + GELU and the front end's LayerNorm + GELU with
        ``kernel`` (:mod:`socodec.loading.native`) for CPU float32 inference, once it has given the
        PyTorch path's numbers on test inputs (:func:`native_agrees`). A kernel that does not is refused
        with a warning, and None goes back to the PyTorch path. Returns whether the kernel is in use."""
        if kernel is not None and not native_agrees(kernel):
            logger.warning("the native transformer kernels do not give the PyTorch path's numbers; they are not used")
            kernel = None
        for module in self.modules():
            if isinstance(module, (ConvLayer, FeedForward)):
                module.native = kernel
            elif isinstance(module, SelfAttention):  # where the kernel has no attention: no copies for it
                module.native = kernel if kernel is not None and kernel.has_attention else None
        return kernel is not None
