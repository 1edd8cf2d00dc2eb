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
