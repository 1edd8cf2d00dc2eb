"""A long run never loses work: checkpoint pruning, metrics history, schedule length on resume,
released codes left alone when fine-tuning, and validation redone after a crash."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest
import torch

from socodec.errors import SoCodecError
from socodec.train import loop
from socodec.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from socodec.train.config import TrainConfig
from socodec.train.checkpoint import CsvLog, read_csv
from socodec.train.loop import lr_at
from socodec.train.validate import ValidResult
from socodec.train.vq import EmaQuantizerTrainer
from train_helpers import make_clips, tiny_config, tiny_spec


def _good(folder: Path, step: int) -> None:
    save_checkpoint(folder, step, {"w": torch.full((3,), float(step))}, keep=100)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_never_loses_the_last_readable_checkpoint(tmp_path, keep, caplog):
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        _good(folder, step)
    (folder / "step_00000090.pt").write_bytes(b"truncated by a crash")  # the newest file is corrupt
    caplog.set_level(logging.WARNING)
    state = latest_checkpoint(folder)  # what a resume does: step 4, the corrupt file set aside
    assert state["step"] == 4
    assert "step_00000090.pt" in caplog.text and "step_00000090.pt.bad" in caplog.text
    assert (folder / "step_00000090.pt.bad").read_bytes() == b"truncated by a crash"

    save_checkpoint(folder, 6, {"w": torch.zeros(3)}, keep=keep)
    expected = {1: ["step_00000006.pt"], 2: ["step_00000004.pt", "step_00000006.pt"]}[keep]
    assert _names(folder) == sorted(expected + ["step_00000090.pt.bad"])
    assert latest_checkpoint(folder)["step"] == 6


def test_pruning_skips_a_corrupt_older_file_and_leaves_later_steps(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        _good(folder, step)
    (folder / "step_00000004.pt").write_bytes(b"garbage")
    (folder / "step_00000090.pt").write_bytes(b"not ours to prune")
    save_checkpoint(folder, 6, {"w": torch.zeros(3)}, keep=2)
    # 6 and the readable 2 are the two kept; the unreadable 4 is set aside, never counted; 90 is a later step
    assert _names(folder) == ["step_00000002.pt", "step_00000004.pt.bad", "step_00000006.pt", "step_00000090.pt"]


def test_metrics_with_other_columns_are_moved_aside_not_deleted(tmp_path, caplog):
    path = tmp_path / "metrics.csv"
    old = "step,loss,old_column\n1,5.0,x\n2,4.0,y\n"
    path.write_text(old)
    caplog.set_level(logging.WARNING)
    CsvLog(path, ["step", "loss"]).truncate_after(2)
    assert path.read_text() == "step,loss\n"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("metrics.") and p != path]
    assert len(kept) == 1 and kept[0].suffix == ".csv" and kept[0].read_text() == old
    assert kept[0].name in caplog.text
    CsvLog(path, ["step", "loss", "more"]).truncate_after(0)  # twice in one second: a second, distinct name
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("metrics.") and p != path]) == 2


def test_cosine_schedule_holds_its_floor_after_its_length():
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(0.1)
    longer = dataclasses.replace(cfg, steps=20)
    assert lr_at(5, longer, schedule_steps=10) == pytest.approx(lr_at(5, cfg))
    assert [lr_at(s, longer, schedule_steps=10) for s in (10, 15, 19)] == [pytest.approx(0.1)] * 3


def test_dead_code_replacement_is_off_when_fine_tuning_and_old_name_is_read():
    cfg = TrainConfig()
    assert cfg.dead_code_threshold(from_scratch=False) == 0.0
    assert cfg.dead_code_threshold(from_scratch=True) == 0.1
    set_ = TrainConfig.from_dict({"dead_code_fraction": 0.2})  # an earlier version's key, same meaning
    assert set_.dead_code_fraction_of_mean == 0.2 and set_.dead_code_threshold(from_scratch=False) == 0.2


def test_reseed_keeps_loaded_inited_and_sums():
    from test_vq import _toy_quantizer

    vq, trainer = _toy_quantizer()
    st = trainer.stats[0]
    st.cluster_size.copy_(torch.tensor([2.0, 3.0]))
    st.embed_avg.copy_(torch.tensor([[7.0], [-5.0]]))  # as loaded: not derived from the codewords
    st.inited.zero_()
    trainer.reseed(vq, 1e-5)
    assert st.embed_avg.tolist() == [[7.0], [-5.0]] and st.inited.item() == 0.0  # as loaded
    assert trainer.initialised(0)  # non-zero loaded codewords: no k-means over them
    trainer.forget_codebooks()
    assert not trainer.initialised(0)


def test_ordering_message_names_where_more_streams_do_worse():
    note = loop.ordering_note(ValidResult(0, (5.20081, 5.20079, 5.20082, 5.20070), 2))
    assert note.startswith("not ordered: 3 streams give a larger distance than 2 (5.20082 > 5.20079"), note
    assert loop.ordering_note(ValidResult(0, (5.2, 5.2, 5.1, 5.0), 2)).startswith("ordered")


def test_extended_run_keeps_its_schedule_and_leaves_released_codes_alone(tmp_path, monkeypatch, caplog):
    data = make_clips(tmp_path / "data", count=3)
    replaced = []
    monkeypatch.setattr(EmaQuantizerTrainer, "_replace_dead", lambda self, *a: replaced.append(1))
    cfg = tiny_config(steps=4, every=2, valid_clips=0, lr=1e-3, min_lr_ratio=0.1)
    first = loop.train(tiny_spec(tmp_path, data, tmp_path / "run", cfg))
    assert first.step == 4 and not replaced  # --init: no dead-code replacement by default
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert state["schedule_steps"] == 4

    caplog.set_level(logging.INFO)
    longer = loop.train(tiny_spec(tmp_path, data, tmp_path / "run", dataclasses.replace(cfg, steps=7)))
    assert longer.resumed_from == 4 and longer.step == 7
    assert "--steps changed from 4 to 7" in caplog.text and "stays at its floor 0.0001 from step 4 to 7" in caplog.text
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [float(r["lr"]) for r in rows[4:]] == [pytest.approx(1e-4)] * 3  # no jump back up
    assert float(rows[3]["lr"]) > 1e-4
    assert not replaced
    cache = Path(os.environ["SOCODEC_CACHE_DIR"])  # the tests' own cache, not ~/.cache/socodec
    assert any(cache.rglob("*")) and Path.home() / ".cache" not in cache.parents

    monkeypatch.undo()
    with_dead = dataclasses.replace(cfg, steps=9, dead_code_fraction_of_mean=0.5)
    replaced.clear()
    monkeypatch.setattr(EmaQuantizerTrainer, "_replace_dead", lambda self, *a: replaced.append(1))
    loop.train(tiny_spec(tmp_path, data, tmp_path / "run", with_dead))
    assert len(replaced) == 2  # set explicitly: on, once per step


def test_validation_interrupted_is_redone_on_resume(tmp_path, monkeypatch, caplog):
    data = make_clips(tmp_path / "data", count=3)
    cfg = tiny_config(steps=4, every=4, valid_clips=2, valid_samples=1, warmup_steps=6)
    real = loop.validate

    def killed_at_step_4(codec, clips, step, *args):
        if step == 4:
            raise KeyboardInterrupt  # as if killed while validating step 4 (its checkpoint is written)
        return real(codec, clips, step, *args)

    monkeypatch.setattr(loop, "validate", killed_at_step_4)
    caplog.set_level(logging.WARNING)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_spec(tmp_path, data, tmp_path / "run", cfg, valid=(str(data),)))
    assert "warmup_steps (6) is more than --steps (4)" in caplog.text
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    assert [r["step"] for r in read_csv(run / "valid.csv")] == ["0"]

    monkeypatch.setattr(loop, "validate", real)
    again = loop.train(tiny_spec(tmp_path, data, run, cfg, valid=(str(data),)))
    assert again.resumed_from == 4 and again.last_valid is not None and again.last_valid.step == 4
    assert [r["step"] for r in read_csv(run / "valid.csv")] == ["0", "4"]
    assert any((run / "samples" / "step_00000004").iterdir())
    loop.train(tiny_spec(tmp_path, data, run, cfg, valid=(str(data),)))  # done: not validated a third time
    assert [r["step"] for r in read_csv(run / "valid.csv")] == ["0", "4"]


def test_a_start_that_fails_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SoCodecError):
        loop.train(tiny_spec(tmp_path, empty, tmp_path / "run", tiny_config()))
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is never removed
    with pytest.raises(SoCodecError):
        loop.train(tiny_spec(tmp_path, empty, tmp_path / "kept", tiny_config()))
    assert (tmp_path / "kept").is_dir()


def test_training_config_files_are_read_like_model_configs(tmp_path):
    """One JSON reader for every config file: the same one-line errors naming the file."""
    import pytest

    from socodec.config import AnalyzerConfig
    from socodec.errors import ConfigError
    from socodec.train.config import TrainConfig

    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{nope")
    for loader, what in ((TrainConfig.from_json, "training config"), (AnalyzerConfig.from_json, "config")):
        with pytest.raises(ConfigError, match=f"missing.json: {what} not found"):
            loader(tmp_path / "missing.json")
        with pytest.raises(ConfigError, match=f"list.json: the {what} must be a JSON object"):
            loader(tmp_path / "list.json")
        with pytest.raises(ConfigError, match=f"bad.json: not a readable JSON {what}"):
            loader(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text('{"steps": 7}')
    assert TrainConfig.from_json(tmp_path / "ok.json").steps == 7
