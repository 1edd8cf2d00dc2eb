"""Long inputs with bounded memory: chunk sizes and the analysis stage by stage.

Analysis of a padded signal of T token frames longer than
:attr:`ChunkConfig.hubert_span <socodec.config.ChunkConfig.hubert_span>` frames (22.2 s by
default) runs stage by stage, each with bounded memory; shorter inputs take the whole-signal
path (:meth:`CodecCore.encode_whole`), with the same numbers.

* **HuBERT, full attention (the default)** — :func:`full_features`. The published model runs
  HuBERT once over the whole input, every frame attending to every frame, and so does this path:
  the signal is standardised over all its samples, the convolutional front end runs in blocks
  (every frame depends on 400 samples only), the feed-forward layers in blocks of frames, and
  attention uses scaled-dot-product (flash) attention, which never holds the ``T x T`` matrix.
  Memory grows linearly with the length (a few ``[T, 1024]`` activations: ~60 MB each per
  5 minutes for the real model), time quadratically in the attention. The tokens are the
  published ones at every length.
* **HuBERT over windows (on request, or beyond ``exact_max_seconds``)** —
  :func:`windowed_features`. The kept ranges split the T frames evenly into
  ceil(T / window) windows on the 1920-sample grid; each window also sees
  ``hubert_context`` frames of real signal on each side (less at the signal ends).
  The standardisation statistics (mean, biased variance over the whole L + 3200
  samples) are computed once and applied to every window
  (:class:`~socodec.nn.hubert.HubertFeatures` ``norm_stats``). Each window is then
  run like an utterance of its own: its 3200-sample tail is appended, masked and
  zeroed, so only the last window — which ends where the signal ends — sees the
  true tail. Attention no longer spans the whole file, so the features and tokens
  differ from the published ones (on the tiny test model ~96 % of token frames agree
  over 30-60 s; 77 % measured over 40 s on real-size random weights); codes record it
  (``Codes.attention == "windowed"``). Time and memory are linear in the length.
* **Encoder** (causal): consumes the features chunk by chunk through
  :class:`~socodec.nn.causal.CausalStreamer` — exact.
* **Mel / speaker**: the log-mel is computed in blocks straight from the (virtually)
  padded signal; above the speaker encoder's ``long_threshold`` (60 s) it is not even held:
  :class:`LazyMel` recomputes it for each of the encoder's chunked passes
  (:meth:`SpeakerEncoder.forward_frames`), which bound the activations.

**Progress**: :class:`AnalysisProgress` reports the fraction of a long analysis done to a
``progress`` callback (:meth:`SoCodec.encode <socodec.codec.SoCodec.encode>`): the speaker
vector once made, HuBERT (~96 % of the time) block by block of its convolutional front end and
layer by layer with full attention, window by window otherwise; the causal encoder chunk by chunk.

The padded signal is materialised only for full attention (4 bytes a sample: 38 MB per
10 minutes); otherwise :class:`PaddedSignal` serves slices of ``lead zeros + audio + zero
padding``, the audio coming from memory or, for ``SoCodec.encode(path)``, from the file on
disk (:mod:`socodec.audio`).
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from socodec.config import HUBERT_TAIL_SAMPLES, NORMALIZE_EPS, HubertConfig
from socodec.errors import SoCodecError
from socodec.nn.causal import CausalStreamer
from socodec.inference.core import CodecCore
from socodec.nn.hubert import HubertFeatures
from socodec.nn.mel import MelSpectrogram
from socodec.audio import FileSource, TensorSource

__all__ = [
    "PaddedSignal", "hubert_windows", "full_features", "windowed_features", "encode_long", "stream_tokens", "long_mel",
    "mel_frames", "LazyMel", "Progress", "AnalysisProgress", "hubert_work",
]

log = logging.getLogger(__name__)

_STATS_BLOCK = 1 << 20

Progress = Callable[[float], None]
"""A progress callback: called with the fraction of the work done, increasing, the last call with 1.0."""


class AnalysisProgress:
    """The fraction of one analysis done, for a :data:`Progress` callback (None: nothing is reported).

    The stages (:attr:`SHARES`: about their parts of the time on CPU with the released model) advance
    separately, each from 0 to 1; the callback sees the sum of their shares done (or what
    :meth:`reach` says), only when it grows, and 1.0 from :meth:`finish`.
    """

    SHARES = {"speaker": 0.02, "hubert": 0.96, "encoder": 0.02}

    def __init__(self, callback: Progress | None = None) -> None:
        self.callback = callback
        self.reported = 0.0
        self.done = dict.fromkeys(self.SHARES, 0.0)

    def advance(self, stage: str, fraction: float) -> None:
        """``stage`` (a key of :attr:`SHARES`) has done ``fraction`` more of its work."""
        self.done[stage] = min(1.0, self.done[stage] + fraction)
        self.reach(min(0.999, sum(share * self.done[name] for name, share in self.SHARES.items())))

    def finish(self) -> None:
        """All done: reports 1.0 (unless reported already)."""
        self.reach(1.0)

    def reach(self, fraction: float) -> None:
        """``fraction`` of the work is done (reported if more than so far)."""
        if self.callback is not None and fraction > self.reported:
            self.reported = fraction
            self.callback(fraction)

    def part(self, start: float, share: float) -> AnalysisProgress:
        """A meter for a part of this work: its fractions 0..1 are reported as ``start .. start + share``."""
        return AnalysisProgress(None if self.callback is None else lambda fraction: self.reach(start + share * fraction))

    @contextmanager
    def watch(self, hubert: HubertFeatures, frames: int) -> Iterator[None]:
        """Within the block, report HuBERT's work over ``frames`` frames as it runs (full attention): each
        block of the convolutional front end and each layer, weighted by its multiply-adds. Only this
        thread's calls count (a model shared by threads runs other inputs meanwhile)."""
        if self.callback is None:
            yield
            return
        net = hubert.model
        front, layer = hubert_work(hubert.cfg, frames)
        total = front + layer * len(net.encoder.layers)
        owner = threading.get_ident()

        def block_done(module: torch.nn.Module, args: object, output: Tensor) -> None:  # output [B, C, frames]
            if threading.get_ident() == owner:
                self.advance("hubert", front * output.shape[-1] / frames / total)

        def layer_done(module: torch.nn.Module, args: object, output: Tensor) -> None:
            if threading.get_ident() == owner:
                self.advance("hubert", layer / total)

        handles = [net.feature_extractor.conv_layers[-1].register_forward_hook(block_done)]
        handles += [m.register_forward_hook(layer_done) for m in net.encoder.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def hubert_work(cfg: HubertConfig, frames: int) -> tuple[float, float]:
    """Multiply-adds of HuBERT over ``frames`` frames with full attention: ``(front end, one layer)``."""
    front, stride, channels = 0.0, 1, 1
    for dim, kernel, step in cfg.conv_layers:
        stride *= step
        front += cfg.hop / stride * kernel * channels * dim
        channels = dim
    width = cfg.embed_dim
    layer = 4 * width * width + 2 * width * cfg.ffn_dim + 2 * frames * width  # projections, feed-forward, attention
    return front * frames, layer * frames


class PaddedSignal:
    """``lead`` zeros + the samples of ``source`` + zeros up to ``length`` samples, served by slices.

    Never materialised: the samples come from a :class:`~socodec.audio.TensorSource` (memory)
    or a :class:`~socodec.audio.FileSource` (read from disk on demand).

    Args:
        source: ``[n]`` float32 mono 16 kHz samples (a tensor is wrapped in a TensorSource),
            or any object with ``num_samples`` and ``read(start, stop) -> [stop - start]``.
        lead: zeros before the audio.
        length: total length L (>= lead + n).
    """

    def __init__(self, source: Tensor | TensorSource | FileSource, lead: int, length: int) -> None:
        self.source = TensorSource(source) if isinstance(source, Tensor) else source
        n = self.source.num_samples
        if lead < 0 or length < lead + n:
            raise ValueError(f"bad padded signal: {n} samples, lead {lead}, length {length}")
        self.lead = lead
        self.length = length

    def segment(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` (0 <= start <= stop <= length) as a new ``[stop - start]`` tensor."""
        out = torch.zeros(stop - start)
        lo, hi = max(start, self.lead), min(stop, self.lead + self.source.num_samples)
        if hi > lo:
            out[lo - start : hi - start] = self.source.read(lo - self.lead, hi - self.lead)
        return out

    def reflect_segment(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` of the signal reflect-padded at both ends (``torch`` 'reflect')."""
        if start >= 0 and stop <= self.length:
            return self.segment(start, stop)
        index = torch.arange(start, stop)
        index = index.abs()
        last = self.length - 1
        index = torch.where(index > last, 2 * last - index, index)
        lo, hi = int(index.min()), int(index.max()) + 1
        return self.segment(lo, hi)[index - lo]

    def norm_stats(self, tail: int = HUBERT_TAIL_SAMPLES) -> Tensor:
        """HuBERT standardisation over the signal plus ``tail`` zeros: ``[mean, sqrt(var + 1e-5)]``.

        The biased variance over ``length + tail`` samples, as ``F.layer_norm`` of the whole
        signal; accumulated in float64, block by block.
        """
        total, n = self.length + tail, self.source.num_samples
        s1 = 0.0
        for start in range(0, n, _STATS_BLOCK):
            s1 += float(self.source.read(start, min(n, start + _STATS_BLOCK)).double().sum())
        mean = s1 / total
        m2 = (total - n) * mean * mean  # the zeros
        for start in range(0, n, _STATS_BLOCK):
            m2 += float((self.source.read(start, min(n, start + _STATS_BLOCK)).double() - mean).pow(2).sum())
        return torch.tensor([mean, math.sqrt(m2 / total + NORMALIZE_EPS)], dtype=torch.float32)


def hubert_windows(frames: int, window: int, context: int) -> list[tuple[int, int, int, int]]:
    """Split ``frames`` token frames into windows: ``(keep_lo, keep_hi, in_lo, in_hi)`` each.

    The kept ranges ``[keep_lo, keep_hi)`` tile ``[0, frames)`` in ``ceil(frames / window)``
    near-equal parts; ``[in_lo, in_hi)`` adds ``context`` frames each side, clipped to the signal.
    """
    count = max(1, math.ceil(frames / window))
    bounds = [round(i * frames / count) for i in range(count + 1)]
    return [
        (lo, hi, max(0, lo - context), min(frames, hi + context))
        for lo, hi in zip(bounds[:-1], bounds[1:])
        if hi > lo
    ]


@torch.inference_mode()
def full_features(core: CodecCore, signal: PaddedSignal, progress: AnalysisProgress | None = None) -> Iterator[Tensor]:
    """HuBERT features of the whole ``signal`` with full attention (the published arithmetic).

    Yields the features ``[1, ceil(L/320), C]`` float32 in pieces of ``chunks.hubert_window``
    token frames (``[1, 6 t_i, C]``), for the streamed encoder; HuBERT itself runs once.
    """
    per_token = core.hop // core.hubert.hop
    wav = signal.segment(0, signal.length)[None]  # [1, L]
    with (progress or AnalysisProgress()).watch(core.hubert, -(-signal.length // core.hubert.hop)):
        feats = core.features(wav)  # [1, ceil(L/320), C]; standardised over all L + 3200 samples
    del wav
    step = core.chunks.hubert_window * per_token
    log.debug("HuBERT with full attention over %d frames", feats.shape[1])
    for start in range(0, feats.shape[1], step):
        yield feats[:, start : start + step]


@torch.inference_mode()
def windowed_features(core: CodecCore, signal: PaddedSignal, window: int | None = None,
                      progress: AnalysisProgress | None = None) -> Iterator[Tensor]:
    """HuBERT features of ``signal`` window by window: yields ``[1, 6 * (keep_hi - keep_lo), C]`` float32.

    ``window``: token frames kept per window (default ``chunks.hubert_window``); ``progress`` hears of
    each window done. Concatenated in
    order the pieces give the stitched feature sequence ``[1, ceil(L/320), C]`` (the last window is
    shorter when L is not on the 1920-sample grid: published padding). Approximate: attention stays
    inside each window and its context (see the module docstring).
    """
    hop = core.hop
    per_token = hop // core.hubert.hop
    frames = core.token_frames(signal.length)
    cfg = core.chunks
    window = cfg.hubert_window if window is None else window
    stats = signal.norm_stats()[None].to(core.device) if core.hubert.cfg.normalize else None
    for keep_lo, keep_hi, in_lo, in_hi in hubert_windows(frames, window, cfg.hubert_context):
        stop = min(in_hi * hop, signal.length)
        wav = signal.segment(in_lo * hop, stop)[None].to(core.device)  # float32: standardised before the cast
        feats = core.hubert(wav, norm_stats=stats).float()  # [1, ceil((stop - 1920 in_lo) / 320), C]
        log.debug("HuBERT window: frames %d-%d (input %d-%d) of %d", keep_lo, keep_hi, in_lo, in_hi, frames)
        if progress is not None:
            progress.advance("hubert", (keep_hi - keep_lo) / frames)
        yield feats[:, (keep_lo - in_lo) * per_token : (keep_hi - in_lo) * per_token]


@torch.inference_mode()
def encode_long(core: CodecCore, signal: PaddedSignal, window: int | None = None,
                progress: AnalysisProgress | None = None) -> tuple[Tensor, Tensor]:
    """Tokens ``[T, S]`` and speaker ``[D]`` of a long padded signal (see the module docstring).

    ``window``: None for full attention (exact), else token frames per HuBERT window. ``progress``
    hears of the work as it is done (not finished here: the caller may have more to do).
    """
    # The speaker first: HuBERT's 1.3 GB of weights are not paged in yet, so the two peaks do not add up.
    encoder = core.analyzer.speaker_encoder
    mel = LazyMel(core.mel, signal)
    if mel.shape[-1] > encoder.long_threshold:  # the log-mel is never held whole
        speaker = encoder.forward_frames(mel, encoder.chunk_frames)[0]
    else:
        speaker = core.analyzer.speaker(long_mel(core.mel, signal, core.chunks.mel_chunk).to(core.device)[None])[0]
    if progress is not None:
        progress.advance("speaker", 1.0)
    if window is None:
        features = full_features(core, signal, progress)
    else:
        features = windowed_features(core, signal, window, progress)
    return stream_tokens(core, features, progress, core.token_frames(signal.length)), speaker


@torch.inference_mode()
def stream_tokens(core: CodecCore, features: Iterable[Tensor], progress: AnalysisProgress | None = None,
                  frames: int | None = None) -> Tensor:
    """Consecutive feature chunks ``[1, 6 t_i, C]`` -> tokens ``[sum t_i, S]``, through the causal encoder.

    Exact: equals ``analyzer.tokens`` of the concatenated features; only one chunk is held at a time.
    ``progress`` hears of each chunk's share of the ``frames`` token frames.
    """
    streamer = CausalStreamer()
    pieces = []
    for feats in features:
        encoded = streamer.encoder(core.analyzer.encoder, feats)  # [1, t_i, D]
        pieces.append(core.analyzer.vq.encode(encoded)[0])
        if progress is not None and frames:
            progress.advance("encoder", pieces[-1].shape[0] / frames)
    return torch.cat(pieces)


def mel_frames(mel: MelSpectrogram, signal: PaddedSignal, start: int, stop: int) -> Tensor:
    """Log-mel frames ``[start, stop)`` of the padded signal, ``[1, n_mels, stop - start]`` (as ``mel(signal)``)."""
    hop, n_fft, pad = mel.hop_length, mel.n_fft, mel.reflect_pad
    if signal.length <= pad:
        raise SoCodecError(f"signal of {signal.length} samples is too short for the mel front end")
    segment = signal.reflect_segment(start * hop - pad, (stop - 1) * hop + n_fft - pad)
    return mel.log_mel(segment[None].to(mel.mel_basis.device))


@torch.inference_mode()
def long_mel(mel: MelSpectrogram, signal: PaddedSignal, chunk_frames: int) -> Tensor:
    """Log-mel ``[L/160, n_mels]`` of the padded signal, block by block (same numbers as ``mel(signal)``)."""
    frames = mel.num_frames(signal.length)
    out = torch.empty(frames, mel.n_mels)
    for start in range(0, frames, chunk_frames):
        stop = min(frames, start + chunk_frames)
        out[start:stop] = mel_frames(mel, signal, start, stop)[0].t().cpu()
    return out


class LazyMel:
    """The log-mel of a padded signal, channels first ``[1, n_mels, L/160]``, computed when sliced.

    ``view[..., lo:hi]`` returns the tensor ``[1, n_mels, hi - lo]`` (same numbers as the whole
    log-mel): the speaker encoder's chunked passes (:meth:`SpeakerEncoder.forward_frames`) read
    it chunk by chunk, so an hour's log-mel (~115 MB) is never held; each pass recomputes it.
    """

    def __init__(self, mel: MelSpectrogram, signal: PaddedSignal) -> None:
        self.mel, self.signal = mel, signal
        self.shape = torch.Size([1, mel.n_mels, mel.num_frames(signal.length)])
        self.dtype = torch.float32
        self.device = mel.mel_basis.device

    def __getitem__(self, index: tuple[object, slice]) -> Tensor:
        if not (isinstance(index, tuple) and len(index) == 2 and index[0] is Ellipsis and isinstance(index[1], slice)):
            raise TypeError("LazyMel supports only view[..., lo:hi]")
        lo, hi, step = index[1].indices(self.shape[-1])
        if step != 1 or hi <= lo:
            raise ValueError(f"LazyMel needs a non-empty contiguous range, got {index[1]}")
        return mel_frames(self.mel, self.signal, lo, hi)
