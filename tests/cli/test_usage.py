"""What a new user runs into: usage errors, options that do not apply, a model that cannot load,
no network, the PCM pipe, suffix-less outputs. Each is reported once, on one line, with the
exit status the README gives (2 usage, 1 failure), before any input is read or output written.

Cases about processes (a closed pipe, a network that does not answer, the device) run
``python -m socodec`` in a subprocess; the others call :func:`socodec.cli.main` in-process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hostile_cases as hc
from conftest import REPO, TINY_CONFIGS, tiny_ckpt_dir
from socodec.cli import main
from socodec.codes import load_codes, save_codes
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folder, a speech file, a token file and a small corpus (2 audio files, 1 token file)."""
    root = tmp_path_factory.mktemp("usage")
    paths = {"root": root, "ckpts": tiny_ckpt_dir(root / "ckpts"), "cache": root / "cache"}
    paths["wav"] = hc.build(root, {"speech.wav": hc.AUDIO_OK["pcm16.wav"]})["speech.wav"]
    paths["soc"] = save_codes(hc.good_codes(), root / "codes.soc")
    corpus = root / "corpus"
    hc.build(corpus, {"a.wav": hc.AUDIO_OK["pcm16.wav"], "b.wav": hc.AUDIO_OK["rate_8k.wav"]})
    save_codes(hc.good_codes(seed=2), corpus / "c.soc")
    paths["corpus"] = corpus
    return paths


@pytest.fixture
def model(ws: dict[str, Path]) -> list[str]:
    return ["--ckpt-dir", str(ws["ckpts"]), *TINY_CONFIGS, "--no-download", "--threads", "1"]


@pytest.fixture
def env(ws: dict[str, Path]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SOCODEC_", "HF_"))}
    return {**clean, "SOCODEC_CACHE_DIR": str(ws["cache"]), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture, ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """``socodec.cli.main`` in-process: ``(exit status, stderr)``; logging and threads restored after."""
    monkeypatch.setenv("SOCODEC_CACHE_DIR", str(ws["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args: object) -> tuple[int, str]:
        root = logging.getLogger()
        handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
        capsys.readouterr()
        try:
            status = main([str(a) for a in args])
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            torch.set_num_threads(threads)
        return status, capsys.readouterr().err

    return run


def socodec(*args: object) -> list[str]:
    return [sys.executable, "-m", "socodec", *map(str, args)]


def lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "ERROR" in ln or "error:" in ln]


# ---------------------------------------------------------------- usage errors: exit 2


USAGE = {
    "two_inputs_to_stdout": (["{soc}", "{soc}", "-"], "exactly one input"),
    "bad_dtype": (["{wav}", "{out}.wav", "--dtype", "float64"], "invalid choice: 'float64'"),
    "bad_streams": (["{soc}", "{out}.wav", "--streams", "5"], "--streams must be between 1 and 4"),
    "bad_device": (["{wav}", "{out}.wav", "--device", "gpu0"], "--device gpu0"),
    "suffix_less_output": (["{wav}", "{out}"], "no suffix"),
    "to_with_a_file_output": (["{wav}", "{out}.wav", "-t", ".soc"], "-t/--to"),
    "no_lead_for_tokens": (["{soc}", "{out}.wav", "--no-lead"], "--no-lead"),
    "no_lead_for_tokens_to_stdout": (["{soc}", "-", "--no-lead"], "--no-lead"),
    "padding_for_tokens": (["{soc}", "{out}.wav", "--padding", "grid"], "--padding grid only acts when analysing"),
    "streams_when_encoding": (["{wav}", "{out}.soc", "--streams", "2"], "--streams only acts when decoding"),
    "speaker_when_encoding": (["{wav}", "{out}.pt", "--speaker", "{soc}"], "--speaker only acts when decoding"),
    "float_to_stdout": (["{soc}", "-", "--sample-format", "float"], "--sample-format float does not apply to '-'"),
    "sample_format_for_tokens": (["{wav}", "{out}.soc", "--sample-format", "pcm24"], "--sample-format only acts"),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_error_exits_2_with_one_line(tmp_path: Path, ws, run_main, model, case: str) -> None:
    argv, fragment = USAGE[case]
    out = tmp_path / "out"
    args = [a.format(wav=ws["wav"], soc=ws["soc"], out=out) for a in argv]
    before = hc.snapshot(ws["root"])
    status, err = run_main(*args, *model)
    assert status == 2, err
    (line,) = error_lines(err)
    assert fragment in line and "Traceback" not in err
    assert not list(tmp_path.iterdir()) and hc.snapshot(ws["root"]) == before


def test_example_always_pads_as_published(ws) -> None:
    spec = importlib.util.spec_from_file_location("example", REPO / "example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.forwarded_args(["-i", "a.wav", "-o", "b.pt", "--padding", "published"])[:2] == ["a.wav", "b.pt"]
    with pytest.raises(SystemExit):
        module.forwarded_args(["-i", "a.wav", "-o", "b.pt", "--padding", "grid"])


# ---------------------------------------------------------------- options for some jobs only; outputs


def test_streams_in_a_mixed_batch_warns_once(tmp_path: Path, ws, run_main, model) -> None:
    out = tmp_path / "out"
    status, err = run_main(ws["corpus"], out, "--streams", "2", *model)
    assert status == 0, err
    warnings = [ln for ln in lines(err) if "WARNING" in ln]
    assert len(warnings) == 1 and "--streams acts on the audio outputs only (1 of 3 files)" in warnings[0]
    assert load_codes(out / "a.soc").num_streams == 4  # a token output keeps every stream
    assert sf.info(str(out / "c.wav")).frames == hc.good_codes(seed=2).num_samples


def test_output_folders(tmp_path: Path, ws, run_main, model) -> None:
    """An existing folder without a suffix takes the output; ``-t`` makes a new one, and says so."""
    existing = tmp_path / "existing"
    existing.mkdir()
    status, err = run_main(ws["wav"], existing, *model)
    assert status == 0, err
    assert [p.name for p in existing.iterdir()] == ["speech.soc"]
    status, err = run_main(ws["wav"], tmp_path / "new", "-t", ".wav", *model)
    assert status == 0, err
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["speech.wav"]
    assert any("new folder" in ln and str(tmp_path / "new") in ln for ln in lines(err)), err


# ---------------------------------------------------------------- a model that cannot load: once, exit 1


def test_unavailable_device_reported_once_for_a_batch(tmp_path: Path, ws, env, model) -> None:
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    out = tmp_path / "out"
    result = subprocess.run(socodec(ws["corpus"], out, "-t", ".wav", "--device", device, *model), env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "cuda" in line
    assert not out.exists()


@pytest.mark.parametrize("case", ["float16", "bfloat16", "no_weights", "bad_speaker"])
def test_model_problem_reported_once_before_any_input(tmp_path: Path, ws, run_main, model, case: str) -> None:
    out = tmp_path / "out"
    (tmp_path / "bad.soc").write_bytes(b"not a token file")
    extra = {
        "float16": ["--dtype", "float16"],
        "bfloat16": ["--dtype", "bfloat16"],
        "no_weights": ["--ckpt-dir", tmp_path],  # (the later --ckpt-dir wins)
        "bad_speaker": ["--speaker", tmp_path / "bad.soc"],
    }[case]
    status, err = run_main(ws["corpus"], out, "-t", ".wav", *model, *extra)
    if case == "bfloat16" and status == 0:  # a CPU with native bfloat16 may run it
        return
    assert status == 1, err
    (line,) = error_lines(err)
    assert {"float16": "float16", "bfloat16": "bfloat16", "no_weights": "model weights missing",
            "bad_speaker": "bad.soc"}[case] in line
    assert not out.exists() and "Traceback" not in err


def test_decoding_needs_only_the_two_safetensors(tmp_path: Path, ws, run_main) -> None:
    folder = tmp_path / "decode-only"
    folder.mkdir()
    for name in (ANALYZER_FILE, VOCODER_FILE):
        (folder / name).symlink_to((ws["ckpts"] / name).resolve())
    model = ["--ckpt-dir", folder, *TINY_CONFIGS, "--threads", "1"]  # downloads allowed, HF_HUB_OFFLINE=1
    status, err = run_main(ws["soc"], tmp_path / "out.wav", *model)
    assert status == 0, err
    status, err = run_main(ws["wav"], tmp_path / "out.soc", *model)
    assert status == 1
    (line,) = error_lines(err)
    assert HUBERT_FILE in line and ANALYZER_FILE not in line
    assert not (tmp_path / "out.soc").exists()


# ---------------------------------------------------------------- no network: one line, in seconds


@pytest.mark.parametrize("quiet", [False, True])
def test_offline_download_one_line_within_seconds(tmp_path: Path, ws, env, quiet: bool) -> None:
    """No HF_HUB_OFFLINE, the Hugging Face endpoint refuses connections (a bound port nobody listens on)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        run_env = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}
        run_env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), SOCODEC_CKPT_DIR=str(tmp_path / "none"))
        start = time.monotonic()
        result = subprocess.run(socodec(ws["wav"], tmp_path / "out.wav", *TINY_CONFIGS, *(["-q"] if quiet else [])),
                                env=run_env, capture_output=True, text=True, timeout=TIMEOUT_S)
        elapsed = time.monotonic() - start
    assert result.returncode == 1
    (line,) = lines(result.stderr)
    assert "ERROR" in line and all(name in line for name in (HUBERT_FILE, ANALYZER_FILE, VOCODER_FILE))
    if importlib.util.find_spec("huggingface_hub") is not None:
        assert f"{endpoint} cannot be reached" in line
    assert elapsed < 15, f"{elapsed:.1f} s"  # start-up included; it used to retry for ~25 s
    assert not (tmp_path / "out.wav").exists()


# ---------------------------------------------------------------- raw PCM on stdout


def test_pcm_to_stdout_equals_the_wav_samples(tmp_path: Path, ws, env, run_main, model) -> None:
    """One scale: the piped bytes are the 16-bit samples a .wav output holds."""
    status, err = run_main(ws["soc"], tmp_path / "out.wav", *model)
    assert status == 0, err
    wav, _ = sf.read(str(tmp_path / "out.wav"), dtype="int16")
    result = subprocess.run(socodec(ws["soc"], "-", *model), env=env, capture_output=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    pcm = np.frombuffer(result.stdout, dtype="<i2")
    assert pcm.shape == wav.shape
    # streamed synthesis equals offline decoding within ~2e-5, so a sample may sit on the other side
    # of a 16-bit step; another scale (or rounding) would move most samples
    diff = np.abs(pcm.astype(np.int32) - wav.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, ((diff > 0).mean(), diff.max())


def test_closed_pipe_ends_quietly(tmp_path: Path, ws, env, model) -> None:
    """``socodec t.soc - | head -c 100``: exit 0, nothing on stderr but the usual."""
    long_codes = save_codes(hc.good_codes(frames=120), tmp_path / "long.soc")  # ~460 kB of PCM: beyond a pipe buffer
    proc = subprocess.Popen(socodec(long_codes, "-", *model), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    head = proc.stdout.read(100)
    proc.stdout.close()
    _, err = proc.communicate(timeout=TIMEOUT_S)
    stderr = err.decode()
    assert len(head) == 100
    assert proc.returncode == 0, stderr
    assert not error_lines(stderr) and "Traceback" not in stderr and "Exception" not in stderr, stderr


# ---------------------------------------------------------------- the package


def test_error_classes_importable_from_the_package() -> None:
    import socodec
    from socodec import errors

    for name in ("SoCodecError", "CheckpointError", "AudioError", "CodesError", "ConfigError"):
        assert getattr(socodec, name) is getattr(errors, name)
        assert issubclass(getattr(socodec, name), errors.SoCodecError)


# ---------------------------------------------------------------- the developer script


def test_random_checkpoint_script_tiny(tmp_path: Path, ws, env, run_main) -> None:
    """``scripts/make_random_checkpoints.py --tiny`` (advertised in its help) writes models socodec runs."""
    script = [sys.executable, str(REPO / "scripts" / "make_random_checkpoints.py")]
    usage = subprocess.run([*script, "--help"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert usage.returncode == 0 and "--tiny" in usage.stdout
    out = tmp_path / "tiny"
    result = subprocess.run([*script, str(out), "--tiny", "--seed", "3"], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert sum(p.stat().st_size for p in out.iterdir()) < 20e6
    configs = ["--analyzer-config", out / "analyzer_tiny.json", "--vocoder-config", out / "vocoder_tiny.json"]
    status, err = run_main(ws["wav"], tmp_path / "out.wav", "--ckpt-dir", out, *configs, "--threads", "1")
    assert status == 0, err
    assert sf.info(str(tmp_path / "out.wav")).frames == 4000
