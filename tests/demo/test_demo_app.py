"""The Gradio app through ``gradio_client``: launched in this process, and ``socodec demo`` as a real command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import GOLDEN, REPO, TINY_CONFIGS, tiny_ckpt_dir
from socodec import Codes, SoCodec
from socodec.audio import load_audio
from socodec.demo.app import launch
from socodec.demo.app import DemoHandlers

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # its own pandas use

SPEECH = GOLDEN / "ground_truth.wav"
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    return tiny_ckpt_dir(tmp_path_factory.mktemp("demo-app") / "ckpts")


@pytest.fixture(scope="module")
def codec(ckpts) -> SoCodec:
    return SoCodec.from_pretrained(ckpts, analyzer_config=GOLDEN / "analyzer_tiny.json",
                                   vocoder_config=GOLDEN / "vocoder_tiny.json")


@pytest.fixture(scope="module")
def client(codec, tmp_path_factory):
    app = launch(DemoHandlers(codec, tmp_path_factory.mktemp("demo-app-work")), "127.0.0.1", free_port(), block=False)
    try:
        yield Client(app.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    finally:
        app.close()


def test_encode_gives_token_files_table_and_resynthesis(client, codec):
    summary, files, table, spec_in, wav, spec_out, synth = client.predict(
        handle_file(str(SPEECH)), 2, None, api_name="/encode")
    expected = codec.encode(load_audio(SPEECH))
    assert sorted(Path(f).suffix for f in files) == [".pt", ".soc"]
    for f in files:
        assert torch.equal(Codes.load(f).tokens, expected.tokens)
    assert table["headers"][2:] == ["stream 1", "stream 2", "stream 3", "stream 4"]
    assert [row[2:] for row in table["data"]] == expected.tokens.tolist()
    audio, sr = sf.read(wav, dtype="float32")
    reference = np.clip(codec.decode(expected, streams=2).numpy(), -1, 1)
    assert sr == 16000 and np.abs(audio - reference).max() <= 1 / 32768 + 1e-7
    assert "2 of 4 streams" in synth and f"{expected.num_frames} frames" in summary
    assert Path(spec_in).is_file() and Path(spec_out).is_file()


def test_decode_a_token_file_with_another_voice(client, codec, tmp_path):
    codes = codec.encode(load_audio(SPEECH))
    codes.save(tmp_path / "tokens.pt")
    voice = codec.encode(np.flip(load_audio(SPEECH).numpy()).copy())
    voice.save(tmp_path / "voice.soc")
    wav, _, summary = client.predict(handle_file(str(tmp_path / "tokens.pt")), 1,
                                     handle_file(str(tmp_path / "voice.soc")), api_name="/decode")
    audio, _ = sf.read(wav, dtype="float32")
    reference = np.clip(codec.decode(codes, streams=1, speaker=voice.speaker).numpy(), -1, 1)
    assert np.abs(audio - reference).max() <= 1 / 32768 + 1e-7
    assert "1 of 4 streams" in summary and "voice.soc" in summary


def test_a_bad_file_is_the_one_line_error(client, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(AppError, match=r"^broken\.wav: not a readable audio file"):
        client.predict(handle_file(str(broken)), 4, None, api_name="/encode")


def _demo(*args: object, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "socodec", "demo", *map(str, args)], cwd=REPO,
                            env=env or {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_socodec_demo_command_serves_until_interrupted(ckpts, codec, tmp_path):
    port = free_port()
    proc = _demo("--port", port, "--ckpt-dir", ckpts, *TINY_CONFIGS, "--no-download")
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "socodec demo did not start"
                time.sleep(0.5)
        codes = codec.encode(load_audio(SPEECH))
        codes.save(tmp_path / "t.soc")
        demo = Client(url, verbose=False, download_files=str(tmp_path))
        wav, _, _ = demo.predict(handle_file(str(tmp_path / "t.soc")), 4, None, api_name="/decode")
        assert sf.info(wav).frames == codes.num_samples
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # Ctrl-C, as the README says
    assert f"running at http://127.0.0.1:{port}" in err and "Traceback" not in err, err
    assert "Keyboard interruption" not in out + err


def test_demo_on_a_busy_port_says_so_with_our_options(ckpts):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _demo("--port", port, "--ckpt-dir", ckpts, *TINY_CONFIGS, "--no-download")
        _, err = proc.communicate(timeout=START_TIMEOUT_S)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 1, err
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], err
    assert "GRADIO" not in err and "server_port" not in err, err


def test_demo_usage_errors_and_missing_extra(tmp_path):
    bad_port = _demo("--port", "70000")
    _, err = bad_port.communicate(timeout=120)
    assert bad_port.returncode == 2 and "--port must be between 1 and 65535" in err
    shim = tmp_path / "shim" / "gradio"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no gradio here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), str(REPO)])}
    missing = _demo(env=env)
    _, err = missing.communicate(timeout=120)
    assert missing.returncode == 1 and err.strip().count("\n") == 0, err
    assert "pip install 'socodec[demo]'" in err
