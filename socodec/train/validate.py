"""Validation: log-mel distance when decoding 1..S streams, and audio samples.

For each validation clip (whole, up to ``valid_max_seconds``, no lead), in eval mode:
zero-pad to the 120 ms grid (as training does), tokens from HuBERT -> encoder -> quantiser, speaker vector from
the whole log-mel, predicted log-mel from the first k streams; the distance is the mean
absolute log-mel error over all frames, averaged over clips. The streams are ordered
when the distance does not grow as streams are added (``d_1 >= d_2 >= ... >= d_S``).
Samples go through the public ``encode``/``decode`` path (0.5 s lead, vocoder) and are
written to ``RUN_DIR/samples/step_NNNNNNNN/<id>_streams<k>.wav``.

With the ``[eval]`` extra's speechmos and Resemblyzer installed, every clip is also decoded
from all streams through that public path, and the means of its DNSMOS OVRL and of its
Resemblyzer speaker similarity to the input are reported (``dnsmos_ovrl``,
``speaker_similarity``; empty without those packages): independent of the codec's own models.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from socodec.audio import save_audio
from socodec.codec import SoCodec
from socodec.config import SAMPLE_RATE, SAMPLES_PER_TOKEN
from socodec.corpus.containers import WorkItem
from socodec.errors import AudioError, one_line
from socodec.train.data import read_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidResult:
    step: int
    distances: tuple[float, ...]
    """Mean log-mel L1 distance decoding the first 1, 2, ..., S streams."""
    clips: int
    dnsmos_ovrl: float = math.nan
    """Mean DNSMOS OVRL of the clips decoded from all streams (NaN without speechmos)."""
    speaker_similarity: float = math.nan
    """Mean Resemblyzer cosine similarity, input vs decoded from all streams (NaN without Resemblyzer)."""

    @property
    def ordered(self) -> bool:
        """More streams never give a larger distance."""
        return all(a >= b for a, b in zip(self.distances, self.distances[1:]))

    def row(self) -> dict[str, object]:
        row: dict[str, object] = {"step": self.step, "ordered": int(self.ordered), "clips": self.clips}
        row.update({f"mel_distance_{k}": d for k, d in enumerate(self.distances, start=1)})
        row.update({name: value for name, value in (("dnsmos_ovrl", self.dnsmos_ovrl),
                                                     ("speaker_similarity", self.speaker_similarity))
                    if math.isfinite(value)})
        return row


def load_valid_clips(clips: Sequence[WorkItem], limit: int, max_seconds: float) -> list[tuple[str, Tensor]]:
    """The first ``limit`` readable clips, each cut to ``max_seconds``; unreadable ones are skipped with a warning."""
    out = []
    for clip in clips:
        if len(out) >= limit:
            break
        try:
            wav = read_clip(clip)
        except (AudioError, OSError, RuntimeError, ValueError) as exc:
            log.warning("validation: skipping %s (%s)", clip.id, one_line(exc))
            continue
        out.append((clip.id, wav[: int(max_seconds * SAMPLE_RATE)]))
    return out


@torch.no_grad()
def mel_distances(codec: SoCodec, wav: Tensor) -> list[float]:
    """Mean |predicted - true| log-mel of one clip ``[N]``, decoding 1..S streams."""
    analyzer = codec.analyzer
    n = wav.numel()
    padded = F.pad(wav, (0, -(-n // SAMPLES_PER_TOKEN) * SAMPLES_PER_TOKEN - n))[None].to(codec.device)  # [1, L]
    mel = codec.mel(padded)  # [1, 12T, n_mels]
    tokens = analyzer.tokens(codec.features(padded))
    speaker = analyzer.speaker(mel)
    return [float((analyzer.decode_mel(tokens, speaker, k) - mel).abs().mean())
            for k in range(1, codec.num_streams + 1)]


def validate(codec: SoCodec, clips: Sequence[tuple[str, Tensor]], step: int,
             samples_dir: Path | None, n_samples: int) -> ValidResult:
    """Distances averaged over ``clips`` and, when ``samples_dir`` is set, the first ``n_samples`` decoded."""
    was_training = codec.analyzer.training
    codec.analyzer.eval()
    try:
        per_clip = [mel_distances(codec, wav) for _, wav in clips]
        n = codec.num_streams
        distances = tuple(sum(d[k] for d in per_clip) / max(1, len(per_clip)) for k in range(n))
        if samples_dir is not None and n_samples > 0:
            write_samples(codec, clips[:n_samples], samples_dir / f"step_{step:08d}")
        quality = independent_scores(codec, clips)
    finally:
        codec.analyzer.train(was_training)
    return ValidResult(step, distances, len(per_clip), **quality)


def independent_scores(codec: SoCodec, clips: Sequence[tuple[str, Tensor]]) -> dict[str, float]:
    """Mean DNSMOS OVRL and Resemblyzer similarity of the clips ``[N]`` decoded from all streams; a metric
    whose package is missing (said once in the log) or that no clip defines is left out."""
    from socodec.evaluate import independent

    absent = independent.missing()
    for group in ("dnsmos", "resemblyzer"):
        if group in absent and group not in _SAID:
            _SAID.add(group)
            log.info("validation: %s", absent[group])
    if not clips or ("dnsmos" in absent and "resemblyzer" in absent):
        return {}
    scores: dict[str, list[float]] = {"dnsmos_ovrl": [], "speaker_similarity": []}
    for _, wav in clips:
        decoded = codec.decode(codec.encode(wav))
        if "dnsmos" not in absent:
            scores["dnsmos_ovrl"].append(independent.dnsmos(decoded)["dnsmos_ovrl"])
        if "resemblyzer" not in absent:
            scores["speaker_similarity"].append(independent.speaker_similarity(wav, decoded))
    means = {}
    for name, values in scores.items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            means[name] = sum(finite) / len(finite)
    return means


_SAID: set[str] = set()


def write_samples(codec: SoCodec, clips: Sequence[tuple[str, Tensor]], folder: Path) -> None:
    """Each clip decoded from 1 stream and from all streams (and the input once, as ``<id>_input.wav``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for clip_id, wav in clips:
        name = clip_id.replace("/", "__")
        codes = codec.encode(wav)
        for k in sorted({1, codec.num_streams}):
            save_audio(folder / f"{name}_streams{k}.wav", codec.decode(codes, streams=k))
        reference = folder.parent / "input" / f"{name}.wav"
        if not reference.exists():
            reference.parent.mkdir(parents=True, exist_ok=True)
            save_audio(reference, wav)
