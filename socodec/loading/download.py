"""Finding the released weight files: a local folder, else a Hugging Face download."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE, CheckpointPaths
from socodec.errors import CheckpointError

log = logging.getLogger(__name__)

HUBERT_REPO = "TencentGameMate/chinese-hubert-large"
SOCODEC_REPO = "hhguo/SoCodec"
SOURCES = {HUBERT_FILE: HUBERT_REPO, ANALYZER_FILE: SOCODEC_REPO, VOCODER_FILE: SOCODEC_REPO}


def default_ckpt_dir() -> Path:
    """``$SOCODEC_CKPT_DIR`` or ``./ckpts``."""
    return Path(os.environ.get("SOCODEC_CKPT_DIR", "ckpts"))


def missing_weights_message(ckpt_dir: Path, reason: str) -> str:
    absent = [name for name in SOURCES if not (ckpt_dir / name).is_file()] or list(SOURCES)
    files = ", ".join(f"{name} (Hugging Face {SOURCES[name]})" for name in absent)
    return (f"{ckpt_dir}: model weights missing and {reason}; download {files} "
            f"and put them in {ckpt_dir} (or pass --ckpt-dir)")


def resolve_checkpoints(ckpt_dir: Path | None, allow_download: bool = True) -> CheckpointPaths:
    """Paths of the three files: from ``ckpt_dir`` if all are there, else downloaded into the HF cache."""
    folder = ckpt_dir if ckpt_dir is not None else default_ckpt_dir()
    local = CheckpointPaths.in_dir(folder)
    if not local.missing():
        return local
    if not allow_download:
        raise CheckpointError(missing_weights_message(folder, "downloading is disabled (--no-download)"))
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise CheckpointError(missing_weights_message(folder, "HF_HUB_OFFLINE is set"))
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(missing_weights_message(folder, "huggingface_hub is not installed")) from None
    found: dict[str, Path] = {}
    for name, repo in SOURCES.items():
        if (folder / name).is_file():
            found[name] = folder / name
            continue
        log.info("downloading %s from %s", name, repo)
        try:
            found[name] = Path(hf_hub_download(repo_id=repo, filename=name))
        except Exception as exc:  # network, auth, missing repo: all end the same way for the user
            raise CheckpointError(missing_weights_message(folder, f"the download failed ({type(exc).__name__})")) from None
    return CheckpointPaths(found[HUBERT_FILE], found[ANALYZER_FILE], found[VOCODER_FILE])
