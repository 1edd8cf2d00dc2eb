"""The codec core: the three model stages and the public steps every inference path is made of.

:class:`CodecCore` holds HuBERT, the analyzer, the vocoder and the mel front end, and exposes
the steps (as public methods) that the paths in this package compose: whole-signal analysis
and synthesis here; long inputs in :mod:`~socodec.inference.longform`, chunked and streaming
synthesis in :mod:`~socodec.inference.synthesis`, lists here too (:func:`encode_batch`,
:func:`decode_batch`).
Which path a call takes is decided by :class:`socodec.codec.SoCodec`, the front.

Shapes: audio ``[N]`` float32 at 16 kHz; padded batches ``[B, L]``; HuBERT features
``[B, L/320, C]``; tokens ``[B, T, S]`` int64 (``T = L/1920``); speaker ``[B, D]``;
log-mel ``[B, 12T, n_mels]``; synthesised audio ``[B, 1920 T]``.

**Handing freed heap memory back** to the operating system between calls (:func:`release_heap`).

glibc's allocator keeps freed blocks for reuse, and tensors of ever-different sizes (clips of
different lengths, say) leave the heap fragmented, so that the resident memory of a process
that encodes many files creeps up by a few MiB per file. ``malloc_trim(0)`` returns the free
pages; it is called once at the end of every encode or decode call. (Not between the steps of
one long synthesis: the pages it returns fault back in on the next step, which cost ~10 % of
the synthesis time when tried.) A no-op where the C library has no ``malloc_trim`` (musl, macOS,
Windows).

Trimming is a process-wide side effect, so a library does not do it unasked: it is off until
:func:`trim_heap_after_calls` turns it on (the command line and the corpus workers do) or the
environment sets ``SOCODEC_TRIM_HEAP=1``.

**Batched analysis and synthesis**: lists of clips / Codes through the model together.

Each item's result equals its single-item result (tokens exactly in practice, floats
within ~1e-6):

* **HuBERT** gets the padded batch with per-item lengths: each item is standardised
  over its own length + 3200 samples, its padding frames are zeroed and masked as
  attention keys (:class:`~socodec.nn.hubert.HubertFeatures`), as when it runs alone.
* **Encoder and mel decoders** are causal: right padding cannot reach an item's
  valid frames, which are cut out afterwards.
* **Speaker encoder**: (quirk) the published model counts every frame of the padded
  mel, so a batch would mix in other items' padding; each item's log-mel and speaker
  vector are computed on its own frames.
* **Vocoder** is not causal: its output within R = 14 mel frames of an item's end
  would see the padding. It runs only over each item's output frames (not the lead nor
  the analysis padding) plus R frames of context, the windows stacked left-aligned; then
  the last R frames of every item whose window is shorter than the widest and ends at
  the item's end are recomputed alone from ``[end - 2R, end)`` (exact: R frames of left
  context).

Items longer than one HuBERT window (analysis) or one vocoder chunk (synthesis) are not
batched: the front (:class:`socodec.codec.SoCodec`) sends them down the chunked single-item
path (bounded memory). Memory grows with batch size ×
longest item: group clips of similar length (the command line's ``--batch-size`` does).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from socodec.audio import to_model_input
from socodec.codes import Codes
from socodec.config import (
    ATTENTION_FULL, ATTENTION_WINDOWED, ChunkConfig, DEFAULT_PADDING, PADDINGS, SAMPLE_RATE, padded_length,
    token_frames,
)
from socodec.errors import AudioError, CodesError, SoCodecError
from socodec.nn.analyzer import Analyzer
from socodec.nn.hubert import HubertFeatures
from socodec.nn.mel import MelSpectrogram
from socodec.nn.vocoder import Vocoder

__all__ = ["CodecCore", "HubertSource", "DecodeInputs", "MAX_CHANNELS", "cpu_has_native_bf16", "release_heap", "trim_heap_after_calls", "heap_trimming", "encode_batch", "decode_batch", "length_groups"]


#: the most channels an in-memory 2-D array may have (the other axis is samples)
MAX_CHANNELS = 16
log = logging.getLogger(__name__)
_HUBERT_LOAD = threading.Lock()  # a deferred HuBERT is loaded once, even when threads (a web app) ask together


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 ``avx512_bf16`` or ``amx_bf16`` flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class HubertSource(Protocol):
    """Something that loads HuBERT when called (see :class:`socodec.loading.modules.HubertLoader`)."""

    def __call__(self, dtype: torch.dtype = torch.float32) -> HubertFeatures: ...

    def check(self) -> None: ...

    def fingerprint(self) -> str: ...


class DecodeInputs:
    """Validated decoder inputs for one item: tokens ``[1, T, S_model]`` long, speaker ``[1, D]``
    float32 (on the device), the streams ``k`` to decode and the output trim ``(lead, num_samples)``."""

    __slots__ = ("tokens", "speaker", "streams", "lead", "num_samples")

    def __init__(self, tokens: Tensor, speaker: Tensor, streams: int, lead: int, num_samples: int | None) -> None:
        self.tokens, self.speaker, self.streams = tokens, speaker, streams
        self.lead, self.num_samples = lead, num_samples

    @property
    def frames(self) -> int:
        return self.tokens.shape[1]


class CodecCore(nn.Module):
    """HuBERT -> causal encoder -> product VQ  |  VQ decode -> mel decoders -> vocoder.

    Args:
        hubert: the HuBERT module, or a :class:`HubertSource` that loads it on first use
            (decoding never needs HuBERT).
        analyzer: encoder, quantiser, speaker encoder and mel decoders.
        vocoder: log-mel -> 16 kHz audio.
        identity: fingerprints of the weight files (stored in the codes it makes).
        dtype: compute dtype of HuBERT, and on CUDA of the vocoder (see :meth:`to_device`).
        chunks: chunk sizes bounding memory on long inputs (settable attribute).
    """

    def __init__(
        self,
        hubert: HubertFeatures | HubertSource,
        analyzer: Analyzer,
        vocoder: Vocoder,
        identity: dict[str, str] | None = None,
        dtype: torch.dtype = torch.float32,
        chunks: ChunkConfig | None = None,
    ) -> None:
        super().__init__()
        self.chunks = chunks if chunks is not None else ChunkConfig()
        self._hubert_source: HubertSource | None = None
        if isinstance(hubert, nn.Module):
            self._modules["hubert"] = hubert
        else:
            self._hubert_source = hubert
        self.analyzer = analyzer
        self.vocoder = vocoder
        self.mel = MelSpectrogram(analyzer.cfg.mel)
        self.identity = dict(identity or {})
        self.compute_dtype = dtype
        self.hop = analyzer.cfg.samples_per_token
        self.eval()

    # ------------------------------------------------------------------ stages and placement
    @property
    def hubert(self) -> HubertFeatures:
        """The HuBERT module, loaded now if it was deferred (``CheckpointError`` if it cannot be)."""
        module = self._modules.get("hubert")
        if module is not None:
            return module  # type: ignore[return-value]
        with _HUBERT_LOAD:
            module = self._modules.get("hubert")  # another thread may have loaded it meanwhile
            if module is None:
                assert self._hubert_source is not None
                source = self._hubert_source
                log.debug("loading HuBERT on first use")
                module = source(self.compute_dtype)  # loaded in the compute dtype: no float32 copy on the way
                self.identity.setdefault("hubert", source.fingerprint())
                module.to(self.device, self.compute_dtype)
                self._modules["hubert"] = module
                self._hubert_source = None
        return module  # type: ignore[return-value]

    def check_analysis(self) -> None:
        """Raise now (``CheckpointError``) if analysis would fail because HuBERT cannot be loaded."""
        if self._hubert_source is not None:
            self._hubert_source.check()

    def to_device(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> "CodecCore":
        """Move to ``device``; HuBERT (and on CUDA the vocoder) run in ``dtype``.

        float16/bfloat16 on CUDA; bfloat16 also on CPUs with native bfloat16 arithmetic
        (AVX512_BF16 or AMX, see :func:`cpu_has_native_bf16`), where HuBERT runs ~2.5x faster
        than in float32 (elsewhere it would be slower, and is refused). On CPU the vocoder stays
        float32: its time goes to elementwise work (SnakeBeta's sine, depthwise anti-aliasing
        filters) that bfloat16 does not make reliably faster, so decoding stays exactly
        float32's. The waveform standardisation, the encoder, the quantiser, the speaker encoder
        and the mel decoders always run in float32.
        """
        dev = torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise SoCodecError(f"unsupported dtype {dtype}")
        if dev.type == "cpu" and dtype == torch.float16:
            raise SoCodecError("float16 is only supported on CUDA; use float32 (or bfloat16 where the CPU has it) on CPU")
        if dev.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
            raise SoCodecError(
                "bfloat16 on CPU needs native bfloat16 support (AVX512_BF16 or AMX), which this CPU lacks "
                "(it would be slower than float32); use float32"
            )
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SoCodecError(f"device {dev} requested but this torch build has no CUDA device available")
        self.to(dev)
        if "hubert" in self._modules:
            self._modules["hubert"].to(dtype)
        self.vocoder.to(dtype if dev.type == "cuda" else torch.float32)
        self.vocoder.prepare()  # its weight caches now, not in the first decode
        self.compute_dtype = dtype
        return self

    @property
    def vocoder_dtype(self) -> torch.dtype:
        """The vocoder's precision: the compute dtype on CUDA, float32 on CPU (see :meth:`to_device`)."""
        return next(self.vocoder.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.analyzer.parameters()).device

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop

    @property
    def num_streams(self) -> int:
        return self.analyzer.cfg.n_streams

    @property
    def mel_frames_per_token(self) -> int:
        """Mel frames (10 ms) per token frame (120 ms): 12."""
        return self.hop // self.vocoder.hop_length

    # ------------------------------------------------------------------ analysis steps
    @staticmethod
    def mono(wav: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        """Any accepted audio -> ``[N]`` float32 mono at 16 kHz (on CPU).

        Accepts ``[N]``, ``[C, N]`` (torch/torchaudio layout) and ``[N, C]`` (soundfile's layout):
        the channel axis is the one with at most :data:`MAX_CHANNELS` entries while the other has
        more. A shape where that does not decide (e.g. ``[8, 8]`` or ``[100, 200]``) is refused
        with an :class:`AudioError` rather than guessed.
        """
        t = torch.as_tensor(wav)
        if t.ndim == 2:
            rows, cols = t.shape
            if rows <= MAX_CHANNELS < cols:
                t = t.t()  # [C, N] -> [N, C] for to_model_input
            elif not cols <= MAX_CHANNELS < rows:
                raise AudioError(
                    f"ambiguous audio shape {list(t.shape)}: pass [N], [C, N] or [N, C] with at most "
                    f"{MAX_CHANNELS} channels and more samples than channels"
                )
        elif t.ndim != 1:
            raise AudioError(f"expected [N], [C, N] or [N, C] audio, got shape {list(t.shape)}")
        return to_model_input(t.float(), sample_rate)

    def analysed_whole(self, samples: int, padding: str = DEFAULT_PADDING) -> bool:
        """Whether ``samples`` (lead included) are analysed in one pass with every stage held at once
        (:meth:`encode_whole`, batches), rather than stage by stage in chunks (long inputs)."""
        return self.token_frames(self.padded_length(samples, padding)) <= self.chunks.hubert_span

    def analysis_window(self, num_samples: int, lead: int, padding: str = DEFAULT_PADDING,
                        hubert_window: float | None = None, warn: bool = True) -> int | None:
        """Token frames per HuBERT attention window for an input of ``num_samples`` (after ``lead``
        zeros); None: full attention.

        Full attention (every frame attends to every frame, the published arithmetic) unless
        ``hubert_window`` (seconds; None: ``chunks.hubert_window_seconds``) asks for windows, or the
        input is longer than ``chunks.exact_max_seconds``: then windows of ``chunks.hubert_window``
        frames, with a warning (unless ``warn`` is False). An input that fits in one window (plus
        its context) gets full attention anyway.
        """
        if hubert_window is None:
            hubert_window = self.chunks.hubert_window_seconds
        if hubert_window is None:
            if num_samples <= self.chunks.exact_max_seconds * SAMPLE_RATE:
                return None
            window = self.chunks.hubert_window
            if warn:
                log.warning(
                    "%.1f s input is longer than the exact-analysis limit of %g s (exact_max_seconds; "
                    "--exact-max-seconds on the command line): HuBERT attention runs in %.2f s windows, so "
                    "the tokens approximate the published ones (recorded as windowed)",
                    num_samples / SAMPLE_RATE, self.chunks.exact_max_seconds, window * self.hop / SAMPLE_RATE,
                )
        else:
            window = self.window_frames(hubert_window)
        frames = self.token_frames(self.padded_length(lead + num_samples, padding))
        return None if frames <= window + 2 * self.chunks.hubert_context else window

    def window_frames(self, seconds: float) -> int:
        """Token frames of a HuBERT window of ``seconds`` (at least one frame; :class:`SoCodecError` if invalid)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
            raise SoCodecError(f"hubert_window must be a positive number of seconds, got {seconds!r}")
        frames = round(seconds * SAMPLE_RATE / self.hop)
        if frames < 1:
            raise SoCodecError(f"hubert_window must be at least one token frame ({self.hop / SAMPLE_RATE:g} s), "
                               f"got {seconds!r}")
        return frames

    def decoded_whole(self, frames: int) -> bool:
        """Whether ``frames`` token frames are synthesised in one vocoder pass, not in chunks."""
        return frames * self.mel_frames_per_token <= self.chunks.vocoder_chunk

    @staticmethod
    def check_padding(padding: str) -> str:
        """``padding`` if it is a known mode (:data:`socodec.config.PADDINGS`), else :class:`SoCodecError`."""
        if padding not in PADDINGS:
            raise SoCodecError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        return padding

    def padded_length(self, n: int, padding: str = DEFAULT_PADDING) -> int:
        """Samples L that analysis sees for ``n`` samples (lead included): see :func:`socodec.config.padded_length`."""
        return padded_length(n, padding, self.hop)

    def token_frames(self, length: int) -> int:
        """Token frames T of an analysed signal of ``length`` samples (``length / 1920`` on the grid)."""
        return token_frames(length, self.hop)

    def pad(self, x: Tensor, lead: int, padding: str = DEFAULT_PADDING) -> Tensor:
        """``[N]`` -> lead zeros + x + right padding (:meth:`padded_length`), ``[L]``."""
        n = lead + x.numel()
        return F.pad(x, (lead, self.padded_length(n, padding) - n))

    def features(self, padded: Tensor, lengths: Tensor | None = None, norm_stats: Tensor | None = None) -> Tensor:
        """``[B, L]`` padded audio -> HuBERT features ``[B, L/320, C]`` float32 (see :class:`HubertFeatures`)."""
        device = self.device
        lengths = None if lengths is None else lengths.to(device)
        return self.hubert(padded.to(device, torch.float32), lengths, norm_stats).float()  # standardised in float32

    def speaker_of(self, padded: Tensor) -> Tensor:
        """``[L]`` padded audio -> speaker vector ``[D]`` (every mel frame counts, as published)."""
        return self.analyzer.speaker(self.mel(padded[None].to(self.device)))[0]

    def encode_whole(self, x: Tensor, lead: int, padding: str = DEFAULT_PADDING) -> Codes:
        """``[N]`` 16 kHz mono -> :class:`Codes` in one pass (short inputs: see :meth:`analysed_whole`)."""
        padded = self.pad(x, lead, padding)
        speaker = self.speaker_of(padded)  # first: HuBERT's weights are not paged in yet (lower peak)
        tokens = self.analyzer.tokens(self.features(padded[None]))[0]
        return self.make_codes(tokens, speaker, x.numel(), lead, padding)

    def make_codes(self, tokens: Tensor, speaker: Tensor, num_samples: int, lead: int, padding: str,
                   window: int | None = None) -> Codes:
        """Tokens ``[T, S]`` + speaker ``[D]`` -> :class:`Codes` on CPU carrying this model's identity
        and how HuBERT's attention saw the input (``window`` token frames, None: full attention)."""
        return Codes(
            tokens=tokens.cpu(), speaker=speaker.float().cpu(), sample_rate=SAMPLE_RATE,
            num_samples=int(num_samples), lead=lead, model=dict(self.identity), padding=padding,
            attention=ATTENTION_FULL if window is None else ATTENTION_WINDOWED,
            hubert_window=None if window is None else round(window * self.hop / SAMPLE_RATE, 6),
        )

    # ------------------------------------------------------------------ synthesis steps
    def check_codes(self, codes: Codes) -> None:
        """Raise :class:`CodesError` if ``codes`` cannot be decoded by this model."""
        codes.validate(
            cardinality=self.analyzer.vq.cardinality,
            max_streams=self.num_streams,
            speaker_dim=self.analyzer.cfg.model_size,
        )

    def decode_inputs(self, codes: Codes, streams: int | None = None, speaker: Tensor | None = None) -> DecodeInputs:
        """Validate ``codes`` (and the options) once: the decoder inputs on the device."""
        self.check_codes(codes)
        k = codes.num_streams if streams is None else streams
        if not 1 <= k <= codes.num_streams:
            raise CodesError(f"streams must be between 1 and {codes.num_streams}, got {k}")
        spk = codes.speaker if speaker is None else speaker
        if spk.shape != codes.speaker.shape:
            raise CodesError(f"speaker vector has shape {list(spk.shape)}, expected {list(codes.speaker.shape)}")
        tokens = codes.tokens.to(self.device, torch.long)[None]
        if codes.num_streams < self.num_streams:
            tokens = F.pad(tokens, (0, self.num_streams - codes.num_streams))
        lead, num_samples = codes.trim_range()
        return DecodeInputs(tokens, spk.to(self.device, torch.float32)[None], k, lead, num_samples)

    def synthesize(self, mel: Tensor) -> Tensor:
        """Log-mel ``[B, M, n_mels]`` -> audio ``[B, 160 M]`` float32 through the vocoder."""
        return self.vocoder(mel.to(self.vocoder_dtype)).float()

    def output_frames(self, mel_frames: int, lead: int, num_samples: int | None) -> tuple[int, int]:
        """Mel frames ``[first, stop)`` whose audio the trimmed output ``[lead, lead + num_samples)`` lies in.

        Of a ``mel_frames``-frame sequence (160 samples each); ``(0, mel_frames)`` when the length
        is unknown. The published lead (0.5 s) and the analysis padding lie outside.
        """
        hop = self.vocoder.hop_length
        first = min(mel_frames, lead // hop)
        if num_samples is None:
            return first, mel_frames
        return first, max(first, min(mel_frames, -(-(lead + num_samples) // hop)))

    def synthesize_span(self, mel: Tensor, first: int, stop: int) -> Tensor:
        """The audio of mel frames ``[first, stop)`` of ``mel`` ``[B, M, n_mels]``: ``[B, 160 (stop - first)]``.

        The vocoder runs only over ``[first - R, stop + R)`` (clipped to ``[0, M)``), R =
        :meth:`Vocoder.receptive_field` frames of context each side, which gives the same samples
        as synthesising all M frames (up to float rounding, ~1e-7).
        """
        if stop <= first:
            return mel.new_zeros(mel.shape[0], 0, dtype=torch.float32)
        context, hop = self.vocoder.receptive_field(), self.vocoder.hop_length
        lo, hi = max(0, first - context), min(mel.shape[1], stop + context)
        wav = self.synthesize(mel[:, lo:hi])
        return wav[:, (first - lo) * hop : (stop - lo) * hop]

    def decode_whole(self, item: DecodeInputs) -> Tensor:
        """One item in one pass: trimmed audio ``[n]`` float32 on CPU.

        The decoders run over all frames (causal, cheap); the vocoder only where the output lies
        (:meth:`output_frames`, :meth:`synthesize_span`): not over the lead nor the padding.
        """
        mel = self.analyzer.decode_mel(item.tokens, item.speaker, item.streams)
        first, stop = self.output_frames(mel.shape[1], item.lead, item.num_samples)
        wav = self.synthesize_span(mel, first, stop)[0].cpu()  # samples [160 first, 160 stop)
        if item.num_samples is None:
            return wav
        start = item.lead - first * self.vocoder.hop_length
        return wav[start : start + item.num_samples]


_TRIM = os.environ.get("SOCODEC_TRIM_HEAP", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def _trim_function() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc: int malloc_trim(size_t pad)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap_after_calls(on: bool = True) -> None:
    """Turn the trimming at the end of each encode/decode call on (or off) for this process."""
    global _TRIM
    _TRIM = on


def heap_trimming() -> bool:
    """Whether encode/decode calls trim the heap in this process."""
    return _TRIM


def release_heap() -> None:
    """Return the C heap's free pages to the operating system (glibc) when trimming is on, else do nothing."""
    if not _TRIM:
        return
    trim = _trim_function()
    if trim is not None:
        trim(0)


@torch.inference_mode()
def encode_batch(core: CodecCore, clips: list[Tensor], lead: int, padding: str) -> list[Codes]:
    """Short clips (each ``[N_i]`` 16 kHz mono, :meth:`CodecCore.analysed_whole`) -> one :class:`Codes` each.

    One HuBERT / encoder pass over the padded batch ``[B, L_max]``; the speaker vector of each
    clip from its own frames.
    """
    if not clips:
        return []
    padded = [core.pad(x, lead, padding) for x in clips]
    lengths = torch.tensor([p.numel() for p in padded])
    wav = torch.zeros(len(clips), int(lengths.max()))
    for row, p in enumerate(padded):
        wav[row, : p.numel()] = p
    feats = core.features(wav, lengths)  # [B, ceil(Lmax/320), C]
    tokens = core.analyzer.tokens(feats)  # [B, Tmax, S]; causal: valid frames unaffected
    results = []
    for row, x in enumerate(clips):
        frames = core.token_frames(int(lengths[row]))
        speaker = core.speaker_of(padded[row])  # own frames only
        results.append(core.make_codes(tokens[row, :frames], speaker, x.numel(), lead, padding))
    log.debug("encoded a batch of %d clips (%d samples max)", len(clips), int(lengths.max()))
    return results


@torch.inference_mode()
def decode_batch(core: CodecCore, items: list[DecodeInputs]) -> list[Tensor]:
    """Validated short items (:meth:`CodecCore.decode_inputs`, :meth:`CodecCore.decoded_whole`)
    -> one trimmed waveform ``[N_i]`` each, as :meth:`CodecCore.decode_whole` would give it.

    Items decoding a different number of streams go in separate passes. The vocoder sees only
    each item's output frames plus R frames of context (:meth:`CodecCore.output_frames`): the
    windows are stacked left-aligned, and an item whose window ends at its last mel frame but is
    shorter than the batch's widest has its last R output frames redone alone (:func:`_fix_tail`).
    """
    results: list[Tensor | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.streams, []).append(i)
    per_token = core.mel_frames_per_token
    context, hop = core.vocoder.receptive_field(), core.vocoder.hop_length
    for k, group in groups.items():
        frames = [items[i].frames for i in group]
        width = items[group[0]].tokens.shape[2]
        tokens = torch.zeros(len(group), max(frames), width, dtype=torch.long, device=core.device)
        for row, i in enumerate(group):
            tokens[row, : frames[row]] = items[i].tokens[0]
        spk = torch.cat([items[i].speaker for i in group])
        mel = core.analyzer.decode_mel(tokens, spk, k)  # [B, 12 Tmax, n_mels]; causal: rows exact
        spans = []  # per row: (first, stop) output frames, (lo, hi) vocoder window
        for row, i in enumerate(group):
            first, stop = core.output_frames(frames[row] * per_token, items[i].lead, items[i].num_samples)
            lo, hi = max(0, first - context), min(frames[row] * per_token, stop + context)
            spans.append((first, stop, lo, hi))
        longest = max(hi - lo for _, _, lo, hi in spans)
        windows = mel.new_zeros(len(group), max(1, longest), mel.shape[2])
        for row, (_, _, lo, hi) in enumerate(spans):
            windows[row, : hi - lo] = mel[row, lo:hi]
        wav = core.synthesize(windows)  # [B, 160 longest]
        for row, i in enumerate(group):
            first, stop, lo, hi = spans[row]
            audio = wav[row, (first - lo) * hop : (stop - lo) * hop]
            if hi - lo < longest and hi == frames[row] * per_token:
                audio = _fix_tail(core, mel[row : row + 1, :hi], audio, first, stop)
            item = items[i]
            start = item.lead - first * hop
            stop_sample = audio.shape[0] if item.num_samples is None else start + item.num_samples
            results[i] = audio[start:stop_sample].cpu()
        log.debug("decoded a batch of %d items (%d frames max, %d streams)", len(group), max(frames), k)
    return [r for r in results if r is not None]


def _fix_tail(core: CodecCore, mel: Tensor, audio: Tensor, first: int, stop: int) -> Tensor:
    """Output frames ``[first, stop)`` of an item whose vocoder window was zero-padded after its last frame.

    The last R frames before the item's end (``mel.shape[1]``) saw the padding: they are redone
    alone from the item's own mel.

    Args:
        mel: the item's own mel ``[1, M, n_mels]`` (its row of the batch, cut at its end).
        audio: its samples of frames ``[first, stop)`` from the batch output ``[160 (stop - first)]``.
    """
    hop = core.vocoder.hop_length
    fix_from = max(first, mel.shape[1] - core.vocoder.receptive_field())
    if fix_from >= stop:
        return audio
    audio = audio.clone()
    audio[(fix_from - first) * hop :] = core.synthesize_span(mel, fix_from, stop)[0]
    return audio


def length_groups(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped ``batch_size`` at a time in order of length (similar lengths batch together)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
