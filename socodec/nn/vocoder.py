"""BigVGAN-style mel vocoder (SPEC §8): log-mel [B, frames, 80] at 100 Hz -> 16 kHz waveform.

The module tree mirrors the released ``mel_vocoder_80dim_10ms_16khz.safetensors``
exactly (``conv_pre``, ``ups.{i}.0``, ``resblocks.{3i+j}``, ``activation_post``,
``conv_post``), with legacy weight-norm parameters (``weight_g``, ``weight_v``,
``bias``) and the anti-aliasing filters as persistent buffers.

Inference speed:
- the weight-normalised weights are computed once and cached whenever no gradient
  is needed (see :meth:`Vocoder.clear_cache`); the cache notices in-place updates
  of ``weight_g``/``weight_v`` (e.g. ``load_state_dict``) through their version
  counters;
- the anti-aliased activation runs its (channel-independent) up/down-sampling
  filters as one GEMM over blocks of samples instead of depthwise convolutions, and
  precomputes ``exp(alpha)``, ``1/(exp(beta)+eps)`` once per call;
- :meth:`Vocoder.forward_chunked` bounds memory for long inputs: chunks overlap by
  :meth:`Vocoder.receptive_field` frames each side, which reproduces whole-sequence
  output (up to float reassociation, ~1e-7).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from socodec.config import VocoderConfig

logger = logging.getLogger(__name__)

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

    def weight(self) -> Tensor:
        """The effective weight, same shape as ``weight_v``."""
        g, v = self.weight_g, self.weight_v
        if torch.is_grad_enabled() and (g.requires_grad or v.requires_grad):
            return torch._weight_norm(v, g, 0)
        key = (id(g), id(v), g._version, v._version, g.device, v.dtype, v.data_ptr())
        if self._cached_weight is None or self._cache_key != key:
            # Normal (non-inference) tensor even when called under torch.inference_mode().
            with torch.inference_mode(False), torch.no_grad():
                self._cached_weight = torch._weight_norm(v, g, 0)
            self._cache_key = key
        return self._cached_weight


class WNConv1d(_WeightNormed):
    """Weight-normalised Conv1d, padding ``(k*d - d) // 2`` (length preserving).

    Parameters: ``weight_g`` [C_out, 1, 1], ``weight_v`` [C_out, C_in, k], ``bias`` [C_out] (optional).
    Forward: [B, C_in, T] -> [B, C_out, T].
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
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, dilation=self.dilation)


class WNConvTranspose1d(_WeightNormed):
    """Weight-normalised ConvTranspose1d, stride ``u``, padding ``(k - u) // 2``: length x u exactly.

    Parameters: ``weight_g`` [C_in, 1, 1] (norm over dim 0 = the *input* channels),
    ``weight_v`` [C_in, C_out, k], ``bias`` [C_out]. Forward: [B, C_in, T] -> [B, C_out, u*T].
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
        return F.conv_transpose1d(x, self.weight(), self.bias, stride=self.stride, padding=self.padding)


class SnakeBeta(nn.Module):
    """SnakeBeta with log-scale parameters: ``x + 1/(exp(beta)+1e-9) * sin(exp(alpha) * x)^2``.

    Parameters ``alpha``, ``beta`` [C]. Forward: [B, C, *] -> [B, C, *] (channel dim 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """``out`` (inference only): a tensor of x's shape to write the result into."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        freq = self.alpha.exp().view(shape)
        inv_mag = (self.beta.exp() + _SNAKE_EPS).reciprocal().view(shape)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, self.alpha, self.beta)):
            return x + inv_mag * torch.sin(x * freq).square()
        s = torch.mul(x, freq)
        s.sin_()
        s.square_()
        return torch.addcmul(x, inv_mag, s, out=out)


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


_BLOCK = 16
"""Samples per block in the block-matrix FIR of :class:`Activation1d` (speed only)."""


def _replicate_pad(x: Tensor, left: int, total: int) -> Tensor:
    """x [N, T] -> [N, total]: ``left`` copies of x[:, 0], x, then copies of x[:, -1] up to ``total``."""
    n, t = x.shape
    return torch.cat([x[:, :1].expand(n, left), x, x[:, -1:].expand(n, total - left - t)], dim=1)


class Activation1d(nn.Module):
    """Anti-aliased SnakeBeta: upsample x2, SnakeBeta, downsample x2. [B, C, T] -> [B, C, T].

    Spec: up = replicate-pad 5 each side, depthwise transposed conv
    (stride 2, filter x2), drop 15 samples at each end (T -> 2T); down = replicate-pad 5 left /
    6 right, depthwise conv stride 2 (2T -> T). The output at t depends on the input at t-5 .. t+5
    (:data:`ACTIVATION_RADIUS`).

    :meth:`forward` computes the same thing faster: both filters are the same for every channel,
    so each becomes one small matrix applied to overlapping blocks of ``_BLOCK`` samples
    (one GEMM over all channels and blocks) instead of a depthwise convolution; the replicate
    padding is written around the SnakeBeta output in place.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = _FilterBuffer()
        self.downsample = _Downsample()

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        f_up = self.upsample.filter.reshape(-1).to(x.dtype)
        f_down = self.downsample.lowpass.filter.reshape(-1).to(x.dtype)
        k = f_up.numel()
        blk = _BLOCK
        nb = -(-t // blk)
        # Up: y[j] = sum_i xp[i] * 2 f[j + crop - 2i], xp = x replicate-padded by k/2-1.
        pad, crop = k // 2 - 1, 2 * (k // 2 - 1) + (k - 2) // 2
        first = -((k - 1 - crop) // 2)  # first xp index a block of outputs [2*b*blk, ...) needs, minus b*blk
        width = blk + (crop + 1) // 2 - first
        rows = torch.arange(width, device=x.device).view(-1, 1)
        cols = torch.arange(2 * blk, device=x.device).view(1, -1)
        up_mat = self._toeplitz(2.0 * f_up, cols + crop - 2 * (rows + first))  # [width, 2*blk]
        xe = _replicate_pad(x.reshape(b * c, t), pad - first, nb * blk + width - blk)
        frames = xe.unfold(1, width, blk).reshape(b * c * nb, width)  # one copy, then a single GEMM
        y = torch.mm(frames, up_mat).view(b, c, 2 * nb * blk)[:, :, : 2 * t]
        # SnakeBeta into the middle of the padded buffer for the downsampling filter.
        left, total = k // 2 - 1, 2 * nb * blk + k - 2
        if torch.is_grad_enabled() and any(p.requires_grad for p in (x, self.act.alpha, self.act.beta)):
            z = self.act(y)
            zp = _replicate_pad(z.reshape(b * c, 2 * t), left, total)
        else:
            zp = x.new_empty(b * c, total)
            self.act(y, out=zp[:, left : left + 2 * t].view(b, c, 2 * t))
            zp[:, :left] = zp[:, left : left + 1]
            zp[:, left + 2 * t :] = zp[:, left + 2 * t - 1 : left + 2 * t]
        # Down: out[n] = sum_k f[k] * zp[2n + k].
        rows = torch.arange(2 * blk + k - 2, device=x.device).view(-1, 1)
        cols = torch.arange(blk, device=x.device).view(1, -1)
        down_mat = self._toeplitz(f_down, rows - 2 * cols)  # [2*blk + k - 2, blk]
        out = torch.mm(zp.unfold(1, 2 * blk + k - 2, 2 * blk).reshape(b * c * nb, -1), down_mat)
        return out.view(b, c, nb * blk)[:, :, :t]

    @staticmethod
    def _toeplitz(taps: Tensor, index: Tensor) -> Tensor:
        """taps[index] where 0 <= index < len(taps), else 0."""
        valid = (index >= 0) & (index < taps.numel())
        return torch.where(valid, taps[index.clamp(0, taps.numel() - 1)], taps.new_zeros(()))


ACTIVATION_RADIUS = 5
"""Samples of context each side that one :class:`Activation1d` needs (12-tap filters)."""
_PRE_POST_KERNEL = 7


class AMPBlock(nn.Module):
    """Residual block of the released vocoder (``resblock: 0``): the *two-conv* AMP block.

    (quirk) Although the config lists dilations (1, 3, 5), this block type uses only the first two:
    for l, d in enumerate((1, 3)): ``x = x + convs[l](activations[l](x))``, each conv
    weight-normalised with kernel k, dilation d, length-preserving padding. [B, C, T] -> [B, C, T].
    """

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        if len(dilations) < 2:
            raise ValueError(f"AMP block needs at least two dilations, got {dilations}")
        self.dilations = tuple(dilations[:2])
        self.kernel_size = kernel_size
        self.convs = nn.ModuleList(WNConv1d(channels, channels, kernel_size, d) for d in self.dilations)
        self.activations = nn.ModuleList(Activation1d(channels) for _ in self.dilations)

    def radius(self) -> int:
        """One-sided receptive radius in samples at this block's rate."""
        return sum(ACTIVATION_RADIUS + (self.kernel_size - 1) * d // 2 for d in self.dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv, act in zip(self.convs, self.activations):
            x = x + conv(act(x))
        return x


class Vocoder(nn.Module):
    """BigVGAN-style generator (SPEC §8). ``forward``: mel [B, frames, n_mels] -> wav [B, frames*hop].

    conv_pre (k7) -> per stage i: ``ups.i.0`` (transposed conv, C/2^i -> C/2^(i+1)) -> mean of
    ``resblocks.{3i+j}`` (one per residual kernel) -> activation_post -> conv_post (k7, -> 1) -> tanh.

    (quirk) ``resblock: 0`` selects the two-conv AMP block, which uses only dilations (1, 3) of each
    configured dilation list (1, 3, 5); see :class:`AMPBlock`.
    """

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(cfg.num_mels, ch, _PRE_POST_KERNEL)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            self.ups.append(nn.Sequential(WNConvTranspose1d(ch >> i, ch >> (i + 1), kernel, rate)))  # ups.i.0
        for i in range(len(cfg.upsample_rates)):
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock(ch >> (i + 1), kernel, dilations))
        out_ch = ch >> len(cfg.upsample_rates)
        self.activation_post = Activation1d(out_ch)
        self.conv_post = WNConv1d(out_ch, 1, _PRE_POST_KERNEL, bias=cfg.use_bias_at_final)
        self.num_kernels = len(cfg.resblock_kernel_sizes)

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (160)."""
        return self.cfg.hop_length

    def clear_cache(self) -> None:
        """Forget all cached weight-normalised weights (they are recomputed lazily)."""
        for module in self.modules():
            if isinstance(module, _WeightNormed):
                module.clear_cache()

    def receptive_field(self) -> int:
        """Mel frames of context needed on each side of a chunk for exact chunked synthesis.

        Sum over layers of the one-sided radius (in samples at the layer's input rate) divided by
        the samples per frame at that rate, rounded up: conv (k-1)*d/2, transposed conv
        max(floor((k-1-p)/u), floor((u-1+p)/u)) input samples, anti-aliased activation 5. 14 for
        the released config.
        """
        cfg = self.cfg
        conv_radius = (_PRE_POST_KERNEL - 1) // 2
        frames = float(conv_radius)  # conv_pre, at 1 sample per frame
        rate = 1
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            p = (k - u) // 2
            frames += max((k - 1 - p) // u, (u - 1 + p) // u) / rate
            rate *= u
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            frames += max(block.radius() for block in blocks) / rate
        frames += (ACTIVATION_RADIUS + conv_radius) / rate  # activation_post + conv_post
        return math.ceil(frames - 1e-9)

    def forward(self, mel: Tensor) -> Tensor:
        """mel [B, frames, n_mels] (log-mel, frames-last) -> waveform [B, frames * hop] in [-1, 1]."""
        if mel.dim() != 3 or mel.shape[-1] != self.cfg.num_mels:
            raise ValueError(f"vocoder expects mel [B, frames, {self.cfg.num_mels}], got {list(mel.shape)}")
        x = self.conv_pre(mel.transpose(1, 2))
        n = self.num_kernels
        for i, up in enumerate(self.ups):
            x = up(x)
            acc = self.resblocks[i * n](x)
            for j in range(1, n):
                acc = acc + self.resblocks[i * n + j](x)
            x = acc / n
        x = self.conv_post(self.activation_post(x))
        if self.cfg.use_tanh_at_final:
            x = torch.tanh(x)
        else:
            x = x.clamp(-1.0, 1.0)
        return x.squeeze(1)

    def forward_chunked(self, mel: Tensor, chunk_frames: int, context_frames: int | None = None) -> Tensor:
        """Like :meth:`forward` but ``chunk_frames`` frames at a time, each with context on both sides.

        mel [B, frames, n_mels] -> [B, frames * hop]. ``context_frames`` defaults to
        :meth:`receptive_field`, which makes the result equal to ``forward(mel)`` up to float rounding.
        """
        if chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
        context = self.receptive_field() if context_frames is None else context_frames
        total = mel.shape[1]
        if total <= chunk_frames:
            return self(mel)
        hop = self.hop_length
        out = mel.new_empty(mel.shape[0], total * hop)
        for start in range(0, total, chunk_frames):
            stop = min(total, start + chunk_frames)
            lo, hi = max(0, start - context), min(total, stop + context)
            wav = self(mel[:, lo:hi])
            out[:, start * hop : stop * hop] = wav[:, (start - lo) * hop : (stop - lo) * hop]
            logger.debug("vocoder chunk frames %d-%d (context %d-%d)", start, stop, lo, hi)
        return out
