"""Training checkpoints: ``RUN_DIR/checkpoints/step_NNNNNNNN.pt``, written atomically.

A checkpoint holds everything an interrupted run needs to continue exactly: the model
(analyzer, HuBERT-feature head, codebook EMA statistics), the optimiser and gradient-scaler
states, the step, every process's training generator and the global torch/CUDA/numpy/Python
random states. It is read back with ``torch.load(weights_only=True)``: only tensors and
plain containers, no pickled code.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from socodec.errors import CheckpointError, one_line
from socodec.fileio import atomic_path

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
