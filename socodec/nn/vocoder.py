"""BigVGAN-style mel vocoder (SPEC §8): log-mel [B, frames, 80] at 100 Hz -> 16 kHz waveform.

The module tree mirrors the released ``mel_vocoder_80dim_10ms_16khz.safetensors``
exactly (``conv_pre``, ``ups.{i}.0``, ``resblocks.{3i+j}``, ``activation_post``,
``conv_post``), with legacy weight-norm parameters (``weight_g``, ``weight_v``,
``bias``) and the anti-aliasing filters as persistent buffers. The layers live in
:mod:`socodec.nn.vocoder`.

Inference speed (see :mod:`socodec.nn.vocoder`):
- without gradients the generator runs in a channels-last ``[B, C, 1, T]`` layout, where
  oneDNN's convolutions are fastest; weight-normalised weights are computed once and cached
  (see :meth:`Vocoder.clear_cache`);
- the anti-aliased activation folds ``exp(alpha)`` into its filters, computes the upsampled
  signal as its two phases (plain depthwise convolutions, no zero-stuffed samples) and writes
  the SnakeBeta straight into the padded buffer of its down filter;
- on CPU in float32 the whole activation can run as one native pass (:meth:`Vocoder.use_native`,
  a kernel from :mod:`socodec.loading.native`), checked against the PyTorch path first;
- :meth:`Vocoder.forward_chunked` bounds memory for long inputs: chunks overlap by
  :meth:`Vocoder.receptive_field` frames each side, which reproduces whole-sequence
  output (up to float reassociation, ~1e-7).

Layers of the BigVGAN-style vocoder: weight-normalised convolutions and the anti-aliased SnakeBeta.

Every layer takes ``[B, C, T]`` tensors, and in inference also channels-last
``[B, C, 1, T]`` tensors (:func:`channels_last_1d`): the vocoder runs in that layout
because oneDNN's convolutions are up to ~2x faster on it than on ``[B, C, T]`` for the
vocoder's narrow, long signals. Weight-normalised weights and the activation's scaled
filters are computed once and cached while no gradient is needed; the caches notice
in-place parameter updates (``load_state_dict``, ``.to()``) through version counters.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from socodec.config import VocoderConfig

__all__ = ["ACTIVATION_RADIUS", "FILTER_TAPS", "AMPBlock", "Activation1d", "NativeActivation", "native_agrees", "SnakeBeta", "Vocoder", "WNConv1d", "WNConvTranspose1d", "kaiser_sinc_filter", "channels_last_1d"]


logger = logging.getLogger(__name__)
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
        inplace = x.dim() == 4  # the inference layout: the sum may overwrite this block's own tensors
        for index, (conv, act) in enumerate(zip(self.convs, self.activations)):
            if inplace and index:
                x += conv(act(x))
            else:
                x = x + conv(act(x))  # never in place on the input: the other blocks read it too
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
            if isinstance(module, (WNConv1d, WNConvTranspose1d)):
                module.clear_cache()

    def prepare(self) -> None:
        """Build every inference cache (weight-normalised channels-last weights, folded activation
        filters) for the current device and dtype, so that the first call runs as fast as later ones.
        Call again after moving the model; stale caches are also rebuilt on use."""
        dtype = next(self.parameters()).dtype
        with torch.no_grad():  # the caches serve gradient-free calls
            for module in self.modules():
                if isinstance(module, (WNConv1d, WNConvTranspose1d)):
                    module.prepare()
                elif isinstance(module, Activation1d):
                    module.prepare(dtype)

    def use_native(self, kernel: NativeActivation | None) -> bool:
        """Run the anti-aliased activations with ``kernel`` (:mod:`socodec.loading.native`) on CPU
        float32 inputs, once it has given the PyTorch path's numbers on a test signal (both edges,
        several tiles, two items). A kernel that does not is refused with a warning, and None goes
        back to the PyTorch path. Returns whether the kernel is in use."""
        if kernel is not None and not native_agrees(kernel):
            logger.warning("the native activation kernel does not give the PyTorch path's numbers; it is not used")
            kernel = None
        for module in self.modules():
            if isinstance(module, Activation1d):
                module.native = kernel
        return kernel is not None

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
        """mel [B, frames, n_mels] (log-mel, frames-last) -> waveform [B, frames * hop] in [-1, 1].

        Without gradients the layers run on channels-last [B, C, 1, T] tensors (faster convolutions).
        """
        if mel.dim() != 3 or mel.shape[-1] != self.cfg.num_mels:
            raise ValueError(f"vocoder expects mel [B, frames, {self.cfg.num_mels}], got {list(mel.shape)}")
        x = mel.transpose(1, 2)
        if not torch.is_grad_enabled() or not (mel.requires_grad or any(p.requires_grad for p in self.parameters())):
            x = channels_last_1d(x)
        x = self.conv_pre(x)
        n = self.num_kernels
        inplace = x.dim() == 4  # inference: accumulate in place (fewer, and fewer distinct, allocations)
        for i, up in enumerate(self.ups):
            x = up(x)
            acc = self.resblocks[i * n](x)
            for j in range(1, n):
                if inplace:
                    acc += self.resblocks[i * n + j](x)
                else:
                    acc = acc + self.resblocks[i * n + j](x)
            x = acc.div_(n) if inplace else acc / n
        x = self.conv_post(self.activation_post(x))
        if self.cfg.use_tanh_at_final:
            x = torch.tanh(x)
        else:
            x = x.clamp(-1.0, 1.0)
        return x.reshape(x.shape[0], -1)

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
    upsampled signal is computed as its two phases (even and odd samples: no zero-stuffed
    samples are multiplied), the SnakeBeta (sin, square, multiply-add) is written straight into
    the replicate-padded buffer of the down filter, and all filters run as plain channels-last
    depthwise convolutions (oneDNN's fast layout; its depthwise transposed convolution is several
    times slower). :meth:`reference` runs instead when gradients are needed or ``|alpha|`` is extreme.
    On CPU a bfloat16 input is activated in float32 and returned in bfloat16 (oneDNN's bfloat16
    depthwise convolutions are several times slower than its float32 ones there).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = _FilterBuffer()
        self.downsample = _Downsample()
        self._cache: tuple[tuple[object, ...], _Folded | None] | None = None
        #: the one-pass native kernel for CPU float32 inference (set by :meth:`Vocoder.use_native`)
        self.native: NativeActivation | None = None

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

    def _fast(self, x: Tensor, filters: _Folded) -> Tensor:
        """Channels-last [B, C, 1, T] -> [B, C, 1, T] (inference only), with :meth:`_filters`: the
        native kernel where one is attached (CPU, float32), else :meth:`_fast_torch`."""
        if self.native is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            y = self.native.activation(x, filters.packed)
            if y is not None:
                return y
        return self._fast_torch(x, filters)

    def _fast_torch(self, x: Tensor, filters: _Folded) -> Tensor:
        """:meth:`_fast` with PyTorch operators (any device and dtype).

        Polyphase: the upsampled signal is kept as its two phases (even and odd samples), each a
        6-tap depthwise convolution of ``x``. The SnakeBeta of both goes into the two rows of one
        replicate-padded ``[B, C, 2, T + 6]`` buffer, and the down filter is one depthwise
        ``2 x 7`` convolution over it (its 12 taps split between the phases). Only the kept
        samples are computed, and every convolution is a plain depthwise one.
        """
        b, c, _, t = x.shape
        u0, u1 = self._upsample(x, filters)  # [B, C, 1, t] each: exp(alpha) * even / odd upsampled samples
        sp = torch.empty(b, c, 2, t + 2 * _PHASE_PAD, dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)
        mid = sp[..., _PHASE_PAD : _PHASE_PAD + t]  # [B, C, 2, t]
        for row, u in enumerate((u0, u1)):
            torch.sin(u, out=mid[:, :, row : row + 1])
        mid.mul_(mid)
        for row, u in enumerate((u0, u1)):
            z = mid[:, :, row : row + 1]
            torch.addcmul(u, filters.gain, z, out=z)
        # the 2t-rate signal replicate-padded: its first sample (even row) before, its last (odd row) after
        sp[..., :_PHASE_PAD] = mid[:, :, :1, :1]
        sp[..., _PHASE_PAD + t :] = mid[:, :, 1:, -1:]
        return F.conv2d(sp, filters.down, groups=c)

    def _upsample(self, x: Tensor, filters: _Folded) -> tuple[Tensor, Tensor]:
        """Channels-last ``[B, C, 1, t]`` -> the even and odd samples of the replicate-padded up filter.

        Each phase is a depthwise convolution of ``x`` zero-padded by 3; the three outputs at
        each end whose taps fall on the padding then get ``x``'s first (last) sample times those
        taps' sum (:attr:`_Folded.edges`), which is what replicate padding puts there.
        """
        t, c = x.shape[-1], x.shape[1]
        if t < 2 * _PHASE_PAD:
            return self._padded_upsample(x, filters)
        pad = (0, _PHASE_PAD)
        phases = F.conv2d(x, filters.even, padding=pad, groups=c), F.conv2d(x, filters.odd, padding=pad, groups=c)
        first, last = x[..., :1], x[..., t - 1 :]
        for u, (head, tail) in zip(phases, filters.edges):
            u[..., :_PHASE_PAD].addcmul_(first, head)
            u[..., t - _PHASE_PAD :].addcmul_(last, tail)
        return phases

    def _padded_upsample(self, x: Tensor, filters: _Folded) -> tuple[Tensor, Tensor]:
        """Replicate-pad by 3, then both phases: ``[B, C, 1, t]`` -> two ``[B, C, 1, t]``."""
        c = x.shape[1]
        xp = F.pad(x, (_PHASE_PAD, _PHASE_PAD, 0, 0), mode="replicate")
        return F.conv2d(xp, filters.even, groups=c), F.conv2d(xp, filters.odd, groups=c)

    def _filters(self, dtype: torch.dtype) -> _Folded | None:
        """The folded polyphase filters (:class:`_Folded`), cached per parameter version and dtype.

        None when some ``|alpha|`` is beyond :data:`_MAX_LOG_FREQ` (``exp(alpha)`` near float limits).
        """
        alpha, beta = self.act.alpha, self.act.beta
        f_up, f_down = self.upsample.filter, self.downsample.lowpass.filter
        key = tuple((id(p), p._version, p.data_ptr(), p.device) for p in (alpha, beta, f_up, f_down)) + (dtype,)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                folded = None
                if f_up.shape[-1] == f_down.shape[-1] == FILTER_TAPS and not bool(alpha.abs().max() > _MAX_LOG_FREQ):
                    folded = _Folded.build(alpha, beta, f_up.flatten(), f_down.flatten(), dtype)
            self._cache = (key, folded)
        return self._cache[1]


_PHASE_PAD = 3
"""Samples of padding each side of a phase (12-tap filters: 6 taps per phase, one spare)."""


class _Folded(NamedTuple):
    """The anti-aliased activation's filters with ``a = exp(alpha)`` folded in, as channels-last kernels.

    ``even`` / ``odd`` ``[C, 1, 1, 7]``: the up filter (x2, times ``a``) for the even and odd
    output samples, on ``x`` padded by 3 (``even`` reads taps 0-5, ``odd`` taps 1-6);
    ``down`` ``[C, 1, 2, 7]``: the down filter (divided by ``a``) over the two phases padded by 3,
    row 0 the even samples, row 1 the odd; ``gain`` ``[1, C, 1, 1]``: ``a / (exp(beta) + 1e-9)``;
    ``edges``: for ``even`` and ``odd``, the sums of the taps that read the padding, for the first
    three outputs (taps ``0..2-m`` for output ``m``) and the last three (taps ``6-i..6`` for output
    ``t-3+i``), each ``[1, C, 1, 3]``; ``packed`` ``[29, C]``: the same numbers as the native
    kernel takes them (``activation.c``: rows 0-6 ``even``, 7-13 ``odd``, 14-20 and 21-27
    the two rows of ``down``, 28 ``gain``).
    """

    even: Tensor
    odd: Tensor
    down: Tensor
    gain: Tensor
    edges: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]
    packed: Tensor

    @classmethod
    def build(cls, alpha: Tensor, beta: Tensor, f_up: Tensor, f_down: Tensor, dtype: torch.dtype) -> "_Folded":
        c = alpha.numel()
        freq = alpha.exp().to(dtype).view(c, 1, 1, 1)
        gain = (freq / (beta.exp().to(dtype).view(c, 1, 1, 1) + _SNAKE_EPS)).view(1, c, 1, 1)
        up, down = f_up.to(dtype), f_down.to(dtype)
        even, odd = up.new_zeros(7), up.new_zeros(7)
        even[:6], odd[1:] = up.flip(0)[0::2], up.flip(0)[1::2]  # even: f[11], f[9], ..f[1]; odd: f[10], ..f[0]
        phases = down.new_zeros(2, 7)
        phases[0, 1:], phases[1, :6] = down[1::2], down[0::2]  # tap q reads the even sample k = 2q - 1, odd k = 2q
        cl = torch.channels_last
        even, odd = 2.0 * even.view(1, 7) * freq.view(c, 1), 2.0 * odd.view(1, 7) * freq.view(c, 1)  # [C, 7]

        def edge_sums(w: Tensor) -> tuple[Tensor, Tensor]:
            head = w[:, :3].cumsum(1).flip(1)  # output m: taps 0 .. 2-m
            tail = w[:, 4:].flip(1).cumsum(1)  # output t-3+i: taps 6-i .. 6
            return head.view(1, c, 1, 3), tail.view(1, c, 1, 3)

        down = phases.view(1, 2, 7) / freq.view(c, 1, 1)  # [C, 2, 7]
        packed = torch.cat([even.t(), odd.t(), down[:, 0].t(), down[:, 1].t(), gain.view(1, c)]).contiguous()
        return cls(even.view(c, 1, 1, 7).contiguous(memory_format=cl), odd.view(c, 1, 1, 7).contiguous(memory_format=cl),
                   down.view(c, 1, 2, 7).contiguous(memory_format=cl), gain, (edge_sums(even), edge_sums(odd)), packed)


class NativeActivation(Protocol):
    """A native implementation of :meth:`Activation1d._fast` (see :mod:`socodec.loading.native`)."""

    def activation(self, x: Tensor, weights: Tensor) -> Tensor | None:
        """Channels-last float32 ``x`` ``[B, C, 1, T]`` with :attr:`_Folded.packed` ``[29, C]`` ->
        ``[B, C, 1, T]``, or None when it cannot (the PyTorch path then runs)."""
        ...


def native_agrees(kernel: NativeActivation) -> bool:
    """Whether ``kernel`` gives the PyTorch path's numbers (to 1e-4 relative) on a test signal."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.no_grad():
        act = Activation1d(16)
        act.act.alpha.copy_(torch.randn(16, generator=gen) * 0.5)
        act.act.beta.copy_(torch.randn(16, generator=gen) * 0.5)
        x = channels_last_1d(torch.randn(2, 16, 700, generator=gen) * 2)
        filters = act._filters(torch.float32)
        assert filters is not None
        want = act._fast_torch(x, filters)
        got = kernel.activation(x, filters.packed)
    return got is not None and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))


ACTIVATION_RADIUS = 5
"""Samples of context each side that one :class:`Activation1d` needs (12-tap filters)."""
