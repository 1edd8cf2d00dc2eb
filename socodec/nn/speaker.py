"""ECAPA-TDNN speaker encoder with batch norm disabled (SPEC §6).

Input: log-mel [B, frames, n_mels]; output: speaker vector [B, out_dim].
Internal widths are fixed (256 block channels, 768 after MFA, 128 per
Res2Net half, 64 SE and attention channels); only ``out_dim`` follows the
model size. Every convolution has stride 1 and "same" padding in reflect
mode (``dilation * (kernel - 1) / 2`` each side).

**(quirk)** The published model passes absolute frame counts where relative
lengths are expected, so its masks cover everything: every frame of the
(padded) mel counts in the SE means and in the attentive statistics pooling,
including the frames of the codec's zero padding. Here no lengths are taken
at all; every frame of every batch item counts.

Long inputs: above ``long_threshold`` frames :meth:`SpeakerEncoder.forward`
switches to :meth:`SpeakerEncoder.forward_long`, which computes the same
vector over chunks with bounded memory (see there).

Every convolution takes an ``edges`` pair ``(left, right)``: True where that
side of the input is a true end of the signal (reflect-pad there), False
where the input carries a halo of real context instead (no padding; the
output is shorter by the padding on that side). The full forward uses
``(True, True)``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MomentAccumulator", "SpeakerEncoder", "chunk_bounds"]

logger = logging.getLogger(__name__)

Edges = tuple[bool, bool]
FULL: Edges = (True, True)

CHANNELS = 256
MFA_CHANNELS = 3 * CHANNELS
SE_CHANNELS = 64
ATTENTION_CHANNELS = 64
DILATIONS = (2, 3, 4)
STD_EPS = 1e-12


def _crop(x: Tensor, pad: int, edges: Edges) -> Tensor:
    """Drop ``pad`` halo frames from each non-edge side of x [B, C, t]."""
    left = 0 if edges[0] else pad
    right = 0 if edges[1] else pad
    return x[..., left : x.shape[-1] - right]


def chunk_bounds(total: int, chunk: int) -> list[tuple[int, int]]:
    """Consecutive ranges [start, stop) of ``chunk`` frames covering ``total`` frames (the last may be short)."""
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]


class MomentAccumulator:
    """Running mean and biased variance over time, optionally softmax-weighted, in float64.

    Chunks are merged with the parallel (Chan et al.) update, so no
    ``E[x²] - E[x]²`` cancellation. With logits, the weights are
    ``softmax(logits)`` over all frames seen: each chunk keeps its own
    max-shifted weights and the running sums are rescaled when the running
    maximum grows (online softmax). State tensors are [B, C, 1].
    """

    def __init__(self) -> None:
        self.peak: Tensor | None = None
        self.weight: Tensor | None = None
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor, logits: Tensor | None = None) -> None:
        """Add one chunk: values x [B, C, t], optional logits [B, C, t] (uniform weights if None)."""
        x = x.to(torch.float64)
        if logits is None:
            peak = torch.zeros_like(x[..., :1])
            weight = torch.full_like(peak, float(x.shape[-1]))
            mean = x.mean(dim=2, keepdim=True)
            m2 = (x - mean).pow(2).sum(dim=2, keepdim=True)
        else:
            logits = logits.to(torch.float64)
            peak = logits.amax(dim=2, keepdim=True)
            w = torch.exp(logits - peak)
            weight = w.sum(dim=2, keepdim=True)
            mean = (w * x).sum(dim=2, keepdim=True) / weight
            m2 = (w * (x - mean).pow(2)).sum(dim=2, keepdim=True)
        if self.peak is None or self.weight is None or self.mean is None or self.m2 is None:
            self.peak, self.weight, self.mean, self.m2 = peak, weight, mean, m2
            return
        new_peak = torch.maximum(self.peak, peak)
        scale_old, scale_new = torch.exp(self.peak - new_peak), torch.exp(peak - new_peak)
        w_old, w_new = self.weight * scale_old, weight * scale_new
        total = w_old + w_new
        delta = mean - self.mean
        self.mean = self.mean + delta * (w_new / total)
        self.m2 = self.m2 * scale_old + m2 * scale_new + delta.pow(2) * (w_old * w_new / total)
        self.weight, self.peak = total, new_peak

    def mean_std(self, eps: float) -> tuple[Tensor, Tensor]:
        """(mean, sqrt(max(biased variance, eps))), each [B, C, 1] float64."""
        if self.mean is None or self.m2 is None or self.weight is None:
            raise ValueError("no frames accumulated")
        return self.mean, (self.m2 / self.weight).clamp(min=eps).sqrt()


class _SameConv1d(nn.Module):
    """Conv1d, stride 1, reflect "same" padding at true signal ends. Keys: ``conv.weight``, ``conv.bias``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("same padding needs an odd kernel size")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)
        self.pad = dilation * (kernel_size - 1) // 2

    def forward(self, x: Tensor, edges: Edges = FULL) -> Tensor:
        """x [B, C_in, t] → [B, C_out, t - pad·(number of non-edge sides)]."""
        if self.pad and any(edges):
            if x.shape[-1] <= self.pad:
                raise ValueError(f"speaker encoder: {x.shape[-1]} frames are too few for reflect padding {self.pad}")
            pads = (self.pad if edges[0] else 0, self.pad if edges[1] else 0)
            x = F.pad(x, pads, mode="reflect")
        return self.conv(x)


class _TDNN(nn.Module):
    """Conv → ReLU (the batch norm of ECAPA-TDNN is disabled: no parameters). Keys: ``conv.conv.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = _SameConv1d(in_channels, out_channels, kernel_size, dilation)
        self.pad = self.conv.pad

    def forward(self, x: Tensor, edges: Edges = FULL) -> Tensor:
        """x [B, C_in, t] → [B, C_out, t'] (t' as :class:`_SameConv1d`)."""
        return torch.relu(self.conv(x, edges))


class _Res2Net(nn.Module):
    """Res2Net with two halves: the first passes through, the second goes through one TDNN."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        half = channels // 2
        self.blocks = nn.ModuleList([_TDNN(half, half, kernel_size, dilation)])
        self.pad = self.blocks[0].pad

    def forward(self, x: Tensor, edges: Edges = FULL) -> Tensor:
        """x [B, C, t] → [B, C, t']."""
        first, second = torch.chunk(x, 2, dim=1)
        return torch.cat([_crop(first, self.pad, edges), self.blocks[0](second, edges)], dim=1)


class _SqueezeExcitation(nn.Module):
    """Channel gates from the time mean: sigmoid(conv2(relu(conv1(mean))))."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _SameConv1d(channels, se_channels, 1, 1)
        self.conv2 = _SameConv1d(se_channels, channels, 1, 1)

    def gates(self, mean: Tensor) -> Tensor:
        """Time mean [B, C, 1] → gates [B, C, 1]."""
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(mean))))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, t] → x scaled by the gates of its own time mean, [B, C, t]."""
        return x * self.gates(x.mean(dim=2, keepdim=True))


class _SERes2NetBlock(nn.Module):
    """tdnn1 (1×1) → res2net (k3, dilation d) → tdnn2 (1×1) → SE → + input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.tdnn1 = _TDNN(channels, channels, 1, 1)
        self.res2net_block = _Res2Net(channels, kernel_size, dilation)
        self.tdnn2 = _TDNN(channels, channels, 1, 1)
        self.se_block = _SqueezeExcitation(channels, SE_CHANNELS)
        self.pad = self.res2net_block.pad

    def pre_se(self, x: Tensor, edges: Edges = FULL) -> Tensor:
        """The activations the SE block gates: x [B, C, t] → [B, C, t']."""
        return self.tdnn2(self.res2net_block(self.tdnn1(x), edges))

    def forward(self, x: Tensor, edges: Edges = FULL, gates: Tensor | None = None) -> Tensor:
        """x [B, C, t] → [B, C, t'].

        ``gates`` [B, C, 1]: precomputed SE gates (chunked path); ``None``
        computes them from this segment's own time mean (full path).
        """
        h = self.pre_se(x, edges)
        h = self.se_block(h) if gates is None else h * gates
        return h + _crop(x, self.pad, edges)


class _AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling with global context, [B, C, t] → [B, 2C, 1]."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = _TDNN(3 * channels, attention_channels, 1, 1)
        self.conv = _SameConv1d(attention_channels, channels, 1, 1)

    def logits(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Attention logits [B, C, t] from x [B, C, t] and the global mean, std [B, C, 1]."""
        t = x.shape[-1]
        context = torch.cat([x, mean.expand(-1, -1, t), std.expand(-1, -1, t)], dim=1)
        return self.conv(torch.tanh(self.tdnn(context)))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, t] → concat(weighted mean, weighted std) [B, 2C, 1]. All frames count (quirk)."""
        mean = x.mean(dim=2, keepdim=True)
        std = (x - mean).pow(2).mean(dim=2, keepdim=True).clamp(min=STD_EPS).sqrt()
        weights = torch.softmax(self.logits(x, mean, std), dim=2)
        w_mean = (weights * x).sum(dim=2, keepdim=True)
        w_std = (weights * (x - w_mean).pow(2)).sum(dim=2, keepdim=True).clamp(min=STD_EPS).sqrt()
        return torch.cat([w_mean, w_std], dim=1)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN speaker encoder; ``state_dict`` keys equal the analyzer's ``speaker_encoder.*`` ones.

    Args:
        n_mels: mel bands of the input (80).
        out_dim: speaker vector width (= the analyzer's model size; 1024 released).
        long_threshold: inputs with more frames than this go through
            :meth:`forward_long` (memory O(chunk) instead of O(frames)).
        chunk_frames: chunk length used by :meth:`forward` for long inputs.
    """

    def __init__(self, n_mels: int, out_dim: int, *, long_threshold: int = 6000, chunk_frames: int = 2000) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.out_dim = out_dim
        self.long_threshold = long_threshold
        self.chunk_frames = chunk_frames
        blocks: list[nn.Module] = [_TDNN(n_mels, CHANNELS, 5, 1)]
        blocks += [_SERes2NetBlock(CHANNELS, 3, d) for d in DILATIONS]
        self.blocks = nn.ModuleList(blocks)
        self.mfa = _TDNN(MFA_CHANNELS, MFA_CHANNELS, 1, 1)
        self.asp = _AttentiveStatsPooling(MFA_CHANNELS, ATTENTION_CHANNELS)
        self.fc = _SameConv1d(2 * MFA_CHANNELS, out_dim, 1, 1)
        # frames of context a chunk needs on each side (2 + 2 + 3 + 4 = 11)
        self.halo = sum(int(block.pad) for block in self.blocks)

    @property
    def min_frames(self) -> int:
        """Fewest input frames reflect padding allows (5)."""
        return max(int(block.pad) for block in self.blocks) + 1

    def _check_input(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[-1] != self.n_mels:
            raise ValueError(f"speaker encoder expects a log-mel [B, frames, {self.n_mels}], got {list(mel.shape)}")
        if mel.shape[1] < self.min_frames:
            raise ValueError(f"speaker encoder needs at least {self.min_frames} mel frames, got {mel.shape[1]}")
        return mel.transpose(1, 2)  # [B, n_mels, frames]

    def forward(self, mel: Tensor) -> Tensor:
        """Log-mel [B, frames, n_mels] → speaker vector [B, out_dim].

        Inputs longer than ``long_threshold`` frames are delegated to
        :meth:`forward_long` (same result to float rounding).
        """
        x = self._check_input(mel)
        if x.shape[-1] > self.long_threshold:
            return self.forward_long(mel, chunk_frames=self.chunk_frames)
        x = self.blocks[0](x)
        outputs = []
        for block in self.blocks[1:]:
            x = block(x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=1))  # [B, 768, frames]
        return self.fc(self.asp(x)).squeeze(-1)

    # ------------------------------------------------------------------ long inputs

    def _segment(self, mel: Tensor, start: int, stop: int, gates: list[Tensor]) -> Tensor:
        """Activations for output frames [start, stop) of one chunk, recomputed from the mel.

        Args:
            mel: whole input, channels first [B, n_mels, frames].
            start, stop: the chunk's frame range.
            gates: SE gates [B, 256, 1] of the first ``len(gates)`` SE blocks.

        Returns:
            [B, 256, stop - start]: the pre-SE activations of SE block
            ``len(gates) + 1`` if ``len(gates) < 3``; otherwise
            [B, 768, stop - start]: the MFA output.
        """
        total = mel.shape[-1]
        lo, hi = max(0, start - self.halo), min(total, stop + self.halo)
        edges = (lo == 0, hi == total)
        x = self.blocks[0](mel[..., lo:hi], edges)
        lo, hi = self._shrink(lo, hi, int(self.blocks[0].pad), edges)
        outputs: list[tuple[Tensor, int]] = []
        for index, block in enumerate(self.blocks[1:]):
            if index == len(gates):
                h = block.pre_se(x, edges)
                lo, _ = self._shrink(lo, hi, int(block.pad), edges)
                return h[..., start - lo : stop - lo]
            x = block(x, edges, gates[index])
            lo, hi = self._shrink(lo, hi, int(block.pad), edges)
            outputs.append((x, lo))
        x = torch.cat([out[..., start - out_lo : stop - out_lo] for out, out_lo in outputs], dim=1)
        return self.mfa(x)

    @staticmethod
    def _shrink(lo: int, hi: int, pad: int, edges: Edges) -> tuple[int, int]:
        return lo + (0 if edges[0] else pad), hi - (0 if edges[1] else pad)

    def forward_long(self, mel: Tensor, chunk_frames: int = 2000) -> Tensor:
        """:meth:`forward` over chunks with memory O(B · 2304 · chunk) instead of O(B · 2304 · frames).

        The convolutions are local (11 frames of context each side in all,
        reflect padding only at the true signal ends), so each chunk is
        recomputed from the mel with a halo. The global reductions take one
        pass each, accumulated in float64:

        1-3. time means of the pre-SE activations of SE blocks 1, 2, 3 (each
             pass needs the gates of the blocks before it);
        4.   mean and biased std of the MFA output (attention context);
        5.   attention logits with an online softmax over time, merging
             per-chunk weighted mean/variance (see :class:`MomentAccumulator`).

        Cost: about four times the compute of :meth:`forward`. Gradients flow
        (nothing is detached), but then autograd keeps every chunk alive and
        memory is O(frames) again; the memory bound holds under
        ``torch.no_grad()`` / ``torch.inference_mode()``.

        Args:
            mel: log-mel [B, frames, n_mels].
            chunk_frames: output frames per chunk (at least the halo, 11).

        Returns:
            speaker vector [B, out_dim].
        """
        return self.forward_frames(self._check_input(mel), chunk_frames)

    def forward_frames(self, x: Tensor, chunk_frames: int = 2000) -> Tensor:
        """:meth:`forward_long` on a channels-first log-mel ``x`` [B, n_mels, frames].

        ``x`` may also be any object with ``shape``, ``dtype`` and ``device`` that returns the
        tensor ``[B, n_mels, hi - lo]`` for ``x[..., lo:hi]``: a log-mel computed on demand
        (:class:`socodec.longform.LazyMel`) is never held whole.
        """
        if x.shape[1] != self.n_mels or x.shape[-1] < self.min_frames:
            raise ValueError(f"speaker encoder expects [B, {self.n_mels}, >= {self.min_frames}] frames, "
                             f"got {list(x.shape)}")
        if chunk_frames < self.halo:
            raise ValueError(f"chunk_frames must be at least {self.halo}, got {chunk_frames}")
        total = x.shape[-1]
        bounds = chunk_bounds(total, chunk_frames)
        logger.debug("speaker encoder: %d frames in %d chunks", total, len(bounds))

        gates: list[Tensor] = []
        for block in self.blocks[1:]:
            acc = torch.zeros(x.shape[0], CHANNELS, 1, dtype=torch.float64, device=x.device)
            for start, stop in bounds:
                acc = acc + self._segment(x, start, stop, gates).to(torch.float64).sum(dim=2, keepdim=True)
            gates.append(block.se_block.gates((acc / total).to(x.dtype)))

        context = MomentAccumulator()
        for start, stop in bounds:
            context.update(self._segment(x, start, stop, gates))
        mean, std = context.mean_std(STD_EPS)
        mean, std = mean.to(x.dtype), std.to(x.dtype)

        pooled = MomentAccumulator()
        for start, stop in bounds:
            h = self._segment(x, start, stop, gates)
            pooled.update(h, self.asp.logits(h, mean, std))
        w_mean, w_std = pooled.mean_std(STD_EPS)
        stats = torch.cat([w_mean, w_std], dim=1).to(x.dtype)  # [B, 1536, 1]
        return self.fc(stats).squeeze(-1)
