"""Training losses: masked reconstruction of HuBERT features and log-mel, plus commitment.

``loss = ssl_weight · D(ssl_pred, ssl) + mel_weight · D(mel_pred, mel) + commitment_weight · commit``
with ``D`` the mean absolute (``l1``) or squared (``l2``) error over the valid frames
and all channels (padding frames excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from socodec.train import distributed
from socodec.train.config import TrainConfig
from socodec.train.model import TrainOutput


@dataclass
class LossTerms:
    """The total (with gradient) and each unweighted term (scalars)."""

    total: Tensor
    mel: Tensor
    ssl: Tensor
    commitment: Tensor

    def as_floats(self) -> dict[str, float]:
        """The four values averaged over all processes (this process's alone when there is one)."""
        values = torch.stack([self.total, self.mel, self.ssl, self.commitment]).detach().float()
        values = distributed.all_reduce_sum(values.clone()) / distributed.world_size()
        return dict(zip(("loss", "loss_mel", "loss_ssl", "loss_commit"), values.tolist()))


def frame_mask(frames: Tensor, per_token: int, total: int) -> Tensor:
    """``[B, total]`` bool: the first ``frames[b] · per_token`` frames of item b are valid."""
    return torch.arange(total, device=frames.device)[None, :] < (frames * per_token)[:, None]


def masked_distance(pred: Tensor, target: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Mean ``|pred - target|`` (l1) or ``(pred - target)^2`` (l2) over valid frames of ``[B, F, C]`` tensors."""
    diff = pred.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.pow(2)
    weights = mask.to(err.dtype)[..., None]
    return (err * weights).sum() / (weights.sum() * err.shape[-1]).clamp(min=1)


def compute_losses(out: TrainOutput, ssl: Tensor, mel: Tensor, frames: Tensor, cfg: TrainConfig) -> LossTerms:
    """The loss terms of one batch: ``ssl`` [B, 6T, C] and ``mel`` [B, 12T, n_mels] targets, ``frames`` [B] valid tokens."""
    t = out.vq.tokens.shape[1]
    frames = frames.to(ssl.device)
    ssl_term = masked_distance(out.ssl_pred, ssl, frame_mask(frames, ssl.shape[1] // t, ssl.shape[1]), cfg.ssl_loss)
    mel_term = masked_distance(out.mel_pred, mel, frame_mask(frames, mel.shape[1] // t, mel.shape[1]), cfg.mel_loss)
    commit = out.vq.commitment
    total = cfg.ssl_weight * ssl_term + cfg.mel_weight * mel_term + cfg.commitment_weight * commit
    return LossTerms(total, mel_term, ssl_term, commit)
