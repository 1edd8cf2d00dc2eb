"""Pieces of one training step: the frozen targets, the learning rate, the logged numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from socodec.codec import SoCodec
from socodec.config import SAMPLES_PER_TOKEN
from socodec.nn.analyzer import ProductQuantizer
from socodec.train.config import TrainConfig
from socodec.train.losses import LossTerms
from socodec.train.model import ClipSettings, TrainOutput
from socodec.train.vq import VQSettings, usage_and_perplexity


@dataclass(frozen=True)
class StepInputs:
    vq: VQSettings
    clip: ClipSettings
    amp: torch.dtype | None
    """Autocast dtype of the trainable parts (None: float32)."""


@torch.no_grad()
def batch_targets(codec: SoCodec, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """A loader batch -> (HuBERT features [B, 6T, C], log-mel [B, 12T, n_mels], frames [B]) on the codec's device.

    HuBERT is frozen (no gradient); each item's features stop at its own length (zeros after),
    and each item's log-mel is computed on its own padded audio (as in inference), zero after.
    """
    device = codec.device
    wav = batch["wav"].to(device, non_blocking=True)
    frames = batch["frames"].to(torch.long)
    lengths = frames * SAMPLES_PER_TOKEN
    features = codec.features(wav, lengths)
    mels = [codec.mel(wav[b : b + 1, : int(n)]) for b, n in enumerate(lengths)]
    total = wav.shape[1] // codec.vocoder.hop_length
    mel = torch.cat([F.pad(m, (0, 0, 0, total - m.shape[1])) for m in mels])
    return features, mel.float(), frames.to(device)


def lr_at(step: int, cfg: TrainConfig, schedule_steps: int | None = None) -> float:
    """Learning rate of the ``step``-th update (0-based): linear warm-up, then constant or cosine to ``min_lr_ratio``.

    The cosine runs over ``schedule_steps`` (default ``cfg.steps``) and holds its floor after them.
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return cfg.lr * warm
    progress = min(1.0, step / max(1, schedule_steps or cfg.steps))
    factor = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * warm * factor


def step_metrics(step: int, terms: LossTerms, out: TrainOutput, frames: Tensor, vq: ProductQuantizer,
                 grad_norm: float, lr: float, seconds: float, skipped: int) -> dict[str, float | int]:
    """One ``metrics.csv`` row (this process's batch)."""
    t = out.vq.tokens.shape[1]
    mask = torch.arange(t, device=frames.device)[None, :] < frames[:, None]
    usage, perplexity = usage_and_perplexity(out.vq.indices, mask.to(out.vq.indices[0].device), vq.sizes, vq.per_stream)
    row: dict[str, float | int] = {"step": step, **terms.as_floats()}
    row.update({f"usage_{k}": u for k, u in enumerate(usage, start=1)})
    row.update({f"perplexity_{k}": p for k, p in enumerate(perplexity, start=1)})
    row.update({"grad_norm": grad_norm, "lr": lr, "seconds": seconds, "skipped": skipped})
    return row
