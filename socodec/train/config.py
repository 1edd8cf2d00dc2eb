"""The training configuration: one typed, frozen dataclass, loadable from JSON.

What the published code fixes is kept (commitment weight 1.0, EMA decay 0.99,
epsilon 1e-5, 50 k-means iterations, ordered stream dropout, the speaker
encoder's 25-75 % random clip of at least 100 frames). Everything the
published code leaves open (reconstruction losses and their weights,
optimiser, schedule, crop length, batch size) has a documented default here;
``docs/training.md`` explains the choices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from socodec.config import read_json_object
from socodec.errors import ConfigError

LOSS_KINDS = ("l1", "l2")
SCHEDULES = ("cosine", "constant")
AUTOCAST = ("bfloat16", "float16", "none")
_RENAMED = {"dead_code_fraction": "dead_code_fraction_of_mean"}
"""Keys of earlier versions, read under their new names (same meaning)."""
_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class TrainConfig:
    """Every training hyper-parameter. Field names are the JSON keys of ``--config``."""

    # run length and bookkeeping
    steps: int = 1000
    """Total optimiser steps (a resumed run continues up to this number)."""
    every: int = 100
    """Checkpoint and validation interval in steps (a checkpoint is also written at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep in ``RUN_DIR/checkpoints``."""
    seed: int = 0

    # data
    batch_size: int = 8
    """Clips per step and per process (the global batch under DDP is batch_size x world size)."""
    crop_seconds: float = 3.84
    """Length of the random training crops (rounded down to whole 120 ms token frames)."""
    min_seconds: float = 0.5
    """Clips shorter than this are skipped (and counted)."""
    data_workers: int = -1
    """Loader processes; -1 picks 0 on CPU and 4 on CUDA."""
    cache_mb: int = 512
    """Decoded audio kept in memory per loader process (clips are re-read when it is full)."""

    # losses
    mel_weight: float = 1.0
    mel_loss: str = "l1"
    """Log-mel reconstruction (decoder 2) against the input's log-mel: l1 or l2."""
    ssl_weight: float = 1.0
    ssl_loss: str = "l2"
    """HuBERT-feature reconstruction (decoder 1's last layer) against the frozen HuBERT output."""
    commitment_weight: float = 1.0
    """Published value: mean squared distance of each chunk to its (stop-gradient) codeword."""

    # quantiser (published values)
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    kmeans_iters: int = 50
    ordered_dropout: bool = True
    """Per clip keep the first k streams, k uniform in 1..4 (stream 1 always, stream k with probability (5-k)/4)."""
    vq_warmup_steps: int = 0
    """For this many first steps the quantiser passes its continuous input on (no commitment loss; the
    published ``enable_vq`` switch); the codebooks are then re-initialised by k-means. For from-scratch runs."""
    reinit_codebooks: bool = False
    """Re-initialise every codebook by k-means on the first batch even when the initial analyzer has one
    (for starts whose codebooks do not fit the new data, e.g. random weights)."""
    dead_code_fraction_of_mean: float = -1.0
    """Replace codes whose EMA count is below this fraction of the sub-codebook's *mean* count by batch
    vectors (0: never, as in the released config). -1 (default): 0.1 from scratch, 0 with ``--init``, so
    fine-tuning the released model never rewrites released codes. The published rule's threshold is a
    fraction t of the *total* count: t = dead_code_fraction_of_mean / codebook size (see docs/training.md)."""

    # speaker encoder's random clip (published values)
    speaker_clip_min: float = 0.25
    speaker_clip_max: float = 0.75
    speaker_min_frames: int = 100

    # optimiser and schedule
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    """Cosine schedule: the learning rate ends at lr x min_lr_ratio."""
    schedule: str = "cosine"
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    """Clip the global gradient norm to this value (0 disables)."""
    autocast: str = "bfloat16"
    """Mixed precision of the trainable parts on CUDA (the quantiser always runs in float32)."""

    # validation
    valid_clips: int = 8
    """At most this many clips of ``--valid`` are used (the first ones, in order)."""
    valid_max_seconds: float = 10.0
    valid_samples: int = 2
    """Clips decoded to ``RUN_DIR/samples`` at each validation (1 and 4 streams)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"training config: {what}")

        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.every >= 1, f"every must be >= 1, got {self.every}")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.crop_seconds >= 0.12, "crop_seconds must be at least one 120 ms frame")
        need(self.min_seconds >= 0.12, "min_seconds must be at least 0.12")
        need(self.mel_loss in LOSS_KINDS and self.ssl_loss in LOSS_KINDS, f"losses must be one of {LOSS_KINDS}")
        need(min(self.mel_weight, self.ssl_weight, self.commitment_weight) >= 0, "loss weights must be >= 0")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)")
        need(self.ema_epsilon > 0, "ema_epsilon must be > 0")
        need(self.kmeans_iters >= 0, "kmeans_iters must be >= 0")
        need(self.vq_warmup_steps >= 0, "vq_warmup_steps must be >= 0")
        need(self.dead_code_fraction_of_mean == -1.0 or 0.0 <= self.dead_code_fraction_of_mean < 1.0,
             "dead_code_fraction_of_mean must be in [0, 1), or -1 for the default")
        need(0.0 < self.speaker_clip_min <= self.speaker_clip_max <= 1.0, "need 0 < speaker_clip_min <= speaker_clip_max <= 1")
        need(self.speaker_min_frames >= 1, "speaker_min_frames must be >= 1")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}")
        need(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        need(0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "betas must be in [0, 1)")
        need(self.grad_clip >= 0, "grad_clip must be >= 0")
        need(self.autocast in AUTOCAST, f"autocast must be one of {AUTOCAST}")
        need(self.valid_clips >= 0 and self.valid_samples >= 0, "valid_clips and valid_samples must be >= 0")
        need(self.valid_max_seconds > 0, "valid_max_seconds must be > 0")
        need(self.cache_mb >= 0, "cache_mb must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "training config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        d = {_RENAMED.get(k, k): v for k, v in d.items()}  # earlier versions' names (their checkpoints too)
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        values = {}
        for key, value in d.items():
            default = getattr(cls, key)
            try:
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise TypeError
                    values[key] = value
                elif isinstance(default, int):
                    if isinstance(value, bool) or int(value) != value:
                        raise TypeError
                    values[key] = int(value)
                elif isinstance(default, float):
                    if isinstance(value, bool):
                        raise TypeError
                    values[key] = float(value)
                else:
                    values[key] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {key} must be {_KIND[type(default)]}, got {value!r}") from None
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_json_object(path, "training config"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **changes: Any) -> "TrainConfig":
        """A copy with the non-None ``changes`` applied (command-line flags over the file)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def dead_code_threshold(self, from_scratch: bool) -> float:
        """The dead-code fraction of the mean count in force: the field, or its default for the kind of run."""
        if self.dead_code_fraction_of_mean >= 0:
            return self.dead_code_fraction_of_mean
        return 0.1 if from_scratch else 0.0

    def differences(self, other: "TrainConfig") -> list[str]:
        """Names of the fields whose values differ from ``other``'s."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
