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
            wav: [B, L] float waveforms at 16 kHz, L a multiple of 320 (SoCodec: of 1920); item b is
                ``wav[b, :lengths[b]]``, anything after it is ignored.
            lengths: [B] per-item lengths in samples, each a positive multiple of 320 and <= L;
                None means every item has length L.
            norm_stats: [B, 2] per-item ``(mean, sqrt(biased var + 1e-5))`` to standardise with
                instead of the item's own (when the config normalises): a window of a long signal
                is standardised with the whole signal's statistics (see :mod:`socodec.longform`).

        Returns:
            [B, L/320, C] features; frames at or beyond ``lengths[b]/320`` are zero.
        """
        if wav.dim() != 2:
            raise ValueError(f"expected a [batch, samples] waveform, got shape {list(wav.shape)}")
        batch, length = wav.shape
        if length % self.hop or length == 0:
            raise ValueError(f"waveform length {length} is not a positive multiple of {self.hop}")
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        lengths = lengths.to(device="cpu", dtype=torch.long)
        if lengths.shape != (batch,) or (lengths <= 0).any() or (lengths > length).any() or (lengths % self.hop).any():
            raise ValueError(f"lengths must be {batch} positive multiples of {self.hop} up to {length}, got {lengths}")

        total = length + HUBERT_TAIL_SAMPLES
        x = wav.new_zeros(batch, total, dtype=torch.float32)
        for b, n in enumerate(lengths.tolist()):
            item = F.pad(wav[b, :n].float(), (0, HUBERT_TAIL_SAMPLES))  # [n + 3200]
            if self.cfg.normalize and norm_stats is not None:
                item = (item - norm_stats[b, 0].float()) / norm_stats[b, 1].float()
            elif self.cfg.normalize:
                item = F.layer_norm(item, item.shape, eps=NORMALIZE_EPS)
            x[b, : n + HUBERT_TAIL_SAMPLES] = item
        # Frames from item b's end on are padding: HuBERT zeroes them and never attends to them, so the
        # last frame kept needs only mask_extra samples of the (standardised) tail.
        frames = length // self.hop
        valid = torch.arange(frames, device=wav.device)[None, :] < (lengths.to(wav.device) // self.hop)[:, None]
        dtype = next(self.model.parameters()).dtype
        x = x[:, : length + self.mask_extra].to(dtype)
        hidden = self.model(x, None if bool(valid.all()) else valid)  # [B, L/320, C]
        return hidden.masked_fill(~valid[..., None], 0.0)


#: the positional convolution inside :class:`HubertNetwork` (its weight is stored folded)
POS_CONV = "encoder.pos_conv_embed.conv"
