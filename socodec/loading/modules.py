"""Build the three model stages and fill them from the released files: one explicit function.

:func:`load_modules` constructs each module (HuBERT, analyzer, vocoder) with its config and
assigns the file's tensors strictly. HuBERT is only needed for analysis (audio -> tokens):
by default it is loaded on first use (:class:`HubertLoader`), so decoding tokens needs only
the two ``.safetensors`` files.

The analyzer file: which keys inference needs, and a strict load into :class:`Analyzer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from socodec.config import AnalyzerConfig, VocoderConfig
from socodec.errors import CheckpointError
from socodec.loading.checkpoints import HUBERT_FILE, file_fingerprint, load_strict, read_safetensors
from socodec.loading.hubert import build_hubert, fairseq_to_hf, load_hubert_weights
from socodec.loading.native import native_kernel
from socodec.nn.analyzer import Analyzer
from socodec.nn.hubert import HubertFeatures
from socodec.nn.analyzer import is_training_only
from socodec.nn.vocoder import Vocoder

__all__ = ["HubertLoader", "LoadedModules", "load_modules", "load_vocoder"]


log = logging.getLogger(__name__)


class HubertLoader:
    """Loads HuBERT when first called: from its ``.pt`` (via the conversion cache), with the
    analyzer file's ``ssl_extractor.model.*`` weights overriding it when present.

    Args:
        path: the fairseq HuBERT checkpoint (None: only the analyzer file's weights, if any).
        override: the analyzer file's HuBERT tensors, prefix stripped (fairseq names).
        analyzer_source: the analyzer file, named in messages about ``override``.
        in_dim: the analyzer's expected feature width.
        cache_dir: folder of the conversion cache (None: the default).
    """

    def __init__(
        self,
        path: Path | None,
        override: Mapping[str, torch.Tensor],
        analyzer_source: Path,
        in_dim: int,
        cache_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.override = dict(override)
        self.analyzer_source = analyzer_source
        self.in_dim = in_dim
        self.cache_dir = cache_dir

    def check(self) -> None:
        """Raise :class:`CheckpointError` now if the HuBERT file is missing."""
        if self.path is None or not self.path.is_file():
            where = self.path if self.path is not None else HUBERT_FILE
            raise CheckpointError(
                f"{where}: HuBERT checkpoint not found; it is needed for analysis (audio -> tokens) "
                f"(get {HUBERT_FILE} from Hugging Face TencentGameMate/chinese-hubert-large)"
            )

    def fingerprint(self) -> str:
        self.check()
        assert self.path is not None
        return file_fingerprint(self.path)

    def __call__(self, dtype: torch.dtype = torch.float32) -> HubertFeatures:
        """Load HuBERT with its weights in ``dtype`` (read and converted tensor by tensor when not float32)."""
        self.check()
        assert self.path is not None
        cfg, state = load_hubert_weights(self.path, self.cache_dir, dtype)
        source: Path = self.path
        if self.override:
            log.info("%s carries HuBERT weights; they override %s", self.analyzer_source, self.path)
            state = fairseq_to_hf(self.override, cfg, source=self.analyzer_source)
            source = self.analyzer_source
        if cfg.embed_dim != self.in_dim:
            raise CheckpointError(
                f"{self.path}: HuBERT width {cfg.embed_dim} does not match the analyzer config's in_dim {self.in_dim}"
            )
        hubert = build_hubert(cfg, state, source=source, dtype=dtype)
        hubert.use_native(native_kernel())  # compiled once per machine; None: the PyTorch paths
        return hubert


@dataclass(frozen=True)
class LoadedModules:
    """The model stages, filled: ``hubert`` is a module, or a :class:`HubertLoader` (loaded on first use).

    ``identity`` maps ``analyzer``/``vocoder`` (and ``hubert`` once known) to file fingerprints.
    """

    hubert: HubertFeatures | HubertLoader
    analyzer: Analyzer
    vocoder: Vocoder
    identity: dict[str, str]


def load_vocoder(cfg: VocoderConfig, path: str | Path) -> Vocoder:
    """A :class:`Vocoder` filled strictly from ``path`` (legacy weight-norm names), its activations on
    the native kernel where one builds here (:mod:`socodec.loading.native`)."""
    vocoder = Vocoder(cfg)  # on CPU: its normal_() init on meta would import torch._dynamo (~1.5 s)
    load_strict(vocoder, read_safetensors(path), source=path)
    vocoder.use_native(native_kernel())  # compiled once per machine; None: the PyTorch path
    return vocoder


def load_modules(
    hubert: str | Path | None,
    analyzer: str | Path,
    vocoder: str | Path,
    analyzer_config: str | Path | AnalyzerConfig | None = None,
    vocoder_config: str | Path | VocoderConfig | None = None,
    cache_dir: str | Path | None = None,
    lazy_hubert: bool = True,
    hubert_dtype: torch.dtype = torch.float32,
) -> LoadedModules:
    """Construct and fill HuBERT (now, or on first use when ``lazy_hubert``), analyzer and vocoder.

    ``hubert_dtype``: the precision HuBERT is loaded in when it is loaded now (a deferred HuBERT
    is loaded in whatever precision its first user asks for).

    Configs default to the released model's. Every key is checked (see
    :func:`~socodec.loading.checkpoints.load_strict`); problems raise :class:`CheckpointError`
    or :class:`~socodec.errors.ConfigError` naming the file.
    """
    a_cfg = AnalyzerConfig.resolve(analyzer_config)
    v_cfg = VocoderConfig.resolve(vocoder_config)
    a_path = Path(analyzer)
    a_state = read_safetensors(a_path)
    override = {k[len(HUBERT_PREFIX):]: v for k, v in a_state.items() if k.startswith(HUBERT_PREFIX)}
    loader = HubertLoader(
        None if hubert is None else Path(hubert), override, a_path, a_cfg.in_dim,
        None if cache_dir is None else Path(cache_dir),
    )
    # HuBERT first when it is wanted now: its width is checked against the analyzer config before
    # the analyzer file is, which names the likelier mistake (a config for another model size).
    hubert_model: HubertFeatures | HubertLoader = loader if lazy_hubert else loader(hubert_dtype)
    analyzer_model = load_analyzer(a_cfg, a_state, source=a_path)
    vocoder_model = load_vocoder(v_cfg, vocoder)
    identity = {"analyzer": file_fingerprint(a_path), "vocoder": file_fingerprint(vocoder)}
    if loader.path is not None and loader.path.is_file():
        identity = {"hubert": loader.fingerprint(), **identity}
    return LoadedModules(hubert_model, analyzer_model, vocoder_model, identity)


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
