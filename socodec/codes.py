"""Codec output: :class:`Codes` (tokens + speaker vector) and the token files that hold them.

:class:`Codes` holds what the analyzer produces for one utterance: tokens
``[T, S]`` (S ordered streams of ``log2(16384) = 14`` bits, one frame per
1920 samples = 120 ms at 16 kHz) and one speaker vector ``[D]``, plus what decoding
needs to give back exactly the input's duration (lead, length) and how it was made
(padding, HuBERT attention, model fingerprints).

Files are chosen by suffix (:data:`TOKEN_SUFFIXES`). Writers are atomic
(:func:`socodec.fileio.atomic_write`); readers raise :class:`~socodec.errors.CodesError`
naming the file for any problem, and check sizes before allocating anything.

:class:`Codes` holds torch tensors, or numpy arrays (``load_codes(path, as_numpy=True)``):
torch is imported only for tensors and ``.pt`` files that only torch reads, so describing or
converting token files (``socodec info``, ``.soc``/``.pt`` to ``.soc``/``.pt``) starts without it.

**``.pt``**: the published layout ``{"token": int64 [T, S], "speaker": float32 [D]}``
(:func:`encode_pt`, :func:`read_pt`). We add the keys ``sample_rate``, ``num_samples``, ``lead``,
``model`` and ``format`` (``"socodec-pt/1"``), and when known ``padding``, ``attention`` and
``hubert_window``; files without them (the published tool's) read too. Always read with
``torch.load(weights_only=True)``: a file that needs any other pickle global is refused, nothing
in it is executed. numpy codes are written without torch, as ``torch.save`` writes them. With
``as_numpy=True`` a plain token file (the zip archive ``torch.save`` writes:
dense int/float tensors, strings, numbers, dicts) is read without torch (:func:`read_pt_arrays`,
which knows only those pickle globals and refuses every other); anything else, and any file that does
not hold valid codes, goes through torch, so that messages and results are those of torch's reader.

**``.soc``**: ours, pickle-free, versioned (:func:`encode_soc`, :func:`read_soc`). All integers
little-endian::

    magic     8 bytes   b"SOCODEC\x00"
    version   uint8     1
    hlen      uint32    length of the header, 2 .. 65536
    header    hlen      UTF-8 JSON object: exactly the keys of SOC_REQUIRED_KEYS (+ SOC_OPTIONAL_KEYS)
    tokens    T*S*2     uint16, row-major [T, S]
    speaker   D*4       float32 [D]
    (end of file: nothing may follow)
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import sys
import warnings
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from socodec.config import (
    ATTENTIONS, ATTENTION_FULL, ATTENTION_WINDOWED, PADDINGS, SAMPLES_PER_TOKEN, SAMPLE_RATE, TOKEN_SUFFIXES,
)
from socodec.errors import CodesError, unpickle_reason
from socodec.fileio import atomic_write, is_plain_int, read_torch_archive, write_torch_archive

if TYPE_CHECKING:
    import torch

__all__ = ["Codes", "load_codes", "save_codes", "TOKEN_SUFFIXES", "SOC_MAGIC", "SOC_MAX_HEADER", "PT_FORMAT", "encode_pt", "read_pt", "read_pt_arrays", "SOC_VERSION", "SOC_FORMAT", "encode_soc", "read_soc"]


logger = logging.getLogger(__name__)
CARDINALITY = 16384
MAX_STREAMS = 4
FORMAT_VERSION = 1
_INT_NAMES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64")
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
_MAX_SAMPLE_RATE = 1_000_000


def _torch_of(x: object) -> ModuleType | None:
    """torch when ``x`` is a tensor, else None (without importing torch: a tensor means torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(x, torch.Tensor) else None


@cache
def _kinds(torch: ModuleType) -> dict[object, str]:
    """torch's integer and floating dtypes -> ``"i"`` / ``"f"``."""
    kinds = {getattr(torch, n): "i" for n in _INT_NAMES if hasattr(torch, n)}
    return kinds | {getattr(torch, n): "f" for n in _FLOAT_NAMES}


def _array_kind(name: str, x: object) -> tuple[tuple[int, ...], str, str]:
    """``(shape, kind, dtype)`` of a dense tensor or numpy array; kind ``"i"`` (integers), ``"f"``
    (floating point) or ``""`` (anything else)."""
    torch = _torch_of(x)
    if torch is not None and x.layout == torch.strided:
        return tuple(x.shape), _kinds(torch).get(x.dtype, ""), str(x.dtype)
    if isinstance(x, np.ndarray):
        kind = "i" if x.dtype.kind in "iu" else "f" if x.dtype.name in _FLOAT_NAMES else ""
        return x.shape, kind, str(x.dtype)
    raise CodesError(f"{name} must be a dense tensor or numpy array, got {type(x).__name__}")


def _value_range(x: Any) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer tensor or array, exactly (torch has no ``min`` for
    uint16, uint32 and uint64 tensors: those are read through numpy)."""
    torch = _torch_of(x)
    if torch is not None and x.dtype in (torch.uint16, torch.uint32, torch.uint64):
        x = x.detach().cpu().numpy()
    return int(x.min()), int(x.max())


def _all_finite(x: Any) -> bool:
    torch = _torch_of(x)
    return bool(torch.isfinite(x).all()) if torch is not None else bool(np.isfinite(x).all())


def _copy(x: Any) -> Any:
    """A copy of a tensor or array that shares no memory with it."""
    return x.clone() if _torch_of(x) is not None else x.copy()


def _to_numpy(x: Any, dtype: str) -> np.ndarray:
    """A tensor or array as a numpy array of ``dtype`` (values beyond float32 become inf, as in torch)."""
    torch = _torch_of(x)
    if torch is not None:
        return x.detach().cpu().to(getattr(torch, dtype)).numpy()
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(dtype, copy=False)


def _as_tensor(x: Any) -> torch.Tensor:
    """A numpy array as a tensor sharing its memory (a tensor is returned as is)."""
    import torch

    return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)


def _check_optional_count(name: str, value: object) -> None:
    """``value`` must be None or a non-negative int."""
    if value is not None and not (is_plain_int(value) and value >= 0):
        raise CodesError(f"{name} must be a non-negative integer or unknown, got {value!r}")


def _check_attention(attention: object, window: object) -> None:
    """``attention`` is None or one of ATTENTIONS; ``window`` (seconds) is set exactly when windowed."""
    if attention is not None and attention not in ATTENTIONS:
        raise CodesError(f"attention must be one of {', '.join(ATTENTIONS)} or unknown, got {attention!r}"[:200])
    if attention == ATTENTION_WINDOWED:
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window < math.inf:
            raise CodesError(f"windowed attention needs a positive hubert_window in seconds, got {window!r}"[:200])
    elif window is not None:
        raise CodesError(f"hubert_window is only recorded with windowed attention, got {window!r} "
                         f"with attention {attention!r}"[:200])


def _check_model(model: object) -> None:
    """``model`` must map str to str."""
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in model.items()):
        raise CodesError(f"model identity must map strings to strings, got {model!r}"[:200])


@dataclass
class Codes:
    """Tokens and speaker vector of one utterance.

    Attributes:
        tokens: ``[T, S]`` integer tensor (int64 once loaded), S streams in 1..4, values in [0, 16384);
            a numpy array when loaded with ``as_numpy=True``.
        speaker: ``[D]`` float32 speaker vector (D = 1024 released, 64 in the tiny test models), a tensor
            or numpy array like ``tokens``.
        sample_rate: model rate in Hz; a frame is 1920 samples at this rate.
        num_samples: length of the original input (without the lead); None if unknown.
        lead: zeros prepended before analysis (8000 by default, 0 with ``--no-lead``); None if unknown.
        model: model identity, e.g. ``{"analyzer": "<sha256 prefix>", "hubert": ..., "vocoder": ...}``.
        padding: how the analysed signal was padded (``"published"`` or ``"grid"``, see
            :func:`socodec.config.padded_length`); None if unknown.
        attention: how HuBERT's attention saw the input: ``"full"`` (every frame, as the published
            model: the published tokens) or ``"windowed"`` (windows of ``hubert_window`` seconds:
            approximate tokens); None if unknown (files written before this was recorded).
        hubert_window: seconds kept per HuBERT window when ``attention`` is ``"windowed"``, else None.
    """

    tokens: torch.Tensor | np.ndarray
    speaker: torch.Tensor | np.ndarray
    sample_rate: int = SAMPLE_RATE
    num_samples: int | None = None
    lead: int | None = None
    model: dict[str, str] = field(default_factory=dict)
    padding: str | None = None
    attention: str | None = None
    hubert_window: float | None = None

    @property
    def exact(self) -> bool | None:
        """True when the tokens are the published model's arithmetic (full attention), False when
        windowed attention approximated them, None when the file does not say."""
        return None if self.attention is None else self.attention == ATTENTION_FULL

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
        shape, kind, dtype = _array_kind("tokens", tok)
        if len(shape) != 2:
            raise CodesError(f"tokens must have shape [frames, streams], got {list(shape)}")
        if kind != "i":
            raise CodesError(f"tokens must be integers, got {dtype}")
        if not 1 <= shape[1] <= max_streams:
            raise CodesError(f"tokens must have 1 to {max_streams} streams, got {shape[1]}")
        if shape[0]:
            lo, hi = _value_range(tok)
            if lo < 0 or hi >= cardinality:
                raise CodesError(f"token values must lie in [0, {cardinality}), got [{lo}, {hi}]")
        shape, kind, dtype = _array_kind("speaker", spk)
        if len(shape) != 1 or shape[0] < 1:
            raise CodesError(f"speaker must have shape [dim], got {list(shape)}")
        if kind != "f":
            raise CodesError(f"speaker must be floating point, got {dtype}")
        if speaker_dim is not None and shape[0] != speaker_dim:
            raise CodesError(f"speaker vector has {shape[0]} values, the model expects {speaker_dim}")
        if not _all_finite(spk):
            raise CodesError("speaker vector holds NaN or infinite values")
        if not (is_plain_int(self.sample_rate) and 0 < self.sample_rate <= _MAX_SAMPLE_RATE):
            raise CodesError(f"sample_rate must be in 1..{_MAX_SAMPLE_RATE}, got {self.sample_rate!r}"[:200])
        _check_optional_count("num_samples", self.num_samples)
        _check_optional_count("lead", self.lead)
        covered = (self.lead or 0) + (self.num_samples or 0)
        capacity = self.num_frames * SAMPLES_PER_TOKEN
        if covered > capacity:
            raise CodesError(
                f"lead ({self.lead}) + num_samples ({self.num_samples}) = {covered} samples "
                f"exceed the {self.num_frames} frames ({capacity} samples)"
            )
        _check_model(self.model)
        if self.padding is not None and self.padding not in PADDINGS:
            raise CodesError(f"padding must be one of {', '.join(PADDINGS)} or unknown, got {self.padding!r}"[:200])
        _check_attention(self.attention, self.hubert_window)
        return self

    def trim_range(self) -> tuple[int, int | None]:
        """``(lead, num_samples)`` to cut from the full ``1920 * T`` decoded audio: ``(0, None)`` when unknown."""
        if self.lead is None or self.num_samples is None:
            return 0, None
        return self.lead, self.num_samples

    def with_streams(self, k: int) -> Codes:
        """A copy keeping only the first ``k`` streams (tokens ``[T, k]``)."""
        if not is_plain_int(k) or not 1 <= k <= self.num_streams:
            raise CodesError(f"cannot keep {k!r} streams: the codes have {self.num_streams}")
        return replace(self, tokens=_copy(self.tokens[:, :k]), model=dict(self.model))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (for ``socodec info``); an infinite bitrate becomes None."""
        with_speaker = self.bitrate(include_speaker=True)
        return {
            "format_version": FORMAT_VERSION, "frames": self.num_frames, "streams": self.num_streams,
            "duration": self.duration,
            "bitrate": with_speaker if math.isfinite(with_speaker) else None,
            "bitrate_without_speaker": self.bitrate(include_speaker=False),
            "speaker_dim": self.speaker_dim, "sample_rate": self.sample_rate,
            "num_samples": self.num_samples, "lead": self.lead, "padding": self.padding,
            "attention": self.attention, "hubert_window": self.hubert_window,
            "model": dict(self.model),
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


def _meta(codes: Codes) -> dict[str, Any]:
    return {"sample_rate": codes.sample_rate, "num_samples": codes.num_samples, "lead": codes.lead,
            "padding": codes.padding, "attention": codes.attention, "hubert_window": codes.hubert_window,
            "model": dict(codes.model)}


def save_codes(codes: Codes, path: str | Path) -> Path:
    """Validate ``codes`` and write them atomically as ``.pt`` or ``.soc`` (by suffix). Returns the path."""
    p = Path(path)
    suffix = _suffix(p)
    try:
        codes.validate()  # before converting: a float token must not be silently truncated
        tokens, speaker = _to_numpy(codes.tokens, "int64"), _to_numpy(codes.speaker, "float32")
        replace(codes, tokens=tokens, speaker=speaker).validate()  # e.g. float64 values beyond float32
    except CodesError as exc:
        raise CodesError(f"{p}: refusing to write invalid codes ({exc})") from None
    try:
        encode = encode_pt if suffix == ".pt" else encode_soc
        data = encode(_meta(codes), tokens, speaker)
        atomic_write(p, lambda tmp: tmp.write_bytes(data))
    except (OSError, CodesError) as exc:
        raise CodesError(f"{p}: cannot write token file ({exc})") from None
    logger.debug("saved %d frames x %d streams to %s", codes.num_frames, codes.num_streams, p)
    return p


def load_codes(path: str | Path, *, as_numpy: bool = False) -> Codes:
    """Read a ``.pt`` or ``.soc`` token file (by suffix) and validate it.

    Args:
        as_numpy: hold numpy arrays instead of tensors; a ``.soc`` file, and a ``.pt`` file that
            :func:`read_pt_arrays` takes, are then read without importing torch.

    Raises:
        CodesError: the file is missing, unreadable, unsafe, corrupt, or holds invalid codes.
    """
    p = Path(path)
    suffix = _suffix(p)
    if not p.is_file():
        raise CodesError(f"{p}: token file not found" if not p.exists() else f"{p}: not a file")
    try:
        codes = _load_pt(p, as_numpy) if suffix == ".pt" else _load_soc(p)
        codes.validate()
        if as_numpy:
            codes = replace(codes, tokens=_to_numpy(codes.tokens, "int64"), speaker=_to_numpy(codes.speaker, "float32"))
        else:
            codes = replace(codes, tokens=_as_tensor(codes.tokens), speaker=_as_tensor(codes.speaker))
    except CodesError as exc:
        raise CodesError(f"{p}: not a valid token file ({exc})") from None
    except OSError as exc:
        raise CodesError(f"{p}: cannot read token file ({exc})") from None
    logger.debug("loaded %d frames x %d streams from %s", codes.num_frames, codes.num_streams, p)
    return codes


def _load_pt(path: Path, as_numpy: bool) -> Codes:
    """Read the published ``{"token", "speaker"}`` layout (plus our optional metadata keys).

    With ``as_numpy`` a file :func:`read_pt_arrays` takes and whose codes are valid is read without
    torch; any other file is read by torch (its problems are then told in the same words as ever).
    """
    if as_numpy and (arrays := read_pt_arrays(path)) is not None:
        try:
            return _pt_codes(arrays, _to_numpy).validate()
        except CodesError as exc:
            logger.debug("%s: %s; read again by torch", path, exc)
    import torch

    return _pt_codes(read_pt(path), lambda x, dtype: x.to(getattr(torch, dtype)).clone())


def _pt_codes(obj: dict[str, Any], convert: Callable[[Any, str], Any]) -> Codes:
    """Codes of :func:`read_pt`'s dict, validated, then converted to int64 tokens and a float32 speaker."""
    raw = Codes(
        tokens=obj["token"],
        speaker=obj["speaker"],
        sample_rate=obj.get("sample_rate", SAMPLE_RATE),
        num_samples=obj.get("num_samples"),
        lead=obj.get("lead"),
        model=obj.get("model", {}),
        padding=obj.get("padding"),
        attention=obj.get("attention"),
        hubert_window=obj.get("hubert_window"),
    ).validate()  # checks types before anything is converted
    return replace(raw, tokens=convert(raw.tokens, "int64"), speaker=convert(raw.speaker, "float32"),
                   model=dict(raw.model))


def _load_soc(path: Path) -> Codes:
    """Read a ``.soc`` file (structure checked by :func:`socodec.codes.read_soc`)."""
    header, tokens, speaker = read_soc(path)
    return Codes(
        tokens=tokens,
        speaker=speaker,
        sample_rate=header["sample_rate"],
        num_samples=header["num_samples"],
        lead=header["lead"],
        model=header["model"],  # checked by Codes.validate in load_codes
        padding=header.get("padding"),
        attention=header.get("attention"),
        hubert_window=header.get("hubert_window"),
    )


PT_FORMAT = "socodec-pt/1"
META_KEYS = ("sample_rate", "num_samples", "lead", "padding", "attention", "hubert_window", "model")
#: written only when known (files without them read as "unknown")
PT_OPTIONAL_KEYS = ("padding", "attention", "hubert_window")


def encode_pt(meta: dict[str, Any], tokens: np.ndarray, speaker: np.ndarray) -> bytes:
    """The bytes of a ``.pt`` file (serialised in memory: a failing disk then raises the real OSError).

    numpy arrays are written without torch (:func:`socodec.fileio.write_torch_archive`: the archive
    ``torch.save`` writes, read back by ``torch.load`` to equal tensors); tensors by ``torch.save``.

    Args:
        meta: the :data:`META_KEYS` (validated); :data:`PT_OPTIONAL_KEYS` that are None are left out.
        tokens: ``[T, S]`` int64; speaker: ``[D]`` float32 (numpy arrays or tensors).
    """
    payload: dict[str, Any] = {
        "token": tokens,
        "speaker": speaker,
        "sample_rate": int(meta["sample_rate"]),
        "num_samples": meta["num_samples"],
        "lead": meta["lead"],
        "model": dict(meta["model"]),
        "format": PT_FORMAT,
    }
    payload.update({k: meta[k] for k in PT_OPTIONAL_KEYS if meta.get(k) is not None})
    if isinstance(tokens, np.ndarray) and isinstance(speaker, np.ndarray):
        return write_torch_archive(payload)
    import torch

    # clone: never save a larger underlying storage
    payload.update(token=torch.as_tensor(tokens).clone(), speaker=torch.as_tensor(speaker).clone())
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def read_pt(path: Path) -> dict[str, Any]:
    """``{"token", "speaker", and whichever META_KEYS the file has}``; types are checked by ``Codes``."""
    with path.open("rb") as f:
        head = f.read(4)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
        raise CodesError("not a torch file: it is neither a zip archive nor a pickle (a text file named .pt?)")
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols in corrupt files
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - untrusted input: every failure mode of the unpickler
        raise CodesError(f"cannot unpickle safely: {unpickle_reason(exc)}") from None
    fields = _pt_fields(obj, torch.Tensor)
    return {**fields, "token": fields["token"].detach(), "speaker": fields["speaker"].detach()}


def _pt_fields(obj: object, array: type) -> dict[str, Any]:
    """The token file's keys of an unpickled ``obj``, whose ``token`` and ``speaker`` must be ``array``s."""
    if not isinstance(obj, dict):
        raise CodesError(f"expected a dict with 'token' and 'speaker', got {type(obj).__name__}")
    for key in ("token", "speaker"):
        if key not in obj:
            raise CodesError(f"missing key {key!r}")
        if not isinstance(obj[key], array):
            raise CodesError(f"{key!r} must be a tensor, got {type(obj[key]).__name__}")
    fmt = obj.get("format", PT_FORMAT)
    if not isinstance(fmt, str) or fmt != PT_FORMAT:
        raise CodesError(f"unsupported format {fmt!r}"[:100] + f" (this version reads {PT_FORMAT!r})")
    return {k: obj[k] for k in ("token", "speaker", *META_KEYS) if k in obj}


def read_pt_arrays(path: Path) -> dict[str, Any] | None:
    """:func:`read_pt` without torch, with numpy arrays; None when the file is not plainly a token file.

    Reads torch.save's zip archive (``data.pkl`` and the ``data/<key>`` storages, little- or big-endian)
    when its pickle holds only plain data and dense integer or floating point tensors. A legacy (non-zip)
    file, any other pickle global, dtype or opcode, a tensor subclass, a compressed or inconsistent record:
    None, and torch judges the file. Nothing in the file is called; no record is read beyond its size in
    the file, and no tensor holds more elements than its storage.
    """
    try:
        return _pt_fields(read_torch_archive(path), np.ndarray)
    except Exception as exc:  # noqa: BLE001 - untrusted input: torch judges what this reader does not take
        logger.debug("%s: read by torch (%s: %s)", path, type(exc).__name__, str(exc)[:200])
        return None


SOC_MAGIC = b"SOCODEC\x00"
SOC_VERSION = 1
SOC_FORMAT = f"socodec-soc/{SOC_VERSION}"
SOC_MAX_HEADER = 64 * 1024
PREFIX = struct.Struct("<8sBI")  # magic, version, header length
TOKEN_DTYPE = "uint16le"
SPEAKER_DTYPE = "float32le"
SOC_REQUIRED_KEYS = frozenset("format frames streams cardinality token_dtype speaker_dim speaker_dtype".split()
                          + "sample_rate num_samples lead model".split())
SOC_OPTIONAL_KEYS = frozenset({"padding", "attention", "hubert_window"})
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
    header.update({k: meta[k] for k in sorted(SOC_OPTIONAL_KEYS) if meta.get(k) is not None})
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
    if not SOC_REQUIRED_KEYS <= keys or keys - SOC_REQUIRED_KEYS - SOC_OPTIONAL_KEYS:
        missing, extra = sorted(SOC_REQUIRED_KEYS - keys), sorted(keys - SOC_REQUIRED_KEYS - SOC_OPTIONAL_KEYS)
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
