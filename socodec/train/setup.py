"""Setting a run up: which files, the codec (frozen HuBERT, vocoder) and the model being trained.

* ``init`` given: a folder with the three released-name files; the analyzer starts from its
  weights (training-only keys too, where the file has them) and HuBERT/vocoder come from it.
* ``init`` absent: the analyzer starts from scratch (PyTorch's default initialisation, seeded;
  codebooks empty, so k-means runs on the first batch), HuBERT and vocoder from ``ckpt_dir``.
  The fresh analyzer is written to ``RUN_DIR/init/`` and loaded through the normal path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from socodec.codec import SoCodec
from socodec.config import AnalyzerConfig, VocoderConfig
from socodec.errors import CheckpointError
from socodec.loading.checkpoints import ANALYZER_FILE, CheckpointPaths
from socodec.loading.checkpoints import resolve_checkpoints
from socodec.nn.analyzer import Analyzer
from socodec.train import distributed
from socodec.train.checkpoint import write_analyzer
from socodec.train.model import TrainModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from (typed form of the command's model options)."""

    init: Path | None = None
    """Folder with the three released-name files whose analyzer training starts from (None: from scratch)."""
    ckpt_dir: Path | None = None
    """HuBERT and vocoder for a from-scratch run (default: $SOCODEC_CKPT_DIR or ./ckpts, else downloaded)."""
    analyzer_config: Path | None = None
    vocoder_config: Path | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    allow_download: bool = True


@dataclass
class Models:
    codec: SoCodec
    """The codec whose ``analyzer`` is the model being trained (validation and samples use it)."""
    model: TrainModel
    hubert_path: Path
    vocoder_path: Path
    vocoder_config: VocoderConfig
    missing_extras: list[str]


def model_files(source: ModelSource) -> CheckpointPaths:
    """The HuBERT, (initial) analyzer and vocoder files of ``source``."""
    if source.init is not None:
        paths = CheckpointPaths.in_dir(source.init)
        missing = paths.missing()
        if missing:
            raise CheckpointError(f"{source.init}: --init folder lacks {', '.join(p.name for p in missing)}")
        return paths
    return resolve_checkpoints(source.ckpt_dir, allow_download=source.allow_download)


def scratch_analyzer(cfg: AnalyzerConfig, run_dir: Path, seed: int, dist: distributed.DistInfo) -> Path:
    """A freshly initialised analyzer file in ``RUN_DIR/init`` (written once, by process 0)."""
    path = run_dir / "init" / ANALYZER_FILE
    if dist.is_main and not path.is_file():
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_analyzer(TrainModel(Analyzer(cfg)), path, {"socodec_train": "initial weights (from scratch)"})
        log.info("starting from scratch: initial analyzer %s", path)
    distributed.barrier()
    return path


def build_models(source: ModelSource, run_dir: Path, seed: int, epsilon: float,
                 dist: distributed.DistInfo, device: torch.device) -> Models:
    """Load the codec strictly and make its analyzer a trainable copy wrapped in a :class:`TrainModel`."""
    paths = model_files(source)
    a_cfg = AnalyzerConfig.resolve(source.analyzer_config)
    v_cfg = VocoderConfig.resolve(source.vocoder_config)
    analyzer_file = paths.analyzer if source.init is not None else scratch_analyzer(a_cfg, run_dir, seed, dist)
    codec = SoCodec.from_files(paths.hubert, analyzer_file, paths.vocoder, analyzer_config=a_cfg, vocoder_config=v_cfg)
    torch.manual_seed(seed)
    model = TrainModel(Analyzer(a_cfg))
    model.analyzer.load_state_dict(codec.analyzer.state_dict())  # copies: the file stays untouched
    missing = model.load_training_extras(load_file(str(analyzer_file)), epsilon)
    codec.analyzer = model.analyzer
    codec.to_device(device, source.dtype)
    model.to(device)
    codec.hubert.requires_grad_(False)
    codec.vocoder.requires_grad_(False)
    return Models(codec, model, paths.hubert, paths.vocoder, v_cfg, missing)
