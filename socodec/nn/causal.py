"""Causal convolution stacks: the analyzer's encoder (50 Hz -> 8.33 Hz) and mel decoders.

Module names mirror the released checkpoint (``encoder.layers.2.layers.0.layers.3.weight``
and so on), so a state dict loads without renaming. "norm" layers of the published
model have no parameters and compute the identity; they keep their index here.

Every convolution is causal: ``dilation * (kernel - 1)`` zeros on the left, none on
the right, so output frame t depends only on input frames <= t. That is what makes
chunked and streaming processing exact (see :func:`receptive_field`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


class CausalConvTranspose1d(nn.ConvTranspose1d):
    """Transposed conv (kernel 2s, stride s) keeping the first ``s * T`` outputs.

    ``[B, C_in, T] -> [B, C_out, s * T]``; the last ``s`` samples are dropped, so
    output sample i depends only on input frames <= i // s.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, 2 * stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[..., : -self.stride[0]]


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
        h = x.transpose(1, 2)
        for layer in self.layers[: self.n_body]:
            h = layer(h)
        return h.transpose(1, 2)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers[self.n_body](h.transpose(1, 2)).transpose(1, 2)


def _product(values: tuple[int, ...]) -> int:
    n = 1
    for v in values:
        n *= v
    return n
