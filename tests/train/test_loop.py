"""Training runs of the tiny model on CPU: the loss falls, resume is exact, NaN stops, the export loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import GOLDEN
from socodec import SoCodec
from socodec.train import loop
from socodec.train.checkpoint import list_checkpoints
from socodec.train.checkpoint import ANALYZER_CONFIG, VOCODER_CONFIG
from socodec.train.checkpoint import read_csv
from train_helpers import make_clips, tiny_config, tiny_spec

LOSS_COLUMNS = ("loss", "loss_mel", "loss_ssl", "loss_commit", "grad_norm")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, loop.RunResult]:
    """30 steps on 4 clips, validated at 0, 15 and 30 on 2 clips."""
    tmp = tmp_path_factory.mktemp("run")
    data = make_clips(tmp / "data", count=4)
    valid = make_clips(tmp / "valid", count=2, seed=9)
    cfg = tiny_config(steps=30, every=15, valid_samples=1)
    result = loop.train(tiny_spec(tmp, data, tmp / "run", cfg, valid=(str(valid),)))
    return tmp / "run", result


def _losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in read_csv(run / "metrics.csv")]


def test_loss_falls_over_a_few_dozen_steps(trained):
    run, result = trained
    assert result.step == 30 and result.resumed_from == 0
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    for column in ("loss_mel", "loss_ssl", "loss_commit", "usage_1", "perplexity_4", "lr", "seconds", "skipped"):
        assert column in rows[0]
    losses = _losses(run)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_run_folder_validation_and_samples(trained):
    run, result = trained
    valid = read_csv(run / "valid.csv")
    assert [int(r["step"]) for r in valid] == [0, 15, 30]
    assert all(float(r[f"mel_distance_{k}"]) > 0 for r in valid for k in range(1, 5))
    assert float(valid[-1]["mel_distance_4"]) < float(valid[0]["mel_distance_4"])
    assert result.last_valid is not None and len(result.last_valid.distances) == 4
    assert all(1.0 <= float(r["dnsmos_ovrl"]) <= 5.0 for r in valid)  # independent quality, [eval] extra
    assert "speaker_similarity" in valid[0] and result.last_valid.dnsmos_ovrl == pytest.approx(
        float(valid[-1]["dnsmos_ovrl"]), rel=1e-5)
    assert sorted(p.name for p in (run / "samples" / "step_00000030").iterdir()) == ["clip0_streams1.wav",
                                                                                   "clip0_streams4.wav"]
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [15, 30]
    assert (run / "skipped.tsv").read_text() == "id\treason\n"
    assert any((run / "tensorboard").iterdir())


def test_export_has_the_released_keys_and_loads_strictly(trained):
    run, _ = trained
    export = run / "export"
    with safe_open(str(GOLDEN / "analyzer_tiny.safetensors"), "pt") as ref, \
            safe_open(str(export / "socodec_16384x4_120ms_16khz_chinese.safetensors"), "pt") as new:
        assert set(new.keys()) == set(ref.keys())  # training-only keys included, nothing else
        for key in ref.keys():
            assert new.get_slice(key).get_shape() == ref.get_slice(key).get_shape(), key
        assert new.get_tensor("quantizer.quantizers.0._codebook.codebooks.3.inited").item() == 1.0
        trained_embed = new.get_tensor("quantizer.quantizers.0._codebook.codebooks.0.embed")
        assert not torch.equal(trained_embed, ref.get_tensor("quantizer.quantizers.0._codebook.codebooks.0.embed"))
    codec = SoCodec.from_pretrained(export, analyzer_config=export / ANALYZER_CONFIG,
                                    vocoder_config=export / VOCODER_CONFIG)
    torch.testing.assert_close(codec.analyzer.vq.codebooks[0].embed, trained_embed)
    codes = codec.encode(torch.randn(16000) * 0.1)
    assert codes.tokens.shape[1] == 4
    assert codec.decode(codes).shape == (16000,)


def test_interrupted_run_resumes_with_identical_losses(tmp_path, monkeypatch):
    data = make_clips(tmp_path / "data", count=4)
    cfg = tiny_config(steps=7, every=2, valid_clips=0)
    full = loop.train(tiny_spec(tmp_path, data, tmp_path / "full", cfg))
    assert full.step == 7

    real = loop.compute_losses
    calls = {"n": 0}

    def dies_at_step_6(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # as if killed during step 6: checkpoints at 2 and 4 exist
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "compute_losses", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_spec(tmp_path, data, tmp_path / "cut", cfg))
    monkeypatch.setattr(loop, "compute_losses", real)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [2, 4]

    resumed = loop.train(tiny_spec(tmp_path, data, tmp_path / "cut", cfg))
    assert resumed.resumed_from == 4 and resumed.step == 7
    a, b = read_csv(tmp_path / "full" / "metrics.csv"), read_csv(tmp_path / "cut" / "metrics.csv")
    assert [r["step"] for r in b] == [str(s) for s in range(1, 8)]
    for ra, rb in zip(a, b):
        assert [ra[c] for c in LOSS_COLUMNS] == [rb[c] for c in LOSS_COLUMNS], (ra, rb)

    again = loop.train(tiny_spec(tmp_path, data, tmp_path / "cut", cfg))  # finished: nothing to do, export again
    assert again.resumed_from == 7 and again.step == 7
    longer = loop.train(tiny_spec(tmp_path, data, tmp_path / "cut", dataclasses.replace(cfg, steps=9)))
    assert longer.resumed_from == 7 and longer.step == 9


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = make_clips(tmp_path / "data", count=3)
    real = loop.compute_losses
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(loop, "compute_losses", nan_at_step_3)
    with pytest.raises(loop.TrainingError) as info:
        loop.train(tiny_spec(tmp_path, data, tmp_path / "run", tiny_config(steps=6, every=2, valid_clips=0)))
    message = str(info.value)
    assert "step 3: the loss is not finite (nan)" in message and "(step 2)" in message, message
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]
    assert [int(r["step"]) for r in read_csv(tmp_path / "run" / "metrics.csv")] == [1, 2]
    assert not (tmp_path / "run" / "export").exists()


def test_from_scratch_initialises_codebooks_by_kmeans(tmp_path):
    data = make_clips(tmp_path / "data", count=3)
    spec = tiny_spec(tmp_path, data, tmp_path / "run", tiny_config(steps=2, every=2, valid_clips=0))
    spec = dataclasses.replace(spec, init=None, model=dataclasses.replace(spec.model, ckpt_dir=tmp_path / "ckpt"))
    loop.train(spec)
    with safe_open(str(tmp_path / "run" / "init" / "socodec_16384x4_120ms_16khz_chinese.safetensors"), "pt") as f:
        assert f.get_tensor("quantizer.quantizers.0._codebook.codebooks.0.embed").abs().sum() == 0
        assert f.get_tensor("quantizer.quantizers.0._codebook.codebooks.0.inited").item() == 0
    with safe_open(str(tmp_path / "run" / "export" / "socodec_16384x4_120ms_16khz_chinese.safetensors"), "pt") as f:
        assert f.get_tensor("quantizer.quantizers.0._codebook.codebooks.0.embed").abs().sum() > 0
        assert f.get_tensor("quantizer.quantizers.0._codebook.codebooks.7.inited").item() == 1
