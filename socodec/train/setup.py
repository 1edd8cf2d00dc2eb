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
from socodec.config import AnalyzerConfig, ModelOptions, VocoderConfig
from socodec.errors import CheckpointError
from socodec.loading.checkpoints import ANALYZER_FILE, CheckpointPaths
from socodec.loading.checkpoints import resolve_checkpoints
from socodec.nn.analyzer import Analyzer
from socodec.train import distributed
from socodec.train.checkpoint import write_analyzer
from socodec.train.model import TrainModel

log = logging.getLogger(__name__)


@dataclass
class Models:
    codec: SoCodec
    """The codec whose ``analyzer`` is the model being trained (validation and samples use it)."""
    model: TrainModel
    hubert_path: Path
    vocoder_path: Path
    vocoder_config: VocoderConfig
    missing_extras: list[str]


def model_files(model: ModelOptions, init: Path | None) -> CheckpointPaths:
    """The HuBERT, (initial) analyzer and vocoder files: those in ``init`` when fine-tuning (the
    analyzer starts from its weights), else ``model.ckpt_dir``'s (or downloaded)."""
    if init is not None:
        paths = CheckpointPaths.in_dir(init)
        missing = paths.missing()
        if missing:
            raise CheckpointError(f"{init}: --init folder lacks {', '.join(p.name for p in missing)}")
        return paths
    return resolve_checkpoints(model.ckpt_dir, allow_download=model.allow_download)


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


def build_models(model_opts: ModelOptions, init: Path | None, run_dir: Path, seed: int, epsilon: float,
                 dist: distributed.DistInfo, device: torch.device) -> Models:
    """Load the codec strictly and make its analyzer a trainable copy wrapped in a :class:`TrainModel`
    (from ``init``'s analyzer, or from scratch when ``init`` is None)."""
    paths = model_files(model_opts, init)
    a_cfg = AnalyzerConfig.resolve(model_opts.analyzer_config)
    v_cfg = VocoderConfig.resolve(model_opts.vocoder_config)
    analyzer_file = paths.analyzer if init is not None else scratch_analyzer(a_cfg, run_dir, seed, dist)
    codec = SoCodec.from_files(paths.hubert, analyzer_file, paths.vocoder, analyzer_config=a_cfg, vocoder_config=v_cfg)
    torch.manual_seed(seed)
    model = TrainModel(Analyzer(a_cfg))
    model.analyzer.load_state_dict(codec.analyzer.state_dict())  # copies: the file stays untouched
    missing = model.load_training_extras(load_file(str(analyzer_file)), epsilon)
    codec.analyzer = model.analyzer
    codec.to_device(device, model_opts.torch_dtype)
    model.to(device)
    codec.hubert.requires_grad_(False)
    codec.vocoder.requires_grad_(False)
    return Models(codec, model, paths.hubert, paths.vocoder, v_cfg, missing)
