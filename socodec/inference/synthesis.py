"""Streaming synthesis: tokens in as they arrive, 16 kHz audio out as soon as it is final.

The use case is a language model emitting SoCodec tokens frame by frame.
:class:`SynthesisStream` keeps per-utterance state:

* the mel decoders are causal, so they run on each new chunk of tokens with
  :class:`~socodec.nn.causal.CausalStreamer` carrying their left context
  (no recomputation; the mel of a frame is final as soon as its token arrives);
* the vocoder is not causal: the audio of mel frame m needs mel frames up to
  m + R, R = :meth:`Vocoder.receptive_field` = 14 (140 ms). :class:`VocoderStream`
  keeps the last R mel frames already synthesised (left context) plus the frames
  still waiting for their right context, and each step synthesises the newly
  final frames from ``[start - R, stop + R)``, which reproduces the whole-sequence
  vocoder (up to float rounding, ~1e-7).

Latency: after T token frames have arrived, audio is final up to mel frame
12·T − 14, i.e. up to sample 1920·T − 2240. The look-ahead is 14 mel frames =
140 ms = 1.17 token frames: the audio of token frame t is complete once token
t + 2 has arrived (frames are 120 ms). At the end of the stream the rest is
flushed at once. Cost per step: the decoders process only the new frames; the
vocoder recomputes 2·R = 28 mel frames of context, so feeding one token frame
(12 mel frames) at a time costs about (12 + 28) / 12 ≈ 3.3× the offline vocoder
work; chunks of a few frames amortise this. When the lead and the length are known
(``lead`` / ``num_samples``), the vocoder skips the lead and stops R frames past the
last output sample: nothing that is trimmed away is synthesised.

Concatenating everything :class:`SynthesisStream` yields equals
:meth:`SoCodec.decode` of the same tokens (within 1e-4; measured ~1e-7 on the
tiny test model). Offline decoding of long token sequences reuses the same
machinery in big chunks (:func:`iter_synthesis`).
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import torch
from torch import Tensor

from socodec.config import ChunkConfig
from socodec.errors import CodesError
from socodec.nn.causal import CausalStreamer
from socodec.inference.core import CodecCore, DecodeInputs
from socodec.nn.vocoder import Vocoder

__all__ = ["SynthesisStream", "VocoderStream", "iter_synthesis", "gather", "trimmed_length", "LOOKAHEAD_MEL_FRAMES"]

log = logging.getLogger(__name__)

LOOKAHEAD_MEL_FRAMES = 14
"""Mel frames (10 ms each) of right context the released vocoder needs: the streaming latency."""


class VocoderStream:
    """Incremental vocoder: log-mel frames in, final waveform samples out.

    Args:
        vocoder: the (non-causal) vocoder.
        dtype: dtype the vocoder runs in (float32 on CPU).
        chunk_frames: at most this many mel frames are synthesised per vocoder call
            (bounds memory; the context of R frames each side comes on top).
        first_frame, stop_frame: only the audio of mel frames ``[first_frame, stop_frame)`` is
            synthesised and returned (``stop_frame`` None: up to the end); frames further than R
            from that range are dropped unused.
        eager: synthesise frames as soon as they are final (streaming latency); False waits
            until ``chunk_frames`` frames are ready (or the end), so that offline synthesis
            makes only full-size vocoder calls, whatever the size of the pushed pieces.
    """

    def __init__(
        self,
        vocoder: Vocoder,
        dtype: torch.dtype = torch.float32,
        chunk_frames: int = ChunkConfig.vocoder_chunk,
        first_frame: int = 0,
        stop_frame: int | None = None,
        eager: bool = True,
    ) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
        if first_frame < 0 or (stop_frame is not None and stop_frame < first_frame):
            raise ValueError(f"bad output frames [{first_frame}, {stop_frame})")
        self.vocoder = vocoder
        self.dtype = dtype
        self.context = vocoder.receptive_field()
        self.chunk_frames = chunk_frames
        self.hop = vocoder.hop_length
        self.stop_frame = stop_frame
        self.eager = eager
        self._mel: Tensor | None = None  # [1, n, n_mels]: frames [self._first, self._first + n)
        self._first = 0
        self.frames_in = 0
        self.frames_out = first_frame

    @torch.inference_mode()
    def push(self, mel: Tensor, final: bool = False) -> Tensor:
        """Add mel frames ``[1, m, n_mels]`` (m may be 0); return the newly final samples ``[n]``.

        With ``final=True`` the input ends here and everything left is synthesised. The samples
        returned over all calls are those of mel frames ``[first_frame, stop_frame)``.
        """
        start_in = self.frames_in
        self.frames_in += mel.shape[1]
        keep_to = self.frames_in if self.stop_frame is None else min(self.frames_in, self.stop_frame + self.context)
        if keep_to > start_in:  # frames past stop_frame + R never reach the output
            new = mel[:, : keep_to - start_in]
            self._mel = new if self._mel is None else torch.cat([self._mel, new], dim=1)
        ready = self.frames_in if final else self.frames_in - self.context
        if self.stop_frame is not None:
            ready = min(ready, self.stop_frame)
        pieces = []
        complete = final or (self.stop_frame is not None and ready >= self.stop_frame)
        while self._mel is not None and self.frames_out < ready:
            if not (self.eager or complete) and ready - self.frames_out < self.chunk_frames:
                break
            held = self._first + self._mel.shape[1]
            start, stop = self.frames_out, min(ready, self.frames_out + self.chunk_frames)
            lo, hi = max(self._first, start - self.context), min(held, stop + self.context)
            window = self._mel[:, lo - self._first : hi - self._first]
            wav = self.vocoder(window.to(self.dtype))[0].float()  # [(hi - lo) * hop]
            pieces.append(wav[(start - lo) * self.hop : (stop - lo) * self.hop])
            self.frames_out = stop
        if self._mel is not None:
            keep_from = min(self._first + self._mel.shape[1], max(self._first, self.frames_out - self.context))
            if keep_from > self._first:
                self._mel = self._mel[:, keep_from - self._first :]
                self._first = keep_from
        if not pieces:
            return torch.zeros(0)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class SynthesisStream:
    """Tokens ``[t, S]`` in, final audio out, for one utterance (see the module docstring).

    Args:
        core: the model.
        speaker: speaker vector ``[D]``.
        streams: decode the first ``streams`` streams (default: as many as the first chunk has).
        lead: drop this many samples at the start of the output (8000 for codes made with
            the published 0.5 s lead; 0 keeps everything).
        num_samples: stop the output after this many samples (after the lead); None: no limit.
        vocoder_chunk_frames: mel frames per vocoder call.
        eager: return audio as soon as it is final (default); False: in pieces of
            ``vocoder_chunk_frames`` mel frames (offline synthesis, see :class:`VocoderStream`).
    """

    def __init__(
        self,
        core: CodecCore,
        speaker: Tensor,
        streams: int | None = None,
        lead: int = 0,
        num_samples: int | None = None,
        vocoder_chunk_frames: int = ChunkConfig.vocoder_chunk,
        eager: bool = True,
    ) -> None:
        analyzer = core.analyzer
        dim = analyzer.cfg.model_size
        if speaker.dim() != 1 or speaker.shape[0] != dim:
            raise CodesError(f"speaker vector has shape {list(speaker.shape)}, expected [{dim}]")
        if not bool(torch.isfinite(speaker).all()):
            raise CodesError("speaker vector holds NaN or infinite values")
        if lead < 0 or (num_samples is not None and num_samples < 0):
            raise CodesError(f"lead and num_samples must be non-negative, got {lead}, {num_samples}")
        self.core = core
        self.device = core.device
        self.speaker = speaker.to(self.device, torch.float32).view(1, dim)
        self.streams = streams
        self.width: int | None = None
        self.lead = lead
        self.num_samples = num_samples
        self.frames_in = 0
        # only the mel frames holding output samples are synthesised (not the lead nor the padding)
        hop = core.vocoder.hop_length
        first = lead // hop
        stop = None if num_samples is None else max(first, -(-(lead + num_samples) // hop))
        self.samples_out = first * hop  # untrimmed position of the next sample produced
        self._decoders = CausalStreamer()
        self._vocoder = VocoderStream(core.vocoder, core.vocoder_dtype, vocoder_chunk_frames, first, stop, eager)

    @property
    def latency_samples(self) -> int:
        """Samples of look-ahead: audio is final up to ``1920 * frames_in - latency_samples``."""
        return self._vocoder.context * self._vocoder.hop

    @torch.inference_mode()
    def push(self, tokens: Tensor) -> Tensor:
        """Add token frames ``[t, S]`` (t may be 0); return the audio ``[n]`` that became final."""
        self._check(tokens)
        if tokens.shape[0] == 0:
            return torch.zeros(0)
        return self._trim(self._vocoder.push(self._mel(tokens)))

    @torch.inference_mode()
    def finish(self) -> Tensor:
        """End of the tokens: return the rest of the audio ``[n]``."""
        return self._trim(self._vocoder.push(self._empty_mel(), final=True))

    # ------------------------------------------------------------------ internals
    def _check(self, tokens: Tensor) -> None:
        analyzer = self.core.analyzer
        if tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise CodesError(f"token chunks must be integer tensors [frames, streams], got {tokens.dtype} "
                             f"{list(tokens.shape)}")
        if self.width is None:
            if not 1 <= tokens.shape[1] <= analyzer.cfg.n_streams:
                raise CodesError(f"tokens must have 1 to {analyzer.cfg.n_streams} streams, got {tokens.shape[1]}")
            k = tokens.shape[1] if self.streams is None else self.streams
            if not 1 <= k <= tokens.shape[1]:
                raise CodesError(f"streams must be between 1 and {tokens.shape[1]}, got {k}")
            self.width, self.streams = tokens.shape[1], k
        elif tokens.shape[1] != self.width:
            raise CodesError(f"token chunk has {tokens.shape[1]} streams, earlier chunks had {self.width}")
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= analyzer.vq.cardinality:
                raise CodesError(f"token values must lie in [0, {analyzer.vq.cardinality}), got [{lo}, {hi}]")

    def _mel(self, tokens: Tensor) -> Tensor:
        """Token frames ``[t, S]`` -> their (final) log-mel ``[1, 12t, n_mels]``."""
        analyzer = self.core.analyzer
        tok = tokens.to(self.device, torch.long)[None]
        if tok.shape[-1] < analyzer.cfg.n_streams:
            tok = torch.nn.functional.pad(tok, (0, analyzer.cfg.n_streams - tok.shape[-1]))
        self.frames_in += tokens.shape[0]
        return analyzer.decode_mel(
            tok, self.speaker, self.streams,
            body=self._decoders.decoder_body, project=self._decoders.decoder_project,
        )

    def _empty_mel(self) -> Tensor:
        return torch.zeros(1, 0, self.core.analyzer.cfg.out_dim, device=self.device)

    def _trim(self, wav: Tensor) -> Tensor:
        """Keep the part of ``wav`` (untrimmed samples [samples_out, samples_out + n)) inside the output."""
        start, stop = self.samples_out, self.samples_out + wav.shape[0]
        self.samples_out = stop
        lo = max(start, self.lead)
        hi = stop if self.num_samples is None else min(stop, self.lead + self.num_samples)
        if hi <= lo:
            return wav[:0].cpu()
        return wav[lo - start : hi - start].cpu()


@torch.inference_mode()
def iter_synthesis(core: CodecCore, item: DecodeInputs) -> Iterator[Tensor]:
    """Offline synthesis of one validated item: the decoders in steps of ``core.chunks.decode_chunk``
    token frames, the vocoder in calls of ``core.chunks.vocoder_chunk`` mel frames.

    Yields the trimmed audio (``item.lead`` / ``item.num_samples`` as in :class:`SynthesisStream`)
    as non-empty float32 pieces ``[n_i]``; concatenated they equal the whole-sequence decode
    (within ~1e-6). Memory is bounded by the chunk sizes, whatever T: a caller that writes
    each piece out (the command line) never holds the whole waveform.
    """
    chunk_frames = core.chunks.decode_chunk
    tokens = item.tokens[0]
    stream = SynthesisStream(
        core, item.speaker[0], item.streams, item.lead, item.num_samples, core.chunks.vocoder_chunk, eager=False
    )
    for start in range(0, tokens.shape[0], chunk_frames):
        piece = stream.push(tokens[start : start + chunk_frames])
        log.debug("synthesis: %d of %d frames", min(tokens.shape[0], start + chunk_frames), tokens.shape[0])
        if piece.numel():
            yield piece
    piece = stream.finish()
    if piece.numel():
        yield piece


def gather(pieces: Iterable[Tensor], length: int) -> Tensor:
    """Consecutive pieces ``[n_i]`` -> one ``[length]`` tensor, written into place (no second copy).

    Raises RuntimeError if the pieces do not add up to ``length`` samples.
    """
    out = torch.empty(length)
    pos = 0
    for piece in pieces:
        if pos + piece.shape[0] > length:
            raise RuntimeError(f"synthesis produced more than the {length} samples expected")
        out[pos : pos + piece.shape[0]] = piece
        pos += piece.shape[0]
    if pos != length:
        raise RuntimeError(f"synthesis produced {pos} samples, expected {length}")
    return out


def trimmed_length(total: int, lead: int, num_samples: int | None) -> int:
    """Samples left of a ``total``-sample output once ``lead``/``num_samples`` are applied."""
    return max(0, total - lead) if num_samples is None else max(0, min(num_samples, total - lead))
