"""HuBERT's convolutional feature extractor over blocks of frames (bounded memory, same numbers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BlockwiseFeatureEncoder"]


class BlockwiseFeatureEncoder(nn.Module):
    """HuBERT's conv feature extractor run over blocks of output frames: same numbers, bounded memory.

    Holds the ``transformers`` extractor's ``conv_layers`` (same state-dict keys). Every extractor
    frame i depends only on samples [320 i, 320 i + 400) (convs, then LayerNorm over channels per
    frame), so blocks of ``block_frames`` frames, each computed from its own samples, reproduce the
    whole-signal output while the 512-channel activations at 3.2 kHz (~20 MB per second of audio
    for the real model) never exceed one block. ``[B, N] -> [B, C, (N - 400) // 320 + 1]``.
    """

    def __init__(self, conv_layers: nn.ModuleList, hop: int, field: int, block_frames: int = 150) -> None:
        super().__init__()
        self.conv_layers = conv_layers
        self.hop, self.field, self.block_frames = hop, field, block_frames

    def _run(self, wav: Tensor) -> Tensor:
        h = wav[:, None]
        for layer in self.conv_layers:
            h = layer(h)
        return h

    def forward(self, input_values: Tensor) -> Tensor:
        frames = (input_values.shape[-1] - self.field) // self.hop + 1
        if frames <= self.block_frames:
            return self._run(input_values)
        blocks = []
        for start in range(0, frames, self.block_frames):
            stop = min(frames, start + self.block_frames)
            blocks.append(self._run(input_values[:, start * self.hop : (stop - 1) * self.hop + self.field]))
        return torch.cat(blocks, dim=2)
