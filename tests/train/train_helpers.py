"""Shared pieces of the training tests: synthetic clips and tiny, fast run specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import GOLDEN, tiny_ckpt_dir
from socodec.train.config import TrainConfig
from socodec.train.loop import RunSpec
from socodec.config import ModelOptions

TINY_ANALYZER = GOLDEN / "analyzer_tiny.json"
TINY_VOCODER = GOLDEN / "vocoder_tiny.json"


def voiced_clip(rng: np.random.Generator, seconds: float, rate: int = 16000) -> np.ndarray:
    """A speech-like test signal: a harmonic tone with a wandering pitch, a syllable-like envelope and noise."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)) ** 2
    x = 0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


def make_clips(folder: Path, count: int = 6, seed: int = 0, low: float = 1.0, high: float = 2.0,
               rate: int = 16000) -> Path:
    """``count`` wav files of ``low``..``high`` seconds in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        sf.write(folder / f"clip{i}.wav", voiced_clip(rng, rng.uniform(low, high), rate), rate)
    return folder


def tiny_config(**changes) -> TrainConfig:
    """A run small enough for CPU tests: 2 clips of 0.96 s per step, no warm-up, no validation samples."""
    base = dict(steps=8, every=4, batch_size=2, crop_seconds=0.96, warmup_steps=0, lr=1e-3, valid_clips=2,
                valid_samples=0, kmeans_iters=10)
    base.update(changes)
    return TrainConfig(**base)


def tiny_spec(tmp: Path, data: Path, out: Path, config: TrainConfig, valid: tuple[str, ...] = ()) -> RunSpec:
    """A run of the tiny golden model (its files linked into ``tmp/ckpt``) on ``data``."""
    ckpt = tmp / "ckpt"
    if not ckpt.exists():
        tiny_ckpt_dir(ckpt)
    model = ModelOptions(analyzer_config=TINY_ANALYZER, vocoder_config=TINY_VOCODER)
    return RunSpec(data=(str(data),), out=out, model=model, init=ckpt, config=config, valid=valid)


def ddp_worker(rank: int, world: int, port: int, tmp: str, from_scratch: bool) -> None:
    """One process of a gloo run (torch.multiprocessing.spawn target): trains, then saves its own model."""
    import dataclasses
    import os

    import torch
    from safetensors.torch import save_file

    from socodec.train import loop

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    root = Path(tmp)
    if from_scratch:
        spec = tiny_spec(root, root / "data", root / "run", tiny_config(steps=4, every=2, valid_clips=0))
        spec = dataclasses.replace(spec, init=None, model=dataclasses.replace(spec.model, ckpt_dir=root / "ckpt"))
    else:  # with validation: every process validates its share of the clips (and records what it did)
        config = tiny_config(steps=4, every=2, valid_clips=3, valid_samples=1)
        spec = tiny_spec(root, root / "data", root / "run", config, valid=(str(root / "data"),))
        real = loop.validate

        def recorded(codec, clips, step, *args):
            with (root / f"validated{rank}.txt").open("a") as f:
                f.write(f"{step} {len(clips)}\n")
            return real(codec, clips, step, *args)

        loop.validate = recorded
    result = loop.train(spec)
    state = {k: v.contiguous() for k, v in result.model.released_state_dict().items()}
    save_file(state, str(root / f"rank{rank}.safetensors"))
