"""Layers of the BigVGAN-style vocoder: weight-normalised convolutions and the anti-aliased SnakeBeta.

Every layer takes ``[B, C, T]`` tensors, and in inference also channels-last
``[B, C, 1, T]`` tensors (:func:`channels_last_1d`): the vocoder runs in that layout
because oneDNN's convolutions are up to ~2x faster on it than on ``[B, C, T]`` for the
vocoder's narrow, long signals. Weight-normalised weights and the activation's scaled
filters are computed once and cached while no gradient is needed; the caches notice
in-place parameter updates (``load_state_dict``, ``.to()``) through version counters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATION_RADIUS", "FILTER_TAPS", "Activation1d", "SnakeBeta", "WNConv1d", "WNConvTranspose1d",
    "channels_last_1d", "kaiser_sinc_filter",
]

FILTER_TAPS = 12
"""Length of the anti-aliasing low-pass filters (``…upsample.filter`` etc., [1, 1, 12])."""
_SNAKE_EPS = 1e-9


def kaiser_sinc_filter(cutoff: float = 0.25, half_width: float = 0.3, taps: int = FILTER_TAPS) -> Tensor:
    """Kaiser-windowed sinc low-pass filter, normalised to sum 1. Returns [1, 1, taps].

    Only the initial value of the filter buffers; the checkpoint's filters are loaded over it.
    """
    # Kaiser's design formula for the window shape from the attenuation of the transition band.
    atten = 2.285 * (taps / 2 - 1) * math.pi * (4 * half_width) + 7.95
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21.0) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta, dtype=torch.float64)
    centre = (taps - 1) / 2
    t = torch.arange(taps, dtype=torch.float64) - centre
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    filt = filt / filt.sum()
    return filt.to(torch.float32).view(1, 1, taps)


class _WeightNormed(nn.Module):
    """Base of the weight-normalised convolutions: ``w = g * v / ||v||`` (norm over all dims but 0).

    Subclasses register ``bias``, ``weight_g`` and ``weight_v`` in that order (the checkpoint's).
    The computed weight is cached while no gradient is needed (one extra copy of the weights);
    the cache is keyed on the parameters' identity, version counters, storage, device and dtype,
    so in-place updates (``load_state_dict``, ``.to()``) invalidate it.
    """

    weight_g: nn.Parameter
    weight_v: nn.Parameter

    def __init__(self) -> None:
        super().__init__()
        self._cached_weight: Tensor | None = None
        self._cache_key: tuple[object, ...] | None = None
        self._cached_cl: tuple[tuple[object, ...], Tensor] | None = None

    def _reset(self) -> None:
        """Random initialisation (used only without a checkpoint): v ~ N(0, 1/fan_in), w = v, bias 0."""
        with torch.no_grad():
            fan_in = self.weight_v.shape[1] * self.weight_v.shape[2]
            self.weight_v.normal_(0.0, 1.0 / math.sqrt(fan_in))
            self.weight_g.copy_(self.weight_v.flatten(1).norm(dim=1).view_as(self.weight_g))
            if getattr(self, "bias", None) is not None:
                self.bias.zero_()

    def clear_cache(self) -> None:
        """Drop the cached weight (it is recomputed on the next forward)."""
        self._cached_weight = None
        self._cache_key = None
        self._cached_cl = None

    def _key(self) -> tuple[object, ...]:
        g, v = self.weight_g, self.weight_v
        return (id(g), id(v), g._version, v._version, g.device, v.dtype, v.data_ptr())

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and (self.weight_g.requires_grad or self.weight_v.requires_grad)

    def _compute(self) -> Tensor:
        """``g * v / ||v||`` as a normal (non-inference) tensor, even under ``torch.inference_mode()``."""
        with torch.inference_mode(False), torch.no_grad():
            return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def weight(self) -> Tensor:
        """The effective weight, same shape as ``weight_v``."""
        if self._needs_grad():
            return torch._weight_norm(self.weight_v, self.weight_g, 0)
        key = self._key()
        if self._cached_weight is None or self._cache_key != key:
            self._cached_weight = self._compute()
            self._cache_key = key
        return self._cached_weight

    def prepare(self) -> None:
        """Build the inference weight cache now (the channels-last one), not in the first forward."""
        self.weight_cl()

    def weight_cl(self) -> Tensor:
        """The weight as a channels-last [d0, d1, 1, k] tensor, for 2-D convolutions on [B, C, 1, T].

        Cached on its own (the 3-D weight is not kept alongside it: inference holds one copy).
        """
        if self._needs_grad():
            return torch._weight_norm(self.weight_v, self.weight_g, 0).unsqueeze(2)
        key = self._key()
        if self._cached_cl is None or self._cached_cl[0] != key:
            self._cached_cl = None
            with torch.inference_mode(False), torch.no_grad():
                weight = self._compute().unsqueeze(2).contiguous(memory_format=torch.channels_last)
            self._cached_cl = (key, weight)
        return self._cached_cl[1]


class WNConv1d(_WeightNormed):
    """Weight-normalised Conv1d, padding ``(k*d - d) // 2`` (length preserving).

    Parameters: ``weight_g`` [C_out, 1, 1], ``weight_v`` [C_out, C_in, k], ``bias`` [C_out] (optional).
    Forward: [B, C_in, T] -> [B, C_out, T], or channels-last [B, C_in, 1, T] -> [B, C_out, 1, T].
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        self.dilation = dilation
        self.padding = (kernel_size * dilation - dilation) // 2
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self._reset()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.conv2d(x, self.weight_cl(), self.bias, padding=(0, self.padding), dilation=(1, self.dilation))
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, dilation=self.dilation)


class WNConvTranspose1d(_WeightNormed):
    """Weight-normalised ConvTranspose1d, stride ``u``, padding ``(k - u) // 2``: length x u exactly.

    Parameters: ``weight_g`` [C_in, 1, 1] (norm over dim 0 = the *input* channels),
    ``weight_v`` [C_in, C_out, k], ``bias`` [C_out]. Forward: [B, C_in, T] -> [B, C_out, u*T], or
    channels-last [B, C_in, 1, T] -> [B, C_out, 1, u*T].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        if (kernel_size - stride) % 2:
            raise ValueError(f"transposed conv k={kernel_size}, u={stride}: k - u must be even")
        self.stride = stride
        self.padding = (kernel_size - stride) // 2
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(in_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size))
        self._reset()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.conv_transpose2d(
                x, self.weight_cl(), self.bias, stride=(1, self.stride), padding=(0, self.padding)
            )
        return F.conv_transpose1d(x, self.weight(), self.bias, stride=self.stride, padding=self.padding)


class SnakeBeta(nn.Module):
    """SnakeBeta with log-scale parameters: ``x + 1/(exp(beta)+1e-9) * sin(exp(alpha) * x)^2``.

    Parameters ``alpha``, ``beta`` [C]. Forward: [B, C, *] -> [B, C, *] (channel dim 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        freq = self.alpha.exp().view(shape)
        inv_mag = (self.beta.exp() + _SNAKE_EPS).reciprocal().view(shape)
        return x + inv_mag * torch.sin(x * freq).square()


class _FilterBuffer(nn.Module):
    """Holds one persistent anti-aliasing filter buffer ``filter`` [1, 1, 12]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(), persistent=True)


class _Downsample(nn.Module):
    """Container matching the checkpoint name ``…downsample.lowpass.filter``."""

    def __init__(self) -> None:
        super().__init__()
        self.lowpass = _FilterBuffer()


_MAX_LOG_FREQ = 60.0
_EDGE_INPUT = 8
"""Input samples each end from which :meth:`Activation1d._upsample` redoes the edge outputs (>= 5 for 12 taps)."""
"""Beyond |alpha| of this, :class:`Activation1d` takes the plain path (exp(alpha) near float limits)."""


def channels_last_1d(x: Tensor) -> Tensor:
    """[B, C, T] -> [B, C, 1, T] in channels-last memory (time-major, channels contiguous)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class Activation1d(nn.Module):
    """Anti-aliased SnakeBeta: upsample x2, SnakeBeta, downsample x2.

    [B, C, T] -> [B, C, T], or channels-last [B, C, 1, T] -> [B, C, 1, T] (the vocoder's inference
    layout, see :func:`channels_last_1d`).

    Spec (:meth:`reference`): up = replicate-pad 5 each side, depthwise transposed conv
    (stride 2, filter x2), drop 15 samples at each end (T -> 2T); down = replicate-pad 5 left /
    6 right, depthwise conv stride 2 (2T -> T). The output at t depends on the input at t-5 .. t+5
    (:data:`ACTIVATION_RADIUS`).

    Inference computes the same thing with fewer passes over the 2T-sample signal. With
    ``a = exp(alpha)`` and ``u = a * y`` (y the upsampled signal), ``snake(y) = (u + g sin(u)^2) / a``
    where ``g = a / (exp(beta) + 1e-9)``; both filters are linear and per channel, so ``a`` folds
    into the up filter and ``1 / a`` into the down filter (cached per parameter version). The
    SnakeBeta is then sin, square, multiply-add, written straight into the replicate-padded
    buffer of the down filter; both filters run as channels-last depthwise convolutions (oneDNN's
    fast layout). :meth:`reference` runs instead when gradients are needed or ``|alpha|`` is extreme.
    On CPU a bfloat16 input is activated in float32 and returned in bfloat16 (oneDNN's bfloat16
    depthwise convolutions are several times slower than its float32 ones there).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = _FilterBuffer()
        self.downsample = _Downsample()
        self._cache: tuple[tuple[object, ...], tuple[Tensor, Tensor, Tensor] | None] | None = None

    def prepare(self, dtype: torch.dtype) -> None:
        """Build the folded filters for inputs of ``dtype`` now, not in the first forward."""
        self._filters(torch.float32 if dtype == torch.bfloat16 and self.act.alpha.device.type == "cpu" else dtype)

    def _geometry(self) -> tuple[int, int, int, int]:
        """(up replicate pad, up crop, down left pad, down right pad); 12-tap filters: (5, 15, 5, 6)."""
        k = self.upsample.filter.shape[-1]
        pad = k // 2 - 1
        return pad, 2 * pad + (k - 2) // 2, k // 2 - 1, k // 2

    def reference(self, x: Tensor) -> Tensor:
        """The spec formulation (differentiable). [B, C, T] -> [B, C, T]."""
        c = x.shape[1]
        pad, crop, left, right = self._geometry()
        f_up = self.upsample.filter.to(x.dtype)
        f_down = self.downsample.lowpass.filter.to(x.dtype)
        y = 2.0 * F.conv_transpose1d(
            F.pad(x, (pad, pad), mode="replicate"), f_up.expand(c, -1, -1), stride=2, padding=crop, groups=c
        )
        z = F.pad(self.act(y), (left, right), mode="replicate")
        return F.conv1d(z, f_down.expand(c, -1, -1), stride=2, groups=c)

    def forward(self, x: Tensor) -> Tensor:
        alpha, beta = self.act.alpha, self.act.beta
        # oneDNN has no fast bfloat16 depthwise path on CPU (~5x slower than float32 here): a caller
        # who runs the vocoder in bfloat16 on CPU (socodec itself keeps it float32 there) gets the
        # activation in float32 between its bfloat16 convolutions
        widen = x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 4
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, alpha, beta)):
            filters = None
        else:
            filters = self._filters(torch.float32 if widen else x.dtype)
        if filters is None:
            return self.reference(x) if x.dim() == 3 else channels_last_1d(self.reference(x.squeeze(2)))
        if x.dim() == 3:
            return self._fast(channels_last_1d(x), filters).squeeze(2).contiguous()
        if widen:
            return self._fast(x.float(), filters).to(x.dtype, memory_format=torch.channels_last)
        return self._fast(x, filters)

    def _fast(self, x: Tensor, filters: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Channels-last [B, C, 1, T] -> [B, C, 1, T] (inference only), with :meth:`_filters`."""
        b, c, _, t = x.shape
        _, _, left, right = self._geometry()
        up_w, down_w, gain = filters
        u = self._upsample(x, up_w)  # [B, C, 1, 2t] = exp(alpha) * upsampled x
        zp = torch.empty(b, c, 1, 2 * t + left + right, dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)
        z = zp[..., left : left + 2 * t]
        torch.sin(u, out=z)
        z.square_()
        torch.addcmul(u, gain, z, out=z)
        zp[..., :left] = z[..., :1]
        zp[..., left + 2 * t :] = z[..., -1:]
        return F.conv2d(zp, down_w, stride=(1, 2), groups=c)

    def _upsample(self, x: Tensor, up_w: Tensor) -> Tensor:
        """Channels-last ``[B, C, 1, t] -> [B, C, 1, 2t]``: the replicate-padded up filter, without the padded copy.

        The transposed convolution of the unpadded input already gives every output sample but
        the few (5 for 12 taps) at each end that read replicated samples; those are redone from
        :data:`_EDGE_INPUT` input samples at each end, padded. Short inputs take the padded path.
        """
        t = x.shape[-1]
        if t < 2 * _EDGE_INPUT:
            return self._padded_upsample(x, up_w)
        pad, crop, _, _ = self._geometry()
        inner = crop - 2 * pad  # the transposed conv's padding once the replicated samples are gone
        u = F.conv_transpose2d(x, up_w, stride=(1, 2), padding=(0, inner), groups=x.shape[1])
        head, tail, n = up_w.shape[-1] - 2 - inner, inner, _EDGE_INPUT  # outputs reading x[-1] / x[t]
        u[..., :head] = self._padded_upsample(x[..., :n].contiguous(), up_w)[..., :head]
        u[..., 2 * t - tail :] = self._padded_upsample(x[..., t - n :].contiguous(), up_w)[..., 2 * n - tail :]
        return u

    def _padded_upsample(self, x: Tensor, up_w: Tensor) -> Tensor:
        """Replicate-pad, then the folded up filter: ``[B, C, 1, t] -> [B, C, 1, 2t]``."""
        pad, crop, _, _ = self._geometry()
        return F.conv_transpose2d(
            F.pad(x, (pad, pad, 0, 0), mode="replicate"), up_w, stride=(1, 2), padding=(0, crop), groups=x.shape[1]
        )

    def _filters(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor] | None:
        """(up filter * a, down filter / a as channels-last [C, 1, 1, k]; gain g [1, C, 1, 1]), cached.

        None when some ``|alpha|`` is beyond :data:`_MAX_LOG_FREQ` (``exp(alpha)`` near float limits).
        """
        alpha, beta = self.act.alpha, self.act.beta
        f_up, f_down = self.upsample.filter, self.downsample.lowpass.filter
        key = tuple((id(p), p._version, p.data_ptr(), p.device) for p in (alpha, beta, f_up, f_down)) + (dtype,)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                filters: tuple[Tensor, Tensor, Tensor] | None = None
                if not bool(alpha.abs().max() > _MAX_LOG_FREQ):
                    c = alpha.numel()
                    freq = alpha.exp().to(dtype).view(c, 1, 1, 1)
                    gain = (freq / (beta.exp().to(dtype).view(c, 1, 1, 1) + _SNAKE_EPS)).view(1, c, 1, 1)
                    up_w = 2.0 * f_up.to(dtype).view(1, 1, 1, -1) * freq
                    down_w = f_down.to(dtype).view(1, 1, 1, -1) / freq
                    cl = torch.channels_last
                    filters = (up_w.contiguous(memory_format=cl), down_w.contiguous(memory_format=cl), gain)
            self._cache = (key, filters)
        return self._cache[1]


ACTIVATION_RADIUS = 5
"""Samples of context each side that one :class:`Activation1d` needs (12-tap filters)."""
