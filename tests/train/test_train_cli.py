"""``socodec train`` for real, in subprocesses: a run, its export through the normal CLI, kill -9 and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, tiny_ckpt_dir
from socodec.train.checkpoint import read_csv
from train_helpers import TINY_ANALYZER, TINY_VOCODER, make_clips

TIMEOUT_S = 300
LOSS_COLUMNS = ("loss", "loss_mel", "loss_ssl", "loss_commit", "grad_norm", "usage_1", "perplexity_4")
TRAIN_JSON = {"crop_seconds": 0.96, "warmup_steps": 0, "lr": 0.001, "kmeans_iters": 10, "valid_clips": 2,
              "valid_samples": 1}


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _socodec(*args: object) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "socodec", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=REPO)


def _train_args(tmp: Path, out: Path, steps: int, every: int) -> list[object]:
    config = tmp / "train.json"
    config.write_text(json.dumps(TRAIN_JSON))
    ckpt = tmp / "ckpt"
    if not ckpt.exists():
        tiny_ckpt_dir(ckpt)
    return ["train", tmp / "data", "--out", out, "--init", ckpt, "--analyzer-config", TINY_ANALYZER,
            "--vocoder-config", TINY_VOCODER, "--steps", steps, "--every", every, "--batch-size", 2,
            "--config", config, "--threads", 1, "--seed", 3]


def test_train_command_runs_and_its_export_converts_audio(tmp_path):
    make_clips(tmp_path / "data", count=4)
    valid = make_clips(tmp_path / "valid", count=2, seed=5)
    run = tmp_path / "run"
    done = _socodec(*_train_args(tmp_path, run, steps=4, every=2), "--valid", valid)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "validation at step 4" in done.stderr and "trained model is in" in done.stderr
    assert [r["step"] for r in read_csv(run / "metrics.csv")] == ["1", "2", "3", "4"]
    assert [r["step"] for r in read_csv(run / "valid.csv")] == ["0", "2", "4"]
    assert json.loads((run / "run.json").read_text())["config"]["seed"] == 3
    export = run / "export"
    out = tmp_path / "out.wav"
    converted = _socodec(valid / "clip0.wav", out, "--ckpt-dir", export,
                         "--analyzer-config", export / "analyzer_config.json",
                         "--vocoder-config", export / "vocoder_config.json")
    assert converted.returncode == 0, converted.stderr
    assert out.stat().st_size > 1000


def test_killed_run_resumes_from_its_checkpoint_with_identical_losses(tmp_path):
    make_clips(tmp_path / "data", count=4)
    valid = ("--valid", tmp_path / "data")
    full = _socodec(*_train_args(tmp_path, tmp_path / "full", steps=10, every=2), *valid)
    assert full.returncode == 0, full.stderr

    cut = tmp_path / "cut"
    argv = [sys.executable, "-m", "socodec", *map(str, _train_args(tmp_path, cut, steps=10, every=2)), *map(str, valid)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not (cut / "checkpoints" / "step_00000002.pt").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = len(read_csv(cut / "metrics.csv"))
    assert killed_at < 10

    again = _socodec(*_train_args(tmp_path, cut, steps=10, every=2), *valid)
    assert again.returncode == 0, again.stderr
    assert "resuming from step" in again.stderr
    a, b = read_csv(tmp_path / "full" / "metrics.csv"), read_csv(cut / "metrics.csv")
    assert [r["step"] for r in b] == [str(s) for s in range(1, 11)]
    for ra, rb in zip(a, b):
        assert [ra[c] for c in LOSS_COLUMNS] == [rb[c] for c in LOSS_COLUMNS], (ra["step"], ra, rb)
    # killed while validating step 2 (right after its checkpoint): that validation is redone, once
    assert [r["step"] for r in read_csv(cut / "valid.csv")] == [str(s) for s in range(0, 11, 2)]
    assert (cut / "samples" / "step_00000002").is_dir()


def test_bad_options_and_inputs_give_one_line(tmp_path):
    make_clips(tmp_path / "data", count=2)
    usage = _socodec("train", tmp_path / "data", "--out", tmp_path / "run", "--steps", "0")
    assert usage.returncode == 2 and "--steps must be at least 1" in usage.stderr
    assert not (tmp_path / "run").exists()
    missing = _socodec(*_train_args(tmp_path, tmp_path / "run", steps=2, every=1)[:1], tmp_path / "nope",
                       *_train_args(tmp_path, tmp_path / "run", steps=2, every=1)[2:])
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # a failed start leaves no empty run folder
    half = _socodec(*_train_args(tmp_path, tmp_path / "run2", steps=2, every=1), "--dtype", "float16")
    assert half.returncode == 1 and "float16" in half.stderr and "Traceback" not in half.stderr
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"lr": "fast"}')
    args = _train_args(tmp_path, tmp_path / "run3", steps=2, every=1)
    args[args.index("--config") + 1] = bad_config
    wrong = _socodec(*args)
    assert wrong.returncode == 1 and "lr must be a number" in wrong.stderr
