"""The analyzer in training: its inference modules plus the training-only parts.

:class:`TrainModel` wraps an :class:`~socodec.nn.analyzer.Analyzer` (trained in place)
and adds what only training uses, stored under the released file's key names:

* ``ssl_head`` — decoder 1's last conv (``decoder_1.layers.8``), predicting the HuBERT
  features from decoder 1's hidden frames (inference never runs it);
* ``vq_trainer.stats.j`` — the EMA statistics of sub-codebook ``j``
  (``quantizer.quantizers.0._codebook.codebooks.j.{inited,cluster_size,embed_avg}``).

Training forward (published ``StagedVQVAE`` train mode): HuBERT features ``[B, 6T, C]``
-> encoder ``[B, T, D]`` -> quantiser (straight-through, ordered dropout) -> + speaker
vector of a random scrambled clip of the log-mel -> decoder 1 -> ``ssl_pred [B, 6T, C]``
and (+ speaker again) decoder 2 -> ``mel_pred [B, 12T, n_mels]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from socodec.nn.analyzer import Analyzer
from socodec.nn.causal import CausalConv1d
from socodec.train.vq import EmaQuantizerTrainer, QuantOutput, VQSettings

SSL_HEAD_PREFIX = "decoder_1.layers.8."
CODEBOOK_PREFIX = "quantizer.quantizers.0._codebook.codebooks."
STAT_NAMES = ("inited", "cluster_size", "embed_avg")


@dataclass(frozen=True)
class ClipSettings:
    """The speaker encoder's random clip: a fraction in [low, high) of the clip, at least ``min_frames`` after tiling."""

    low: float = 0.25
    high: float = 0.75
    min_frames: int = 100


@dataclass
class TrainOutput:
    ssl_pred: Tensor
    mel_pred: Tensor
    vq: QuantOutput


def random_clip(mel: Tensor, frames: list[int], settings: ClipSettings, gen: torch.Generator) -> Tensor:
    """The speaker encoder's training input: a scrambled random clip of each item's log-mel.

    Per item with ``n`` valid frames: ``m = floor(n·u)``, ``u ~ U[low, high)`` (at least 3, at most n;
    a clip of fewer than 3 frames is used as it is);
    a random start; the clip is cut into 3 pieces of ``floor(m/3)`` frames whose order is
    shuffled; every clip is tiled (repeated whole) to ``M = max(min_frames, largest m)`` frames.

    Args:
        mel: ``[B, F, n_mels]`` log-mel; frames: valid frame count of each item (<= F).
    Returns:
        ``[B, M, n_mels]``.
    """
    clips = []
    for b, n in enumerate(frames):
        u = settings.low + (settings.high - settings.low) * float(torch.rand((), generator=gen))
        m = min(n, max(3, int(n * u)))
        start = int(torch.randint(0, n - m + 1, (), generator=gen))
        piece = m // 3
        order = torch.randperm(3, generator=gen).tolist()
        clip = mel[b, start : start + m]
        clips.append(torch.cat([clip[i * piece : (i + 1) * piece] for i in order], dim=0) if piece else clip)
    longest = max(c.shape[0] for c in clips)
    target = max(settings.min_frames, longest)
    out = []
    for c in clips:
        reps = -(-target // c.shape[0])
        out.append(c.repeat(reps, 1)[:target])
    return torch.stack(out)


class TrainModel(nn.Module):
    """An analyzer being trained, with decoder 1's HuBERT head and the codebooks' EMA statistics."""

    def __init__(self, analyzer: Analyzer) -> None:
        super().__init__()
        cfg = analyzer.cfg
        self.analyzer = analyzer
        self.ssl_head = CausalConv1d(cfg.model_size, cfg.in_dim, 3)
        self.vq_trainer = EmaQuantizerTrainer(analyzer.vq)

    def forward(
        self, features: Tensor, mel: Tensor, frames: Tensor, vq: VQSettings, clip: ClipSettings, gen: torch.Generator
    ) -> TrainOutput:
        """One training forward.

        Args:
            features: ``[B, 6T, in_dim]`` HuBERT features (frozen, no gradient).
            mel: ``[B, 12T, n_mels]`` log-mel of the same audio.
            frames: ``[B]`` valid token frames per item (the rest is padding).
            vq, clip: quantiser and speaker-clip settings; gen: the training random generator (CPU).
        """
        a = self.analyzer
        t = features.shape[1] // 6
        mask = torch.arange(t, device=features.device)[None, :] < frames.to(features.device)[:, None]
        encoded = a.encoder(features)  # [B, T, D]
        q = self.vq_trainer(a.vq, encoded, mask, vq, gen)
        mel_frames = [int(f) * (mel.shape[1] // t) for f in frames.tolist()]
        spk = a.speaker_encoder(random_clip(mel, mel_frames, clip, gen))[:, None, :]  # [B, 1, D]
        h = a.decoder_1(q.quant + spk)  # [B, 6T, D]
        ssl_pred = self.ssl_head(h.transpose(1, 2)).transpose(1, 2)
        mel_pred = a.decoder_2.project(a.decoder_2(h + spk))
        return TrainOutput(ssl_pred, mel_pred, q)

    # ------------------------------------------------------------------ released key names
    def released_state_dict(self) -> dict[str, Tensor]:
        """Every tensor under the released analyzer file's names (training-only keys included)."""
        state = {k: v.detach() for k, v in self.analyzer.state_dict().items()}
        for key, value in self.ssl_head.state_dict().items():
            state[SSL_HEAD_PREFIX + key] = value.detach()
        for j, stats in enumerate(self.vq_trainer.stats):
            for name in STAT_NAMES:
                state[f"{CODEBOOK_PREFIX}{j}.{name}"] = getattr(stats, name).detach()
        return state

    @torch.no_grad()
    def load_training_extras(self, state: Mapping[str, Tensor], epsilon: float) -> list[str]:
        """Fill the head and EMA statistics from a released-format file's tensors where present.

        Returns the names of the parts that were not in ``state`` (kept at their initial values).
        All four codebook buffers are loaded where present; :meth:`EmaQuantizerTrainer.reseed` then
        fills in only what is missing or unusable.
        """
        missing = []
        head = {k[len(SSL_HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(SSL_HEAD_PREFIX)}
        wanted = self.ssl_head.state_dict()
        if set(head) == set(wanted) and all(head[k].shape == wanted[k].shape for k in wanted):
            self.ssl_head.load_state_dict(head)
        else:
            missing.append("decoder_1.layers.8 (HuBERT-feature head)")
        for j, stats in enumerate(self.vq_trainer.stats):
            for name in STAT_NAMES:
                value = state.get(f"{CODEBOOK_PREFIX}{j}.{name}")
                if value is not None and value.shape == getattr(stats, name).shape:
                    getattr(stats, name).copy_(value)
                elif name == "cluster_size":
                    missing.append(f"codebook {j} cluster_size")
        self.vq_trainer.reseed(self.analyzer.vq, epsilon)
        return missing
