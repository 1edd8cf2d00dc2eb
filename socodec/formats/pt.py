"""The ``.pt`` token file: the published layout ``{"token": int64 [T, S], "speaker": float32 [D]}``.

We add the keys ``sample_rate``, ``num_samples``, ``lead``, ``padding``, ``attention``,
``hubert_window``, ``model`` and ``format`` (``"socodec-pt/1"``); files without them (the published tool's) read too. Always
read with ``torch.load(weights_only=True)``: a file that needs any other pickle global is
refused, nothing in it is executed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from socodec.errors import CodesError, unpickle_reason

__all__ = ["PT_FORMAT", "encode_pt", "read_pt"]

PT_FORMAT = "socodec-pt/1"
META_KEYS = ("sample_rate", "num_samples", "lead", "padding", "attention", "hubert_window", "model")
#: written only when known (files without them read as "unknown")
OPTIONAL_KEYS = ("padding", "attention", "hubert_window")


def encode_pt(meta: dict[str, Any], tokens: torch.Tensor, speaker: torch.Tensor) -> bytes:
    """The bytes of a ``.pt`` file (serialised in memory: a failing disk then raises the real OSError).

    Args:
        meta: the :data:`META_KEYS` (validated); :data:`OPTIONAL_KEYS` that are None are left out.
        tokens: ``[T, S]`` int64; speaker: ``[D]`` float32.
    """
    payload: dict[str, Any] = {
        "token": tokens.clone(),  # clone: never save a larger underlying storage
        "speaker": speaker.clone(),
        "sample_rate": int(meta["sample_rate"]),
        "num_samples": meta["num_samples"],
        "lead": meta["lead"],
        "model": dict(meta["model"]),
        "format": PT_FORMAT,
    }
    payload.update({k: meta[k] for k in OPTIONAL_KEYS if meta.get(k) is not None})
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def read_pt(path: Path) -> dict[str, Any]:
    """``{"token", "speaker", and whichever META_KEYS the file has}``; types are checked by ``Codes``."""
    with path.open("rb") as f:
        head = f.read(4)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
        raise CodesError("not a torch file: it is neither a zip archive nor a pickle (a text file named .pt?)")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols in corrupt files
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - untrusted input: every failure mode of the unpickler
        raise CodesError(f"cannot unpickle safely: {unpickle_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise CodesError(f"expected a dict with 'token' and 'speaker', got {type(obj).__name__}")
    for key in ("token", "speaker"):
        if key not in obj:
            raise CodesError(f"missing key {key!r}")
        if not isinstance(obj[key], torch.Tensor):
            raise CodesError(f"{key!r} must be a tensor, got {type(obj[key]).__name__}")
    fmt = obj.get("format", PT_FORMAT)
    if not isinstance(fmt, str) or fmt != PT_FORMAT:
        raise CodesError(f"unsupported format {fmt!r}"[:100] + f" (this version reads {PT_FORMAT!r})")
    return {"token": obj["token"].detach(), "speaker": obj["speaker"].detach(),
            **{k: obj[k] for k in META_KEYS if k in obj}}
