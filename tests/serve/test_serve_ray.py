"""``socodec serve --engine ray``: the same app as a Ray Serve deployment on a local Ray, for real."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import soundfile as sf

from conftest import TINY_CONFIGS, tiny_ckpt_dir
from test_serve import WAV, cli, socodec_env, stream_pcm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_deployment_serves_the_same_app(tmp_path):
    ckpts = tiny_ckpt_dir(tmp_path / "ckpts")
    assert cli(WAV, tmp_path / "t.soc", "--ckpt-dir", ckpts, *TINY_CONFIGS).returncode == 0
    port = free_port()
    log = tmp_path / "ray.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "socodec", "serve", "--engine", "ray", "--replicas", "2", "--port", str(port),
         "--ckpt-dir", str(ckpts), *TINY_CONFIGS, "--threads", "1"],
        env=socodec_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while "listening on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert re.search(r"with 2 Ray Serve replica", log.read_text())
        assert httpx.get(url + "/healthz", timeout=30).json()["model"]["streams"] == 4
        soc = httpx.post(url + "/v1/encode", content=WAV.read_bytes(), timeout=120)
        assert soc.status_code == 200 and soc.content == (tmp_path / "t.soc").read_bytes()
        bad = httpx.post(url + "/v1/decode", content=b'{"tokens": [[1, 2, 3, 99999]], "speaker": [1.0]}', timeout=60)
        assert bad.status_code == 422 and "token values" in bad.json()["error"]

        from socodec.codes import load_codes

        codes = load_codes(tmp_path / "t.soc")
        wav = httpx.post(url + "/v1/decode", content=soc.content, params={"format": "wav"}, timeout=120)
        start = {"speaker": codes.speaker.tolist(), "sample_format": "f32le", "lead": codes.lead,
                 "num_samples": codes.num_samples}
        pcm = stream_pcm(url.replace("http", "ws") + "/v1/stream", start, codes.tokens.tolist(), 5)
        streamed = np.frombuffer(pcm, dtype="<f4")
        offline = sf.read(io.BytesIO(wav.content), dtype="float32")[0]
        assert streamed.shape == offline.shape and np.abs(streamed - offline).max() <= 1.0 / 32767 + 1e-4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=90) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in log.read_text()
