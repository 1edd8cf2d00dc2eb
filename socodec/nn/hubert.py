"""HuBERT feature extraction as SoCodec calls it (SPEC §3): padded waveform -> features.

The network itself is :class:`~socodec.nn.hubert_blocks.HubertNetwork` (no ``transformers``
needed); its parameter names are those of ``transformers``' ``HubertModel`` ("HF names").
:class:`HubertFeatures` wraps it with the published standardisation, tail and masking.
Reading checkpoints (fairseq names, the conversion cache) is :mod:`socodec.loading.hubert`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from socodec.config import HUBERT_TAIL_SAMPLES, NORMALIZE_EPS, HubertConfig
from socodec.nn.hubert_blocks import HubertNetwork

logger = logging.getLogger(__name__)

def receptive_field(cfg: HubertConfig) -> int:
    """Samples seen by one extractor frame (400 for HuBERT)."""
    field, jump = 1, 1
    for _, kernel, stride in cfg.conv_layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


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


#: the positional convolution inside :class:`HubertNetwork` (its weight is stored folded)
POS_CONV = "encoder.pos_conv_embed.conv"
