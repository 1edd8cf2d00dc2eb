"""Object storage for real: a moto S3 server on loopback (``ThreadedMotoServer``), tars and Parquet read
from the bucket, shards written to it, a run killed with ``kill -9`` and resumed, and a missing bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from corpus_cases import _noise, finish, make_corpus, run, show, socodec, write_tar
from socodec.corpus import read_codes

RUN_ARGS = ["--batch-size", "2", "--threads", "1", "--workers", "1"]
N_CLIPS = 6


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    corpus = make_corpus(tmp_path_factory.mktemp("s3"))
    env = {**corpus.env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("AWS_PROFILE", None)
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
    fs.mkdir("corpus")
    fs.mkdir("tokens")
    local = corpus.root / "tars"
    local.mkdir()
    for k in range(2):
        members = {}
        for n in range(k * N_CLIPS // 2, (k + 1) * N_CLIPS // 2):
            path = corpus.root / f"c{n}.flac"
            sf.write(path, _noise(0.6 + 0.2 * n, 16000, seed=20 + n), 16000, subtype="PCM_16")
            members[f"c{n}.flac"] = path.read_bytes()
            members[f"c{n}.json"] = json.dumps({"n": n}).encode()
        write_tar(local / f"part-{k:03d}.tar", members)
        fs.put_file(str(local / f"part-{k:03d}.tar"), f"corpus/tars/part-{k:03d}.tar")
    yield {"fs": fs, "env": env, "corpus": corpus, "endpoint": endpoint, "host": host, "port": port, "local": local}
    server.stop()


def _s3_table(s3: dict, prefix: str):
    """What pyarrow's dataset discovery sees straight from the bucket (skips names starting with _ or .)."""
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=s3["endpoint"],
                           scheme="http", region="us-east-1")
    return ds.dataset(f"{prefix}/shards", filesystem=fs, format="parquet").to_table()


def test_tars_from_s3_to_s3_equal_the_local_run(s3: dict) -> None:
    corpus, env = s3["corpus"], s3["env"]
    remote = run(socodec("tokenize", "s3://corpus/tars/part-{000..001}.tar", "-o", "s3://tokens/run1",
                         "--shard-size", "2", *RUN_ARGS, *corpus.model_args), env)
    assert remote.returncode == 0, show(remote)
    local = run(socodec("tokenize", s3["local"] / "part-{000..001}.tar", "-o", corpus.root / "local_out",
                        "--shard-size", "2", *RUN_ARGS, *corpus.model_args), env)
    assert local.returncode == 0, show(local)
    table = _s3_table(s3, "tokens/run1")
    assert sorted(table.column("id").to_pylist()) == sorted(f"c{n}" for n in range(N_CLIPS))
    assert all(s.startswith("s3://corpus/tars/part-") and "#c" in s for s in table.column("source").to_pylist())
    ref = {row["id"]: row for row in pq.read_table(corpus.root / "local_out" / "shards").to_pylist()}
    for row in table.to_pylist():
        assert row["tokens"] == ref[row["id"]]["tokens"], row["id"]
        assert np.allclose(row["speaker"], ref[row["id"]]["speaker"], atol=1e-5), row["id"]
    manifest = json.loads(s3["fs"].cat("tokens/run1/manifest.json"))
    assert manifest["rows"] == N_CLIPS and len(manifest["shards"]) == 3


def test_kill_9_then_resume_writes_every_id_once(s3: dict) -> None:
    corpus, env, fs = s3["corpus"], s3["env"], s3["fs"]
    argv = socodec("tokenize", "s3://corpus/tars/", "-o", "s3://tokens/killed", "--shard-size", "1",
                   "--batch-size", "1", "--threads", "1", "--workers", "1", *corpus.model_args)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if len(fs.glob("tokens/killed/shards/*.parquet")) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    fs.invalidate_cache()
    before = len(fs.glob("tokens/killed/shards/*.parquet"))
    assert 2 <= before < N_CLIPS, "the run was not cut in the middle"
    ids = _s3_table(s3, "tokens/killed").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == before  # only whole shards are visible
    again = run(argv, env)
    assert again.returncode == 0, show(again)
    assert f"{before} of {N_CLIPS} utterances are already" in again.stderr, show(again)
    ids = _s3_table(s3, "tokens/killed").column("id").to_pylist()
    assert sorted(ids) == sorted(f"c{n}" for n in range(N_CLIPS))
    fs.invalidate_cache()
    assert all(Path(k).name.startswith("tokens-") for k in fs.find("tokens/killed/shards"))


def test_a_missing_bucket_is_one_line_and_nothing_is_written(s3: dict, tmp_path: Path) -> None:
    corpus = s3["corpus"]
    result = run(socodec("tokenize", s3["local"] / "part-000.tar", "-o", "s3://no-such-bucket/x",
                         *corpus.model_args), s3["env"], cwd=tmp_path)
    assert result.returncode == 1, show(result)
    assert "no-such-bucket" in result.stderr and "no such bucket" in result.stderr, show(result)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, show(result)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_endpoint_is_one_line(s3: dict, tmp_path: Path) -> None:
    corpus = s3["corpus"]
    env = {**s3["env"], "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    result = run(socodec("tokenize", "s3://corpus/tars/part-000.tar", "-o", tmp_path / "out",
                         *corpus.model_args), env, cwd=tmp_path)
    assert result.returncode == 1, show(result)
    assert "cannot reach the store" in result.stderr and "Traceback" not in result.stderr, show(result)
    assert not (tmp_path / "out").exists()


def test_bad_storage_options_and_formats_on_s3_are_usage_errors(s3: dict, tmp_path: Path) -> None:
    corpus = s3["corpus"]
    for extra, expected in [(["--storage-options", "{not json"], "--storage-options must be a JSON object"),
                            (["--format", "lhotse"], "--format lhotse writes to a local folder")]:
        result = run(socodec("tokenize", s3["local"] / "part-000.tar", "-o", "s3://tokens/never", *extra,
                             *corpus.model_args), s3["env"], cwd=tmp_path)
        assert result.returncode == 2 and expected in result.stderr, show(result)
        assert "Traceback" not in result.stderr
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists("tokens/never")
