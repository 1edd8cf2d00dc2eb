"""The command line, run for real: ``python -m socodec``, ``example.py`` and the ``socodec``
console script in subprocesses, on real files, with the tiny golden models under the
released file names.

Starting the command costs a few seconds (importing torch) while the
tiny models do their work in well under a second, so the session fixture starts every
invocation up front, two at a time, and each test waits for the one it checks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from safetensors.torch import load_file

from conftest import GOLDEN, REPO, assert_close_golden, tiny_ckpt_dir
from socodec import Codes, SoCodec
from socodec.audio import load_audio
from socodec.codes import load_codes, save_codes
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE

LEAD = 8000
GOLDEN_CLI = GOLDEN / "cli"
CLI_CASES = ("ground_truth", "tone", "edge", "long40")
TIMEOUT_S = 300
PCM16_STEP = 1 / 32768


@dataclass(frozen=True)
class Result:
    """One finished command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\n[exit {self.returncode}]\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def check(self) -> Result:
        assert self.returncode == 0, str(self)
        assert "Traceback" not in self.stderr, str(self)
        return self

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "ERROR" in line or "error:" in line]


@dataclass(frozen=True)
class Workspace:
    """Files shared by every test: model folder, inputs, and where outputs go."""

    root: Path
    ckpts: Path
    model_args: list[str]
    env: dict[str, str]


class Commands:
    """Runs named command chains in the background, ``workers`` at a time."""

    def __init__(self, ws: Workspace, workers: int = 2) -> None:
        self.ws = ws
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._futures: dict[str, Future] = {}

    def start(self, name: str, *steps: list[str], env: dict[str, str] | None = None) -> None:
        """Queue ``steps`` (argument lists) to run one after the other; a failing step stops the chain."""
        self._futures[name] = self._pool.submit(self._chain, list(steps), {**self.ws.env, **(env or {})})

    def _chain(self, steps: list[list[str]], env: dict[str, str]) -> list[Result]:
        results = []
        for argv in steps:
            try:
                proc = subprocess.run(
                    argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
                )
            except FileNotFoundError as exc:  # e.g. the console script is not installed
                results.append(Result(argv, 127, "", str(exc)))
                break
            results.append(Result(argv, proc.returncode, proc.stdout, proc.stderr))
            if proc.returncode != 0:
                break
        return results

    def __getitem__(self, name: str) -> list[Result]:
        return self._futures[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def socodec(*args: object) -> list[str]:
    return [sys.executable, "-m", "socodec", *map(str, args)]


def example(*args: object) -> list[str]:
    return [sys.executable, str(REPO / "example.py"), *map(str, args)]


def _golden(name: str) -> dict[str, torch.Tensor]:
    """The grid-padding golden case ``name`` (``--padding grid``)."""
    return load_file(str(GOLDEN / f"golden_{name}.safetensors"))


def _golden_cli(name: str) -> dict[str, torch.Tensor]:
    """The published command line's golden case ``name`` (the default ``--padding published``)."""
    return load_file(str(GOLDEN_CLI / f"golden_cli_{name}.safetensors"))


def _make_workspace(root: Path) -> Workspace:
    ckpts = tiny_ckpt_dir(root / "ckpts")
    configs = ["--analyzer-config", str(GOLDEN / "analyzer_tiny.json"), "--vocoder-config", str(GOLDEN / "vocoder_tiny.json")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCODEC_")}
    env.update(SOCODEC_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    (root / "empty").mkdir()

    # directory mode: a tree with good audio, a token file, a broken file and a non-audio file
    tree = root / "tree"
    (tree / "more" / "deeper").mkdir(parents=True)
    (tree / "ground_truth.wav").symlink_to(GOLDEN / "ground_truth.wav")
    x = _golden("ground_truth")["input_wav"].numpy()
    up = soxr.resample(x, 16000, 44100, quality="VHQ").astype(np.float32)
    sf.write(tree / "more" / "stereo44k.flac", np.stack([up, 0.5 * up], axis=1), 44100, subtype="PCM_24")
    (tree / "more" / "ref_chirp.pt").symlink_to(GOLDEN / "reference_features_chirp.pt")
    (tree / "more" / "deeper" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    (tree / "notes.txt").write_text("not audio\n")

    files = root / "files"
    files.mkdir()
    (files / "gt.wav").symlink_to(GOLDEN / "ground_truth.wav")
    for case in ("ground_truth", "chirp"):
        (files / f"ref_{case}.pt").symlink_to(GOLDEN / f"reference_features_{case}.pt")
    g = _golden("ground_truth")
    save_codes(Codes(g["tokens"], g["speaker"], num_samples=g["input_wav"].numel(), lead=LEAD), files / "gt_codes.soc")
    sf.write(files / "long40.wav", _golden_cli("long40")["input_wav"].numpy(), 16000, subtype="FLOAT")
    return Workspace(root, ckpts, ["--ckpt-dir", str(ckpts), *configs, "--threads", "1"], env)


@pytest.fixture(scope="session")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return _make_workspace(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="session")
def runs(ws: Workspace):
    r, m, files = ws.root, ws.model_args, ws.root / "files"
    cmds = Commands(ws)
    # longest chains first
    cmds.start("example_pt", example("-i", files / "gt.wav", "-o", r / "ex" / "gt.pt", *m),
               example("-i", r / "ex" / "gt.pt", "-o", r / "ex" / "gt_from_pt.wav", *m))
    cmds.start("dir", socodec(r / "tree", r / "out_dir", "-t", ".soc", *m))
    cmds.start("float", socodec(files / "gt.wav", files / "ref_ground_truth.pt", files / "ref_chirp.pt",
                                r / "out_float", "-t", ".wav", "--sample-format", "float", "--padding", "grid", *m))
    cmds.start("published", socodec(GOLDEN_CLI / "cli_tone.wav", GOLDEN_CLI / "cli_edge.wav", r / "out_published", *m),
               socodec(*(GOLDEN_CLI / f"reference_cli_features_{c}.pt" for c in CLI_CASES), r / "out_published_pt",
                       "-t", ".wav", "--sample-format", "float", *m))
    cmds.start("long40", socodec(files / "long40.wav", r / "long40.soc", *m),
               socodec("info", "--json", r / "long40.soc"))
    cmds.start("long40_example", example("-i", files / "long40.wav", "-o", r / "ex" / "long40.pt", *m))
    cmds.start("long40_windowed", socodec(files / "long40.wav", r / "long40_w.soc", "--hubert-window", "20", *m),
               socodec("info", r / "long40_w.soc"))
    cmds.start("long40_limit", socodec(files / "long40.wav", r / "long40_limit.pt", "--exact-max-seconds", "30", *m))
    cmds.start("grid_tokens", socodec(files / "gt.wav", r / "grid.soc", "--padding", "grid", *m))
    no_ckpt_dir = [a for a in m if a not in ("--ckpt-dir", str(ws.ckpts))]
    cmds.start("example_wav", example("-i", files / "gt.wav", "-o", r / "ex" / "gt.wav", *no_ckpt_dir),
               env={"SOCODEC_CKPT_DIR": str(ws.ckpts)})
    cmds.start("streams_speaker", socodec(files / "gt_codes.soc", r / "swap2.wav", "--streams", "2",
                                          "--speaker", files / "ref_chirp.pt", "--sample-format", "float", *m))
    cmds.start("no_weights", socodec(files / "gt.wav", r / "nothing.wav", "--ckpt-dir", r / "empty", "--no-download"))
    cmds.start("bad_suffix", socodec(files / "gt.wav", r / "out.mp4", *m))
    cmds.start("info", socodec("info", files / "gt_codes.soc", files / "ref_chirp.pt"))
    cmds.start("info_json", socodec("info", "--json", files / "gt_codes.soc"))
    script = Path(sys.executable).parent / "socodec"
    cmds.start("help", [str(script) if script.exists() else shutil.which("socodec") or "socodec", "--help"])
    yield cmds
    cmds.close()


@pytest.fixture(scope="module")
def codec(ws: Workspace) -> SoCodec:
    return SoCodec.from_pretrained(
        ws.ckpts, cache_dir=ws.root / "api_cache",
        analyzer_config=GOLDEN / "analyzer_tiny.json", vocoder_config=GOLDEN / "vocoder_tiny.json",
    )


def _read_wav(path: Path) -> tuple[torch.Tensor, str]:
    """Samples and the sample format (``PCM_16``, ``FLOAT``, ...) of a 16 kHz mono file."""
    data, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and data.ndim == 1
    return torch.from_numpy(data), sf.info(path).subtype


def _assert_close_pcm16(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Golden tolerance plus one 16-bit quantisation step (and the clip to [-1, 1])."""
    expected = expected.clamp(-1.0, 1.0)
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= 1e-4 * max(1.0, expected.abs().max().item()) + PCM16_STEP, err


def _golden_tail(case: dict[str, torch.Tensor]) -> torch.Tensor:
    n = case["input_wav"].numel()
    return case["output_wav"][LEAD : LEAD + n]


# ---------------------------------------------------------------- routes


def test_wav_to_pt_gives_golden_tokens(runs, ws):
    """example.py writes the published command line's tokens (its padding) into the published .pt layout."""
    runs["example_pt"][0].check()
    g = _golden_cli("ground_truth")
    raw = torch.load(ws.root / "ex" / "gt.pt", weights_only=True)
    assert raw["token"].dtype == torch.int64 and torch.equal(raw["token"], g["tokens"])
    assert raw["speaker"].dtype == torch.float32
    assert_close_golden(raw["speaker"], g["speaker"])
    assert (raw["num_samples"], raw["lead"], raw["sample_rate"]) == (g["input_wav"].numel(), LEAD, 16000)
    assert raw["padding"] == "published"


def test_wav_to_pt_to_wav(runs, ws):
    step = runs["example_pt"]
    assert len(step) == 2, str(step[-1])
    step[1].check()
    wav, subtype = _read_wav(ws.root / "ex" / "gt_from_pt.wav")
    assert subtype == "PCM_16"
    _assert_close_pcm16(wav, _golden_tail(_golden_cli("ground_truth")))


def test_wav_to_wav_pcm16_with_ckpt_dir_from_environment(runs, ws):
    runs["example_wav"][0].check()
    wav, subtype = _read_wav(ws.root / "ex" / "gt.wav")
    assert subtype == "PCM_16"
    _assert_close_pcm16(wav, _golden_tail(_golden_cli("ground_truth")))


def test_wav_to_wav_float_and_reference_pt(runs, ws):
    """``--padding grid``: the model fed a 1-D signal padded to the frame grid (``golden/``)."""
    runs["float"][0].check()
    out = ws.root / "out_float"
    wav, subtype = _read_wav(out / "gt.wav")
    assert subtype == "FLOAT"
    assert_close_golden(wav, _golden_tail(_golden("ground_truth")))
    for case in ("ground_truth", "chirp"):  # the published .pt: no lead known, full output
        wav, _ = _read_wav(out / f"ref_{case}.wav")
        assert_close_golden(wav, _golden(case)["output_wav"])


def test_directory_mode_with_a_broken_file(runs, ws):
    result = runs["dir"][0]
    assert result.returncode == 1, str(result)
    assert "Traceback" not in result.stderr
    errors = result.error_lines()
    assert len(errors) == 1 and "broken.wav" in errors[0], str(result)
    out = ws.root / "out_dir"
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert produced == ["ground_truth.soc", "more/ref_chirp.soc", "more/stereo44k.soc"]
    g = _golden_cli("ground_truth")  # the default padding: the published command line's tokens
    codes = load_codes(out / "ground_truth.soc")
    assert torch.equal(codes.tokens, g["tokens"])
    assert_close_golden(codes.speaker, g["speaker"])
    assert (codes.num_samples, codes.lead, codes.padding) == (g["input_wav"].numel(), LEAD, "published")
    ref = load_codes(GOLDEN / "reference_features_chirp.pt")
    converted = load_codes(out / "more" / "ref_chirp.soc")
    assert torch.equal(converted.tokens, ref.tokens) and torch.equal(converted.speaker, ref.speaker)


def test_published_padding_is_the_default(runs, ws):
    """``socodec x.wav out/``: tokens and speaker of the published command line (``golden/cli``)."""
    runs["published"][0].check()
    for case in ("tone", "edge"):
        g = _golden_cli(case)
        assert torch.equal(load_audio(GOLDEN_CLI / f"cli_{case}.wav"), g["input_wav"])
        codes = load_codes(ws.root / "out_published" / f"cli_{case}.soc")
        assert torch.equal(codes.tokens, g["tokens"]), case
        assert_close_golden(codes.speaker, g["speaker"])
        assert (codes.num_samples, codes.lead, codes.padding) == (g["input_wav"].numel(), LEAD, "published")


def test_long_input_gives_the_published_tokens(runs, ws):
    """40 s (``golden_cli_long40``): full attention by default, through ``socodec`` and ``example.py``."""
    g = _golden_cli("long40")
    step = runs["long40"]
    step[0].check()
    codes = load_codes(ws.root / "long40.soc")
    assert torch.equal(codes.tokens, g["tokens"])
    assert_close_golden(codes.speaker, g["speaker"])
    assert (codes.attention, codes.hubert_window, codes.padding) == ("full", None, "published")
    assert len(step) == 2, str(step[-1])
    step[1].check()
    info = json.loads(step[1].stdout)
    assert (info["attention"], info["hubert_window"]) == ("full", None)
    runs["long40_example"][0].check()
    raw = torch.load(ws.root / "ex" / "long40.pt", weights_only=True)
    assert torch.equal(raw["token"], g["tokens"]) and raw["attention"] == "full"


def test_windowed_attention_is_a_recorded_choice(runs, ws):
    g = _golden_cli("long40")
    step = runs["long40_windowed"]
    step[0].check()
    codes = load_codes(ws.root / "long40_w.soc")
    assert (codes.attention, codes.hubert_window) == ("windowed", 20.04)
    assert codes.num_frames == g["tokens"].shape[0] and not torch.equal(codes.tokens, g["tokens"])
    assert len(step) == 2, str(step[-1])
    step[1].check()
    assert "windowed, 20.04 s windows (approximate tokens)" in step[1].stdout
    # beyond --exact-max-seconds: windows, with one warning that names the setting
    result = runs["long40_limit"][0]
    result.check()
    warnings = [line for line in result.stderr.splitlines() if "exact-max-seconds" in line]
    assert len(warnings) == 1, result.stderr
    limited = load_codes(ws.root / "long40_limit.pt")
    assert limited.attention == "windowed" and torch.equal(limited.tokens, codes.tokens)


def test_published_tool_pt_decodes_to_its_golden_audio(runs, ws):
    """The published tool's ``.pt`` files (no length or lead recorded): the full 1920 T samples."""
    step = runs["published"]
    assert len(step) == 2, str(step[-1])
    step[1].check()
    for case in CLI_CASES:
        wav, subtype = _read_wav(ws.root / "out_published_pt" / f"reference_cli_features_{case}.wav")
        assert subtype == "FLOAT"
        assert_close_golden(wav, _golden_cli(case)["output_wav"])


def test_grid_padding_option(runs, ws):
    runs["grid_tokens"][0].check()
    g = _golden("ground_truth")
    codes = load_codes(ws.root / "grid.soc")
    assert torch.equal(codes.tokens, g["tokens"])
    assert_close_golden(codes.speaker, g["speaker"])
    assert codes.padding == "grid"


def test_stereo_44k_flac_input(runs, ws, codec):
    runs["dir"]  # wait for the directory run
    got = load_codes(ws.root / "out_dir" / "more" / "stereo44k.soc")
    want = codec.encode(load_audio(ws.root / "tree" / "more" / "stereo44k.flac"))
    assert torch.equal(got.tokens, want.tokens)
    assert_close_golden(got.speaker, want.speaker)
    assert got.num_samples == _golden("ground_truth")["input_wav"].numel()


def test_streams_and_speaker_from_another_file(runs, ws, codec):
    """``--streams 2 --speaker other.pt``: first two streams, the other file's voice (one run for both)."""
    runs["streams_speaker"][0].check()
    wav, _ = _read_wav(ws.root / "swap2.wav")
    codes = load_codes(ws.root / "files" / "gt_codes.soc")
    other = load_codes(GOLDEN / "reference_features_chirp.pt").speaker
    assert_close_golden(wav, codec.decode(codes, streams=2, speaker=other))
    # and the API path itself: two streams with the file's own speaker match the golden mel
    g = _golden("ground_truth")
    with torch.inference_mode():
        full = codec.vocoder(g["mel_pred_streams2"][None])[0]
    own = codec.decode(codes, streams=2)
    assert_close_golden(own, full[LEAD : LEAD + g["input_wav"].numel()])
    assert (wav - own).abs().max() > 1e-3  # the voice did change


# ---------------------------------------------------------------- other commands and failures


def test_info_text(runs):
    result = runs["info"][0].check()
    text = result.stdout
    assert "gt_codes.soc:" in text and "ref_chirp.pt:" in text
    assert "34 x 4 streams" in text and "3.560 s" in text and "466.7 bit/s" in text
    assert "56960 samples, lead 8000" in text
    assert "unknown" in text.split("ref_chirp.pt:")[1]  # the published file has no length or lead


def test_info_json(runs):
    summary = json.loads(runs["info_json"][0].check().stdout)
    assert summary["frames"] == 34 and summary["streams"] == 4
    assert summary["num_samples"] == 56960 and summary["lead"] == 8000
    assert summary["bitrate_without_speaker"] == pytest.approx(4 * 14 / 0.12)
    assert summary["bitrate"] == pytest.approx(4 * 14 / 0.12 + 64 * 32 / 3.56)


def test_console_script_help(runs):
    result = runs["help"][0]
    assert result.returncode == 0, f"is the package installed (pip install -e .)?\n{result}"
    assert "usage: socodec" in result.stdout and "--ckpt-dir" in result.stdout


def test_missing_weights_one_line_no_traceback(runs, ws):
    result = runs["no_weights"][0]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, str(result)
    for name in (HUBERT_FILE, ANALYZER_FILE, VOCODER_FILE):
        assert name in lines[0]
    assert not (ws.root / "nothing.wav").exists()


def test_wrong_suffix_one_line(runs, ws):
    result = runs["bad_suffix"][0]
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and ".mp4" in lines[0], str(result)
    assert not (ws.root / "out.mp4").exists()


def test_example_rejects_stray_arguments(ws):
    spec = importlib.util.spec_from_file_location("example", REPO / "example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    forwarded_args = module.forwarded_args
    assert forwarded_args(["-i", "a.wav", "-o", "b.pt", "--streams", "2"]) == ["a.wav", "b.pt", "--streams", "2"]
    with pytest.raises(SystemExit):
        forwarded_args(["-i", "a.wav", "-o", "b.pt", "c.wav"])
    with pytest.raises(SystemExit):
        forwarded_args(["-i", "a.wav"])
