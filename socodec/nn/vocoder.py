"""BigVGAN-style mel vocoder (SPEC §8): log-mel [B, frames, 80] at 100 Hz -> 16 kHz waveform.

The module tree mirrors the released ``mel_vocoder_80dim_10ms_16khz.safetensors``
exactly (``conv_pre``, ``ups.{i}.0``, ``resblocks.{3i+j}``, ``activation_post``,
``conv_post``), with legacy weight-norm parameters (``weight_g``, ``weight_v``,
``bias``) and the anti-aliasing filters as persistent buffers. The layers live in
:mod:`socodec.nn.vocoder_layers`.

Inference speed (see :mod:`socodec.nn.vocoder_layers`):
- without gradients the generator runs in a channels-last ``[B, C, 1, T]`` layout, where
  oneDNN's convolutions are fastest; weight-normalised weights are computed once and cached
  (see :meth:`Vocoder.clear_cache`);
- the anti-aliased activation folds ``exp(alpha)`` into its filters and writes the SnakeBeta
  straight into the padded buffer of its down filter;
- :meth:`Vocoder.forward_chunked` bounds memory for long inputs: chunks overlap by
  :meth:`Vocoder.receptive_field` frames each side, which reproduces whole-sequence
  output (up to float reassociation, ~1e-7).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from socodec.config import VocoderConfig
from socodec.nn.vocoder_layers import (
    ACTIVATION_RADIUS,
    FILTER_TAPS,
    Activation1d,
    SnakeBeta,
    WNConv1d,
    WNConvTranspose1d,
    channels_last_1d,
    kaiser_sinc_filter,
)

__all__ = [
    "ACTIVATION_RADIUS", "FILTER_TAPS", "AMPBlock", "Activation1d", "SnakeBeta", "Vocoder", "WNConv1d",
    "WNConvTranspose1d", "kaiser_sinc_filter",
]

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
