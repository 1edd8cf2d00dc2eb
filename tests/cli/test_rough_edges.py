"""Rough edges a new user met: help that lists every command, one-line option errors, exit
statuses, a full disk, outputs that look like files, messages in our words, fingerprints,
float WAV headers, start-up without torch. Commands run in a subprocess, on real files."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hostile_cases as hc
from conftest import REPO, TINY_CONFIGS, tiny_ckpt_dir
from socodec.cli import COMMANDS
from socodec import codes as codes_module
from socodec.codes import encode_pt, load_codes, save_codes
from socodec.fileio import atomic_path

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rough")
    paths = {"root": root, "ckpts": tiny_ckpt_dir(root / "ckpts"), "cache": root / "cache"}
    paths["wav"] = hc.build(root, {"speech.wav": hc.AUDIO_OK["pcm16.wav"]})["speech.wav"]
    paths["wav2"] = hc.build(root, {"speech2.wav": hc.AUDIO_OK["pcm16.wav"]})["speech2.wav"]
    paths["soc"] = save_codes(hc.good_codes(frames=60), root / "codes.soc")
    return paths


def model_args(ws: dict[str, Path]) -> list[str]:
    return ["--ckpt-dir", str(ws["ckpts"]), *TINY_CONFIGS, "--no-download", "--threads", "1"]


def env_for(ws: dict[str, Path]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SOCODEC_", "HF_"))}
    return {**clean, "SOCODEC_CACHE_DIR": str(ws["cache"]), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def socodec(ws: dict[str, Path], *args: object, file_limit: int | None = None, python: list[str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """``python -m socodec ARGS`` in a subprocess; ``file_limit``: no file may grow beyond this many bytes
    (the system's answer is then that of a full disk: the write fails)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    argv = [sys.executable, *(python or []), "-m", "socodec", *map(str, args)]
    return subprocess.run(argv, env=env_for(ws), capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL, preexec_fn=limit if file_limit else None, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


# ---------------------------------------------------------------- discoverability (25.8)


@pytest.mark.parametrize("args", [["--help"], []], ids=["help", "no-arguments"])
def test_usage_lists_every_command(ws, args):
    r = socodec(ws, *args)
    text = r.stdout + r.stderr
    assert r.returncode == (0 if args else 2), text
    for name in COMMANDS:
        assert f"socodec {name} " in text, f"{name} missing from:\n{text}"


def test_help_states_one_default_per_option(ws):
    tokenize = socodec(ws, "tokenize", "--help").stdout
    assert tokenize.count("default: torch's choice") == 0 and "divided" in tokenize
    assert "--threads defaults" not in tokenize
    demo = socodec(ws, "demo", "--help").stdout
    assert "--batch-size" not in demo and "--threads" in demo


def test_random_checkpoint_script_help_and_file_modes(ws, tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "make_random_checkpoints.py")]
    help_text = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=TIMEOUT_S).stdout
    assert "--ckpt-dir OUT_DIR \\\n" in help_text, help_text
    old = os.umask(0o022)
    try:
        subprocess.run([*script, str(tmp_path / "ck"), "--tiny"], check=True, capture_output=True, timeout=TIMEOUT_S)
    finally:
        os.umask(old)
    for path in (tmp_path / "ck").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, f"{path.name}: {oct(path.stat().st_mode)}"


# ---------------------------------------------------------------- option errors: one line, exit 2 (26.2, 25.9)


@pytest.mark.parametrize("args", [
    ["{wav}", "{root}/o.wav", "--sample-format", "pcm8"],
    ["{wav}", "{root}/o.wav", "--streams", "7"],
    ["{wav}", "{root}/o.wav", "--bogus"],
    ["info"],
    ["tokenize", "{wav}", "-o", "{root}/t", "--engine", "spark"],
    ["{wav}", "{root}/o.mp3"],
    ["{soc}", "{root}/o.flac", "--sample-format", "float"],
], ids=["choice", "range", "unknown-option", "missing-argument", "tokenize-choice", "output-suffix", "flac-float"])
def test_option_errors_are_one_line_and_exit_2(ws, args):
    argv = [a.format(**ws) for a in args]
    r = socodec(ws, *argv, *(model_args(ws) if argv[0] != "info" else []))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("socodec: ERROR: "), r.stderr
    assert "usage:" not in r.stderr
    assert not list(ws["root"].glob("o.*"))


# ---------------------------------------------------------------- a full disk (25.1)


def test_disk_full_while_writing_audio_is_one_line(ws, tmp_path):
    out = tmp_path / "out.wav"
    r = socodec(ws, ws["soc"], out, *model_args(ws), file_limit=20_000)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_tokenizing_names_the_file(ws, tmp_path):
    out = tmp_path / "tokens"
    r = socodec(ws, "tokenize", ws["wav"], ws["wav2"], "-o", out, "--workers", "1", *model_args(ws), file_limit=3000)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "unexpected error" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and str(out) in errors[0] and "File too large" in errors[0], r.stderr
    assert hc.leftovers(out) == []


def test_failed_write_into_a_missing_place_warns_about_nothing(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.WARNING), pytest.raises(OSError):
        with atomic_path(tmp_path / "file" / "out.wav") as tmp:
            tmp.write_bytes(b"data")
    assert caplog.records == []


# ---------------------------------------------------------------- outputs and files (25.5, 26.3, 26.5)


def test_several_inputs_with_a_file_like_output_are_refused(ws, tmp_path):
    out = tmp_path / "two.wav"
    r = socodec(ws, ws["wav"], ws["wav2"], out, *model_args(ws))
    assert r.returncode == 2, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "folder" in lines[0], r.stderr
    assert not out.exists()
    assert "new folder" not in r.stderr


def test_new_folder_is_announced_only_once_made(ws, tmp_path):
    out = tmp_path / "made"
    r = socodec(ws, ws["wav"], ws["wav2"], out, *model_args(ws))
    assert r.returncode == 0, r.stderr
    assert any("new folder" in ln and str(out) in ln for ln in r.stderr.splitlines()), r.stderr
    missing = tmp_path / "never"
    no_model = ["--ckpt-dir", str(tmp_path / "no-model"), *model_args(ws)[2:]]
    r = socodec(ws, ws["wav"], ws["wav2"], missing, *no_model)
    assert r.returncode != 0 and "new folder" not in r.stderr and not missing.exists(), r.stderr


def test_info_lists_fingerprints_in_one_order(ws, tmp_path):
    codes = hc.good_codes()
    codes.model = {"vocoder": "v" * 12, "analyzer": "a" * 12, "hubert": "h" * 12}
    outputs = []
    for suffix in (".pt", ".soc"):
        path = save_codes(codes, tmp_path / f"c{suffix}")
        r = socodec(ws, "info", path)
        assert r.returncode == 0, r.stderr
        outputs.append(next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("model")))
    assert outputs[0] == outputs[1] == "  model         analyzer aaaaaaaaaaaa, hubert hhhhhhhhhhhh, vocoder vvvvvvvvvvvv"


def test_float_wav_has_the_extensible_header(ws, tmp_path):
    out = tmp_path / "float.wav"
    r = socodec(ws, ws["soc"], out, "--sample-format", "float", *model_args(ws))
    assert r.returncode == 0, r.stderr
    head = out.read_bytes()[:64]
    fmt = head.index(b"fmt ")
    size = int.from_bytes(head[fmt + 4:fmt + 8], "little")
    tag = int.from_bytes(head[fmt + 8:fmt + 10], "little")
    assert (size, tag) == (40, 0xFFFE), (size, hex(tag))
    import soundfile as sf
    assert sf.info(str(out)).subtype == "FLOAT"


# ---------------------------------------------------------------- tokens of another model (25.4)


def test_decoding_tokens_of_another_model_warns_once(ws, tmp_path):
    from socodec.codes import load_codes

    own = tmp_path / "own.soc"
    r = socodec(ws, ws["wav"], own, *model_args(ws))
    assert r.returncode == 0, r.stderr
    r = socodec(ws, own, tmp_path / "own.wav", *model_args(ws))
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr
    codes = load_codes(own)
    ours = codes.model["analyzer"]
    codes.model = {**codes.model, "analyzer": "f1e2d3c4b5a6"}
    folder = tmp_path / "other"
    folder.mkdir()
    for name in ("a.soc", "b.pt"):
        save_codes(codes, folder / name)
    r = socodec(ws, folder, tmp_path / "decoded", *model_args(ws))
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1, r.stderr
    assert "f1e2d3c4b5a6" in warnings[0] and ours in warnings[0] and "another analyzer" in warnings[0]


# ---------------------------------------------------------------- messages in our words (25.7)


@pytest.mark.parametrize("text", [b"hello world\n", b"tokens 1 2 3\n"])
def test_text_file_named_pt_is_called_what_it_is(ws, tmp_path, text):
    path = tmp_path / "notes.pt"
    path.write_bytes(text)
    r = socodec(ws, "info", path)
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "neither a zip archive nor a pickle" in lines[0], r.stderr
    assert "unpickle" not in lines[0]


# ---------------------------------------------------------------- leftovers after kill -9 (25.13)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return kids


def test_kill_9_during_tokenize_leaves_no_semaphore_warning(ws, tmp_path):
    corpus = tmp_path / "corpus"
    hc.build(corpus, {f"u{i}.wav": hc.AUDIO_OK["pcm16.wav"] for i in range(6)})
    argv = [sys.executable, "-m", "socodec", "tokenize", corpus, "-o", tmp_path / "tokens", "--workers", "2",
            "--batch-size", "1", *model_args(ws)]
    proc = subprocess.Popen(list(map(str, argv)), env=env_for(ws), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 3 and proc.poll() is None:  # the tracker and two workers
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        kids = _children(proc.pid)  # killed while the workers still start up: the harder case
    finally:
        proc.kill()
    try:
        _, err = proc.communicate(timeout=60)  # stderr closes once the workers and the tracker have exited
    except subprocess.TimeoutExpired:
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError("worker processes outlived the run (stderr still open)") from None
    assert "leaked semaphore" not in err and "resource_tracker" not in err, err
    deadline = time.monotonic() + 15
    while (alive := [pid for pid in kids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, "worker processes outlived the run"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- start-up without torch (25.15)

_NO_TORCH = """
import contextlib, io, json, sys
from socodec.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    status = main(sys.argv[1:])
print(json.dumps([status, "torch" in sys.modules, out.getvalue()]))
"""


def _torch_free(ws: dict[str, Path], *args: object) -> tuple[int, bool, str]:
    """Run ``socodec ARGS`` in a fresh interpreter: ``(exit status, whether torch was imported, stdout)``."""
    r = subprocess.run([sys.executable, "-c", _NO_TORCH, *map(str, args)], env=env_for(ws), capture_output=True,
                       text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    status, imported, out = json.loads(r.stdout)
    return status, imported, out


@pytest.mark.parametrize("args", [["--version"], ["--help"], [], *([name, "--help"] for name in COMMANDS)],
                         ids=lambda a: " ".join(a) or "no-arguments")
def test_version_and_help_never_import_torch(ws, args):
    assert _torch_free(ws, *args)[:2] == (2 if not args else 0, False)


def test_soc_files_are_described_and_copied_without_torch(ws, tmp_path):
    pt = tmp_path / "codes.pt"
    assert socodec(ws, ws["soc"], pt).returncode == 0
    status, imported, shown = _torch_free(ws, "info", "--json", ws["soc"])
    assert (status, imported) == (0, False)
    from_pt = json.loads(socodec(ws, "info", "--json", pt).stdout)  # read by torch: the same description
    assert {**json.loads(shown), "file": "-"} == {**from_pt, "file": "-"} and from_pt["frames"] == 60
    status, imported, shown = _torch_free(ws, "info", ws["soc"])
    assert (status, imported) == (0, False) and "60 x 4 streams" in shown
    copy = tmp_path / "copy.soc"
    assert _torch_free(ws, ws["soc"], copy)[:2] == (0, False)
    assert copy.read_bytes() == ws["soc"].read_bytes()
    assert _torch_free(ws, ws["soc"], copy, tmp_path / "folder", "-t", ".soc")[:2] == (0, False)
    assert (tmp_path / "folder" / "copy.soc").read_bytes() == ws["soc"].read_bytes()



def test_pt_files_are_described_and_converted_without_torch(ws, tmp_path):
    """torch.save's zip archive of plain tensors is read without torch: the same description and the
    same .soc file as through torch; reading a legacy .pt still takes torch."""
    pt = save_codes(load_codes(ws["soc"]), tmp_path / "codes.pt")
    through_torch = load_codes(pt)  # tensors: read by torch.load
    status, imported, shown = _torch_free(ws, "info", "--json", pt)
    assert (status, imported) == (0, False)
    assert {**json.loads(shown), "file": "-"} == {**through_torch.summary(), "file": "-"}
    status, imported, shown = _torch_free(ws, "info", pt)
    assert (status, imported) == (0, False)
    assert shown.replace(str(pt), "F") == _torch_free(ws, "info", ws["soc"])[2].replace(str(ws["soc"]), "F")
    assert _torch_free(ws, pt, tmp_path / "out.soc")[:2] == (0, False)
    assert (tmp_path / "out.soc").read_bytes() == save_codes(through_torch, tmp_path / "ref.soc").read_bytes()
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(pt, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    status, imported, shown = _torch_free(ws, "info", "--json", legacy)
    assert (status, imported) == (0, True) and {**json.loads(shown), "file": "-"} == {**through_torch.summary(),
                                                                                     "file": "-"}


def test_pt_files_are_written_without_torch(ws, tmp_path):
    """.soc and .pt files become .pt files without torch, which torch reads as the codes it would write."""
    codes = load_codes(ws["soc"])  # tensors
    by_torch = tmp_path / "by_torch.pt"
    by_torch.write_bytes(encode_pt(codes_module._meta(codes), codes.tokens, codes.speaker))  # tensors: torch.save
    expected = torch.load(by_torch, weights_only=True)
    assert _torch_free(ws, ws["soc"], tmp_path / "a.pt")[:2] == (0, False)
    assert _torch_free(ws, tmp_path / "a.pt", tmp_path / "b.pt")[:2] == (0, False)
    assert _torch_free(ws, by_torch, tmp_path / "c.pt")[:2] == (0, False)
    for name in "abc":
        for mmap in (False, True):
            got = torch.load(tmp_path / f"{name}.pt", weights_only=True, mmap=mmap)
            assert list(got) == list(expected) and got["token"].dtype == torch.int64
            assert torch.equal(got["token"], codes.tokens) and torch.equal(got["speaker"], codes.speaker)
            assert {k: v for k, v in got.items() if k not in ("token", "speaker")} == {
                k: v for k, v in expected.items() if k not in ("token", "speaker")}
    assert (tmp_path / "b.pt").read_bytes() == (tmp_path / "a.pt").read_bytes() == (tmp_path / "c.pt").read_bytes()
    assert load_codes(tmp_path / "a.pt").summary() == codes.summary()


# ---------------------------------------------------------------- progress on a terminal (25.6)


def _on_terminal(ws: dict[str, Path], *args: object) -> tuple[int, str]:
    """Run ``socodec ARGS`` with stderr on a pseudo-terminal: ``(exit status, what the terminal showed)``."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "socodec", *map(str, args)], env=env_for(ws), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 65536):
            shown += chunk
    except OSError:  # EIO: the terminal's other end is closed
        pass
    finally:
        os.close(master)
    return proc.wait(timeout=TIMEOUT_S), shown.decode(errors="replace")


def test_long_decode_shows_its_progress_on_a_terminal(ws, tmp_path):
    long = save_codes(hc.good_codes(frames=4000), tmp_path / "long.soc")  # 8 min of audio: more than 2 s of work
    status, shown = _on_terminal(ws, long, tmp_path / "long.wav", *model_args(ws))
    assert status == 0, shown
    assert "s of audio" in shown and "decode" in shown, shown
    status, shown = _on_terminal(ws, ws["soc"], tmp_path / "short.wav", *model_args(ws))
    assert status == 0 and "s of audio" not in shown, shown  # done within the delay: nothing shown


def test_long_encode_shows_its_progress_on_a_terminal_only(ws, tmp_path):
    import numpy as np
    import soundfile as sf

    noise = np.random.default_rng(0).standard_normal(360 * 16000).astype(np.float32) * 0.1
    sf.write(tmp_path / "long.wav", noise, 16000, subtype="PCM_16")  # 6 minutes: more than 2 s of work
    status, shown = _on_terminal(ws, tmp_path / "long.wav", tmp_path / "tty.soc", *model_args(ws))
    assert status == 0, shown
    assert "encode:" in shown and "s of audio" in shown, shown
    piped = socodec(ws, tmp_path / "long.wav", tmp_path / "pipe.soc", *model_args(ws))
    assert piped.returncode == 0, piped.stderr
    assert "encode" not in piped.stderr and "\r" not in piped.stderr, piped.stderr
    assert (tmp_path / "tty.soc").read_bytes() == (tmp_path / "pipe.soc").read_bytes()


def test_shard_decoding_shows_a_bar_on_a_terminal(ws, tmp_path):
    from socodec.corpus import write_codes

    shard = write_codes(tmp_path / "rows.parquet", [(f"u{i}", hc.good_codes(seed=i)) for i in range(3)])
    status, shown = _on_terminal(ws, shard, tmp_path / "wavs", *model_args(ws))
    assert status == 0, shown
    assert "3/3" in shown and "decode" in shown, shown
    assert len(list((tmp_path / "wavs").glob("*.wav"))) == 3


def test_ray_address_without_a_cluster_is_said_with_our_flags(ws, tmp_path):
    out = tmp_path / "new" / "tokens"
    ray_tmp = tmp_path / "ray"  # where Ray looks for the cluster of this machine: none here, whatever else runs
    ray_tmp.mkdir()
    env = {**env_for(ws), "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp)}
    r = subprocess.run([sys.executable, "-m", "socodec", "tokenize", str(ws["wav"]), "-o", str(out), "--engine", "ray",
                        "--ray-address", "auto", "-q", *model_args(ws)], env=env, capture_output=True, text=True,
                       timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "--ray-address auto" in lines[0] and "ray start --head" in lines[0], r.stderr
    assert "`--address`" not in r.stderr and "RAY_ADDRESS" not in r.stderr
    assert not (tmp_path / "new").exists()  # nothing left behind
