"""Metrics from models independent of the codec, whose weights ship inside their PyPI packages.

===============================  ============================================================  ======
name                             definition                                                    better
===============================  ============================================================  ======
``dnsmos_sig/bak/ovrl``          DNSMOS P.835 (``speechmos``): predicted MOS of the speech      higher
                                 signal, the background and overall, 1-5; non-intrusive
``resemblyzer_similarity``       cosine of the Resemblyzer d-vectors (``Resemblyzer``) of the   higher
                                 original and the resynthesis, -1..1
``wer``                          word error rate (``jiwer``) of the pocketsphinx recognition    lower
                                 of the resynthesis against a transcript, or against the
                                 recognition of the original when no transcript is given
===============================  ============================================================  ======

Each waveform is ``[N]`` float at 16 kHz in [-1, 1]. A waveform with no signal (peak below
:data:`socodec.evaluate.metrics.SILENCE_PEAK`) gives NaN: these models have no defined answer for silence. Every
package is imported when first used; :func:`missing` names the ones not installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import math
from functools import lru_cache

import numpy as np

from socodec.config import SAMPLE_RATE
from socodec.evaluate.metrics import is_silent

__all__ = [
    "DNSMOS_METRICS", "INDEPENDENT_METRICS", "GROUPS", "MODELS", "missing", "versions", "dnsmos",
    "speaker_embedding", "speaker_similarity", "recognise", "word_error_rate",
]

log = logging.getLogger(__name__)

DNSMOS_METRICS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
INDEPENDENT_METRICS = (*DNSMOS_METRICS, "resemblyzer_similarity", "wer")

GROUPS = {
    "dnsmos": (DNSMOS_METRICS, ("speechmos", "onnxruntime", "librosa"), "speechmos onnxruntime"),
    "resemblyzer": (("resemblyzer_similarity",), ("resemblyzer",), "Resemblyzer webrtcvad-wheels"),
    "wer": (("wer",), ("pocketsphinx", "jiwer"), "pocketsphinx jiwer"),
}
"""group -> (its metrics, the modules it imports, what to ``pip install`` when they are missing)."""

_DISTRIBUTIONS = {"dnsmos": "speechmos", "resemblyzer": "Resemblyzer", "wer": "pocketsphinx"}
MODELS = {
    "dnsmos": "DNSMOS P.835 (sig_bak_ovr.onnx) from speechmos {version}",
    "resemblyzer": "Resemblyzer {version} speaker encoder (pretrained.pt, GE2E d-vectors)",
    "wer": "pocketsphinx {version} US-English acoustic and language model; WER by jiwer {jiwer}",
}


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is as good as missing
        log.debug("cannot import %s", module, exc_info=True)
        return False
    return True


def missing() -> dict[str, str]:
    """group -> one line naming the ``pip install`` for each metric group whose packages cannot be imported."""
    out = {}
    for group, (metrics, modules, pip) in GROUPS.items():
        absent = [m for m in modules if not _importable(m)]
        if absent:
            out[group] = (f"{', '.join(metrics)} left out: {', '.join(absent)} not installed "
                          f"(pip install 'socodec[eval]', or pip install {pip})")
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def versions(groups: tuple[str, ...] = tuple(GROUPS)) -> dict[str, str]:
    """metric -> the model (and package version) that computes it, for the available ``groups``."""
    out = {}
    for group in groups:
        label = MODELS[group].format(version=_version(_DISTRIBUTIONS[group]), jiwer=_version("jiwer"))
        out.update({name: label for name in GROUPS[group][0]})
    return out


def _mono(wav) -> np.ndarray:
    """``[N]`` float32 numpy in [-1, 1] (torch tensors accepted)."""
    if hasattr(wav, "detach"):
        wav = wav.detach().cpu().numpy()
    return np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)


def dnsmos(wav) -> dict[str, float]:
    """DNSMOS P.835 SIG, BAK and OVRL of one waveform ``[N]`` (NaN for silence)."""
    x = _mono(wav)
    if is_silent(x):
        return dict.fromkeys(DNSMOS_METRICS, math.nan)
    from speechmos import dnsmos as _dnsmos

    scores = _dnsmos.run(x, SAMPLE_RATE)
    return {"dnsmos_sig": float(scores["sig_mos"]), "dnsmos_bak": float(scores["bak_mos"]),
            "dnsmos_ovrl": float(scores["ovrl_mos"])}


@lru_cache(maxsize=1)
def _voice_encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


def speaker_embedding(wav) -> np.ndarray | None:
    """Resemblyzer d-vector ``[256]`` of one waveform ``[N]``; None when it holds no voiced speech."""
    from resemblyzer import preprocess_wav

    x = _mono(wav)
    if is_silent(x):
        return None
    with np.errstate(all="ignore"):
        kept = preprocess_wav(x, SAMPLE_RATE)
    if kept.size < SAMPLE_RATE // 10:  # its voice activity detector kept (almost) nothing
        return None
    return _voice_encoder().embed_utterance(kept)


def speaker_similarity(ref, deg) -> float:
    """Cosine of the Resemblyzer embeddings of two waveforms ``[N]``; NaN when either has no speech."""
    a, b = speaker_embedding(ref), speaker_embedding(deg)
    if a is None or b is None:
        return math.nan
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@lru_cache(maxsize=1)
def _decoder():
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")


def recognise(wav) -> str | None:
    """pocketsphinx's English recognition of one waveform ``[N]`` (lower case); None for silence."""
    x = _mono(wav)
    if is_silent(x):
        return None
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(np.round(x * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.strip().lower() if hyp is not None else ""


def _words(text: str) -> str:
    return " ".join("".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split())


def word_error_rate(reference: str | None, hypothesis: str | None) -> float:
    """jiwer's WER of ``hypothesis`` against ``reference`` (lower case, punctuation removed); NaN without
    a reference or words in it."""
    import jiwer

    ref = _words(reference or "")
    if not ref or hypothesis is None:
        return math.nan
    return float(jiwer.wer(ref, _words(hypothesis)))
