"""A failure that is not one input's stops the batch commands; bad inputs are rows up to --max-errors.

The tiny codec is wrapped so that its encode breaks the way a real run breaks: the batched
path only (a bug there: each item is redone alone, counted, warned about once) or every call
from the n-th on (out of memory: the run stops at once, what was written stays and resumes).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, load_tiny_codec, tiny_ckpt_dir
from corpus_cases import TINY, run, socodec
from socodec.errors import AudioError, CheckpointError, ErrorLimit, Fallbacks, is_item_error

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


class Flaky:
    """The tiny codec whose ``encode`` breaks: ``mode`` "batch" (lists of 2+), "oom" (calls after ``after``)
    or "slow-then-oom" (the 0.5 s clip takes 4 s, the 0.5625 s clip runs out of memory at once)."""

    def __init__(self, codec, mode: str, after: int = 0) -> None:
        self.codec, self.mode, self.after, self.calls = codec, mode, after, 0

    def encode(self, x, **kwargs):
        self.calls += 1
        if self.mode == "batch" and isinstance(x, list) and len(x) > 1:
            raise ValueError("batched path broken")
        if self.mode == "oom" and self.calls > self.after:
            raise RuntimeError(OOM)
        if self.mode == "slow-then-oom":
            samples = (x[0] if isinstance(x, list) else x).numel()
            if samples == 8000:
                time.sleep(4)
            elif samples == 9000:
                raise RuntimeError(OOM)
        return self.codec.encode(x, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.codec, name)


def flaky(cache: str, mode: str, after: int = 0) -> Flaky:
    import torch

    torch.set_num_threads(1)
    return Flaky(load_tiny_codec(Path(cache)), mode, after)


def plain(cache: str):
    return load_tiny_codec(Path(cache))


def write_wavs(folder: Path, n: int, bad: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(folder / f"good{i}.wav", (0.1 * rng.standard_normal(8000 + 1000 * i)).astype(np.float32), 16000)
    for i in range(bad):
        (folder / f"bad{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    return folder


def test_item_errors_are_told_from_systematic_ones() -> None:
    assert is_item_error(AudioError("x.wav: not a readable audio file"))
    assert is_item_error(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_item_error(RuntimeError(OOM)) and not is_item_error(MemoryError())
    assert not is_item_error(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_item_error(CheckpointError("weights")) and not is_item_error(TypeError("a bug"))


def test_error_limit() -> None:
    default = ErrorLimit()
    assert not default.exceeded(5, 99) and not default.exceeded(1, 100) and default.exceeded(2, 100)
    assert ErrorLimit.parse("3").exceeded(4, 4) and not ErrorLimit.parse("3").exceeded(3, 3)
    assert ErrorLimit.parse("50%").exceeded(60, 100) and not ErrorLimit.parse("none").exceeded(10**6, 10**6)
    with pytest.raises(ValueError):
        ErrorLimit.parse("lots")


def test_fallback_warns_once_with_its_cause_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    fallbacks = Fallbacks(logging.getLogger("socodec.test"))

    def broken() -> None:
        raise ValueError("batched path broken")

    with caplog.at_level(logging.INFO, logger="socodec.test"):
        assert fallbacks.batch(broken, 3) is None and fallbacks.batch(broken, 2) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert fallbacks.count == 2 and len(warnings) == 1 and "batched path broken" in warnings[0].getMessage()
    outcome = Fallbacks.each([1, 0], lambda n: 1 // n if n else (_ for _ in ()).throw(AudioError("bad")))
    assert outcome[0] == 1 and isinstance(outcome[1], AudioError)
    with pytest.raises(RuntimeError, match="out of memory"):
        Fallbacks.each([1], lambda n: (_ for _ in ()).throw(RuntimeError(OOM)))


# ---------------------------------------------------------------- tokenize


def tokenize_with(loader, inputs: Path, out: Path, batch_size: int = 1, workers: int = 1):
    from socodec.corpus.run import TokenizeOptions, tokenize

    opts = TokenizeOptions(inputs=(inputs,), out_dir=out, workers=workers, threads=1, shard_size=batch_size,
                           batch_size=batch_size, quiet=True)
    return tokenize(opts, loader)


def test_out_of_memory_stops_tokenize_and_the_rerun_resumes(tmp_path: Path) -> None:
    wavs = write_wavs(tmp_path / "wavs", 4)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="out of memory"):
        tokenize_with(functools.partial(flaky, cache, "oom", 2), wavs, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 2 and manifest["errors"] == 0, manifest  # no "failed" rows for the other inputs
    assert (out / "errors.jsonl").read_text() == ""
    summary = tokenize_with(functools.partial(plain, cache), wavs, out)
    assert (summary.skipped, summary.written, summary.failed) == (2, 2, 0)


def test_a_failure_keeps_what_other_workers_finish_after_it(tmp_path: Path) -> None:
    """The run stops at the first failure, but a batch another worker is running is finished and kept."""
    import pyarrow.parquet as pq

    wavs = write_wavs(tmp_path / "wavs", 4)
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="out of memory"):
        tokenize_with(functools.partial(flaky, cache, "slow-then-oom"), wavs, out, workers=2)
    manifest = json.loads((out / "manifest.json").read_text())
    ids = {i for shard in out.glob("**/*.parquet") for i in pq.read_table(shard, columns=["id"])["id"].to_pylist()}
    assert manifest["errors"] == 0 and "good0" in ids and "good1" not in ids, (manifest, ids)
    summary = tokenize_with(functools.partial(plain, cache), wavs, out)
    assert summary.failed == 0 and summary.skipped == len(ids) and summary.skipped + summary.written == 4


def test_a_broken_batched_path_is_redone_one_by_one_and_counted(tmp_path: Path) -> None:
    wavs = write_wavs(tmp_path / "wavs", 4)
    out = tmp_path / "out"
    summary = tokenize_with(functools.partial(flaky, str(tmp_path / "cache"), "batch"), wavs, out, batch_size=4)
    assert (summary.written, summary.failed) == (4, 0) and summary.fallbacks >= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"]["fallbacks"] == summary.fallbacks and "redone one by one" in summary.describe()


def test_max_errors_stops_tokenize_on_a_broken_corpus(tmp_path: Path) -> None:
    wavs = write_wavs(tmp_path / "wavs", 1, bad=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCODEC_")}
    env.update(SOCODEC_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    ckpts = tiny_ckpt_dir(tmp_path / "ckpts")
    result = run(socodec("tokenize", wavs, "-o", tmp_path / "out", "--ckpt-dir", ckpts, *TINY, "--workers", "1",
                         "--threads", "1", "--batch-size", "1", "--max-errors", "1", "-q"), env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--max-errors 1" in result.stderr.splitlines()[-1]
    assert len((tmp_path / "out" / "errors.jsonl").read_text().splitlines()) == 2
    usage = run(socodec("tokenize", wavs, "-o", tmp_path / "o2", "--max-errors", "lots"), env)
    assert usage.returncode == 2 and "--max-errors" in usage.stderr


# ---------------------------------------------------------------- the folder command and eval


def convert(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, codec, *args: object) -> tuple[int, str]:
    """``socodec IN OUT ...`` in-process with ``codec`` as the loaded model: (exit status, stderr lines)."""
    from socodec.cli import main

    monkeypatch.setattr("socodec.cli.runner.load_codec", lambda *a, **k: codec)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        status = main([str(a) for a in args])
    finally:
        root.handlers[:], root.level = handlers, level
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_out_of_memory_stops_the_folder_command(tmp_path: Path, monkeypatch, capsys) -> None:
    wavs = write_wavs(tmp_path / "wavs", 3)
    codec = flaky(str(tmp_path / "cache"), "oom", 1)
    status, err = convert(monkeypatch, capsys, codec, wavs, tmp_path / "out", "-t", ".soc", "-q")
    assert status == 1 and len(err) == 1 and "out of memory" in err[0], err
    assert len(list((tmp_path / "out").glob("*.soc"))) == 1 and codec.calls == 2  # the third file is not tried


def test_max_errors_stops_the_folder_command(tmp_path: Path, monkeypatch, capsys) -> None:
    wavs = write_wavs(tmp_path / "wavs", 0, bad=4)
    status, err = convert(monkeypatch, capsys, plain(str(tmp_path / "cache")), wavs, tmp_path / "out", "-t", ".soc",
                          "-q", "--max-errors", "2")
    assert status == 1 and len(err) == 4 and "--max-errors 2" in err[-1], err


def test_eval_fallback_is_counted_and_a_systematic_failure_stops_it(tmp_path: Path) -> None:
    from socodec.evaluate.run import EvalItem
    from socodec.evaluate.run import EvalConfig, evaluate

    wavs = write_wavs(tmp_path / "wavs", 2)
    items = [EvalItem(p.stem, p) for p in sorted(wavs.glob("*.wav"))]
    config = EvalConfig(streams=(4,), batch_size=2, examples=0)
    result = evaluate(flaky(str(tmp_path / "cache"), "batch"), items, config)
    assert len(result.results) == 2 and not result.errors and result.fallbacks == 1
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(flaky(str(tmp_path / "cache"), "oom", 0), items, config)


def test_the_output_folder_lock_needs_no_fcntl(tmp_path: Path) -> None:
    """The folder lock is portable (filelock): the module imports and locks where fcntl does not exist."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['fcntl'] = None\n"
            "from socodec.corpus.shards import ShardStore\n"
            "from socodec.errors import SoCodecError\n"
            f"with ShardStore({str(tmp_path / 'o')!r}):\n"
            f"    try:\n        ShardStore({str(tmp_path / 'o')!r}).__enter__()\n"
            "    except SoCodecError as exc:\n        print('refused:', exc)\n")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "another socodec tokenize" in result.stdout
