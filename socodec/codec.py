"""The SoCodec model: 16 kHz speech <-> tokens [T, 4] + speaker vector.

Typical use::

    codec = SoCodec.from_pretrained("ckpts")
    codes = codec.encode(wav, sample_rate)     # Codes: tokens [T, 4], speaker [D]
    audio = codec.decode(codes)                # [N] float32 at 16 kHz

:class:`SoCodec` is the front: it loads the stages through :mod:`socodec.loading` and its
``encode`` / ``decode`` / ``decode_iter`` / ``decode_stream`` only choose the path (whole,
long, batched, streamed) among those of :mod:`socodec.inference`, whose core it extends.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from socodec.audio import load_audio
from socodec.codes import Codes
from socodec.config import DEFAULT_PADDING, LEAD_SAMPLES, SAMPLE_RATE, AnalyzerConfig, VocoderConfig
from socodec.errors import CheckpointError
from socodec.inference.core import decode_batch, encode_batch
from socodec.inference.core import CodecCore, DecodeInputs
from socodec.inference.core import release_heap
from socodec.inference.longform import AnalysisProgress, PaddedSignal, Progress, encode_long
from socodec.inference.synthesis import SynthesisStream, gather, iter_synthesis, trimmed_length
from socodec.loading.checkpoints import HUBERT_FILE, CheckpointPaths
from socodec.loading.modules import load_modules
from socodec.audio import FileSource, file_duration

__all__ = ["SoCodec"]

log = logging.getLogger(__name__)

AudioInput = torch.Tensor | np.ndarray


class SoCodec(CodecCore):
    """HuBERT -> causal encoder -> product VQ  |  VQ decode -> mel decoders -> vocoder.

    Build it with :meth:`from_pretrained` or :meth:`from_files`; the constructor (that of
    :class:`~socodec.inference.core.CodecCore`) takes ready modules (HuBERT may be a loader
    called on first analysis). ``chunks``
    (:class:`~socodec.config.ChunkConfig`, settable attribute) sets the chunk sizes that bound
    memory on long inputs.
    """

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        ckpt_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | Path | None = None,
        analyzer_config: str | Path | AnalyzerConfig | None = None,
        vocoder_config: str | Path | VocoderConfig | None = None,
        lazy_hubert: bool = True,
    ) -> "SoCodec":
        """Load the released files (their released names) from ``ckpt_dir``.

        The two ``.safetensors`` files are required; the HuBERT ``.pt`` only for analysis
        (audio -> tokens): with ``lazy_hubert`` it is loaded on the first ``encode``, so a
        folder without it still decodes. ``analyzer_config``/``vocoder_config`` describe other
        model sizes (default: released).
        """
        paths = CheckpointPaths.in_dir(ckpt_dir)
        missing = [p for p in paths.missing() if p != paths.hubert or not lazy_hubert]
        if missing:
            raise CheckpointError(
                f"{Path(ckpt_dir)}: missing {', '.join(p.name for p in missing)} "
                f"(get them from Hugging Face: {HUBERT_FILE} from TencentGameMate/chinese-hubert-large, "
                f"the two .safetensors from hhguo/SoCodec)"
            )
        return cls.from_files(
            paths.hubert, paths.analyzer, paths.vocoder, analyzer_config=analyzer_config,
            vocoder_config=vocoder_config, device=device, dtype=dtype, cache_dir=cache_dir,
            lazy_hubert=lazy_hubert,
        )

    @classmethod
    def from_files(
        cls,
        hubert: str | Path | None,
        analyzer: str | Path,
        vocoder: str | Path,
        analyzer_config: str | Path | AnalyzerConfig | None = None,
        vocoder_config: str | Path | VocoderConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | Path | None = None,
        lazy_hubert: bool = False,
    ) -> "SoCodec":
        """Load from explicit paths; configs default to the released model's.

        ``hubert`` may be None (or missing, with ``lazy_hubert``) for a decode-only model.
        """
        modules = load_modules(
            hubert, analyzer, vocoder, analyzer_config=analyzer_config, vocoder_config=vocoder_config,
            cache_dir=cache_dir, lazy_hubert=lazy_hubert or hubert is None, hubert_dtype=dtype,
        )
        codec = cls(modules.hubert, modules.analyzer, modules.vocoder, identity=modules.identity, dtype=dtype)
        return codec.to_device(device, dtype)

    # ------------------------------------------------------------------ analysis
    @torch.inference_mode()
    def encode(
        self,
        wav: AudioInput | str | Path | Sequence[AudioInput],
        sample_rate: int = SAMPLE_RATE,
        lead: bool = True,
        padding: str = DEFAULT_PADDING,
        hubert_window: float | None = None,
        progress: Progress | None = None,
    ) -> Codes | list[Codes]:
        """Audio -> :class:`Codes`; a list of clips -> a list of Codes (one batch).

        Args:
            wav: ``[N]`` mono or ``[C, N]`` multi-channel audio in [-1, 1] (averaged to mono),
                or a list/tuple of such clips (all at ``sample_rate``), analysed as one padded
                batch (:func:`socodec.inference.core.encode_batch`): each result equals the
                clip's own; or the path of an audio file (its own rate; same result as encoding
                :func:`~socodec.audio.load_audio` of it). A long file is read from disk window
                by window (:class:`~socodec.audio.FileSource`), never held whole.
            sample_rate: rate of ``wav`` when it is samples; resampled to 16 kHz.
            lead: prepend 0.5 s of zeros like the published model (default).
            padding: ``"published"`` (default): the published command line's padding, so the
                tokens equal those of its ``.pt`` files (it always appends 1919 zeros: usually
                one frame more); ``"grid"``: pad to the 1920-sample grid, the published model fed
                a 1-D signal. See :func:`socodec.config.padded_length`.
            hubert_window: None (default: ``chunks.hubert_window_seconds``, itself None by
                default): HuBERT's attention spans the whole input, as the published model's does,
                so the tokens are the published ones at any length — up to
                ``chunks.exact_max_seconds`` (10 min); longer inputs fall back to windows of
                ``chunks.hubert_window`` frames (20 s) with a warning. A number of seconds asks for
                windowed attention (linear time, approximate tokens) on inputs longer than one
                window. Either way the codes record it (``Codes.attention``, ``Codes.hubert_window``).
            progress: called with the fraction of the work done (0 to 1, increasing, the last call
                with 1.0): as HuBERT advances through a long input, at the end only for a short one;
                for a list, the fraction of the whole list.
        Returns:
            Codes with tokens ``[T, S]`` int64, speaker ``[D]`` float32, and the input
            length and lead, so :meth:`decode` returns exactly the input's duration.

        Inputs longer than ``chunks.hubert_span`` frames (22.2 s by default) are analysed stage by
        stage with bounded memory (:mod:`socodec.inference.longform`).
        """
        lead_n = LEAD_SAMPLES if lead else 0
        self.check_padding(padding)
        if hubert_window is not None:
            self.window_frames(hubert_window)  # refuse a bad value before any work
        self.check_analysis()
        try:
            if isinstance(wav, (list, tuple)):
                clips = [self.mono(w, sample_rate) for w in wav]
                return self._encode_list(clips, lead_n, padding, hubert_window, progress)
            meter = AnalysisProgress(progress)
            if isinstance(wav, (str, Path)):
                codes = self._encode_file(Path(wav), lead_n, padding, hubert_window, meter)
            else:
                codes = self._encode_mono(self.mono(wav, sample_rate), lead_n, padding, hubert_window, meter)
            meter.finish()
            return codes
        finally:
            release_heap()

    def _plan(self, num_samples: int, lead: int, padding: str, hubert_window: float | None, warn: bool = True) \
            -> tuple[bool, int | None]:
        """(analysed whole in one pass?, HuBERT window in token frames or None for full attention)."""
        window = self.analysis_window(num_samples, lead, padding, hubert_window, warn=warn)
        return window is None and self.analysed_whole(lead + num_samples, padding), window

    def _encode_list(self, clips: list[torch.Tensor], lead: int, padding: str,
                     hubert_window: float | None, progress: Progress | None = None) -> list[Codes]:
        """Short clips in one batch, long ones stage by stage, results in input order; ``progress`` hears of
        each clip's share (of the samples) as it is done."""
        short = [i for i, x in enumerate(clips) if self._plan(x.numel(), lead, padding, hubert_window, warn=False)[0]]
        batch = encode_batch(self, [clips[i] for i in short], lead, padding)
        results: dict[int, Codes] = dict(zip(short, batch))
        whole = AnalysisProgress(progress)
        total, done = max(1, sum(x.numel() for x in clips)), sum(clips[i].numel() for i in short)
        whole.reach(done / total)
        for i, x in enumerate(clips):
            if i not in results:
                part = whole.part(done / total, x.numel() / total)
                results[i] = self._encode_mono(x, lead, padding, hubert_window, part)
                done += x.numel()
        whole.finish()
        return [results[i] for i in range(len(clips))]

    def _encode_file(self, path: Path, lead: int, padding: str, hubert_window: float | None,
                     progress: AnalysisProgress) -> Codes:
        """An audio file -> Codes; long files stream from disk."""
        approx = math.ceil(file_duration(path) * SAMPLE_RATE)
        if self._plan(approx, lead, padding, hubert_window, warn=False)[0]:
            return self._encode_mono(load_audio(path), lead, padding, hubert_window, progress)
        with FileSource(path) as source:
            whole, window = self._plan(source.num_samples, lead, padding, hubert_window)
            if whole:  # the header's duration was approximate
                return self.encode_whole(source.read(0, source.num_samples), lead, padding)
            total = self.padded_length(lead + source.num_samples, padding)
            tokens, speaker = encode_long(self, PaddedSignal(source, lead, total), window, progress=progress)
            return self.make_codes(tokens, speaker, source.num_samples, lead, padding, window)

    def _encode_mono(self, x: torch.Tensor, lead: int, padding: str, hubert_window: float | None,
                     progress: AnalysisProgress | None = None) -> Codes:
        """``[N]`` 16 kHz mono -> Codes, whole or stage by stage depending on the length."""
        whole, window = self._plan(x.numel(), lead, padding, hubert_window)
        if whole:
            return self.encode_whole(x, lead, padding)
        signal = PaddedSignal(x, lead, self.padded_length(lead + x.numel(), padding))
        tokens, speaker = encode_long(self, signal, window, progress=progress)
        return self.make_codes(tokens, speaker, x.numel(), lead, padding, window)

    # ------------------------------------------------------------------ synthesis
    @torch.inference_mode()
    def decode(
        self,
        codes: Codes | Sequence[Codes],
        streams: int | None = None,
        speaker: torch.Tensor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """:class:`Codes` -> 16 kHz mono audio ``[N]`` float32 (on CPU); a list -> a list (one batch).

        Args:
            codes: tokens ``[T, S]`` and speaker ``[D]``, or a list/tuple of Codes decoded as
                one padded batch (:func:`socodec.inference.core.decode_batch`): each result
                equals the item's own decode.
            streams: decode only the first ``streams`` streams (default: all in ``codes``).
            speaker: optional ``[D]`` speaker vector replacing ``codes.speaker`` (voice swap).
        Returns:
            ``codes.num_samples`` samples when the codes know their lead and length,
            otherwise the full ``1920 * T``.

        Codes longer than ``chunks.vocoder_chunk`` mel frames (6 s by default) are synthesised
        in chunks (:func:`socodec.inference.synthesis.iter_synthesis`), equal to the whole-sequence
        result.
        """
        try:
            if isinstance(codes, (list, tuple)):
                return self._decode_list([self.decode_inputs(c, streams, speaker) for c in codes])
            return self._decode_item(self.decode_inputs(codes, streams, speaker))
        finally:
            release_heap()

    def _decode_list(self, items: list[DecodeInputs]) -> list[torch.Tensor]:
        """Short items in one batch, long ones in chunks, results in input order."""
        short = [i for i, item in enumerate(items) if self.decoded_whole(item.frames)]
        results: dict[int, torch.Tensor] = dict(zip(short, decode_batch(self, [items[i] for i in short])))
        for i, item in enumerate(items):
            if i not in results:
                results[i] = self._decode_item(item)
        return [results[i] for i in range(len(items))]

    def _decode_item(self, item: DecodeInputs) -> torch.Tensor:
        if self.decoded_whole(item.frames):
            return self.decode_whole(item)
        length = trimmed_length(item.frames * self.hop, item.lead, item.num_samples)
        return gather(iter_synthesis(self, item), length)

    @torch.inference_mode()
    def decode_iter(
        self, codes: Codes, streams: int | None = None, speaker: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`decode` yielded piece by piece: audio chunks ``[n_i]`` float32 (on CPU), in order.

        Concatenated, the pieces are exactly ``decode(codes, streams, speaker)``. Codes longer than
        ``chunks.vocoder_chunk`` mel frames come out piece by piece (about one per vocoder chunk),
        so a caller writing each piece out (e.g. :func:`socodec.audio.save_audio_stream`) needs memory bounded by the chunk sizes, however long the audio; shorter codes come out
        as one piece. The codes are checked before anything is yielded.
        """
        item = self.decode_inputs(codes, streams, speaker)
        return self._iter_item(item)

    @torch.inference_mode()  # on a generator, torch enters/leaves the mode around each step
    def _iter_item(self, item: DecodeInputs) -> Iterator[torch.Tensor]:
        try:
            if self.decoded_whole(item.frames):
                yield self.decode_whole(item)
            else:
                yield from iter_synthesis(self, item)
        finally:
            release_heap()  # like encode/decode: the command line decodes file after file this way

    @torch.inference_mode()
    def decode_stream(
        self,
        chunks: Iterable[torch.Tensor],
        speaker: torch.Tensor | Codes,
        streams: int | None = None,
        *,
        lead: int | None = None,
        num_samples: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Streaming synthesis: token chunks ``[t_i, S]`` in as they arrive, audio chunks ``[n_i]`` out.

        Args:
            chunks: iterable of integer token tensors ``[t_i, S]`` (any t_i >= 0, same S throughout),
                e.g. frames emitted one by one by a language model.
            speaker: speaker vector ``[D]``, or a :class:`Codes` whose speaker vector, lead and
                length are used (then the output equals ``decode(codes)`` when its tokens are fed).
            streams: decode the first ``streams`` streams (default: all the chunks carry).
            lead: samples dropped at the start (default 0, or the Codes' lead): 8000 removes the
                published 0.5 s lead of zeros.
            num_samples: stop after this many samples (after the lead); default: no limit.
        Yields:
            float32 audio chunks ``[n_i]`` (on CPU), only non-empty ones; concatenated they equal
            the offline :meth:`decode` of all tokens (within 1e-4, ~1e-7 measured), trimmed as above.

        Latency: the vocoder needs 14 mel frames (140 ms) of right context, so after T token frames
        the audio is final up to sample 1920·T − 2240: the audio of token frame t is complete once
        frame t + 2 has arrived. The decoders are causal and carry their state (no recomputation);
        the vocoder recomputes 28 mel frames of context per chunk. The rest is flushed at the end.
        """
        if isinstance(speaker, Codes):
            default_lead, default_num = speaker.trim_range()
            speaker = speaker.speaker
        else:
            default_lead, default_num = 0, None
        stream = SynthesisStream(
            self, speaker, streams,
            lead=default_lead if lead is None else lead,
            num_samples=default_num if num_samples is None else num_samples,
            vocoder_chunk_frames=self.chunks.vocoder_chunk,
        )
        for chunk in chunks:
            audio = stream.push(torch.as_tensor(chunk))
            if audio.numel():
                yield audio
        audio = stream.finish()
        if audio.numel():
            yield audio
