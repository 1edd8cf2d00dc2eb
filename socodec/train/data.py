"""Training data: clips, random fixed-length crops and length-aware batches.

DATA arguments are read like ``socodec tokenize``'s inputs (:func:`socodec.corpus.inputs.collect_work`):
audio files, folders, quoted globs, Kaldi/WeNet folders with ``segments``, JSONL manifests.

Every batch is a pure function of ``(seed, step, rank)``: the epoch's order comes from
``(seed, epoch)`` and the crop offsets from ``(seed, step, rank)``. Resuming at step s
therefore sees exactly the batches an uninterrupted run would, with no sampler state to
save, and loader processes can build batches in any order.

Length-aware batching: each epoch's shuffled clip list is cut into pools of 64 global
batches; inside a pool clips are sorted by duration before being cut into batches (whose
order is then shuffled), so clips shorter than the crop are padded little.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from socodec.config import SAMPLE_RATE, SAMPLES_PER_TOKEN
from socodec.corpus.inputs import collect_work
from socodec.corpus.containers import WorkItem
from socodec.corpus.inputs import probe_seconds, read_item
from socodec.errors import AudioError, SoCodecError, one_line

log = logging.getLogger(__name__)

POOL_BATCHES = 64


@dataclass(frozen=True)
class ClipIndex:
    """The usable clips with their durations in samples at 16 kHz, and the skipped ones with reasons."""

    clips: tuple[WorkItem, ...]
    samples: tuple[int, ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def seconds(self) -> float:
        return sum(self.samples) / SAMPLE_RATE


def find_clips(inputs: Sequence[str | Path]) -> list[WorkItem]:
    """The clips named by DATA arguments (see the module docstring)."""
    return collect_work(inputs)


def index_clips(clips: Sequence[WorkItem], min_seconds: float) -> ClipIndex:
    """Keep the clips that can be read and are at least ``min_seconds`` long; the others are listed."""
    kept, lengths, skipped = [], [], []
    for clip in clips:
        seconds = probe_seconds(clip)
        if seconds <= 0:
            try:  # the header could not be read: read the clip for the reason (or its length)
                seconds = read_clip(clip).numel() / SAMPLE_RATE
            except (AudioError, OSError, RuntimeError, ValueError) as exc:
                skipped.append((clip.id, one_line(exc)))
                continue
        if seconds < min_seconds:
            skipped.append((clip.id, f"shorter than {min_seconds:g} s ({seconds:.3f} s)"))
            continue
        kept.append(clip)
        lengths.append(int(round(seconds * SAMPLE_RATE)))
    return ClipIndex(tuple(kept), tuple(lengths), tuple(skipped))


def read_clip(clip: WorkItem) -> Tensor:
    """The clip's audio as 16 kHz mono float32 ``[N]`` (a segment is read by seeking)."""
    return read_item(clip)[0]


def crop_samples(seconds: float) -> int:
    """Crop length in samples: whole 120 ms token frames (at least one)."""
    return max(1, int(seconds * SAMPLE_RATE) // SAMPLES_PER_TOKEN) * SAMPLES_PER_TOKEN


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``step`` is this process's batch for that step.

    An item is a dict: ``wav`` [B, L] float32 (L a multiple of 1920), ``frames`` [B] int64
    (valid token frames per clip; the rest is zero padding), ``skipped`` (clips that failed
    to read while building it; they are replaced by the next readable ones).
    """

    def __init__(self, index: ClipIndex, batch_size: int, crop_seconds: float, seed: int,
                 rank: int = 0, world_size: int = 1, cache_mb: int = 512) -> None:
        if not index.clips:
            raise SoCodecError("no usable training clips")
        self.index = index
        self.batch_size = batch_size
        self.crop = crop_samples(crop_seconds)
        self.seed = seed
        self.rank = rank
        self.world = world_size
        self.cache_bytes = cache_mb * 2**20
        self._cache: OrderedDict[int, Tensor] = OrderedDict()
        self._cached = 0
        self._plans: dict[int, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return 2**62

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.index.clips) / self.global_batch))

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches (clip indices), length-aware and shuffled."""
        if epoch not in self._plans:
            self._plans = {epoch: self._make_plan(epoch)}
        return self._plans[epoch]

    def _make_plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        n, g = len(self.index.clips), self.global_batch
        order = rng.permutation(n)
        need = self.batches_per_epoch * g
        if need > n:  # fill the last batch (or a tiny corpus) with random repeats
            order = np.concatenate([order, rng.integers(0, n, need - n)])
        lengths = np.asarray(self.index.samples)
        batches = []
        for start in range(0, need, POOL_BATCHES * g):
            pool = order[start : start + POOL_BATCHES * g]
            pool = pool[np.argsort(lengths[pool], kind="stable")]
            batches += [pool[i : i + g] for i in range(0, len(pool), g)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def clip_ids(self, step: int) -> list[int]:
        """This process's clip indices for ``step``."""
        epoch, b = divmod(step, self.batches_per_epoch)
        return self.plan(epoch)[b][self.rank :: self.world].tolist()

    def __getitem__(self, step: int) -> dict[str, Tensor | int]:
        rng = np.random.default_rng([self.seed, step, self.rank, 0xC409])
        wavs, skipped = [], 0
        for i in self.clip_ids(step):
            audio, failures = self._readable(i)
            skipped += failures
            n = audio.numel()
            if n > self.crop:
                start = int(rng.integers(0, n - self.crop + 1))
                audio = audio[start : start + self.crop]
            wavs.append(audio)
        frames = torch.tensor([-(-w.numel() // SAMPLES_PER_TOKEN) for w in wavs], dtype=torch.long)
        batch = torch.zeros(len(wavs), int(frames.max()) * SAMPLES_PER_TOKEN)
        for b, w in enumerate(wavs):
            batch[b, : w.numel()] = w
        return {"wav": batch, "frames": frames, "skipped": skipped}

    def _readable(self, i: int) -> tuple[Tensor, int]:
        """Clip ``i``'s audio, or the next readable clip's (in index order) with the number of failures."""
        n = len(self.index.clips)
        for attempt in range(n):
            j = (i + attempt) % n
            try:
                return self._load(j), attempt
            except (AudioError, OSError, RuntimeError, ValueError) as exc:
                log.warning("skipping unreadable clip %s: %s", self.index.clips[j].id, one_line(exc))
        raise SoCodecError("no training clip could be read")

    def _load(self, i: int) -> Tensor:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        audio = read_clip(self.index.clips[i])
        if audio.numel() * 4 <= self.cache_bytes:
            self._cache[i] = audio
            self._cached += audio.numel() * 4
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.numel() * 4
        return audio
