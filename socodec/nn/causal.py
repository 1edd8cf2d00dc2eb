"""Causal convolution stacks: the analyzer's encoder (50 Hz -> 8.33 Hz) and mel decoders, and
running them chunk by chunk.

Module names mirror the released checkpoint (``encoder.layers.2.layers.0.layers.3.weight``
and so on), so a state dict loads without renaming. "norm" layers of the published
model have no parameters and compute the identity; they keep their index here.

Every convolution is causal: ``dilation * (kernel - 1)`` zeros on the left, none on
the right, so output frame t depends only on input frames <= t (see :func:`receptive_field`).
So a stack can consume its input in consecutive chunks of any size
(:class:`CausalStreamer`): each convolution keeps the last ``dilation * (kernel - 1)`` input
frames it has seen (zeros before the first chunk, as the left padding of the whole-sequence
forward), plus, for a strided convolution, the frames waiting for the next stride step; each
causal transposed convolution keeps its last input frame. Concatenating the outputs of the
chunks gives the whole-sequence output (up to float reassociation, ~1e-7): the state is exactly
the left context the whole-sequence forward would have used. This is what makes streaming
synthesis (:mod:`socodec.inference.synthesis`) and long-form encoding
(:mod:`socodec.inference.longform`) O(chunk) in time and memory per step.

Layouts: with gradients (training) the stacks run channels-first ``[B, C, T]`` through
``nn.Sequential``. Without, they run time-major ``[B, T, C]`` (the layout of their inputs
and outputs) through :class:`CausalStreamer`, whole sequences included (a fresh streamer: zero
left context): dense convolutions as one matrix product over the unfolded frames, grouped ones
as channels-last convolutions (oneDNN's fast layout for them, ~3x faster than ``[B, C, T]``),
the transposed ones as one matrix product, and no layout copies between layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalStreamer", "causal_context"]


RESIDUAL_GROUPS = 32


class Swish(nn.Module):
    """x * sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class CausalConv1d(nn.Conv1d):
    """Conv1d with left-only zero padding. ``[B, C_in, T] -> [B, C_out, ceil(T / stride)]``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, groups=groups)
        self.left_pad = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))

    def frames(self, x: Tensor) -> Tensor:
        """The unpadded ("valid") convolution, time-major: ``[B, L, C_in] -> [B, (L - k) // s + 1, C_out]``.

        The caller prepends the left context (:class:`CausalStreamer`). Dense: the frames unfolded
        to ``[rows, C_in * k]`` times the weight as stored (``[C_out, C_in * k]``, transposed view:
        no copy), in blocks of :data:`_ROWS` output frames (bounds the unfolded copy). Grouped, or
        with few output channels (the mel projection): a channels-last 2-D convolution on the same
        memory, which oneDNN runs faster for those shapes.
        """
        k, s = self.kernel_size[0], self.stride[0]
        b, length, c_in = x.shape
        n_out = (length - k) // s + 1
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):  # differentiable
            return F.conv1d(x.transpose(1, 2), self.weight, self.bias, stride=s, groups=self.groups).transpose(1, 2)
        if self.groups > 1 or self.out_channels < _GEMM_MIN_CHANNELS:
            y = F.conv2d(x.transpose(1, 2).unsqueeze(2), self.weight.unsqueeze(2), self.bias, stride=(1, s),
                         groups=self.groups)
            return y.squeeze(2).transpose(1, 2).contiguous()
        weight = self.weight.view(self.out_channels, c_in * k).t()
        out = x.new_empty(b, n_out, self.out_channels)
        for lo in range(0, n_out, _ROWS):
            hi = min(n_out, lo + _ROWS)
            rows = x[:, lo * s : (hi - 1) * s + k].unfold(1, k, s).reshape(b * (hi - lo), c_in * k)
            # straight into ``out`` where its block is one matrix in memory (one item, or one block)
            dst = out[:, lo:hi].view(b * (hi - lo), -1) if b == 1 or hi - lo == n_out else None
            y = torch.mm(rows, weight, out=dst) if self.bias is None else torch.addmm(self.bias, rows, weight, out=dst)
            if dst is None:
                out[:, lo:hi] = y.view(b, hi - lo, -1)
        return out


_ROWS = 2048
"""Output frames per matrix product of :meth:`CausalConv1d.frames` (the unfolded input of one block
is ``kernel`` times its size: at most ~25 MB for the released model)."""
_GEMM_MIN_CHANNELS = 256
"""Fewer output channels than this (the mel projection's 80): a channels-last convolution instead."""


class CausalConvTranspose1d(nn.ConvTranspose1d):
    """Transposed conv (kernel 2s, stride s) keeping the first ``s * T`` outputs.

    ``[B, C_in, T] -> [B, C_out, s * T]``; the last ``s`` samples are dropped, so
    output sample i depends only on input frames <= i // s.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, 2 * stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[..., : -self.stride[0]]

    def frames(self, x: Tensor, past: Tensor | None = None) -> Tensor:
        """Time-major: frames ``x`` ``[B, T, C_in]`` preceded by the frame ``past`` ``[B, 1, C_in]``
        (None: zeros, the start of a sequence) -> the first ``s * T`` outputs ``[B, s * T, C_out]``.

        Output frame ``s t + j`` is ``W[:, :, j]^T x[t] + W[:, :, j + s]^T x[t - 1]`` (+ bias): one
        matrix product of the frames with all ``2 s`` taps ``[B, T + 1, C_out, 2 s]`` (the weight as
        it is stored, no copy), then the two halves of the taps of consecutive frames added.
        Same numbers as the transposed convolution, ~1.3-1.8x faster for the decoders' shapes on CPU.
        """
        stride = self.stride[0]
        b, t, _ = x.shape
        if past is None:
            past = x.new_zeros(b, 1, x.shape[2])
        c_in, c_out, taps = self.weight.shape
        y = torch.matmul(torch.cat([past, x], dim=1), self.weight.view(c_in, c_out * taps)).view(b, t + 1, c_out, taps)
        if torch.is_grad_enabled() and y.requires_grad:  # differentiable: no out=, no in-place bias
            out = (y[:, 1:, :, :stride] + y[:, :-1, :, stride:]).permute(0, 1, 3, 2)
            out = out + self.bias if self.bias is not None else out
            return out.reshape(b, t * stride, c_out)
        out = x.new_empty(b, t, stride, c_out)
        torch.add(y[:, 1:, :, :stride], y[:, :-1, :, stride:], out=out.permute(0, 1, 3, 2))
        if self.bias is not None:
            out += self.bias
        return out.view(b, t * stride, c_out)


class ResidualUnit(nn.Module):
    """x + conv(swish(conv(x))), two causal grouped k3 convs. ``[B, D, T] -> [B, D, T]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            CausalConv1d(dim, dim, 3, groups=RESIDUAL_GROUPS),
            nn.Identity(),
            Swish(),
            CausalConv1d(dim, dim, 3, groups=RESIDUAL_GROUPS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    """Two residual units then a strided causal conv. ``[B, D, T] -> [B, D, T / stride]``."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(dim), nn.Identity(), Swish(),
            ResidualUnit(dim), nn.Identity(), Swish(),
            CausalConv1d(dim, dim, 2 * stride, stride=stride),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """Causal transposed conv then two residual units. ``[B, D, T] -> [B, D, T * stride]``."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            CausalConvTranspose1d(dim, dim, stride), nn.Identity(), Swish(),
            ResidualUnit(dim), nn.Identity(), Swish(),
            ResidualUnit(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Encoder(nn.Module):
    """HuBERT features to encoder frames (``analyzer.encoder``).

    ``forward``: ``[B, 6T, in_dim] -> [B, T, dim]`` (strides from ``downsample_scales``).
    """

    def __init__(self, in_dim: int, dim: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(in_dim, dim, 3), Swish()]
        for s in strides:
            layers += [EncoderBlock(dim, s), nn.Identity(), Swish()]
        layers.append(CausalConv1d(dim, dim, 3))
        self.layers = nn.Sequential(*layers)
        self.hop = _product(strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(self, x):
            return CausalStreamer().encoder(self, x)
        return self.layers(x.transpose(1, 2)).transpose(1, 2)


class MelDecoder(nn.Module):
    """Causal upsampling decoder (``analyzer.decoder_1`` / ``decoder_2``).

    ``forward``: ``[B, T, dim] -> [B, T * prod(strides), dim]`` — the output of the
    last Swish. ``project`` applies the final conv ``[B, T', dim] -> [B, T', out_dim]``.
    ``decoder_1``'s final conv only predicts HuBERT features (an auxiliary training
    output), so it is built with ``out_dim=None`` and its weights are ignored.
    """

    def __init__(self, dim: int, strides: tuple[int, ...], out_dim: int | None) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(dim, dim, 3), Swish()]
        for s in strides:
            layers += [DecoderBlock(dim, s), nn.Identity(), Swish()]
        if out_dim is not None:
            layers.append(CausalConv1d(dim, out_dim, 3))
        self.layers = nn.Sequential(*layers)
        self.n_body = len(layers) - (1 if out_dim is not None else 0)
        self.hop = _product(strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(self, x):
            return CausalStreamer().decoder_body(self, x)
        h = x.transpose(1, 2)
        for layer in self.layers[: self.n_body]:
            h = layer(h)
        return h.transpose(1, 2)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(self, h):
            return CausalStreamer().decoder_project(self, h)
        return self.layers[self.n_body](h.transpose(1, 2)).transpose(1, 2)


def _product(values: tuple[int, ...]) -> int:
    n = 1
    for v in values:
        n *= v
    return n


def _needs_grad(module: nn.Module, x: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


class CausalStreamer:
    """Incremental state for one causal stack (one utterance), time-major ``[B, T, C]`` throughout.

    Call :meth:`encoder`, :meth:`decoder_body`, :meth:`decoder_project` or
    :meth:`run` with successive chunks; keep one streamer per utterance (and per
    batch: every chunk must have the same batch size). Chunks may have any
    length, including 0; a strided convolution emits an output as soon as the
    input frame it ends on has arrived, exactly like the whole-sequence forward.
    A fresh streamer given a whole sequence computes the whole-sequence forward: it is the
    stacks' inference path. Without gradients activations are computed in place.
    """

    def __init__(self) -> None:
        self._state: dict[int, Tensor] = {}

    def reset(self) -> None:
        """Forget everything: the next chunk is the start of a new sequence."""
        self._state.clear()

    # ------------------------------------------------------------------ module entry points
    def encoder(self, module: Encoder, features: Tensor) -> Tensor:
        """:class:`Encoder` on the next chunk: features ``[B, t, in_dim]`` -> frames ``[B, t', D]``.

        Over all chunks, ``sum(t') == ceil(sum(t) / hop)``, as :meth:`Encoder.forward`.
        """
        return self.run(module.layers, features)

    def decoder_body(self, module: MelDecoder, x: Tensor) -> Tensor:
        """:meth:`MelDecoder.forward` on the next chunk: ``[B, t, D] -> [B, t * hop, D]``."""
        for layer in module.layers[: module.n_body]:
            x = self.run(layer, x)
        return x

    def decoder_project(self, module: MelDecoder, h: Tensor) -> Tensor:
        """:meth:`MelDecoder.project` on the next chunk: ``[B, t, D] -> [B, t, out_dim]``."""
        return self.run(module.layers[module.n_body], h)

    # ------------------------------------------------------------------ generic walk
    def run(self, module: nn.Module, x: Tensor) -> Tensor:
        """Any supported module on the next chunk, time-major: ``[B, t, C] -> [B, t', C']``."""
        return self._walk(module, x, owned=False)[0]

    def _walk(self, module: nn.Module, x: Tensor, owned: bool) -> tuple[Tensor, bool]:
        """(output, whether the output is a new tensor this walk may overwrite)."""
        if isinstance(module, CausalConv1d):
            return self._conv(module, x), True
        if isinstance(module, CausalConvTranspose1d):
            return self._conv_transpose(module, x), True
        if isinstance(module, ResidualUnit):
            h, fresh = self._walk(module.layers, x, False)
            if fresh and not torch.is_grad_enabled():
                return h.add_(x), True
            return x + h, True
        if isinstance(module, (EncoderBlock, DecoderBlock, nn.Sequential)):
            layers = module.layers if isinstance(module, (EncoderBlock, DecoderBlock)) else module
            for layer in layers:
                x, owned = self._walk(layer, x, owned)
            return x, owned
        if isinstance(module, (Swish, nn.SiLU)):
            if owned and not torch.is_grad_enabled():
                return F.silu(x, inplace=True), True
            return F.silu(x), True
        if isinstance(module, nn.Identity):
            return x, owned
        raise TypeError(f"cannot stream {type(module).__name__}: not a causal layer of socodec.nn.causal")

    def _conv(self, conv: CausalConv1d, x: Tensor) -> Tensor:
        """Causal conv: prepend the kept frames, convolve without padding, keep the unconsumed tail."""
        key = id(conv)
        kernel = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        stride = conv.stride[0]
        past = self._state.get(key)
        if past is None:
            past = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])  # the whole-sequence left padding
        xx = torch.cat([past, x], dim=1) if x.shape[1] else past
        n_out = (xx.shape[1] - kernel) // stride + 1 if xx.shape[1] >= kernel else 0
        self._state[key] = xx[:, n_out * stride :].clone()  # small: holds no reference to xx
        if n_out == 0:
            return x.new_zeros(x.shape[0], 0, conv.out_channels)
        return conv.frames(xx[:, : (n_out - 1) * stride + kernel])

    def _conv_transpose(self, conv: CausalConvTranspose1d, x: Tensor) -> Tensor:
        """Causal transposed conv (kernel 2s, stride s): output frame i needs inputs i and i - 1."""
        stride = conv.stride[0]
        if conv.kernel_size[0] != 2 * stride:
            raise TypeError(f"causal transposed conv with kernel {conv.kernel_size[0]} != 2 * stride {stride}")
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, conv.out_channels)
        key = id(conv)
        past = self._state.get(key)  # None before the first chunk: zeros
        self._state[key] = x[:, -1:].clone()
        return conv.frames(x, past)


def causal_context(module: nn.Module) -> float:
    """Left context, in input frames, that one output frame of a causal stack depends on.

    Chunked processing with at least this much left context (rounded up, and aligned
    to the stack's total stride) reproduces the whole-sequence output. Used to size
    overlaps and documented latencies; :class:`CausalStreamer` needs none.
    """
    context, _ = _context(module, 0.0, 1.0)
    return context


def _context(module: nn.Module, context: float, scale: float) -> tuple[float, float]:
    """(accumulated context in input frames, input frames per frame at this point)."""
    if isinstance(module, CausalConv1d):
        context += module.dilation[0] * (module.kernel_size[0] - 1) * scale
        return context, scale * module.stride[0]
    if isinstance(module, CausalConvTranspose1d):
        return context + scale, scale / module.stride[0]
    if isinstance(module, ResidualUnit):
        return _context(module.layers, context, scale)
    if isinstance(module, (EncoderBlock, DecoderBlock)):
        return _context(module.layers, context, scale)
    if isinstance(module, (Encoder, MelDecoder)):
        return _context(module.layers, context, scale)
    if isinstance(module, nn.Sequential):
        for layer in module:
            context, scale = _context(layer, context, scale)
        return context, scale
    return context, scale
