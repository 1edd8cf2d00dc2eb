"""Crash safety and the edges of ``socodec tokenize``: kill -9 mid-run then rerun (every id exactly
once), leftovers of a killed write, one writer per folder, duplicate ids, missing extras, and token
rows written from a language model's output."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from conftest import GOLDEN, REPO, tiny_ckpt_dir
from corpus_cases import TINY, finish, one_thread, run, show, socodec, start
from socodec import Codes, SoCodec
from socodec.corpus import decode_shard, read_codes, write_codes
from socodec.corpus.shards import ShardStore
from socodec.errors import SoCodecError

CLIPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    ckpts = tiny_ckpt_dir(root / "ckpts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCODEC_")}
    env.update(SOCODEC_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    clips = root / "clips"
    clips.mkdir()
    rng = np.random.default_rng(7)
    for i in range(CLIPS):
        sf.write(clips / f"c{i:02d}.wav", (0.1 * rng.standard_normal(6400 + 160 * i)).astype(np.float32), 16000,
                 subtype="PCM_16")
    codec = SoCodec.from_pretrained(ckpts, cache_dir=root / "api_cache", analyzer_config=GOLDEN / "analyzer_tiny.json",
                                    vocoder_config=GOLDEN / "vocoder_tiny.json")
    return {"root": root, "env": env, "clips": clips, "model": ["--ckpt-dir", str(ckpts), *TINY], "codec": codec}


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_kill_9_mid_run_then_rerun_writes_every_id_exactly_once(setup: dict) -> None:
    out = setup["root"] / "out"
    argv = socodec("tokenize", setup["clips"], "-o", out, "--shard-size", "2", "--batch-size", "1",
                   "--workers", "1", "--threads", "1", "-q", *setup["model"])
    proc = start(argv, setup["env"])
    deadline = time.monotonic() + 240
    while not list((out / "shards").glob("tokens-*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.005)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    written = list((out / "shards").glob("tokens-*.parquet"))
    assert proc.returncode == -signal.SIGKILL and 1 <= len(written) < CLIPS // 2, "killed too late to test a resume"
    for _ in range(500):  # the workers follow their parent (PR_SET_PDEATHSIG)
        if not any(_alive(w) for w in workers):
            break
        time.sleep(0.01)
    assert workers and not any(_alive(w) for w in workers)
    # a write that was killed half-way leaves only a hidden temporary file
    (out / "shards" / ".tokens-00097.tmp-1-dead.parquet").write_bytes(b"PAR1 half a shard")
    before = {p: p.read_bytes() for p in written}

    again = run(argv, setup["env"])
    assert again.returncode == 0, show(again)
    assert not list((out / "shards").glob(".*")), "leftovers are removed"
    assert all(p.read_bytes() == data for p, data in before.items()), "complete shards are kept as they are"
    ids = pq.read_table(out / "shards", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"c{i:02d}" for i in range(CLIPS)]  # each exactly once
    codec = setup["codec"]
    with one_thread():
        for utt, codes in read_codes(out):
            ref = codec.encode(setup["clips"] / f"{utt}.wav")
            assert torch.equal(codes.tokens, ref.tokens) and torch.equal(codes.speaker, ref.speaker), utt


def test_one_writer_per_folder(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "o"):
        with pytest.raises(SoCodecError, match="another socodec tokenize"):
            with ShardStore(tmp_path / "o"):
                pass
    with ShardStore(tmp_path / "o"):  # released
        pass


def test_duplicate_ids_stop_the_command_before_any_work(setup: dict, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "c00.wav").symlink_to(setup["clips"] / "c00.wav")
    (tmp_path / "b" / "c00.wav").symlink_to(setup["clips"] / "c01.wav")
    result = run(socodec("tokenize", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out", *setup["model"]),
                 setup["env"])
    assert result.returncode == 1 and "duplicate id 'c00'" in result.stderr, show(result)
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("blocked, args, extra", [("pyarrow", [], "corpus"), ("ray", ["--engine", "ray"], "ray")])
def test_a_missing_extra_is_one_line(setup: dict, tmp_path: Path, blocked: str, args: list[str], extra: str) -> None:
    code = (f"import sys; sys.modules[{blocked!r}] = None; from socodec.cli import main; "
            f"sys.exit(main(['tokenize', {str(setup['clips'])!r}, '-o', {str(tmp_path / 'o')!r}, *{args!r}]))")
    result = run([sys.executable, "-c", code], setup["env"])
    assert result.returncode == 1, show(result)
    assert result.stderr.strip().count("\n") == 0 and f"pip install 'socodec[{extra}]'" in result.stderr, show(result)


def test_rows_built_from_generated_tokens_decode(setup: dict, tmp_path: Path) -> None:
    codec = setup["codec"]
    prompt = codec.encode(setup["clips"] / "c00.wav")
    generated = torch.randint(0, 16384, (12, 4), generator=torch.Generator().manual_seed(0))
    path = write_codes(tmp_path / "lm.parquet", [("gen/0", Codes(generated, prompt.speaker)), ("p", prompt)])
    (gen_id, gen), (_, again) = read_codes(path)
    assert gen_id == "gen/0" and torch.equal(gen.tokens, generated) and gen.num_samples is None
    assert torch.equal(again.tokens, prompt.tokens) and again.num_samples == prompt.num_samples
    report = decode_shard(codec, path, tmp_path / "wavs", ids=["gen/0"])
    audio, rate = sf.read(report.written[0], dtype="float32")
    assert rate == 16000 and len(audio) == 1920 * 12  # no lead or length known: every frame's samples
    with pytest.raises(SoCodecError, match="no rows with id nope"):
        decode_shard(codec, path, tmp_path / "wavs", ids=["nope"])
    with pytest.raises(SoCodecError, match="no rows with id nope"):  # the same answer as --ids nope
        next(read_codes(path, ids=["gen/0", "nope"]))
    again_report = decode_shard(codec, path, tmp_path / "wavs", ids=["gen/0"])
    assert again_report.failed and "exists" in again_report.failed[0][1]


def test_resume_reports_changed_audio_and_redoes_it_on_request(setup: dict, tmp_path: Path) -> None:
    import json

    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(11)
    for name in ("a", "b", "c"):
        sf.write(clips / f"{name}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000, subtype="PCM_16")
    (clips / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    out = tmp_path / "out"
    argv = socodec("tokenize", clips, "-o", out, "--workers", "1", "--threads", "1", *setup["model"])
    first = run(argv, setup["env"])
    assert first.returncode == 1, show(first)  # broken.wav
    before = {row["id"]: row for row in pq.read_table(out / "shards").to_pylist()}
    assert json.loads(before["a"]["fingerprint"])[0] == str(clips / "a.wav")

    sf.write(clips / "b.wav", (0.1 * rng.standard_normal(9600)).astype(np.float32), 16000, subtype="PCM_16")
    kept = run(argv, setup["env"])
    assert kept.returncode == 1, show(kept)
    assert "1 utterances changed since they were tokenised (b)" in kept.stderr and "--redo-changed" in kept.stderr
    assert pq.read_table(out / "shards").to_pylist() == list(before.values())  # old rows kept

    redone = run([*argv, "--redo-changed"], setup["env"])
    assert redone.returncode == 1, show(redone)
    rows = {row["id"]: row for row in pq.read_table(out / "shards").to_pylist()}
    ids = pq.read_table(out / "shards", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == ["a", "b", "c"]  # each once
    assert rows["a"] == before["a"] and rows["c"] == before["c"]
    with one_thread():
        ref = setup["codec"].encode(clips / "b.wav")
    assert rows["b"]["tokens"] == ref.tokens.tolist() and rows["b"]["num_samples"] == 9600

    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["broken"] * 3  # one line per run, appended
    assert len({e["run"] for e in errors}) == 3 and all(e["run"] for e in errors)
