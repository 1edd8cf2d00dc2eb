"""``socodec shard.parquet OUT_DIR/``: token shard rows back to one wav each, by the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch
from safetensors.torch import load_file

from conftest import GOLDEN, REPO, TINY_CONFIGS
from socodec import Codes
from socodec.corpus import write_codes
from socodec.loading.checkpoints import ANALYZER_FILE, VOCODER_FILE


def run(*args, cwd: Path) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # this checkout, installed or not
    env = {**os.environ, "SOCODEC_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-m", "socodec", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_shard_rows_decode_like_token_files(tmp_path):
    ckpts = tmp_path / "ckpts"  # synthesis only: the two .safetensors files, no HuBERT
    ckpts.mkdir()
    (ckpts / ANALYZER_FILE).symlink_to(GOLDEN / "analyzer_tiny.safetensors")
    (ckpts / VOCODER_FILE).symlink_to(GOLDEN / "vocoder_tiny.safetensors")
    cases = {name: load_file(str(GOLDEN / f"golden_{name}.safetensors")) for name in ("chirp", "edge")}
    rows = [(f"spk/{name}", Codes(g["tokens"], g["speaker"], num_samples=g["input_wav"].numel(), lead=8000))
            for name, g in cases.items()]
    rows.append(("generated", Codes(torch.randint(0, 16384, (9, 4)), cases["chirp"]["speaker"])))  # LM output
    shard = write_codes(tmp_path / "rows.parquet", rows)
    for utt_id, codes in rows:
        codes.save(tmp_path / f"{utt_id.replace('/', '_')}.soc")
    model = ["--ckpt-dir", ckpts, *TINY_CONFIGS, "--no-download", "-q"]

    result = run(shard, tmp_path / "out", "--ids", "spk/edge,generated", "--sample-format", "float", *model, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav")) == [
        "generated.wav", "spk/edge.wav"]
    for utt_id in ("spk/edge", "generated"):
        flat = utt_id.replace("/", "_")
        single = run(tmp_path / f"{flat}.soc", tmp_path / f"{flat}.wav", "--sample-format", "float", *model, cwd=tmp_path)
        assert single.returncode == 0, single.stderr
        a, _ = sf.read(tmp_path / "out" / f"{utt_id}.wav", dtype="float32")
        b, _ = sf.read(tmp_path / f"{flat}.wav", dtype="float32")
        assert a.shape == b.shape and abs(a - b).max() == 0
    assert sf.info(str(tmp_path / "out" / "generated.wav")).frames == 9 * 1920  # no lead/length: 1920 T

    unknown = run(shard, tmp_path / "out2", "--ids", "nope", *model, cwd=tmp_path)
    assert unknown.returncode == 1 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    assert not list((tmp_path / "out2").rglob("*.wav"))
    mixed = run(shard, tmp_path / "spk_edge.soc", tmp_path / "out3", *model, cwd=tmp_path)
    assert mixed.returncode == 2 and "cannot be mixed" in mixed.stderr
    ids_alone = run(tmp_path / "spk_edge.soc", tmp_path / "x.wav", "--ids", "a", *model, cwd=tmp_path)
    assert ids_alone.returncode == 2 and "--ids" in ids_alone.stderr
