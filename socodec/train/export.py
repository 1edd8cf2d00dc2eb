"""``RUN_DIR/export/``: a trained analyzer the normal loading path reads strictly.

The folder holds, under the released file names,

* the analyzer (``socodec_16384x4_120ms_16khz_chinese.safetensors``): every key of the released
  file, the training-only ones included (decoder 1's HuBERT head, the codebooks' ``inited``,
  ``cluster_size``, ``embed_avg``), float32, so it can also be fine-tuned further;
* links (copies where links are impossible) to the HuBERT and vocoder files training used;

plus ``analyzer_config.json`` and ``vocoder_config.json`` in the published config format::

    socodec IN OUT --ckpt-dir RUN_DIR/export --analyzer-config RUN_DIR/export/analyzer_config.json \\
        --vocoder-config RUN_DIR/export/vocoder_config.json
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from socodec.config import AnalyzerConfig, VocoderConfig
from socodec.fileio import atomic_path, atomic_write, temp_path_for
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE
from socodec.train.model import TrainModel

log = logging.getLogger(__name__)

ANALYZER_CONFIG = "analyzer_config.json"
VOCODER_CONFIG = "vocoder_config.json"


def analyzer_config_dict(cfg: AnalyzerConfig) -> dict[str, Any]:
    """``cfg`` in the published config's keys (what :meth:`AnalyzerConfig.from_dict` reads)."""
    return {
        "in_dim": cfg.in_dim,
        "out_dim": cfg.out_dim,
        "n_model_size": cfg.model_size,
        "downsample_scales": list(cfg.downsample_scales),
        "upsample_scales": [list(group) for group in cfg.upsample_scales],
        "mel_config": {
            "style": "BigVGAN",
            "filter_length": cfg.mel.n_fft,
            "hop_length": cfg.mel.hop_length,
            "win_length": cfg.mel.win_length,
            "n_mel_channels": cfg.mel.n_mels,
            "sampling_rate": cfg.mel.sample_rate,
        },
        "vq_class": "VectorQuantization",
        "vq_config": {
            "codebook_size": list(cfg.codebook_size),
            "codebook_dim": list(cfg.codebook_dim),
            "requires_projection": True,
            "decay": 0.99,
            "threshold_ema_dead_code": 0,
            "threshold_kmeans_dead_code": 99999999,
            "commitment_weight": 1.0,
        },
        "tree_config": [{"downsample_rate": 1, "n_groups": cfg.n_streams, "dropout": 0, "ordered": True}],
        "n_samples_per_token": cfg.samples_per_token,
    }


def vocoder_config_dict(cfg: VocoderConfig) -> dict[str, Any]:
    """``cfg`` in the published vocoder config's keys (what :meth:`VocoderConfig.from_dict` reads)."""
    return {
        "num_mels": cfg.num_mels,
        "resblock": cfg.resblock,
        "upsample_rates": list(cfg.upsample_rates),
        "upsample_kernel_sizes": list(cfg.upsample_kernel_sizes),
        "upsample_initial_channel": cfg.upsample_initial_channel,
        "resblock_kernel_sizes": list(cfg.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(d) for d in cfg.resblock_dilation_sizes],
        "activation": "snakebeta",
        "snake_logscale": cfg.snake_logscale,
        "use_bias_at_final": cfg.use_bias_at_final,
        "use_tanh_at_final": cfg.use_tanh_at_final,
    }


def write_analyzer(model: TrainModel, path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    """The analyzer in the released format and names (float32, CPU), written atomically."""
    tensors = {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in model.released_state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        os.chmod(tmp, 0o644)  # safetensors creates its file private; the export is meant to be shared
    return path


def link_or_copy(target: Path, link: Path) -> str:
    """Make ``link`` point at ``target`` (a symlink, else a copy), replacing what was there. Returns how."""
    target = target.resolve()
    if link.is_symlink() and link.resolve() == target:
        return "link"
    tmp = temp_path_for(link)
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
        return "link"
    except OSError:
        tmp.unlink(missing_ok=True)
    with atomic_path(link) as tmp_copy:
        shutil.copyfile(target, tmp_copy)
    return "copy"


def export_run(
    model: TrainModel,
    folder: Path,
    hubert: Path,
    vocoder: Path,
    vocoder_cfg: VocoderConfig,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the export folder (see the module docstring); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_analyzer(model, folder / ANALYZER_FILE, metadata)
    for name, data in ((ANALYZER_CONFIG, analyzer_config_dict(model.analyzer.cfg)),
                       (VOCODER_CONFIG, vocoder_config_dict(vocoder_cfg))):
        text = json.dumps(data, indent=1) + "\n"
        atomic_write(folder / name, lambda tmp, text=text: tmp.write_text(text))
    how = [link_or_copy(hubert, folder / HUBERT_FILE), link_or_copy(vocoder, folder / VOCODER_FILE)]
    log.info("export: %s (HuBERT and vocoder %s)", folder, "linked" if set(how) == {"link"} else "copied")
    return folder
