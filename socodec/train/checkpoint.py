"""Training checkpoints: ``RUN_DIR/checkpoints/step_NNNNNNNN.pt``, written atomically.

A checkpoint holds everything an interrupted run needs to continue exactly: the model
(analyzer, HuBERT-feature head, codebook EMA statistics), the optimiser and gradient-scaler
states, the step, every process's training generator and the global torch/CUDA/numpy/Python
random states. It is read back with ``torch.load(weights_only=True)``: only tensors and
plain containers, no pickled code.

Run logs: ``metrics.csv`` (one row per step), ``valid.csv`` (one row per validation) and,
when the ``tensorboard`` package is installed, TensorBoard event files in ``RUN_DIR/tensorboard``.

On resume the CSV rows after the checkpoint's step are dropped (the steps are run again),
so each step appears once. A log with other columns (from another version) is never
overwritten: it is moved aside as ``metrics.<UTC time>.csv`` (``valid.<UTC time>.csv``).

``RUN_DIR/export/``: a trained analyzer the normal loading path reads strictly.

The folder holds, under the released file names,

* the analyzer (``socodec_16384x4_120ms_16khz_chinese.safetensors``): every key of the released
  file, the training-only ones included (decoder 1's HuBERT head, the codebooks' ``inited``,
  ``cluster_size``, ``embed_avg``), float32, so it can also be fine-tuned further;
* links (copies where links are impossible) to the HuBERT and vocoder files training used;

plus ``analyzer_config.json`` and ``vocoder_config.json`` in the published config format::

    socodec IN OUT --ckpt-dir RUN_DIR/export --analyzer-config RUN_DIR/export/analyzer_config.json \
        --vocoder-config RUN_DIR/export/vocoder_config.json
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from socodec.config import AnalyzerConfig, VocoderConfig
from socodec.errors import CheckpointError, one_line
from socodec.fileio import atomic_path, atomic_write, temp_path_for
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE
from socodec.train.model import TrainModel


log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def global_rng_state() -> dict[str, Any]:
    """The process-wide random states: torch (CPU and CUDA), numpy, Python."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4]), "state": torch.from_numpy(np_state[1].astype(np.int64))},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` (plus the step) as the checkpoint of ``step``, then prune.

    Pruning only deletes checkpoints of earlier steps than ``step``, keeps the ``keep`` newest
    (the one just written included) and never deletes a file without a readable checkpoint
    left: a file found unreadable is renamed aside (``*.bad``) instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    with atomic_path(path) as tmp:
        torch.save({**payload, "step": step}, tmp)
    log.info("checkpoint: %s", path)
    _prune(folder, step, keep)
    return path


def _prune(folder: Path, step: int, keep: int) -> None:
    """Delete checkpoints older than the ``keep`` newest readable ones up to ``step`` (newer ones stay)."""
    kept = 0
    for old_step, old in reversed(list_checkpoints(folder)):
        if old_step > step:
            continue  # a later step than the one just written (an earlier run's): never ours to prune
        if kept < keep:
            if old_step == step or _readable(old, old_step):  # just written atomically
                kept += 1
            continue
        old.unlink(missing_ok=True)


def _readable(path: Path, step: int) -> bool:
    """True when ``path`` loads as the checkpoint of ``step``; an unreadable file is renamed ``*.bad``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped: cheap for big files
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        _set_aside(path, f"{path}: not a readable training checkpoint ({one_line(exc)})")
        return False
    if state.get("step") != step:
        _set_aside(path, f"{path}: step {state.get('step')} in the file does not match its name")
        return False
    return True


def _set_aside(path: Path, why: str) -> None:
    bad = path.with_name(path.name + ".bad")
    try:
        path.replace(bad)
    except OSError as exc:
        log.warning("%s; could not rename it to %s (%s)", why, bad.name, one_line(exc))
        return
    log.warning("%s; renamed to %s and not used", why, bad)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file: one clear error
        raise CheckpointError(f"{path}: not a readable training checkpoint ({one_line(exc)})") from None


def latest_checkpoint(folder: Path, device: torch.device | str = "cpu", set_aside: bool = True) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (None when there is none).

    Unreadable ones are skipped with a warning and, with ``set_aside`` (process 0 only), renamed ``*.bad``.
    """
    for step, path in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(path, device)
        except CheckpointError as exc:
            if set_aside:
                _set_aside(path, one_line(exc))
            else:
                log.warning("%s; trying an older checkpoint", one_line(exc))
            continue
        if state.get("step") != step:
            why = f"{path}: step {state.get('step')} in the file does not match its name"
            if set_aside:
                _set_aside(path, why)
            else:
                log.warning("%s; skipped", why)
            continue
        return state
    return None


def train_columns(n_streams: int) -> list[str]:
    cols = ["step", "loss", "loss_mel", "loss_ssl", "loss_commit"]
    cols += [f"usage_{k}" for k in range(1, n_streams + 1)]
    cols += [f"perplexity_{k}" for k in range(1, n_streams + 1)]
    return cols + ["grad_norm", "lr", "seconds", "skipped"]


def valid_columns(n_streams: int) -> list[str]:
    return (["step"] + [f"mel_distance_{k}" for k in range(1, n_streams + 1)] + ["ordered", "clips"]
            + ["dnsmos_ovrl", "speaker_similarity"])  # the last two need the [eval] extra (else empty)


class CsvLog:
    """Append-only CSV with a fixed header; :meth:`truncate_after` drops rows of later steps."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)

    def truncate_after(self, step: int) -> None:
        """Keep the header and the rows with ``step <= step`` (rewritten atomically); start a new file if absent."""
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                same = reader.fieldnames == self.columns
                if same:
                    rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= step]
            if not same:
                aside = self._aside_path()
                self.path.replace(aside)
                log.warning("%s has other columns (written by another version); moved to %s, starting a new one",
                            self.path, aside.name)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, lambda tmp: tmp.write_text(buf.getvalue()))

    def _aside_path(self) -> Path:
        """``<stem>.<UTC time>.csv`` beside the log (a counter is added when that name is taken)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        candidate = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
        n = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{self.path.stem}.{stamp}-{n}{self.path.suffix}")
            n += 1
        return candidate

    def rows(self) -> list[dict[str, str]]:
        """The rows written so far (none when the file does not exist)."""
        return read_csv(self.path) if self.path.is_file() else []

    def append(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns})


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value: Any) -> Any:
    """Floats as their shortest exact text (a resumed run's rows compare equal digit for digit)."""
    return repr(value) if isinstance(value, float) else value


class Board:
    """TensorBoard scalars when the ``tensorboard`` package is installed; otherwise nothing."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed: no TensorBoard logs (pip install socodec[train])")
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
