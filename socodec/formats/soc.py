"""The ``.soc`` token file: pickle-free, versioned, checked before anything is allocated.

All integers little-endian::

    magic     8 bytes   b"SOCODEC\\x00"
    version   uint8     1
    hlen      uint32    length of the header, 2 .. 65536
    header    hlen      UTF-8 JSON object: exactly the keys of REQUIRED_KEYS (+ OPTIONAL_KEYS)
    tokens    T*S*2     uint16, row-major [T, S]
    speaker   D*4       float32 [D]
    (end of file: nothing may follow)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from socodec.errors import CodesError

__all__ = ["SOC_MAGIC", "SOC_VERSION", "SOC_MAX_HEADER", "SOC_FORMAT", "encode_soc", "read_soc"]

SOC_MAGIC = b"SOCODEC\x00"
SOC_VERSION = 1
SOC_FORMAT = f"socodec-soc/{SOC_VERSION}"
SOC_MAX_HEADER = 64 * 1024
CARDINALITY = 16384
MAX_STREAMS = 4
PREFIX = struct.Struct("<8sBI")  # magic, version, header length
TOKEN_DTYPE = "uint16le"
SPEAKER_DTYPE = "float32le"
REQUIRED_KEYS = frozenset("format frames streams cardinality token_dtype speaker_dim speaker_dtype".split()
                          + "sample_rate num_samples lead model".split())
OPTIONAL_KEYS = frozenset({"padding", "attention", "hubert_window"})
MAX_SPEAKER_DIM = 1 << 20


def encode_soc(meta: dict[str, Any], tokens: np.ndarray, speaker: np.ndarray) -> bytes:
    """The bytes of a ``.soc`` file.

    Args:
        meta: ``sample_rate``, ``num_samples``, ``lead``, ``model`` and optionally ``padding``,
            ``attention``, ``hubert_window`` (already validated; None ones are left out).
        tokens: ``[T, S]`` integers in [0, 16384).
        speaker: ``[D]`` float32.
    """
    header = {
        "format": SOC_FORMAT,
        "frames": int(tokens.shape[0]),
        "streams": int(tokens.shape[1]),
        "cardinality": CARDINALITY,
        "token_dtype": TOKEN_DTYPE,
        "speaker_dim": int(speaker.shape[0]),
        "speaker_dtype": SPEAKER_DTYPE,
        "sample_rate": int(meta["sample_rate"]),
        "num_samples": meta["num_samples"],
        "lead": meta["lead"],
        "model": dict(meta["model"]),
    }
    header.update({k: meta[k] for k in sorted(OPTIONAL_KEYS) if meta.get(k) is not None})
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(blob) > SOC_MAX_HEADER:
        raise CodesError(f"header of {len(blob)} bytes exceeds {SOC_MAX_HEADER} (model identity too large)")
    prefix = PREFIX.pack(SOC_MAGIC, SOC_VERSION, len(blob))
    return prefix + blob + tokens.astype("<u2").tobytes() + speaker.astype("<f4").tobytes()


def parse_header(blob: bytes) -> dict[str, Any]:
    """Decode and check the structural fields of a ``.soc`` header (the rest is checked by ``Codes``)."""
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodesError(f"header is not UTF-8 JSON ({str(exc)[:100]})") from None
    if not isinstance(header, dict):
        raise CodesError("header is not a JSON object")
    keys = set(header)
    if not REQUIRED_KEYS <= keys or keys - REQUIRED_KEYS - OPTIONAL_KEYS:
        missing, extra = sorted(REQUIRED_KEYS - keys), sorted(keys - REQUIRED_KEYS - OPTIONAL_KEYS)
        raise CodesError(f"header keys wrong (missing {missing}, unexpected {extra})"[:300])
    expected = {"format": SOC_FORMAT, "cardinality": CARDINALITY, "token_dtype": TOKEN_DTYPE,
                "speaker_dtype": SPEAKER_DTYPE}
    for key, want in expected.items():
        if header[key] != want or type(header[key]) is not type(want):
            raise CodesError(f"header {key} is {header[key]!r}, expected {want!r}"[:200])
    sizes = {"frames": (0, 1 << 62), "streams": (1, MAX_STREAMS), "speaker_dim": (1, MAX_SPEAKER_DIM)}
    for key, (lo, hi) in sizes.items():
        value = header[key]
        if not (isinstance(value, int) and not isinstance(value, bool)) or not lo <= value <= hi:
            raise CodesError(f"header {key} is {value!r}"[:100] + f", expected an integer in {lo}..{hi}")
    return header


def read_soc(path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``(header, tokens [T, S] int64, speaker [D] float32)`` of a ``.soc`` file.

    The header and the exact payload size are checked before the payload is read.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(PREFIX.size)
        if len(prefix) < PREFIX.size:
            raise CodesError(f"truncated: {size} bytes, shorter than the {PREFIX.size}-byte prefix")
        magic, version, hlen = PREFIX.unpack(prefix)
        if magic != SOC_MAGIC:
            raise CodesError(f"wrong magic {magic!r} (not a .soc file)")
        if version != SOC_VERSION:
            raise CodesError(f"unsupported .soc version {version} (this reader supports {SOC_VERSION})")
        if not 2 <= hlen <= SOC_MAX_HEADER:
            raise CodesError(f"header length {hlen} outside 2..{SOC_MAX_HEADER}")
        if PREFIX.size + hlen > size:
            raise CodesError(f"truncated: header of {hlen} bytes does not fit in {size} bytes")
        header = parse_header(f.read(hlen))
        frames, streams, dim = header["frames"], header["streams"], header["speaker_dim"]
        token_bytes, speaker_bytes = frames * streams * 2, dim * 4
        payload = size - PREFIX.size - hlen
        if payload != token_bytes + speaker_bytes:
            raise CodesError(
                f"payload is {payload} bytes but the header ({frames} frames x {streams} streams, "
                f"speaker {dim}) implies {token_bytes + speaker_bytes}"
            )
        data = f.read(payload + 1)
    if len(data) != payload:
        raise CodesError(f"file changed while reading ({len(data)} payload bytes, expected {payload})")
    tokens = np.frombuffer(data, dtype="<u2", count=frames * streams).astype(np.int64).reshape(frames, streams)
    speaker = np.frombuffer(data, dtype="<f4", count=dim, offset=token_bytes).astype(np.float32)
    return header, tokens, speaker
