"""Bad input, hostile files, broken checkpoints, output problems, Ctrl-C: the command line fails small and safe.

Every case (generated on the fly by ``hostile_cases``) is checked against the rules of
``docs/guarantees.md``: one ``ERROR`` line on stderr naming the file and the problem,
a non-zero exit (a batch goes on with the other files and ends with a summary), no
traceback, no output and no temporary file left behind, inputs never modified.

Batch tests run ``python -m socodec`` as a subprocess (real stderr and exit code);
single-case tests call :func:`socodec.cli.main` in-process, which is the same code
path without the ~5 s start-up of a new interpreter.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

import hostile_cases as hc
from hostile_cases import assert_one_error, build, error_lines, leftovers, lines_naming, snapshot
from conftest import GOLDEN, REPO
from socodec.cli import main
from socodec.codes import load_codes, save_codes
from socodec.fileio import atomic_write
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE

GOLDEN_FILES = {HUBERT_FILE: "hubert_tiny_fairseq.pt", ANALYZER_FILE: "analyzer_tiny.safetensors",
                VOCODER_FILE: "vocoder_tiny.safetensors"}
WHICH = {"hubert": HUBERT_FILE, "analyzer": ANALYZER_FILE, "vocoder": VOCODER_FILE}
CONFIGS = ["--analyzer-config", GOLDEN / "analyzer_tiny.json", "--vocoder-config", GOLDEN / "vocoder_tiny.json"]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """A private HuBERT conversion cache for the subprocesses and for in-process runs."""
    path = tmp_path_factory.mktemp("socodec-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOCODEC_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def env(cache_dir: Path) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "SOCODEC_CACHE_DIR": str(cache_dir), "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"}


def link_ckpts(folder: Path, replace: dict[str, hc.Builder] | None = None) -> Path:
    """``folder`` with the golden tiny files under the released names; ``replace`` builds some instead."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, golden in GOLDEN_FILES.items():
        if replace and name in replace:
            replace[name](folder / name)
        else:
            (folder / name).symlink_to(GOLDEN / golden)
    return folder


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_ckpts(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="session")
def model_args(ckpt: Path) -> list:
    return ["--ckpt-dir", ckpt, *CONFIGS, "--no-download"]


def cli_args(args: list) -> list[str]:
    """``python -m socodec ARGS`` on one thread (the suite shares few cores)."""
    return [sys.executable, "-m", "socodec", *map(str, args), "--threads", "1"]


def cli(args: list, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(args), capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture, cache_dir: Path):
    """Call ``socodec.cli.main`` in-process: ``(exit status, stderr)``. Root logging is restored after."""

    def run(*args: object) -> tuple[int, str]:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        capsys.readouterr()
        try:
            status = main([str(a) for a in args])
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        return status, capsys.readouterr().err

    return run


# ---------------------------------------------------------------- audio inputs


def test_audio_batch_bad_files_reported_good_files_done(tmp_path: Path, env: dict, model_args: list) -> None:
    inputs = tmp_path / "in"
    build(inputs, {**hc.AUDIO_OK, **hc.AUDIO_BAD})
    missing, out = tmp_path / "missing.wav", tmp_path / "out"
    before = snapshot(tmp_path)
    result = cli([inputs, missing, out, "-t", ".soc", *model_args], env)  # tokens: no vocoder time
    assert result.returncode == 1, result.stderr
    for name, (_, fragment) in hc.AUDIO_BAD.items():
        assert_one_error(result.stderr, inputs / name, fragment)
    assert_one_error(result.stderr, missing, "no such file")
    for name, (_, length) in hc.AUDIO_OK.items():  # decoding gives back this many 16 kHz samples
        assert load_codes((out / name).with_suffix(".soc")).num_samples == length, name
    loud = lines_naming(result.stderr, inputs / "loud.wav")
    assert len(loud) == 1 and "WARNING" in loud[0] and "outside [-1, 1]" in loud[0]
    assert sum("WARNING" in ln for ln in result.stderr.splitlines()) == 1, result.stderr  # no anonymous repeat
    assert f"{len(hc.AUDIO_OK)} of {len(hc.AUDIO_OK) + len(hc.AUDIO_BAD) + 1} files done" in result.stderr
    assert sorted(p.name for p in out.rglob("*")) == sorted(n.replace(".wav", ".soc") for n in hc.AUDIO_OK)
    assert snapshot(inputs) == {k: v for k, v in before.items() if k.is_relative_to(inputs)}


@pytest.mark.parametrize("name", sorted(hc.AUDIO_BAD))
def test_audio_single_bad_file(tmp_path: Path, run_main, model_args: list, name: str) -> None:
    builder, fragment = hc.AUDIO_BAD[name]
    src, out = tmp_path / name, tmp_path / "out.soc"
    builder(src)
    before = snapshot(tmp_path)
    status, err = run_main(src, out, *model_args)
    assert status == 1
    assert_one_error(err, src, fragment)
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_audio_missing_file_and_directory(tmp_path: Path, run_main, model_args: list) -> None:
    status, err = run_main(tmp_path / "nope.wav", tmp_path / "out.wav", *model_args)
    assert status == 1
    assert_one_error(err, tmp_path / "nope.wav", "no such file")
    (tmp_path / "folder.wav").mkdir()
    status, err = run_main(tmp_path / "folder.wav", tmp_path / "out.wav", *model_args)
    assert status == 1
    assert_one_error(err, tmp_path / "folder.wav", "no audio or token files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.wav"]


# ---------------------------------------------------------------- token inputs


def test_token_batch_bad_files_reported_good_files_done(tmp_path: Path, env: dict, model_args: list) -> None:
    marker = tmp_path / "PWNED"
    cases = hc.token_bad_cases(marker, GOLDEN / "hubert_tiny_fairseq.pt")
    inputs, out = tmp_path / "in", tmp_path / "out"
    build(inputs, cases)
    good = hc.good_codes()
    save_codes(good, inputs / "good.pt")
    save_codes(good, inputs / "good_soc.soc")
    before = snapshot(tmp_path)
    result = cli([inputs, out, *model_args], env)
    assert result.returncode == 1, result.stderr
    assert not marker.exists(), "a malicious pickle was executed"
    for name, (_, fragment) in cases.items():
        assert_one_error(result.stderr, inputs / name, fragment)
    assert sorted(p.name for p in out.rglob("*")) == ["good.wav", "good_soc.wav"]
    for name in ("good.wav", "good_soc.wav"):
        assert sf.info(str(out / name)).frames == good.num_samples
    assert f"2 of {len(cases) + 2} files done" in result.stderr
    assert snapshot(inputs) == {k: v for k, v in before.items() if k.is_relative_to(inputs)}


@pytest.mark.parametrize("name", ["evil_exec.pt", "evil_system.pt", "evil_raw_pickle.pt", "fairseq_checkpoint.pt",
                                  "speaker_1024.pt", "lying_frames.soc", "float_tokens.pt", "evil_zip_system.pt",
                                  "short_storage.pt"])
@pytest.mark.parametrize("to", [".wav", ".soc"])
def test_token_single_bad_file(tmp_path: Path, run_main, model_args: list, name: str, to: str) -> None:
    marker = tmp_path / "PWNED"
    builder, fragment = hc.token_bad_cases(marker, GOLDEN / "hubert_tiny_fairseq.pt")[name]
    src = tmp_path / name
    builder(src)
    before = snapshot(tmp_path)
    status, err = run_main(src, tmp_path / f"out{to}", *model_args)
    if name == "speaker_1024.pt" and to == ".soc":  # a valid file: only the model's speaker size is wrong
        assert status == 0 and load_codes(tmp_path / "out.soc").speaker_dim == 1024
        return
    assert status == 1 and not marker.exists()
    assert_one_error(err, src, fragment)
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


# ---------------------------------------------------------------- checkpoints


CKPT_CASES = hc.checkpoint_cases(GOLDEN, Path("/nonexistent/socodec-test-marker"))


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_broken_checkpoint_stops_batch_with_one_line(tmp_path: Path, run_main, case: str) -> None:
    marker = tmp_path / "PWNED"
    which, builder, fragment = hc.checkpoint_cases(GOLDEN, marker)[case]
    folder = link_ckpts(tmp_path / "ckpts", {WHICH[which]: builder})
    inputs = build(tmp_path / "in", {n: hc.AUDIO_OK[n] for n in ("pcm16.wav", "rate_8k.wav")})
    before = snapshot(tmp_path)
    status, err = run_main(*inputs.values(), tmp_path / "out", "--ckpt-dir", folder, *CONFIGS, "--no-download")
    assert status == 1 and not marker.exists()
    assert len(error_lines(err)) == 1, err  # the batch stops: no error line per input
    assert_one_error(err, folder / WHICH[which], fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("configs, fragment", [
    ([], "does not match the analyzer config"),  # released-size configs, tiny files
    (CONFIGS[:2], "has shape"),  # tiny analyzer, released-size vocoder config
])
def test_checkpoint_for_another_model_size(tmp_path: Path, run_main, ckpt: Path, configs: list,
                                           fragment: str) -> None:
    src = build(tmp_path, {"pcm16.wav": hc.AUDIO_OK["pcm16.wav"]})["pcm16.wav"]
    status, err = run_main(src, tmp_path / "out.wav", "--ckpt-dir", ckpt, *configs, "--no-download")
    assert status == 1 and len(error_lines(err)) == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "out.wav").exists()


def test_missing_weights_subprocess_names_files_and_sources(tmp_path: Path, env: dict) -> None:
    src = build(tmp_path, {"pcm16.wav": hc.AUDIO_OK["pcm16.wav"]})["pcm16.wav"]
    empty = tmp_path / "no-ckpts"
    empty.mkdir()
    result = cli([src, tmp_path / "out.wav", "--ckpt-dir", empty, "--no-download"], env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    for needed in (str(empty), *GOLDEN_FILES, "hhguo/SoCodec", "TencentGameMate/chinese-hubert-large"):
        assert needed in line
    assert not (tmp_path / "out.wav").exists()


def test_partly_missing_weights_offline(tmp_path: Path, run_main, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # without --no-download: must still not download
    folder = link_ckpts(tmp_path / "ckpts")
    (folder / VOCODER_FILE).unlink()
    src = build(tmp_path, {"pcm16.wav": hc.AUDIO_OK["pcm16.wav"]})["pcm16.wav"]
    status, err = run_main(src, tmp_path / "out.wav", "--ckpt-dir", folder, *CONFIGS)
    assert status == 1
    assert_one_error(err, folder, VOCODER_FILE)
    assert "HF_HUB_OFFLINE" in err and HUBERT_FILE not in err and not (tmp_path / "out.wav").exists()


# ---------------------------------------------------------------- output problems


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    return build(tmp_path / "in", {"speech.wav": hc.AUDIO_OK["pcm16.wav"]})["speech.wav"]


def test_output_under_a_regular_file(tmp_path: Path, run_main, model_args: list, speech_wav: Path) -> None:
    blocker = tmp_path / "file.txt"  # works as root too, unlike a chmod-ed folder
    blocker.write_text("a file, not a folder\n")
    before = snapshot(tmp_path)
    for out in (blocker / "out.wav", blocker / "sub" / "out.soc"):
        status, err = run_main(speech_wav, out, *model_args)
        assert status == 1
        assert_one_error(err, out, "is a file, not a folder")
    status, err = run_main(speech_wav.parent, blocker / "dir", *model_args)  # directory mode
    assert status == 1 and "is a file, not a folder" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_output_folder_read_only(tmp_path: Path, run_main, model_args: list, speech_wav: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        status, err = run_main(speech_wav, locked / "out.wav", *model_args)
    finally:
        locked.chmod(0o700)
    assert status == 1
    assert_one_error(err, locked / "out.wav", "not writable")


@pytest.mark.parametrize("suffix", [".wav", ".pt", ".soc"])
def test_output_is_the_input(tmp_path: Path, run_main, model_args: list, suffix: str) -> None:
    src = tmp_path / f"x{suffix}"
    if suffix == ".wav":
        hc.AUDIO_OK["pcm16.wav"][0](src)
    else:
        save_codes(hc.good_codes(), src)
    before = snapshot(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / f"link{suffix}").symlink_to(src)
    for out in (src, tmp_path / "sub" / ".." / src.name, tmp_path / f"link{suffix}"):
        status, err = run_main(src, out, *model_args, "-f")
        assert status == 1
        assert_one_error(err, out, "output is the input file")
    assert snapshot(tmp_path) == before


def test_existing_output_refused_unless_force(tmp_path: Path, run_main, model_args: list, speech_wav: Path) -> None:
    out = tmp_path / "out.soc"
    out.write_bytes(b"precious")
    status, err = run_main(speech_wav, out, *model_args)
    assert status == 1 and out.read_bytes() == b"precious"
    assert_one_error(err, out, "already exists")
    bad = build(tmp_path, {"empty.wav": hc.AUDIO_BAD["empty.wav"]})["empty.wav"]
    status, err = run_main(bad, out, *model_args, "-f")  # a failing job keeps the old output
    assert status == 1 and out.read_bytes() == b"precious"
    status, err = run_main(speech_wav, out, *model_args, "-f")
    assert status == 0, err
    assert load_codes(out).num_samples == 4000 and not leftovers(tmp_path)


@pytest.mark.parametrize("source, target", [("audio", ".wav"), ("audio", ".pt"), (".pt", ".soc"), (".soc", ".pt")])
def test_disk_full(tmp_path: Path, run_main, model_args: list, speech_wav: Path, monkeypatch: pytest.MonkeyPatch,
                   source: str, target: str) -> None:
    src = speech_wav if source == "audio" else save_codes(hc.good_codes(), tmp_path / f"codes{source}")
    out = tmp_path / "out" / f"result{target}"
    hc.fail_writes_half_way(monkeypatch, errno.ENOSPC)
    before = snapshot(tmp_path)
    status, err = run_main(src, out, *model_args)
    assert status == 1
    assert_one_error(err, out, "No space left on device")
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_file_size_limit_subprocess(tmp_path: Path, env: dict, speech_wav: Path) -> None:
    """A real failing write (the kernel refuses to grow files past 100 bytes): nothing is left behind."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    one = save_codes(hc.good_codes(), tmp_path / "in" / "one.pt")  # token conversion: no model to load
    two = save_codes(hc.good_codes(seed=1), tmp_path / "in" / "two.pt")
    out = tmp_path / "out"
    result = subprocess.run(cli_args([one, two, out, "-t", ".soc"]), capture_output=True, text=True, env=env,
                            preexec_fn=limit, timeout=300)
    assert result.returncode == 1
    assert_one_error(result.stderr, out / "one.soc", "File too large")
    assert_one_error(result.stderr, out / "two.soc", "File too large")
    assert not [p for p in out.rglob("*") if p.is_file()]


# ---------------------------------------------------------------- interruption


def test_keyboard_interrupt_inside_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old" and not leftovers(tmp_path)


def test_ctrl_c_during_batch_then_resume(tmp_path: Path, env: dict, model_args: list) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    names = [f"f{i}.wav" for i in range(6)]
    for name in names:
        sf.write(str(inputs / name), hc.speech(32000)[:, 0], 16000)
    before = snapshot(inputs)
    proc = subprocess.Popen(cli_args([inputs, out, "-t", ".wav", *model_args]), stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 240
    while not any(out.glob("f*.wav")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "--skip-existing" in err
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < len(names) and not leftovers(tmp_path)
    for name in done:  # finished files are complete
        assert sf.info(str(out / name)).frames == 32000
    kept = snapshot(out)
    result = cli([inputs, out, "-t", ".wav", "--skip-existing", *model_args], env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == names
    assert {k: v for k, v in snapshot(out).items() if k in kept} == kept  # not redone
    assert snapshot(inputs) == before
