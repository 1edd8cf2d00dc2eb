"""Remake the README's screenshots: ``docs/report.png`` (an evaluation report) and ``docs/demo.png`` (the web demo).

    python scripts/screenshots.py [--ckpt-dir DIR --analyzer-config F --vocoder-config F] [--chromium PATH]

Without model options it uses the tiny random-weight test models of ``../shared/reference/golden``
(their resynthesis is noise: the pictures show the layout, not the codec's quality). The speech
is that folder's ``ground_truth.wav`` plus a few English sentences from ``espeak-ng`` when it is
installed. Needs the ``[eval]`` and ``[demo]`` extras, ``playwright`` and a system Chromium.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "reference" / "golden"
TINY = {"hubert": "hubert_tiny_fairseq.pt", "analyzer": "analyzer_tiny.safetensors", "vocoder": "vocoder_tiny.safetensors"}
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Speech tokens let a language model talk.",
    "Four streams of tokens, one frame every hundred and twenty milliseconds.",
)


def _tiny_model(folder: Path) -> list[str]:
    from socodec.loading.checkpoints import RELEASED_FILES

    folder.mkdir(parents=True)
    for name, key in zip(RELEASED_FILES, ("hubert", "analyzer", "vocoder")):
        (folder / name).symlink_to(GOLDEN / TINY[key])
    return ["--ckpt-dir", str(folder), "--analyzer-config", str(GOLDEN / "analyzer_tiny.json"),
            "--vocoder-config", str(GOLDEN / "vocoder_tiny.json"), "--no-download"]


def _speech(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    files = [folder / "chinese.wav"]
    shutil.copy(GOLDEN / "ground_truth.wav", files[0])
    if shutil.which("espeak-ng"):
        for i, text in enumerate(SENTENCES):
            raw = folder / f"raw{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
            wav, sr = sf.read(raw, dtype="float32")
            sf.write(folder / f"english{i + 1}.wav", soxr.resample(wav, sr, 16000), 16000)
            raw.unlink()
            files.append(folder / f"english{i + 1}.wav")
    return files


def _report_png(model: list[str], speech: Path, work: Path, out: Path, page) -> None:
    report = work / "report"
    cmd = [sys.executable, "-m", "socodec", "eval", str(speech), "-o", str(report), "--examples", "2", *model]
    subprocess.run(cmd, check=True, cwd=REPO)
    page.set_viewport_size({"width": 1400, "height": 2000})
    page.goto((report / "report.html").as_uri())
    page.screenshot(path=str(out))


def _demo_png(model: list[str], speech: Path, work: Path, out: Path, page) -> None:
    from socodec.cli.options import load_codec, model_options
    from socodec.cli.demo import build_parser
    from socodec.demo.app import launch
    from socodec.demo.app import DemoHandlers

    codec = load_codec(model_options(build_parser().parse_args(model)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(DemoHandlers(codec, work / "demo"), "127.0.0.1", port, block=False)
    try:
        page.set_viewport_size({"width": 1280, "height": 1100})
        page.goto(app.local_url)
        page.locator("#speech-input input[type=file]").set_input_files(str(speech))
        page.click("#encode")
        page.wait_for_selector("#resynthesis audio[src]", state="attached", timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out), full_page=True)
    finally:
        app.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args, model = p.parse_known_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = model or _tiny_model(work / "ckpts")
        speech = _speech(work / "speech")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            _report_png(model, work / "speech", work, args.out / "report.png", page)
            _demo_png(model, speech[-1], work, args.out / "demo.png", page)
            browser.close()
    print(f"wrote {args.out / 'report.png'} and {args.out / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
