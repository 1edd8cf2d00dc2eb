"""The SoCodec model: 16 kHz speech <-> tokens [T, 4] + speaker vector.

Typical use::

    codec = SoCodec.from_pretrained("ckpts")
    codes = codec.encode(wav, sample_rate)     # Codes: tokens [T, 4], speaker [D]
    audio = codec.decode(codes)                # [N] float32 at 16 kHz
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from socodec.audio import load_audio, to_model_input
from socodec.batching import decode_batch, encode_batch
from socodec.checkpoints import (  # noqa: F401 - the file names are part of this module's API
    ANALYZER_FILE, HUBERT_FILE, RELEASED_FILES, VOCODER_FILE, CheckpointPaths, file_fingerprint, load_strict,
    read_safetensors)
from socodec.codes import Codes
from socodec.config import LEAD_SAMPLES, SAMPLE_RATE, AnalyzerConfig, VocoderConfig
from socodec.errors import CheckpointError, CodesError, SoCodecError
from socodec.longform import ChunkConfig, PaddedSignal, encode_long
from socodec.mel import MelSpectrogram
from socodec.nn.analyzer import HUBERT_PREFIX, Analyzer, load_analyzer
from socodec.nn.hubert import HubertFeatures, build_hubert, fairseq_to_hf, load_hubert_weights
from socodec.nn.vocoder import Vocoder
from socodec.sources import FileSource, file_duration
from socodec.streaming import SynthesisStream, gather, iter_synthesis, trim_range, trimmed_length

log = logging.getLogger(__name__)

class SoCodec(torch.nn.Module):
    """HuBERT -> causal encoder -> product VQ  |  VQ decode -> mel decoders -> vocoder.

    Build it with :meth:`from_pretrained` or :meth:`from_files`; the constructor
    takes ready modules. ``chunks`` (:class:`~socodec.longform.ChunkConfig`, settable
    attribute) sets the chunk sizes that bound memory on long inputs.
    """

    def __init__(
        self,
        hubert: HubertFeatures,
        analyzer: Analyzer,
        vocoder: Vocoder,
        identity: dict[str, str] | None = None,
        dtype: torch.dtype = torch.float32,
        chunks: ChunkConfig | None = None,
    ) -> None:
        super().__init__()
        self.chunks = chunks if chunks is not None else ChunkConfig()
        self.hubert = hubert
        self.analyzer = analyzer
        self.vocoder = vocoder
        self.mel = MelSpectrogram(analyzer.cfg.mel)
        self.identity = dict(identity or {})
        self.compute_dtype = dtype
        self.hop = analyzer.cfg.samples_per_token
        self.eval()

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
    ) -> "SoCodec":
        """Load the three released files (their released names) from ``ckpt_dir``.

        ``analyzer_config``/``vocoder_config`` describe other model sizes (default: released).
        """
        paths = CheckpointPaths.in_dir(ckpt_dir)
        missing = paths.missing()
        if missing:
            raise CheckpointError(
                f"{Path(ckpt_dir)}: missing {', '.join(p.name for p in missing)} "
                f"(get them from Hugging Face: {HUBERT_FILE} from TencentGameMate/chinese-hubert-large, "
                f"the two .safetensors from hhguo/SoCodec)"
            )
        return cls.from_files(
            paths.hubert, paths.analyzer, paths.vocoder, analyzer_config=analyzer_config,
            vocoder_config=vocoder_config, device=device, dtype=dtype, cache_dir=cache_dir,
        )

    @classmethod
    def from_files(
        cls,
        hubert: str | Path,
        analyzer: str | Path,
        vocoder: str | Path,
        analyzer_config: str | Path | AnalyzerConfig | None = None,
        vocoder_config: str | Path | VocoderConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | Path | None = None,
    ) -> "SoCodec":
        """Load from explicit paths; configs default to the released model's."""
        a_cfg = AnalyzerConfig.resolve(analyzer_config)
        v_cfg = VocoderConfig.resolve(vocoder_config)
        h_cfg, h_state = load_hubert_weights(Path(hubert), None if cache_dir is None else Path(cache_dir))
        a_state = read_safetensors(analyzer)
        override = {k[len(HUBERT_PREFIX):]: v for k, v in a_state.items() if k.startswith(HUBERT_PREFIX)}
        h_source: str | Path = hubert
        if override:
            log.info("%s carries HuBERT weights; they override %s", analyzer, hubert)
            h_state = fairseq_to_hf(override, h_cfg, source=analyzer)
            h_source = analyzer
        if h_cfg.embed_dim != a_cfg.in_dim:
            raise CheckpointError(
                f"{hubert}: HuBERT width {h_cfg.embed_dim} does not match the analyzer config's in_dim {a_cfg.in_dim}"
            )
        hubert_model = build_hubert(h_cfg, h_state, source=h_source)
        analyzer_model = load_analyzer(a_cfg, a_state, source=analyzer)
        vocoder_model = Vocoder(v_cfg)  # on CPU: its normal_() init on meta would import torch._dynamo (~1.5 s)
        load_strict(vocoder_model, read_safetensors(vocoder), source=vocoder)
        identity = {
            "hubert": file_fingerprint(hubert),
            "analyzer": file_fingerprint(analyzer),
            "vocoder": file_fingerprint(vocoder),
        }
        codec = cls(hubert_model, analyzer_model, vocoder_model, identity=identity, dtype=dtype)
        return codec.to_device(device, dtype)

    def to_device(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> "SoCodec":
        """Move to ``device``; HuBERT and the vocoder run in ``dtype`` (float16/bfloat16 on CUDA).

        The quantiser, encoder and decoders always run in float32 so tokens stay exact.
        """
        dev = torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise SoCodecError(f"unsupported dtype {dtype}")
        if dtype != torch.float32 and dev.type == "cpu":
            raise SoCodecError("float16/bfloat16 are only supported on CUDA; use float32 on CPU")
        self.to(dev)
        self.hubert.to(dtype)
        self.vocoder.to(dtype)
        self.compute_dtype = dtype
        return self

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

    # ------------------------------------------------------------------ analysis
    @torch.inference_mode()
    def encode(
        self,
        wav: torch.Tensor | np.ndarray | str | Path | Sequence[torch.Tensor | np.ndarray],
        sample_rate: int = SAMPLE_RATE,
        lead: bool = True,
    ) -> Codes | list[Codes]:
        """Audio -> :class:`Codes`; a list of clips -> a list of Codes (one batch).

        Args:
            wav: ``[N]`` mono or ``[C, N]`` multi-channel audio in [-1, 1] (averaged to mono),
                or a list/tuple of such clips (all at ``sample_rate``), analysed as one padded
                batch (:func:`socodec.batching.encode_batch`): each result equals the clip's own;
                or the path of an audio file (its own rate; same result as encoding
                :func:`~socodec.audio.load_audio` of it). A long file is read from disk window
                by window (:class:`~socodec.sources.FileSource`), never held whole.
            sample_rate: rate of ``wav`` when it is samples; resampled to 16 kHz.
            lead: prepend 0.5 s of zeros like the published model (default).
        Returns:
            Codes with tokens ``[T, S]`` int64, speaker ``[D]`` float32, and the input
            length and lead, so :meth:`decode` returns exactly the input's duration.

        Inputs longer than one HuBERT window (``chunks.hubert_span`` frames, 22.2 s by default)
        are analysed window by window with bounded memory (:mod:`socodec.longform`).
        """
        if isinstance(wav, (list, tuple)):
            return encode_batch(self, list(wav), sample_rate, lead)
        if isinstance(wav, (str, Path)):
            return self._encode_file(Path(wav), LEAD_SAMPLES if lead else 0)
        return self._encode_mono(self._mono(wav, sample_rate), LEAD_SAMPLES if lead else 0)

    def _encode_file(self, path: Path, lead: int) -> Codes:
        """An audio file -> Codes; files longer than one HuBERT window stream from disk."""
        if self.analysed_whole(lead + math.ceil(file_duration(path) * SAMPLE_RATE)):
            return self._encode_mono(load_audio(path), lead)
        with FileSource(path) as source:
            if self.analysed_whole(lead + source.num_samples):  # the header's duration was approximate
                return self._encode_mono(source.read(0, source.num_samples), lead)
            total = self.padded_length(lead + source.num_samples)
            tokens, speaker = encode_long(self, PaddedSignal(source, lead, total))
            return self._codes(tokens, speaker, source.num_samples, lead)

    @staticmethod
    def _mono(wav: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """Any accepted audio (``[N]`` or ``[C, N]``) -> ``[N]`` float32 mono at 16 kHz (on CPU)."""
        t = torch.as_tensor(wav)
        if t.ndim == 2:
            t = t.t()  # [C, N] -> [N, C] for to_model_input
        elif t.ndim != 1:
            raise SoCodecError(f"expected [N] or [C, N] audio, got shape {list(t.shape)}")
        return to_model_input(t.float(), sample_rate)

    def _encode_mono(self, x: torch.Tensor, lead: int) -> Codes:
        """``[N]`` 16 kHz mono -> Codes, whole or window by window depending on the length."""
        if not self.analysed_whole(lead + x.numel()):
            tokens, speaker = encode_long(self, PaddedSignal(x, lead, self.padded_length(lead + x.numel())))
        else:
            padded = self._pad(x, lead)[None].to(self.device)
            speaker = self.analyzer.speaker(self.mel(padded))[0]  # first: see longform.encode_long
            tokens = self.analyzer.tokens(self._features(padded))[0]
        return self._codes(tokens, speaker, x.numel(), lead)

    def _codes(self, tokens: torch.Tensor, speaker: torch.Tensor, num_samples: int, lead: int) -> Codes:
        return Codes(
            tokens=tokens.cpu(), speaker=speaker.float().cpu(), sample_rate=SAMPLE_RATE,
            num_samples=int(num_samples), lead=lead, model=dict(self.identity),
        )

    def analysed_whole(self, samples: int) -> bool:
        """Whether ``samples`` (lead included) are analysed in one HuBERT pass, not window by window."""
        return self.padded_length(samples) // self.hop <= self.chunks.hubert_span

    def decoded_whole(self, frames: int) -> bool:
        """Whether ``frames`` token frames are synthesised in one vocoder pass, not in chunks."""
        return frames * self.mel_frames_per_token <= self.chunks.vocoder_chunk

    def padded_length(self, n: int) -> int:
        """Samples L after right-padding ``n`` samples to the 1920-sample grid (at least one frame)."""
        return self.hop * max(1, math.ceil(n / self.hop))

    def _pad(self, x: torch.Tensor, lead: int) -> torch.Tensor:
        """``[N]`` -> lead zeros + x + zeros up to a multiple of 1920 samples, ``[L]``."""
        n = lead + x.numel()
        return F.pad(x, (lead, self.padded_length(n) - n))

    def _features(self, padded: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` padded audio -> HuBERT features ``[B, L/320, C]`` float32."""
        return self.hubert(padded.to(self.compute_dtype)).float()

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
                one padded batch (:func:`socodec.batching.decode_batch`): each result equals
                the item's own decode.
            streams: decode only the first ``streams`` streams (default: all in ``codes``).
            speaker: optional ``[D]`` speaker vector replacing ``codes.speaker`` (voice swap).
        Returns:
            ``codes.num_samples`` samples when the codes know their lead and length,
            otherwise the full ``1920 * T``.

        Codes longer than ``chunks.vocoder_chunk`` mel frames (10 s by default) are synthesised
        in chunks (:func:`socodec.streaming.iter_synthesis`), equal to the whole-sequence result.
        """
        if isinstance(codes, (list, tuple)):
            return decode_batch(self, list(codes), streams, speaker)
        tokens, spk, k = self._decode_inputs(codes, streams, speaker)
        if not self.decoded_whole(tokens.shape[1]):
            lead, num_samples = trim_range(codes)
            length = trimmed_length(tokens.shape[1] * self.hop, lead, num_samples)
            return gather(self._pieces(tokens, spk, k, lead, num_samples), length)
        mel = self.analyzer.decode_mel(tokens, spk, k)
        wav = self.vocoder(mel.to(self.compute_dtype))[0].float().cpu()
        return _trim(wav, codes)

    @torch.inference_mode()
    def decode_iter(
        self, codes: Codes, streams: int | None = None, speaker: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`decode` yielded piece by piece: audio chunks ``[n_i]`` float32 (on CPU), in order.

        Concatenated, the pieces are exactly ``decode(codes, streams, speaker)``. Codes longer than
        ``chunks.vocoder_chunk`` mel frames come out in pieces of ``chunks.decode_chunk`` token
        frames, so a caller writing each piece out (e.g. :func:`socodec.audio.save_audio_stream`)
        needs memory bounded by the chunk sizes, however long the audio; shorter codes come out
        as one piece. The codes are checked before anything is yielded.
        """
        tokens, spk, k = self._decode_inputs(codes, streams, speaker)
        if self.decoded_whole(tokens.shape[1]):
            yield self.decode(codes, streams, speaker)
            return
        yield from self._pieces(tokens, spk, k, *trim_range(codes))

    def _pieces(
        self, tokens: torch.Tensor, spk: torch.Tensor, k: int, lead: int, num_samples: int | None
    ) -> Iterator[torch.Tensor]:
        """Chunked synthesis of ``tokens [1, T, S]``, ``spk [1, D]``: trimmed audio pieces."""
        chunks = self.chunks
        return iter_synthesis(self, tokens[0], spk[0], k, lead, num_samples, chunks.decode_chunk, chunks.vocoder_chunk)

    @property
    def mel_frames_per_token(self) -> int:
        """Mel frames (10 ms) per token frame (120 ms): 12."""
        return self.hop // self.vocoder.hop_length

    def _decode_inputs(
        self, codes: Codes, streams: int | None, speaker: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Validated ``(tokens [1, T, n_streams] long, speaker [1, D] float32, streams k)`` on the device."""
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
        return tokens, spk.to(self.device, torch.float32)[None], k

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
            default_lead, default_num = trim_range(speaker)
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

    def check_codes(self, codes: Codes) -> None:
        """Raise :class:`CodesError` if ``codes`` cannot be decoded by this model."""
        codes.validate(
            cardinality=self.analyzer.vq.cardinality,
            max_streams=self.num_streams,
            speaker_dim=self.analyzer.cfg.model_size,
        )


def _trim(wav: torch.Tensor, codes: Codes) -> torch.Tensor:
    if codes.lead is None or codes.num_samples is None:
        return wav
    return wav[codes.lead : codes.lead + codes.num_samples]
