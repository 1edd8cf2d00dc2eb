"""``socodec serve`` for real: uvicorn in a subprocess on a free loopback port, the tiny models,
talked to with httpx and websockets. Exactness is checked against the command line's files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import GOLDEN, REPO, TINY_CONFIGS, tiny_ckpt_dir

WAV = GOLDEN / "ground_truth.wav"
KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def socodec_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "SERVE_TEST_KEY": KEY}


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """The command line with one torch thread, like the test servers (float sums then agree bit for bit)."""
    return subprocess.run([sys.executable, "-m", "socodec", *map(str, args), "--threads", "1"], env=socodec_env(),
                          capture_output=True, text=True, timeout=300)


class Server:
    """A running ``socodec serve`` subprocess and the URL it listens on."""

    def __init__(self, ckpts: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "socodec", "serve", "--port", "0", "--ckpt-dir", str(ckpts), *TINY_CONFIGS,
             "--threads", "1", *extra],
            env=socodec_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            if found:
                self.url = found.group(1)
                self.ws = self.url.replace("http://", "ws://") + "/v1/stream"
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not start: {log.read_text()}")

    def metric(self, name: str, headers: dict | None = None) -> float:
        text = httpx.get(self.url + "/metrics", headers=headers or AUTH).text
        found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def rss_kib(self) -> int:
        return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{self.proc.pid}/status").read_text()).group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    return tiny_ckpt_dir(tmp_path_factory.mktemp("serve") / "ckpts")


@pytest.fixture(scope="module")
def server(ckpts, tmp_path_factory):
    """One server for the module, with an API key, small limits and 2 streams at most."""
    s = Server(ckpts, tmp_path_factory.mktemp("log") / "serve.log", "--api-key-env", "SERVE_TEST_KEY",
               "--max-body-mb", "1", "--max-streams", "2")
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.log.read_text()


@pytest.fixture(scope="module")
def cli_files(ckpts, tmp_path_factory) -> dict[str, Path]:
    """What the command line writes for the golden speech: .soc, .pt and the decoded wav."""
    out = tmp_path_factory.mktemp("cli")
    for name in ("t.soc", "t.pt"):
        assert cli(WAV, out / name, "--ckpt-dir", ckpts, *TINY_CONFIGS).returncode == 0
    assert cli(out / "t.soc", out / "t.wav", "--ckpt-dir", ckpts, *TINY_CONFIGS).returncode == 0
    assert cli(out / "t.soc", out / "t2.flac", "--streams", "2", "--ckpt-dir", ckpts, *TINY_CONFIGS).returncode == 0
    return {"soc": out / "t.soc", "pt": out / "t.pt", "wav": out / "t.wav", "flac2": out / "t2.flac"}


def post(server: Server, route: str, body: bytes, headers: dict | None = None, **params) -> httpx.Response:
    return httpx.post(server.url + route, content=body, params=params, headers=AUTH if headers is None else headers,
                      timeout=120)


# ---------------------------------------------------------------------- routes
def test_healthz_needs_no_key_and_describes_the_model(server):
    r = httpx.get(server.url + "/healthz")
    assert r.status_code == 200
    model = r.json()["model"]
    assert r.json()["status"] == "ok"
    assert model["streams"] == 4 and model["frame_ms"] == 120 and model["sample_rate"] == 16000
    assert set(model["fingerprints"]) == {"hubert", "analyzer", "vocoder"}


def test_encode_equals_the_command_line(server, cli_files):
    body = WAV.read_bytes()
    assert post(server, "/v1/encode", body).content == cli_files["soc"].read_bytes()
    assert post(server, "/v1/encode", body, format="pt").content == cli_files["pt"].read_bytes()
    from socodec.codes import load_codes

    codes = load_codes(cli_files["soc"])
    js = post(server, "/v1/encode", body, format="json").json()
    assert js["tokens"] == codes.tokens.tolist()
    assert np.array_equal(np.array(js["speaker"], dtype=np.float32), codes.speaker.numpy())
    assert (js["num_samples"], js["lead"], js["padding"]) == (codes.num_samples, codes.lead, "published")
    assert (js["attention"], js["hubert_window"]) == ("full", None) == (codes.attention, codes.hubert_window)
    grid = post(server, "/v1/encode", body, format="json", padding="grid").json()
    assert grid["padding"] == "grid" and len(grid["tokens"]) <= len(js["tokens"])


def test_decode_equals_the_command_line(server, cli_files):
    wav = cli_files["wav"].read_bytes()
    assert post(server, "/v1/decode", cli_files["soc"].read_bytes()).content == wav
    assert post(server, "/v1/decode", cli_files["pt"].read_bytes()).content == wav
    js = post(server, "/v1/encode", WAV.read_bytes(), format="json").content
    assert post(server, "/v1/decode", js).content == wav
    flac = post(server, "/v1/decode", cli_files["soc"].read_bytes(), streams="2", format="flac")
    assert flac.headers["content-type"] == "audio/flac"
    assert np.array_equal(sf.read(io.BytesIO(flac.content))[0], sf.read(cli_files["flac2"])[0])


# ---------------------------------------------------------------------- streaming
def offline_decode(ckpts: Path, cli_files) -> tuple[list[list[int]], list[float], np.ndarray]:
    """Tokens, speaker, and the offline decode (float32) of the full frames without trimming."""
    from socodec import SoCodec
    from socodec.codes import Codes, load_codes

    codes = load_codes(cli_files["soc"])
    codec = SoCodec.from_pretrained(ckpts, analyzer_config=GOLDEN / "analyzer_tiny.json",
                                    vocoder_config=GOLDEN / "vocoder_tiny.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audio = codec.decode(Codes(tokens=codes.tokens, speaker=codes.speaker)).numpy()
    finally:
        torch.set_num_threads(threads)
    return codes.tokens.tolist(), codes.speaker.tolist(), audio


@pytest.fixture(scope="module")
def offline(ckpts, cli_files):
    return offline_decode(ckpts, cli_files)


def stream_pcm(ws_url: str, start: dict, tokens: list, per_message: int, headers: dict | None = None) -> bytes:
    """Send ``start``, the frames ``per_message`` at a time and the end; the PCM bytes that came back."""
    with connect(ws_url, additional_headers=headers or {}) as ws:
        ws.send(json.dumps(start))
        for i in range(0, len(tokens), per_message):
            ws.send(json.dumps({"tokens": tokens[i : i + per_message]}))
        ws.send(json.dumps({"end": True}))
        pieces = []
        try:
            while True:
                pieces.append(ws.recv(timeout=60))
        except ConnectionClosed as closed:
            assert closed.rcvd.code == 1000
    assert all(isinstance(p, bytes) for p in pieces)
    return b"".join(pieces)


def stream(server: Server, tokens, speaker, per_message: int, sample_format: str = "f32le") -> np.ndarray:
    start = {"speaker": speaker, "streams": 4, "sample_format": sample_format}
    pcm = stream_pcm(server.ws, start, tokens, per_message, AUTH)
    return np.frombuffer(pcm, dtype="<f4" if sample_format == "f32le" else "<i2")


@pytest.mark.parametrize("per_message", [1, 3, 17])
def test_stream_equals_offline_decode_whatever_the_message_boundaries(server, offline, per_message):
    tokens, speaker, expected = offline
    audio = stream(server, tokens, speaker, per_message)
    assert audio.shape == expected.shape
    assert np.abs(audio - expected).max() <= 1e-4


def test_stream_s16le_and_audio_before_the_end(server, offline):
    tokens, speaker, expected = offline
    pcm = stream(server, tokens, speaker, 3, "s16le")
    assert np.abs(pcm / 32767.0 - np.clip(expected, -1, 1)).max() <= 1.0 / 32767 + 1e-4
    with connect(server.ws, additional_headers=AUTH) as ws:  # audio comes before {"end": true}
        ws.send(json.dumps({"speaker": speaker, "sample_format": "f32le"}))
        ws.send(json.dumps({"tokens": tokens[:3]}))
        first = ws.recv(timeout=60)
        assert len(first) == 4 * (1920 * 3 - 2240)  # final up to sample 1920 T - 2240


def test_client_disconnect_mid_stream_frees_the_stream(server, offline):
    tokens, speaker, _ = offline
    for i in range(4):  # more than --max-streams 2: each one must have been freed
        with connect(server.ws, additional_headers=AUTH) as ws:
            ws.send(json.dumps({"speaker": speaker}))
            ws.send(json.dumps({"tokens": tokens[:4]}))
            ws.recv(timeout=60)
            if i % 2:  # gone without a closing handshake, as a crashed client
                ws.socket.shutdown(socket.SHUT_RDWR)
                ws.socket.close()
    deadline = time.monotonic() + 10
    while server.metric("socodec_active_streams") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("socodec_active_streams") == 0


def test_streams_beyond_the_limit_are_closed_with_1013(server, offline):
    tokens, speaker, _ = offline
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(server.ws, additional_headers=AUTH)) for _ in range(2)]
        for ws in held:
            ws.send(json.dumps({"speaker": speaker}))
            ws.send(json.dumps({"tokens": tokens[:3]}))
            ws.recv(timeout=60)  # both streams are running
        with connect(server.ws, additional_headers=AUTH) as extra:
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=30)
        assert closed.value.rcvd.code == 1013


@pytest.mark.parametrize("first, then, reason", [
    ("{not json", None, "malformed JSON"),
    ('{"speaker": [0.5, 0.5]}', None, "speaker must hold 64 values"),
    ('{"speaker": "S", "sample_format": "mp3"}', None, "sample_format must be"),
    ('{"speaker": "S", "streams": 9}', None, "streams must be"),
    ('{"speaker": "S"}', '{"tokens": [[1, 2, 3, 16384]]}', "token values must lie in [0, 16384)"),
    ('{"speaker": "S"}', '{"tokens": [[1, 2], [3]]}', "equally many integers"),
    ('{"speaker": "S"}', '{"tokens": [[1, 2, 3, 4, 5]]}', "1 to 4 streams"),
    ('{"speaker": "S"}', '[1, 2]', "expected a JSON object"),
])
def test_bad_stream_messages_close_with_1007_and_one_line(server, offline, first, then, reason):
    speaker = json.dumps(offline[1])
    with connect(server.ws, additional_headers=AUTH) as ws:
        ws.send(first.replace('"S"', speaker))
        if then:
            ws.send(then)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1007
    assert reason in closed.value.rcvd.reason and "Traceback" not in closed.value.rcvd.reason


# ---------------------------------------------------------------------- bad requests, security
@pytest.mark.parametrize("route, body, params, status, words", [
    ("/v1/decode", b"{not json", {}, 422, "malformed JSON"),
    ("/v1/decode", b'{"tokens": [[1, 2, 3, 20000]], "speaker": [0.1]}', {}, 422, "token values must lie"),
    ("/v1/decode", b'{"tokens": [[1, 2, 3, -1]], "speaker": [0.1]}', {}, 422, "token values must lie"),
    ("/v1/decode", b'{"tokens": [[1, 2, 3, 4]], "speaker": [0.1, 0.2]}', {}, 422, "speaker"),
    ("/v1/decode", b"garbage bytes", {}, 422, "not a valid token file"),
    ("/v1/decode", b"", {}, 422, "empty body"),
    ("/v1/decode", b"{}", {"streams": "5"}, 422, "streams must be"),
    ("/v1/decode", b"{}", {"format": "mp3"}, 422, "format must be one of"),
    ("/v1/encode", b"RIFF\x00\x00not audio", {}, 422, "not a readable audio file"),
    ("/v1/encode", b"x", {"padding": "zero"}, 422, "padding must be one of"),
    ("/v1/encode", b"x", {"colour": "red"}, 422, "unknown query parameter"),
    ("/v1/encode", b"\0" * (1 << 20 + 1), {}, 413, "exceeds the limit"),
])
def test_bad_requests_get_one_json_line_without_internals(server, route, body, params, status, words):
    r = post(server, route, body, **params)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error
    assert "Traceback" not in r.text and "/tmp" not in r.text and str(REPO) not in r.text


def test_oversized_body_without_content_length_is_refused(server):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536

    r = httpx.post(server.url + "/v1/encode", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}])
def test_wrong_or_missing_api_key(server, offline, headers):
    for route in ("/v1/encode", "/v1/decode"):
        r = post(server, route, b"x", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics", headers=headers).status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws, additional_headers=headers)
    assert refused.value.response.status_code == 403


def test_metrics_count_requests_errors_frames_and_latency(server):
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    for name in ("socodec_requests_total", "socodec_errors_total", "socodec_active_streams",
                 "socodec_frames_decoded_total", "socodec_audio_seconds_total", "socodec_first_audio_seconds_bucket",
                 "socodec_request_seconds_bucket"):
        assert name in text
    before = server.metric('socodec_errors_total{kind="unauthorized"}')
    post(server, "/v1/decode", b"x", headers={})
    assert server.metric('socodec_errors_total{kind="unauthorized"}') == before + 1


def test_hundred_sequential_requests_without_rss_growth(server, cli_files):
    body = cli_files["soc"].read_bytes()
    rss = []
    with httpx.Client(headers=AUTH, timeout=60) as client:
        for i in range(100):
            assert client.post(server.url + "/v1/decode", content=body).status_code == 200
            if i % 10 == 9:
                rss.append(server.rss_kib())
    first, last = np.mean(rss[:3]), np.mean(rss[-3:])
    assert last - first < 20 * 1024, rss  # KiB: no trend beyond allocator noise


def test_busy_model_answers_429_with_retry_after(ckpts, tmp_path, cli_files):
    s = Server(ckpts, tmp_path / "busy.log", "--max-queue", "0", "--workers", "1")
    try:
        body = WAV.read_bytes() * 1
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda _: httpx.post(s.url + "/v1/encode", content=body, timeout=120), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert 200 in codes and 429 in codes, codes
        assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 429)
    finally:
        assert s.stop() == 0


def test_command_line_errors(ckpts, tmp_path):
    r = cli("serve", "--port", "70000", "--ckpt-dir", ckpts, *TINY_CONFIGS)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr
    r = cli("serve", "--api-key-env", "SOCODEC_NO_SUCH_VAR", "--ckpt-dir", ckpts, *TINY_CONFIGS)
    assert r.returncode == 2 and "SOCODEC_NO_SUCH_VAR" in r.stderr
    r = cli("serve", "--replicas", "2", "--ckpt-dir", ckpts, *TINY_CONFIGS)
    assert r.returncode == 2 and "--engine ray" in r.stderr
    r = cli("serve", "--port", "0", "--ckpt-dir", tmp_path / "nothing", "--no-download", *TINY_CONFIGS)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("blocked, extra, args", [
    ("prometheus_client", "socodec[serve]", ()),
    ("ray", "socodec[serve,ray]", ("--engine", "ray", "--port", "18000")),
])
def test_a_missing_extra_is_named_before_the_model_loads(tmp_path, blocked, extra, args):
    shim = tmp_path / "shim" / blocked
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(f"raise ImportError('no {blocked} here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "socodec", "serve", "--ckpt-dir", str(tmp_path / "none"), *args],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert f"pip install '{extra}'" in r.stderr
