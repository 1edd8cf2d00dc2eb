"""The released checkpoint files, and strict checkpoint loading for safetensors files.

Every key a module needs must be present with the right shape; keys that a
caller declares training-only are ignored; anything else fails with one
:class:`~socodec.errors.CheckpointError` naming the file, the key and the shapes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from socodec.errors import CheckpointError, one_line

HUBERT_FILE = "chinese-hubert-large-fairseq-ckpt.pt"
ANALYZER_FILE = "socodec_16384x4_120ms_16khz_chinese.safetensors"
VOCODER_FILE = "mel_vocoder_80dim_10ms_16khz.safetensors"
RELEASED_FILES = (HUBERT_FILE, ANALYZER_FILE, VOCODER_FILE)


@dataclass(frozen=True)
class CheckpointPaths:
    """Where the three model files are."""

    hubert: Path
    analyzer: Path
    vocoder: Path

    @classmethod
    def in_dir(cls, ckpt_dir: str | Path) -> "CheckpointPaths":
        d = Path(ckpt_dir)
        return cls(d / HUBERT_FILE, d / ANALYZER_FILE, d / VOCODER_FILE)

    def missing(self) -> list[Path]:
        return [p for p in (self.hubert, self.analyzer, self.vocoder) if not p.is_file()]


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a whole safetensors file (memory-mapped by safetensors) into a dict of CPU tensors."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a file")
    try:
        with torch.inference_mode(False):  # weights become parameters: never inference tensors
            return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: not a readable safetensors file ({one_line(exc)})") from None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_as(path: str | Path, dtype: torch.dtype, keep: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Read a safetensors file tensor by tensor, floating-point tensors converted to ``dtype``.

    Plain reads, not a memory map: a memory-mapped file keeps every page it has touched
    resident until its last tensor is released, so converting a mapped checkpoint costs
    its stored size plus the converted size at once. Here the peak is the converted tensors
    plus one tensor as stored. Keys in ``keep`` stay as stored.
    """
    p = Path(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with p.open("rb") as f, torch.inference_mode(False):  # weights become parameters
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= p.stat().st_size - 8:
                raise ValueError(f"header length {size} does not fit the file")
            header = json.loads(f.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            base = 8 + size
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                if info["dtype"] not in _SAFETENSORS_DTYPES:
                    raise ValueError(f"tensor '{key}' has unsupported dtype {info['dtype']}")
                stored, shape = _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
                if (end - start) != math.prod(shape) * stored.itemsize:
                    raise ValueError(f"tensor '{key}' has {end - start} bytes for shape {list(shape)}")
                if end == start:
                    tensor = torch.empty(shape, dtype=stored)
                else:
                    buf = bytearray(end - start)
                    f.seek(base + start)
                    if f.readinto(buf) != len(buf):
                        raise ValueError(f"tensor '{key}' is truncated")
                    tensor = torch.frombuffer(buf, dtype=stored).reshape(shape)
                if tensor.is_floating_point() and tensor.dtype != dtype and key not in keep:
                    tensor = tensor.to(dtype)
                out[key] = tensor
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: not a readable safetensors file ({one_line(exc)})") from None
    return out


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str | Path,
    prefix: str = "",
    ignore: Callable[[str], bool] | None = None,
) -> None:
    """Load ``state`` (keys under ``prefix``) into ``module``, checking every key and shape.

    Args:
        module: the module to fill; its ``state_dict()`` names the keys it needs.
        state: checkpoint tensors, possibly holding other modules' keys too.
        source: the file the tensors came from (for error messages).
        prefix: e.g. ``"encoder."``; only keys starting with it are considered.
        ignore: returns True for (prefix-stripped) keys that are known and unused.
    """
    wanted = module.state_dict()
    found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for key in list(found):
        if key not in wanted and ignore is not None and ignore(key):
            del found[key]
    missing = [k for k in wanted if k not in found]
    if missing:
        raise CheckpointError(
            f"{source}: missing key '{prefix}{missing[0]}' (expected shape {list(wanted[missing[0]].shape)})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    unexpected = [k for k in found if k not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key '{prefix}{unexpected[0]}'"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            + " (is this checkpoint for another model?)"
        )
    for key, tensor in found.items():
        if tuple(tensor.shape) != tuple(wanted[key].shape):
            raise CheckpointError(
                f"{source}: key '{prefix}{key}' has shape {list(tensor.shape)}, expected {list(wanted[key].shape)} "
                "(checkpoint and config describe different model sizes?)"
            )
        if not tensor.is_floating_point() and wanted[key].is_floating_point():
            raise CheckpointError(f"{source}: key '{prefix}{key}' has dtype {tensor.dtype}, expected floating point")
    # assign=True keeps the (memory-mapped) file tensors as the parameters: weights a
    # call never uses (the vocoder during encode, say) are never paged into memory.
    # An inference tensor (made under torch.inference_mode, e.g. by a caller's own loading) cannot
    # become a parameter: copy those; file tensors are assigned as they are.
    with torch.inference_mode(False):
        state = {k: (v.clone() if v.is_inference() else v).to(wanted[k].dtype) for k, v in found.items()}
        module.load_state_dict(state, strict=True, assign=True)



def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """A fast identity for a weight file: sha256 of its size, first and last MiB (16 hex digits).

    Hashing whole multi-GB files would dominate load time; size plus both ends
    tells released files and their variants apart.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]
