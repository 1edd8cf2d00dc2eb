"""Codec output (tokens + speaker vector) and its two file formats.

:class:`Codes` holds what the analyzer produces for one utterance: tokens
``[T, S]`` (S ordered streams of ``log2(16384) = 14`` bits, one frame per
1920 samples = 120 ms at 16 kHz) and one speaker vector ``[D]``.

Files (chosen by suffix, see :data:`TOKEN_SUFFIXES`):

``.pt``
    The published layout: ``torch.save`` of ``{"token": int64 [T, S],
    "speaker": float32 [D]}`` plus our metadata keys ``sample_rate``,
    ``num_samples``, ``lead``, ``model`` and ``format`` (``"socodec-pt/1"``).
    Always read with ``torch.load(weights_only=True)``: a file that needs any
    other pickle global is refused, nothing in it is executed.
``.soc``
    Pickle-free binary, all integers little-endian::

        magic     8 bytes   b"SOCODEC\\x00"
        version   uint8     1
        hlen      uint32    length of the header, 2 .. 65536
        header    hlen      UTF-8 JSON object, exactly the keys of _SOC_KEYS
        tokens    T*S*2     uint16, row-major [T, S]
        speaker   D*4       float32 [D]
        (end of file: nothing may follow)

Writers are atomic (:func:`socodec.fileio.atomic_write`); readers raise
:class:`~socodec.errors.CodesError` naming the file for any problem.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from socodec.config import SAMPLE_RATE, SAMPLES_PER_TOKEN
from socodec.errors import CodesError, unpickle_reason
from socodec.fileio import atomic_write

logger = logging.getLogger(__name__)

CARDINALITY = 16384
MAX_STREAMS = 4
FORMAT_VERSION = 1
PT_FORMAT = f"socodec-pt/{FORMAT_VERSION}"
SOC_FORMAT = f"socodec-soc/{FORMAT_VERSION}"
TOKEN_SUFFIXES = (".pt", ".soc")

SOC_MAGIC = b"SOCODEC\x00"
SOC_VERSION = 1
SOC_MAX_HEADER = 64 * 1024
_SOC_PREFIX = struct.Struct("<8sBI")  # magic, version, header length
_SOC_TOKEN_DTYPE = "uint16le"
_SOC_SPEAKER_DTYPE = "float32le"
_SOC_KEYS = frozenset("format frames streams cardinality token_dtype speaker_dim speaker_dtype".split()
                      + "sample_rate num_samples lead model".split())
_MAX_SPEAKER_DIM = 1 << 20
_INT_DTYPES = frozenset(
    {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
    | {getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)}
)
_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_MAX_SAMPLE_RATE = 1_000_000


def _is_int(value: object) -> bool:
    """True for a plain integer (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_optional_count(name: str, value: object) -> None:
    """``value`` must be None or a non-negative int."""
    if value is not None and not (_is_int(value) and value >= 0):
        raise CodesError(f"{name} must be a non-negative integer or unknown, got {value!r}")


def _check_model(model: object) -> None:
    """``model`` must map str to str."""
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in model.items()):
        raise CodesError(f"model identity must map strings to strings, got {model!r}"[:200])


@dataclass
class Codes:
    """Tokens and speaker vector of one utterance.

    Attributes:
        tokens: ``[T, S]`` integer (int64 once loaded), S streams in 1..4, values in [0, 16384).
        speaker: ``[D]`` float32 speaker vector (D = 1024 released, 64 in the tiny test models).
        sample_rate: model rate in Hz; a frame is 1920 samples at this rate.
        num_samples: length of the original input (without the lead); None if unknown.
        lead: zeros prepended before analysis (8000 by default, 0 with ``--no-lead``); None if unknown.
        model: model identity, e.g. ``{"analyzer": "<sha256 prefix>", "hubert": ..., "vocoder": ...}``.
    """

    tokens: torch.Tensor
    speaker: torch.Tensor
    sample_rate: int = SAMPLE_RATE
    num_samples: int | None = None
    lead: int | None = None
    model: dict[str, str] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """T, the number of token frames."""
        return int(self.tokens.shape[0])

    @property
    def num_streams(self) -> int:
        """S, the number of streams per frame."""
        return int(self.tokens.shape[1])

    @property
    def speaker_dim(self) -> int:
        """D, the speaker vector size."""
        return int(self.speaker.shape[0])

    @property
    def duration(self) -> float:
        """Seconds of decoded output: ``num_samples / sr`` if known, else ``T * 1920 / sr``."""
        samples = self.num_samples if self.num_samples is not None else self.num_frames * SAMPLES_PER_TOKEN
        return samples / self.sample_rate

    def bitrate(self, include_speaker: bool = True) -> float:
        """Bits per second: ``S * 14 / 0.12`` (466.7 for 4 streams), plus ``D * 32 / duration``.

        With the speaker included and a zero duration the result is ``math.inf``.
        """
        frame_seconds = SAMPLES_PER_TOKEN / self.sample_rate
        rate = self.num_streams * math.log2(CARDINALITY) / frame_seconds
        if include_speaker:
            bits = self.speaker_dim * 32
            rate += bits / self.duration if self.duration > 0 else math.inf
        return rate

    def validate(
        self, cardinality: int = CARDINALITY, max_streams: int = MAX_STREAMS, speaker_dim: int | None = None
    ) -> Codes:
        """Check shapes, dtypes, ranges and metadata; raise :class:`CodesError` on the first problem.

        Returns ``self`` so that calls can be chained.
        """
        tok, spk = self.tokens, self.speaker
        if not isinstance(tok, torch.Tensor) or tok.layout != torch.strided:
            raise CodesError(f"tokens must be a dense tensor, got {type(tok).__name__}")
        if tok.dim() != 2:
            raise CodesError(f"tokens must have shape [frames, streams], got {list(tok.shape)}")
        if tok.dtype not in _INT_DTYPES:
            raise CodesError(f"tokens must be integers, got {tok.dtype}")
        if not 1 <= tok.shape[1] <= max_streams:
            raise CodesError(f"tokens must have 1 to {max_streams} streams, got {tok.shape[1]}")
        if tok.numel():
            lo, hi = int(tok.min()), int(tok.max())
            if lo < 0 or hi >= cardinality:
                raise CodesError(f"token values must lie in [0, {cardinality}), got [{lo}, {hi}]")
        if not isinstance(spk, torch.Tensor) or spk.layout != torch.strided:
            raise CodesError(f"speaker must be a dense tensor, got {type(spk).__name__}")
        if spk.dim() != 1 or spk.shape[0] < 1:
            raise CodesError(f"speaker must have shape [dim], got {list(spk.shape)}")
        if spk.dtype not in _FLOAT_DTYPES:
            raise CodesError(f"speaker must be floating point, got {spk.dtype}")
        if speaker_dim is not None and spk.shape[0] != speaker_dim:
            raise CodesError(f"speaker vector has {spk.shape[0]} values, the model expects {speaker_dim}")
        if not bool(torch.isfinite(spk).all()):
            raise CodesError("speaker vector holds NaN or infinite values")
        if not (_is_int(self.sample_rate) and 0 < self.sample_rate <= _MAX_SAMPLE_RATE):
            raise CodesError(f"sample_rate must be in 1..{_MAX_SAMPLE_RATE}, got {self.sample_rate!r}"[:200])
        _check_optional_count("num_samples", self.num_samples)
        _check_optional_count("lead", self.lead)
        covered = (self.lead or 0) + (self.num_samples or 0)
        capacity = tok.shape[0] * SAMPLES_PER_TOKEN
        if covered > capacity:
            raise CodesError(
                f"lead ({self.lead}) + num_samples ({self.num_samples}) = {covered} samples "
                f"exceed the {tok.shape[0]} frames ({capacity} samples)"
            )
        _check_model(self.model)
        return self

    def trim_range(self) -> tuple[int, int | None]:
        """``(lead, num_samples)`` to cut from the full ``1920 * T`` decoded audio: ``(0, None)`` when unknown."""
        if self.lead is None or self.num_samples is None:
            return 0, None
        return self.lead, self.num_samples

    def with_streams(self, k: int) -> Codes:
        """A copy keeping only the first ``k`` streams (tokens ``[T, k]``)."""
        if not _is_int(k) or not 1 <= k <= self.num_streams:
            raise CodesError(f"cannot keep {k!r} streams: the codes have {self.num_streams}")
        return replace(self, tokens=self.tokens[:, :k].clone(), model=dict(self.model))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (for ``socodec info``); an infinite bitrate becomes None."""
        with_speaker = self.bitrate(include_speaker=True)
        return {
            "format_version": FORMAT_VERSION, "frames": self.num_frames, "streams": self.num_streams,
            "duration": self.duration,
            "bitrate": with_speaker if math.isfinite(with_speaker) else None,
            "bitrate_without_speaker": self.bitrate(include_speaker=False),
            "speaker_dim": self.speaker_dim, "sample_rate": self.sample_rate,
            "num_samples": self.num_samples, "lead": self.lead, "model": dict(self.model),
        }

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (format from the suffix); see :func:`save_codes`."""
        return save_codes(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Codes:
        """Read ``path`` (format from the suffix); see :func:`load_codes`."""
        return load_codes(path)


def _suffix(path: Path) -> str:
    """The lower-cased suffix of ``path``, which must be one of :data:`TOKEN_SUFFIXES`."""
    suffix = path.suffix.lower()
    if suffix not in TOKEN_SUFFIXES:
        raise CodesError(
            f"{path}: unsupported token file suffix {path.suffix!r} (supported: {', '.join(TOKEN_SUFFIXES)})"
        )
    return suffix


def save_codes(codes: Codes, path: str | Path) -> Path:
    """Validate ``codes`` and write them atomically as ``.pt`` or ``.soc`` (by suffix). Returns the path."""
    p = Path(path)
    suffix = _suffix(p)
    try:
        codes.validate()  # before converting: a float token must not be silently truncated
        tokens = codes.tokens.detach().cpu().to(torch.int64)
        speaker = codes.speaker.detach().cpu().to(torch.float32)
        replace(codes, tokens=tokens, speaker=speaker).validate()  # e.g. float64 values beyond float32
    except CodesError as exc:
        raise CodesError(f"{p}: refusing to write invalid codes ({exc})") from None
    try:
        if suffix == ".pt":
            payload = {
                "token": tokens.clone(),  # clone: never save a larger underlying storage
                "speaker": speaker.clone(),
                "sample_rate": int(codes.sample_rate),
                "num_samples": codes.num_samples,
                "lead": codes.lead,
                "model": dict(codes.model),
                "format": PT_FORMAT,
            }
            buf = io.BytesIO()  # serialise in memory: a failing disk then raises the real OSError
            torch.save(payload, buf)
            data = buf.getvalue()
        else:
            data = _encode_soc(codes, tokens, speaker)
        atomic_write(p, lambda tmp: tmp.write_bytes(data))
    except (OSError, CodesError) as exc:
        raise CodesError(f"{p}: cannot write token file ({exc})") from None
    logger.debug("saved %d frames x %d streams to %s", codes.num_frames, codes.num_streams, p)
    return p


def load_codes(path: str | Path) -> Codes:
    """Read a ``.pt`` or ``.soc`` token file (by suffix) and validate it.

    Raises:
        CodesError: the file is missing, unreadable, unsafe, corrupt, or holds invalid codes.
    """
    p = Path(path)
    suffix = _suffix(p)
    if not p.is_file():
        raise CodesError(f"{p}: token file not found" if not p.exists() else f"{p}: not a file")
    try:
        codes = _load_pt(p) if suffix == ".pt" else _load_soc(p)
        codes.validate()
    except CodesError as exc:
        raise CodesError(f"{p}: not a valid token file ({exc})") from None
    except OSError as exc:
        raise CodesError(f"{p}: cannot read token file ({exc})") from None
    logger.debug("loaded %d frames x %d streams from %s", codes.num_frames, codes.num_streams, p)
    return codes


def _load_pt(path: Path) -> Codes:
    """Read the published ``{"token", "speaker"}`` layout (plus our optional metadata keys)."""
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
    raw = Codes(
        tokens=obj["token"].detach(),
        speaker=obj["speaker"].detach(),
        sample_rate=obj.get("sample_rate", SAMPLE_RATE),
        num_samples=obj.get("num_samples"),
        lead=obj.get("lead"),
        model=obj.get("model", {}),
    ).validate()  # checks types before anything is converted
    return replace(
        raw,
        tokens=raw.tokens.to(torch.int64).clone(),
        speaker=raw.speaker.to(torch.float32).clone(),
        model=dict(raw.model),
    )


def _encode_soc(codes: Codes, tokens: torch.Tensor, speaker: torch.Tensor) -> bytes:
    """The bytes of a ``.soc`` file for validated ``codes`` (tokens int64 ``[T, S]``, speaker float32 ``[D]``)."""
    header = {
        "format": SOC_FORMAT,
        "frames": codes.num_frames,
        "streams": codes.num_streams,
        "cardinality": CARDINALITY,
        "token_dtype": _SOC_TOKEN_DTYPE,
        "speaker_dim": codes.speaker_dim,
        "speaker_dtype": _SOC_SPEAKER_DTYPE,
        "sample_rate": int(codes.sample_rate),
        "num_samples": codes.num_samples,
        "lead": codes.lead,
        "model": dict(codes.model),
    }
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(blob) > SOC_MAX_HEADER:
        raise CodesError(f"header of {len(blob)} bytes exceeds {SOC_MAX_HEADER} (model identity too large)")
    prefix = _SOC_PREFIX.pack(SOC_MAGIC, SOC_VERSION, len(blob))
    return prefix + blob + tokens.numpy().astype("<u2").tobytes() + speaker.numpy().astype("<f4").tobytes()


def _parse_soc_header(blob: bytes) -> dict[str, Any]:
    """Decode and check every field of a ``.soc`` header."""
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodesError(f"header is not UTF-8 JSON ({str(exc)[:100]})") from None
    if not isinstance(header, dict):
        raise CodesError("header is not a JSON object")
    if set(header) != _SOC_KEYS:
        missing, extra = sorted(_SOC_KEYS - set(header)), sorted(set(header) - _SOC_KEYS)
        raise CodesError(f"header keys wrong (missing {missing}, unexpected {extra})"[:300])
    expected = {"format": SOC_FORMAT, "cardinality": CARDINALITY, "token_dtype": _SOC_TOKEN_DTYPE,
                "speaker_dtype": _SOC_SPEAKER_DTYPE}
    for key, want in expected.items():
        if header[key] != want or type(header[key]) is not type(want):
            raise CodesError(f"header {key} is {header[key]!r}, expected {want!r}"[:200])
    # the sizes are checked here; sample_rate, num_samples, lead and model by Codes.validate
    sizes = {"frames": (0, 1 << 62), "streams": (1, MAX_STREAMS), "speaker_dim": (1, _MAX_SPEAKER_DIM)}
    for key, (lo, hi) in sizes.items():
        if not _is_int(header[key]) or not lo <= header[key] <= hi:
            raise CodesError(f"header {key} is {header[key]!r}"[:100] + f", expected an integer in {lo}..{hi}")
    return header


def _load_soc(path: Path) -> Codes:
    """Read a ``.soc`` file, checking the header and the exact payload size before allocating."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(_SOC_PREFIX.size)
        if len(prefix) < _SOC_PREFIX.size:
            raise CodesError(f"truncated: {size} bytes, shorter than the {_SOC_PREFIX.size}-byte prefix")
        magic, version, hlen = _SOC_PREFIX.unpack(prefix)
        if magic != SOC_MAGIC:
            raise CodesError(f"wrong magic {magic!r} (not a .soc file)")
        if version != SOC_VERSION:
            raise CodesError(f"unsupported .soc version {version} (this reader supports {SOC_VERSION})")
        if not 2 <= hlen <= SOC_MAX_HEADER:
            raise CodesError(f"header length {hlen} outside 2..{SOC_MAX_HEADER}")
        if _SOC_PREFIX.size + hlen > size:
            raise CodesError(f"truncated: header of {hlen} bytes does not fit in {size} bytes")
        header = _parse_soc_header(f.read(hlen))
        frames, streams, dim = header["frames"], header["streams"], header["speaker_dim"]
        token_bytes, speaker_bytes = frames * streams * 2, dim * 4
        payload = size - _SOC_PREFIX.size - hlen
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
    return Codes(
        tokens=torch.from_numpy(tokens),
        speaker=torch.from_numpy(speaker),
        sample_rate=header["sample_rate"],
        num_samples=header["num_samples"],
        lead=header["lead"],
        model=header["model"],  # checked by Codes.validate in load_codes
    )
