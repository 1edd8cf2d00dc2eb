"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head without CPUs and
two worker nodes of one CPU, so each runs one encoder actor): ``tokenize --engine ray --ray-address``
joins it, one worker node is removed while the job runs (and a fresh one joins, as nodes come and go),
and every id is still written exactly once. A caller's Ray is left running; the Ray of a socodec killed
with ``kill -9`` is stopped by the next socodec that starts one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import REPO
from corpus_cases import _noise, finish, make_corpus, run, show, socodec, start

N_CLIPS = 10


def test_a_node_lost_mid_job_loses_and_duplicates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.cluster_utils import Cluster

    corpus = make_corpus(tmp_path)
    clips = tmp_path / "clips"
    clips.mkdir()
    for n in range(N_CLIPS):
        sf.write(clips / f"u{n:02d}.wav", _noise(1.0, 16000, seed=30 + n), 16000, subtype="PCM_16")
    for key, value in corpus.env.items():  # the nodes import this checkout and use the test's cache
        if key in ("PYTHONPATH", "SOCODEC_CACHE_DIR", "HF_HUB_OFFLINE", "OMP_NUM_THREADS"):
            monkeypatch.setenv(key, value)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    proc = start(socodec("tokenize", clips, "-o", out, "--engine", "ray", "--ray-address", cluster.address,
                         "--workers", "2", "--shard-size", "1", "--batch-size", "1", "--threads", "1", "-q",
                         *corpus.model_args), {**corpus.env, "PYTHONPATH": str(REPO)})
    removed_at = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list((out / "shards").glob("*.parquet"))) if (out / "shards").is_dir() else 0
            if done >= 1:
                cluster.remove_node(workers[0])  # its actor dies with it, mid-job
                removed_at = done
                cluster.add_node(num_cpus=1)  # a node joins: the actor is restarted there
                break
            time.sleep(0.05)
        result = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    assert removed_at is not None and removed_at < N_CLIPS, "no node was removed while the job ran\n" + show(result)
    assert result.returncode == 0, show(result)
    ids = pq.read_table(out / "shards", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"u{n:02d}" for n in range(N_CLIPS)]
    assert os.path.exists(out / "manifest.json")


def test_the_callers_ray_is_left_running(tmp_path: Path) -> None:
    import functools

    import ray

    from conftest import GOLDEN
    from socodec import SoCodec
    from socodec.corpus.run import TokenizeOptions, tokenize

    clips = tmp_path / "clips"
    clips.mkdir()
    for n in range(2):
        sf.write(clips / f"v{n}.wav", _noise(0.8, 16000, seed=40 + n), 16000, subtype="PCM_16")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        summary = tokenize(TokenizeOptions(inputs=(clips,), out_dir=tmp_path / "out", engine="ray", workers=1,
                                           threads=1, quiet=True),
                           functools.partial(SoCodec.from_files, GOLDEN / "hubert_tiny_fairseq.pt",
                                             GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
                                             analyzer_config=GOLDEN / "analyzer_tiny.json",
                                             vocoder_config=GOLDEN / "vocoder_tiny.json", cache_dir=tmp_path / "cache"))
        assert summary.written == 2
        assert ray.is_initialized()  # socodec did not start it, so it does not stop it
        assert ray.get(ray.put(7)) == 7
    finally:
        ray.shutdown()


def _session_of(pid: int) -> str | None:
    """The session folder of the Ray that process ``pid`` started (from its children's command lines)."""
    import ray  # noqa: F401 - Ray brings its own psutil
    import psutil

    for child in psutil.Process(pid).children():
        try:
            for arg in child.cmdline():
                if arg.startswith(("--session-dir=", "--session_dir=")):
                    return arg.split("=", 1)[1]
        except psutil.Error:
            continue
    return None


def _session_processes(session: str) -> list:
    """Running processes of the Ray session folder ``session``: their command line or open files are in it."""
    import ray  # noqa: F401 - Ray brings its own psutil
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            paths = [*(proc.info["cmdline"] or []), *(f.path for f in proc.open_files())]
        except psutil.Error:
            continue
        if proc.pid != os.getpid() and any(p == session or p.startswith(session + "/") or f"={session}" in p
                                           for p in paths):
            found.append(proc)
    return found


def test_the_ray_of_a_killed_run_is_stopped_by_the_next(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    clips = tmp_path / "clips"
    clips.mkdir()
    for n in range(12):
        sf.write(clips / f"k{n:02d}.wav", _noise(1.0, 16000, seed=50 + n), 16000, subtype="PCM_16")
    args = ["--engine", "ray", "--workers", "1", "--shard-size", "1", "--batch-size", "1", "--threads", "1", "-q",
            *corpus.model_args]
    records = Path(corpus.env["SOCODEC_CACHE_DIR"]) / "ray"
    first = subprocess.Popen(socodec("tokenize", clips, "-o", tmp_path / "first", *args), env=corpus.env, cwd=REPO,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left: list = []
    try:
        deadline = time.monotonic() + 120
        session = None
        while first.poll() is None:  # until Ray's agents run (they are what outlives a kill)
            assert time.monotonic() < deadline, "Ray did not start"
            session = session or _session_of(first.pid)
            if session and any(p.info["cmdline"][0].startswith("ray::") for p in _session_processes(session)):
                break
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
        time.sleep(3)
        left = _session_processes(session)
        assert any(p.info["cmdline"][0].startswith("ray::") for p in left), "nothing of Ray outlived the kill"
        second = run(socodec("tokenize", clips, "-o", tmp_path / "second", *args), corpus.env)
        assert second.returncode == 0, show(second)
        assert not [p for p in left if p.is_running()], [p.info["cmdline"][0] for p in left if p.is_running()]
        assert _session_processes(session) == [] and not Path(session).parent.exists()  # its folder too
        assert list(records.glob("*.json")) == []  # the killed run's Ray is forgotten, the second one's too
        assert len(pq.read_table(tmp_path / "second" / "shards", columns=["id"])) == 12
    finally:
        if first.poll() is None:
            first.kill()
        for proc in left:
            if proc.is_running():
                proc.kill()
