"""A small corpus for the tokenize tests: a folder, a Kaldi data folder with segments, a JSONL
manifest and broken files, plus helpers to run commands and cut reference audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch

from conftest import GOLDEN, REPO, tiny_ckpt_dir

TIMEOUT_S = 300
TINY = ["--analyzer-config", str(GOLDEN / "analyzer_tiny.json"), "--vocoder-config", str(GOLDEN / "vocoder_tiny.json")]


@dataclass(frozen=True)
class Corpus:
    root: Path
    ckpts: Path
    env: dict[str, str]
    folder: Path      # audio files in subfolders
    kaldi: Path       # wav.scp + segments + text + utt2spk
    manifest: Path    # JSONL
    bad: Path         # files that cannot be tokenised
    segments: dict[str, tuple[Path, float, float | None]]  # utterance id -> (recording, start, end or None)

    @property
    def model_args(self) -> list[str]:
        return ["--ckpt-dir", str(self.ckpts), *TINY]

    @property
    def inputs(self) -> list[Path]:
        return [self.folder, self.kaldi, self.manifest, self.bad]


def _noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.2 * np.sin(2 * np.pi * (180 + 40 * seed) * t)
    x = tone + 0.05 * rng.standard_normal(n)
    return (x if channels == 1 else np.stack([x, 0.5 * x], axis=1)).astype(np.float32)


def make_corpus(root: Path) -> Corpus:
    ckpts = tiny_ckpt_dir(root / "ckpts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCODEC_")}
    env.update(SOCODEC_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")

    folder = root / "wavs"
    (folder / "spk1").mkdir(parents=True)
    (folder / "spk2").mkdir()
    sf.write(folder / "spk1" / "a.wav", _noise(1.3, 16000, seed=1), 16000, subtype="PCM_16")
    sf.write(folder / "spk1" / "b.flac", _noise(2.1, 16000, seed=2), 16000, subtype="PCM_16")
    sf.write(folder / "spk2" / "c.wav", _noise(0.7, 22050, channels=2, seed=3), 22050, subtype="FLOAT")

    kaldi = root / "kaldi"
    kaldi.mkdir()
    rec1, rec2 = root / "recordings" / "rec1.wav", root / "recordings" / "rec2.wav"
    rec1.parent.mkdir()
    sf.write(rec1, _noise(6.0, 16000, seed=4), 16000, subtype="PCM_16")
    sf.write(rec2, _noise(5.0, 24000, seed=5), 24000, subtype="PCM_16")
    (kaldi / "wav.scp").write_text(f"rec1 {rec1}\nrec2 {rec2}\n")
    segments = {"r1a": (rec1, 0.0, 1.5), "r1b": (rec1, 1.5, 3.25), "r1c": (rec1, 4.0, None), "r2a": (rec2, 0.5, 2.0)}
    lines = [f"{u} {r.stem} {s:.2f} {e if e is not None else -1}" for u, (r, s, e) in segments.items()]
    (kaldi / "segments").write_text("\n".join(lines + ["r2bad rec2 10.0 11.0"]) + "\n")
    (kaldi / "text").write_text("r1a 你好 世界\nr1b second one\n")
    (kaldi / "utt2spk").write_text("r1a spkA\nr1b spkA\nr1c spkB\nr2a spkC\nr2bad spkC\n")

    manifest = root / "lists" / "train.jsonl"
    manifest.parent.mkdir()
    (manifest.parent / "j").mkdir()
    sf.write(manifest.parent / "j" / "x.wav", _noise(1.1, 16000, seed=6), 16000, subtype="PCM_16")
    entries = [{"audio_filepath": "j/x.wav", "text": "hello", "lang": "en"},
               {"audio_filepath": str(rec1), "id": "j-seg", "offset": 2.0, "duration": 1.0, "text": "cut"}]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    segments["j-seg"] = (rec1, 2.0, 3.0)

    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    nan = _noise(0.5, 16000)
    nan[100] = np.nan
    sf.write(bad / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(bad / "no_samples.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    return Corpus(root, ckpts, env, folder, kaldi, manifest, bad, segments)


def cut(recording: Path, start: float, end: float | None, out: Path) -> Path:
    """The audio of ``[start, end)`` seconds of ``recording`` as its own file (same rate and sample format)."""
    info = sf.info(recording)
    dtype = "int16" if info.subtype == "PCM_16" else "float32"
    data, rate = sf.read(recording, dtype=dtype)
    a = round(start * rate)
    b = len(data) if end is None else round(end * rate)
    sf.write(out, data[a:b], rate, subtype=info.subtype)
    return out


def socodec(*args: object) -> list[str]:
    return [sys.executable, "-m", "socodec", *map(str, args)]


def run(argv: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def start(argv: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def show(result: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(map(str, result.args))}\n[exit {result.returncode}]\n{result.stdout}\n{result.stderr}"


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, as the workers ran (float sums then round the same way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A plain tar holding ``members`` (name -> bytes), in order, as WebDataset shards are."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
