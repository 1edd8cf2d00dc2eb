"""The analyzer: encoder, product quantiser, speaker encoder and mel decoders.

Submodule names mirror the released ``socodec_16384x4_120ms_16khz_chinese.safetensors``
so the file loads strictly into :class:`Analyzer` without renaming
(:mod:`socodec.loading.modules`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from socodec.config import AnalyzerConfig
from socodec.nn.causal import Encoder, MelDecoder
from socodec.nn.quantizer import ProductQuantizer
from socodec.nn.speaker import SpeakerEncoder


class _QuantizerList(nn.Module):
    """Holds the single tree level of the published quantiser (``quantizers.0``)."""

    def __init__(self, quantizer: ProductQuantizer) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList([quantizer])


class Analyzer(nn.Module):
    """Everything between HuBERT features / log-mel and predicted log-mel.

    Shapes: HuBERT features ``[B, 6T, in_dim]``, tokens ``[B, T, S]``, log-mel
    ``[B, 12T, n_mels]``, speaker ``[B, D]``.
    """

    def __init__(self, cfg: AnalyzerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.model_size
        self.encoder = Encoder(cfg.in_dim, d, cfg.downsample_scales)
        self.quantizer = _QuantizerList(ProductQuantizer(d, cfg.codebook_size, cfg.codebook_dim, cfg.n_streams))
        self.speaker_encoder = SpeakerEncoder(cfg.mel.n_mels, d)
        self.decoder_1 = MelDecoder(d, cfg.upsample_scales[0], None)
        self.decoder_2 = MelDecoder(d, cfg.upsample_scales[1], cfg.out_dim)

    @property
    def vq(self) -> ProductQuantizer:
        return self.quantizer.quantizers[0]

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[B, 6T, in_dim]`` -> tokens ``[B, T, S]`` int64."""
        return self.vq.encode(self.encoder(features))

    def speaker(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, 12T, n_mels]`` -> speaker vector ``[B, D]`` (every frame counts)."""
        return self.speaker_encoder(mel)

    def decode_mel(
        self,
        tokens: torch.Tensor,
        speaker: torch.Tensor,
        n_streams: int | None = None,
        body: Callable[[MelDecoder, torch.Tensor], torch.Tensor] | None = None,
        project: Callable[[MelDecoder, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Tokens ``[B, T, S]`` + speaker ``[B, D]`` -> predicted log-mel ``[B, 12T, n_mels]``.

        ``body(decoder, x)`` / ``project(decoder, h)`` run a decoder's upsampling body
        (``[B, t, D] -> [B, t * up, D]``) and its output projection (``[B, t, D] -> [B, t, n_mels]``);
        by default the whole-sequence forward. Chunked synthesis passes a causal streamer's.
        """
        body = body or _whole_body
        project = project or _whole_project
        spk = speaker[:, None, :]
        x = self.vq.decode(tokens, n_streams) + spk
        h = body(self.decoder_1, x) + spk
        return project(self.decoder_2, body(self.decoder_2, h))


def _whole_body(decoder: MelDecoder, x: torch.Tensor) -> torch.Tensor:
    return decoder(x)


def _whole_project(decoder: MelDecoder, h: torch.Tensor) -> torch.Tensor:
    return decoder.project(h)
