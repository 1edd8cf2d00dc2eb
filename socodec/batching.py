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

Items longer than one HuBERT window (analysis) or one vocoder chunk (synthesis) take
the chunked single-item path instead (bounded memory). Memory grows with batch size ×
longest item: group clips of similar length (the command line's ``--batch-size`` does).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from socodec.codes import Codes
from socodec.config import LEAD_SAMPLES
from socodec.streaming import trim_range

if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec

__all__ = ["encode_batch", "decode_batch", "length_groups"]

log = logging.getLogger(__name__)


@torch.inference_mode()
def encode_batch(codec: SoCodec, wavs: list[Any], sample_rate: int, lead: bool) -> list[Codes]:
    """Clips (each ``[N]`` or ``[C, N]``, at ``sample_rate``) -> one :class:`Codes` per clip."""
    lead_n = LEAD_SAMPLES if lead else 0
    clips = [codec._mono(w, sample_rate) for w in wavs]
    results: list[Codes | None] = [None] * len(clips)
    batch: list[int] = []
    for i, x in enumerate(clips):
        if not codec.analysed_whole(lead_n + x.numel()):
            results[i] = codec._encode_mono(x, lead_n)  # long: windowed, alone
        else:
            batch.append(i)
    if batch:
        padded = [codec._pad(clips[i], lead_n) for i in batch]
        lengths = torch.tensor([p.numel() for p in padded])
        wav = torch.zeros(len(batch), int(lengths.max()))
        for row, p in enumerate(padded):
            wav[row, : p.numel()] = p
        device = codec.device
        feats = codec.hubert(wav.to(device, codec.compute_dtype), lengths.to(device)).float()  # [B, Lmax/320, C]
        tokens = codec.analyzer.tokens(feats)  # [B, Tmax, S]; causal: valid frames unaffected
        for row, i in enumerate(batch):
            frames = int(lengths[row]) // codec.hop
            speaker = codec.analyzer.speaker(codec.mel(padded[row][None].to(device)))[0]  # own frames only
            results[i] = codec._codes(tokens[row, :frames], speaker, clips[i].numel(), lead_n)
        log.debug("encoded a batch of %d clips (%d samples max)", len(batch), int(lengths.max()))
    return [r for r in results if r is not None]


@torch.inference_mode()
def decode_batch(
    codec: SoCodec, items: list[Codes], streams: int | None, speaker: Tensor | None
) -> list[Tensor]:
    """Codes -> one waveform ``[N_i]`` per item, as :meth:`SoCodec.decode` would give each."""
    results: list[Tensor | None] = [None] * len(items)
    groups: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
    per_token = codec.mel_frames_per_token
    for i, codes in enumerate(items):
        tokens, spk, k = codec._decode_inputs(codes, streams, speaker)
        if not codec.decoded_whole(tokens.shape[1]):
            results[i] = codec.decode(codes, streams, speaker)  # long: chunked, alone
        else:
            groups.setdefault(k, []).append((i, tokens[0], spk[0]))
    for k, group in groups.items():
        frames = [tok.shape[0] for _, tok, _ in group]
        tokens = torch.zeros(len(group), max(frames), group[0][1].shape[1], dtype=torch.long, device=codec.device)
        for row, (_, tok, _) in enumerate(group):
            tokens[row, : tok.shape[0]] = tok
        spk = torch.stack([s for _, _, s in group])
        mel = codec.analyzer.decode_mel(tokens, spk, k)  # [B, 12 Tmax, n_mels]
        wav = codec.vocoder(mel.to(codec.compute_dtype)).float()  # [B, 1920 Tmax]
        for row, (i, tok, _) in enumerate(group):
            audio = _fix_tail(codec, mel[row : row + 1], wav[row], tok.shape[0] * per_token)
            lead, num_samples = trim_range(items[i])
            stop = audio.shape[0] if num_samples is None else lead + num_samples
            results[i] = audio[lead:stop].cpu()
        log.debug("decoded a batch of %d items (%d frames max, %d streams)", len(group), max(frames), k)
    return [r for r in results if r is not None]


def _fix_tail(codec: SoCodec, mel: Tensor, wav: Tensor, frames: int) -> Tensor:
    """Item audio ``[frames * hop]`` from its row of the batch output, the last R frames redone alone.

    Args:
        mel: the item's row of the batch mel ``[1, Mmax, n_mels]`` (valid up to ``frames``).
        wav: the item's row of the batch audio ``[Mmax * hop]``.
        frames: the item's own mel frames.
    """
    hop = codec.vocoder.hop_length
    audio = wav[: frames * hop].clone()
    if frames == mel.shape[1]:
        return audio  # the longest item: its end is the batch's end
    context = codec.vocoder.receptive_field()
    start = max(0, frames - context)
    lo = max(0, start - context)
    tail = codec.vocoder(mel[:, lo:frames].to(codec.compute_dtype))[0].float()
    audio[start * hop :] = tail[(start - lo) * hop :]
    return audio


def length_groups(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped ``batch_size`` at a time in order of length (similar lengths batch together)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
