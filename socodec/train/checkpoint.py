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
    """Write ``payload`` (plus the step) as the checkpoint of ``step``; keep only the ``keep`` newest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    with atomic_path(path) as tmp:
        torch.save({**payload, "step": step}, tmp)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    log.info("checkpoint: %s", path)
    return path


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file: one clear error
        raise CheckpointError(f"{path}: not a readable training checkpoint ({one_line(exc)})") from None


def latest_checkpoint(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (None when there is none); unreadable ones are skipped."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(path, device)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", one_line(exc))
            continue
        if state.get("step") != step:
            log.warning("%s: step %s in the file does not match its name; skipped", path, state.get("step"))
            continue
        return state
    return None
