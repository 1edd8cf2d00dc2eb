"""The analyzer: encoder, product quantiser, speaker encoder and mel decoders.

Submodule names mirror the released ``socodec_16384x4_120ms_16khz_chinese.safetensors``
so the file loads strictly into :class:`Analyzer` without renaming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from socodec.checkpoints import load_strict
from socodec.config import AnalyzerConfig
from socodec.errors import CheckpointError
from socodec.nn.causal import Encoder, MelDecoder
from socodec.nn.quantizer import ProductQuantizer, is_training_only
from socodec.nn.speaker import SpeakerEncoder

HUBERT_PREFIX = "ssl_extractor.model."
_DECODER1_AUX = "decoder_1.layers."


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

    def decode_mel(self, tokens: torch.Tensor, speaker: torch.Tensor, n_streams: int | None = None) -> torch.Tensor:
        """Tokens ``[B, T, S]`` + speaker ``[B, D]`` -> predicted log-mel ``[B, 12T, n_mels]``."""
        spk = speaker[:, None, :]
        x = self.vq.decode(tokens, n_streams) + spk
        h = self.decoder_1(x) + spk
        return self.decoder_2.project(self.decoder_2(h))


def is_unused_analyzer_key(key: str) -> bool:
    """Keys of the released analyzer file that inference does not need."""
    if key.startswith(HUBERT_PREFIX):
        return True  # HuBERT weights, handled by the HuBERT loader
    if key.startswith(_DECODER1_AUX):
        index = key[len(_DECODER1_AUX):].split(".", 1)[0]
        if index == "8":
            return True  # auxiliary HuBERT-feature prediction head
    prefix = "quantizer.quantizers.0."
    return key.startswith(prefix) and is_training_only(key[len(prefix):])


def load_analyzer(cfg: AnalyzerConfig, state: Mapping[str, torch.Tensor], source: str | Path) -> Analyzer:
    """Build an :class:`Analyzer` and fill it strictly from ``state``.

    Built on the meta device and the file's tensors assigned: no random initialisation, no copy.
    """
    with torch.device("meta"):
        model = Analyzer(cfg)
    if not state:
        raise CheckpointError(f"{source}: the analyzer file holds no tensors")
    load_strict(model, state, source=source, ignore=is_unused_analyzer_key)
    return model.eval()
