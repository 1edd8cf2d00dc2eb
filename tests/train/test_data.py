"""Training data and configuration: crops, length-aware batches, skipped clips, the typed config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from socodec.errors import ConfigError
from socodec.train.config import TrainConfig
from socodec.train.data import StepBatches, crop_samples, find_clips, index_clips
from train_helpers import make_clips, voiced_clip


def _batches(folder, **kw) -> StepBatches:
    index = index_clips(find_clips([str(folder)]), 0.5)
    args = dict(batch_size=2, crop_seconds=0.96, seed=0, cache_mb=16)
    args.update(kw)
    return StepBatches(index, **args)


def test_batches_are_a_function_of_seed_step_and_rank(tmp_path):
    folder = make_clips(tmp_path / "d", count=5, low=0.6, high=2.0)
    a, b = _batches(folder), _batches(folder)
    for step in (7, 0, 3):  # any order, fresh objects: same batches
        x, y = a[step], b[step]
        torch.testing.assert_close(x["wav"], y["wav"])
        assert x["frames"].tolist() == y["frames"].tolist()
    assert not torch.equal(a[1]["wav"], a[2]["wav"])
    other = _batches(folder, seed=1)
    assert any(not torch.equal(a[s]["wav"], other[s]["wav"]) for s in range(4))
    eight = make_clips(tmp_path / "e", count=8, low=0.6, high=1.0)
    r0 = _batches(eight, rank=0, world_size=2)
    r1 = _batches(eight, rank=1, world_size=2)
    for epoch in range(2):  # each rank gets its own half of every global batch: an epoch covers every clip once
        steps = range(epoch * 2, epoch * 2 + 2)
        ids = [i for s in steps for i in r0.clip_ids(s) + r1.clip_ids(s)]
        assert sorted(ids) == list(range(8))


def test_crops_frames_and_padding(tmp_path):
    folder = make_clips(tmp_path / "d", count=6, low=0.6, high=2.5)
    data = _batches(folder, batch_size=3)
    crop = crop_samples(0.96)
    assert crop == 15360  # 8 whole token frames
    for step in range(6):
        batch = data[step]
        wav, frames = batch["wav"], batch["frames"]
        assert wav.shape[1] == int(frames.max()) * 1920 and wav.shape[1] <= crop
        for b, f in enumerate(frames.tolist()):
            assert (wav[b, f * 1920 :] == 0).all()  # padding after the clip's own frames
            assert wav[b, : (f - 1) * 1920].abs().sum() > 0


def test_length_aware_batches_group_similar_durations(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        seconds = 0.6 if i % 2 else 3.0
        sf.write(folder / f"c{i:02d}.wav", voiced_clip(rng, seconds), 16000)
    data = _batches(folder, batch_size=4)
    lengths = np.asarray(data.index.samples)
    for step in range(4):
        ids = data.clip_ids(step)
        assert len(set(lengths[ids] > 16000)) == 1  # never short and long clips in one batch


def test_unreadable_and_short_clips_are_skipped_and_counted(tmp_path):
    folder = make_clips(tmp_path / "d", count=3)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEnot audio at all")
    sf.write(folder / "short.wav", np.zeros(1600, np.float32), 16000)
    index = index_clips(find_clips([str(folder)]), 0.5)
    assert len(index.clips) == 3
    assert sorted(cid for cid, _ in index.skipped) == ["broken", "short"]
    data = StepBatches(index, batch_size=3, crop_seconds=0.96, seed=0)
    (folder / "clip1.wav").write_bytes(b"gone bad after indexing")
    skipped = sum(int(data[s]["skipped"]) for s in range(3))
    assert skipped >= 1  # replaced by the next readable clip, and counted
    assert all(data[s]["wav"].shape[0] == 3 for s in range(3))


def test_config_json_overrides_and_errors(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"lr": 0.001, "batch_size": 4, "ordered_dropout": False, "mel_loss": "l2"}))
    cfg = TrainConfig.from_json(path)
    assert (cfg.lr, cfg.batch_size, cfg.ordered_dropout, cfg.mel_loss) == (0.001, 4, False, "l2")
    assert cfg.with_overrides(lr=None, steps=5).steps == 5 and cfg.with_overrides(lr=None).lr == 0.001
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad, word in (({"lrr": 1}, "unknown key 'lrr'"), ({"batch_size": 1.5}, "batch_size must be an integer"),
                      ({"mel_loss": "l3"}, "losses must be one of"), ({"ema_decay": 1.0}, "ema_decay")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=word):
            TrainConfig.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        TrainConfig.from_json(path)
