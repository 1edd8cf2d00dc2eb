"""Make the small English corpus of docs/training.md with espeak-ng (16 kHz mono wav).

    python docs/training/make_corpus.py OUT_DIR

OUT_DIR/train/<voice>/<nn>.wav: 6 voices x 12 sentences; OUT_DIR/valid/<voice>/<nn>.wav:
2 other voices x 4 other sentences (never heard in training). espeak-ng writes 22.05 kHz; soxr resamples to 16 kHz.
"""

from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A rainbow is a division of white light into many beautiful colors.",
    "The birch canoe slid on the smooth planks across the quiet lake.",
    "Glue the sheet to the dark blue background before the paint dries.",
    "It is easy to tell the depth of a well when the water is clear.",
    "These days a chicken leg is a rare dish in the old town.",
    "Rice is often served in round bowls with a little green tea.",
    "The juice of lemons makes fine punch on a hot summer afternoon.",
    "The box was thrown beside the parked truck at the end of the road.",
    "Four hours of steady work faced us before the train arrived.",
    "A large size in stockings is hard to sell in the small shop.",
    "The boy was there when the sun rose over the distant hills.",
    "A rod is used to catch pink salmon in the cold northern rivers.",
    "The source of the huge river is the clear spring in the mountains.",
    "Kick the ball straight and follow through with your whole body.",
    "Help the woman get back to her feet and find her glasses.",
    "A pot of tea helps to pass the evening when the rain comes down.",
    "Smoky fires lack flame and heat, so open the window a little.",
    "The soft cushion broke the fall of the tired old cat.",
    "Numbers like seventeen, forty two and nine hundred are easy to say.",
    "She asked whether the meeting on Thursday could start at half past ten.",
    "Bright stars were shining above the silent harbour that night.",
    "Every morning he walks to the bakery and buys warm bread.",
]
TRAIN_VOICES = ["en-us+m1", "en-us+f2", "en-gb+m3", "en-gb-scotland+f1", "en-029+m2", "en-us-nyc+f4"]
VALID_VOICES = ["en-gb-x-gbcwmd+m5", "en-us+f5"]
N_TRAIN_SENTENCES = 12


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's output for ``text`` as float32 at 16 kHz."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(data, rate, 16000, quality="VHQ").astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    out = p.parse_args().out
    rng = np.random.default_rng(0)
    seconds = {"train": 0.0, "valid": 0.0}
    plan = [("train", v, SENTENCES[:N_TRAIN_SENTENCES]) for v in TRAIN_VOICES]
    plan += [("valid", v, SENTENCES[-4:]) for v in VALID_VOICES]
    for split, voice, sentences in plan:
        folder = out / split / voice.replace("+", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(sentences):
            audio = speak(text, voice, int(rng.integers(140, 181)), int(rng.integers(35, 66)))
            sf.write(folder / f"{i:02d}.wav", audio, 16000, subtype="PCM_16")
            seconds[split] += audio.size / 16000
    print(f"train {seconds['train'] / 60:.1f} min, valid {seconds['valid'] / 60:.1f} min in {out}")


if __name__ == "__main__":
    main()
