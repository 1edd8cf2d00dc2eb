"""The analyzer file: which keys inference needs, and a strict load into :class:`Analyzer`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from socodec.config import AnalyzerConfig
from socodec.errors import CheckpointError
from socodec.loading.checkpoints import load_strict
from socodec.nn.analyzer import Analyzer
from socodec.nn.quantizer import is_training_only

#: prefix of the HuBERT weights an analyzer file may carry (they override the ``.pt``'s)
HUBERT_PREFIX = "ssl_extractor.model."
_DECODER1_AUX = "decoder_1.layers."


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
