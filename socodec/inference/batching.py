"""Batched analysis and synthesis: lists of clips / Codes through the model together.

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
  would see the padding. The batch is synthesised together, then the last R frames of
  every shorter item are recomputed alone from ``[end - 2R, end)`` (exact: R frames of
  left context).

Items longer than one HuBERT window (analysis) or one vocoder chunk (synthesis) are not
batched: the front (:class:`socodec.codec.SoCodec`) sends them down the chunked single-item
path (bounded memory). Memory grows with batch size ×
longest item: group clips of similar length (the command line's ``--batch-size`` does).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from socodec.codes import Codes
from socodec.inference.core import CodecCore, DecodeInputs

__all__ = ["encode_batch", "decode_batch", "length_groups"]

log = logging.getLogger(__name__)


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

    Items decoding a different number of streams go in separate passes.
    """
    results: list[Tensor | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.streams, []).append(i)
    per_token = core.mel_frames_per_token
    for k, group in groups.items():
        frames = [items[i].frames for i in group]
        width = items[group[0]].tokens.shape[2]
        tokens = torch.zeros(len(group), max(frames), width, dtype=torch.long, device=core.device)
        for row, i in enumerate(group):
            tokens[row, : frames[row]] = items[i].tokens[0]
        spk = torch.cat([items[i].speaker for i in group])
        mel = core.analyzer.decode_mel(tokens, spk, k)  # [B, 12 Tmax, n_mels]
        wav = core.synthesize(mel)  # [B, 1920 Tmax]
        for row, i in enumerate(group):
            audio = _fix_tail(core, mel[row : row + 1], wav[row], frames[row] * per_token)
            item = items[i]
            stop = audio.shape[0] if item.num_samples is None else item.lead + item.num_samples
            results[i] = audio[item.lead : stop].cpu()
        log.debug("decoded a batch of %d items (%d frames max, %d streams)", len(group), max(frames), k)
    return [r for r in results if r is not None]


def _fix_tail(core: CodecCore, mel: Tensor, wav: Tensor, frames: int) -> Tensor:
    """Item audio ``[frames * hop]`` from its row of the batch output, the last R frames redone alone.

    Args:
        mel: the item's row of the batch mel ``[1, Mmax, n_mels]`` (valid up to ``frames``).
        wav: the item's row of the batch audio ``[Mmax * hop]``.
        frames: the item's own mel frames.
    """
    hop = core.vocoder.hop_length
    audio = wav[: frames * hop].clone()
    if frames == mel.shape[1]:
        return audio  # the longest item: its end is the batch's end
    context = core.vocoder.receptive_field()
    start = max(0, frames - context)
    lo = max(0, start - context)
    tail = core.synthesize(mel[:, lo:frames])[0]
    audio[start * hop :] = tail[(start - lo) * hop :]
    return audio


def length_groups(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped ``batch_size`` at a time in order of length (similar lengths batch together)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
