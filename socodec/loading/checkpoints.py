"""The released checkpoint files, and strict checkpoint loading for safetensors files.

Every key a module needs must be present with the right shape; keys that a
caller declares training-only are ignored; anything else fails with one
:class:`~socodec.errors.CheckpointError` naming the file, the key and the shapes.

**Finding the released weight files** (:func:`resolve_checkpoints`): a local folder, else the Hugging
Face cache, else a download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator, Mapping

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


log = logging.getLogger(__name__)
HUBERT_REPO = "TencentGameMate/chinese-hubert-large"
SOCODEC_REPO = "hhguo/SoCodec"


@dataclass(frozen=True)
class Release:
    """Where one released weight file comes from and what it must hash to.

    ``revision``: the Hugging Face commit the file is taken from (a branch name when no
    commit is pinned); ``sha256``: the hex digest the file must have (``None``: not checked).
    """

    repo: str
    revision: str = "main"
    sha256: str | None = None


#: the three released files; pin ``revision`` to a commit hash and fill in ``sha256`` of each file
RELEASES: dict[str, Release] = {
    HUBERT_FILE: Release(HUBERT_REPO),
    ANALYZER_FILE: Release(SOCODEC_REPO),
    VOCODER_FILE: Release(SOCODEC_REPO),
}
SOURCES = {name: release.repo for name, release in RELEASES.items()}
#: seconds the Hugging Face endpoint may take to answer the first request before giving up
PROBE_TIMEOUT_S = 3.0


def default_ckpt_dir() -> Path:
    """``$SOCODEC_CKPT_DIR`` or ``./ckpts``."""
    return Path(os.environ.get("SOCODEC_CKPT_DIR", "ckpts"))


def missing_weights_message(ckpt_dir: Path, reason: str, names: tuple[str, ...] | None = None) -> str:
    """One line: which of ``names`` (default: all three) are absent, where to get them, where to put them."""
    wanted = names if names is not None else tuple(SOURCES)
    absent = [name for name in wanted if not (ckpt_dir / name).is_file()] or list(wanted)
    files = ", ".join(f"{name} (Hugging Face {SOURCES[name]})" for name in absent)
    return (f"{ckpt_dir}: model weights missing and {reason}; download {files} "
            f"and put them in {ckpt_dir} (or pass --ckpt-dir)")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (read now, not when the hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no", "off")


def resolve_checkpoints(
    ckpt_dir: Path | None, allow_download: bool = True, need_hubert: bool = True
) -> CheckpointPaths:
    """Paths of the model files: from ``ckpt_dir`` if there, else the Hugging Face cache, else downloaded.

    Files already in the Hugging Face cache (an earlier download) are used without any network,
    also with ``--no-download`` or ``HF_HUB_OFFLINE=1``. What comes from the hub is the pinned
    revision and must match its pinned sha256 (a mismatch is one :class:`CheckpointError`; the
    file is not used). ``need_hubert=False`` (decoding only): the HuBERT file may be absent;
    its path is then returned as it would be in ``ckpt_dir`` (not a file) and nothing is
    fetched for it. Without a network the download fails within seconds with one
    :class:`CheckpointError` (the hub's first request times out after ``PROBE_TIMEOUT_S``).
    """
    folder = ckpt_dir if ckpt_dir is not None else default_ckpt_dir()
    local = CheckpointPaths.in_dir(folder)
    names = tuple(name for name in SOURCES if need_hubert or name != HUBERT_FILE)
    todo = [name for name in names if not (folder / name).is_file()]
    if not todo:
        return local
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError:
        raise CheckpointError(missing_weights_message(folder, "huggingface_hub is not installed", names)) from None
    found = {name: folder / name for name in SOURCES}
    for name in todo:  # the cache first: no network, no lock-step with HF_HUB_OFFLINE
        release = RELEASES[name]
        try:
            cached = hf_hub_download(repo_id=release.repo, filename=name, revision=release.revision,
                                     local_files_only=True)
        except Exception:  # not in the cache (or an unreadable cache): try the download below
            continue
        found[name] = verified(Path(cached), release)
    todo = [name for name in todo if not found[name].is_file()]
    if not todo:
        return CheckpointPaths(found[HUBERT_FILE], found[ANALYZER_FILE], found[VOCODER_FILE])
    if not allow_download:
        raise CheckpointError(missing_weights_message(folder, "downloading is disabled (--no-download)", names))
    if hub_offline():
        raise CheckpointError(missing_weights_message(folder, "HF_HUB_OFFLINE is set", names))
    with _quiet_hub(progress=log.isEnabledFor(logging.INFO)):
        for name in todo:
            release = RELEASES[name]
            try:  # one request without retries first, so that no network fails in seconds
                get_hf_file_metadata(hf_hub_url(release.repo, name, revision=release.revision),
                                     timeout=PROBE_TIMEOUT_S)
                log.info("downloading %s from %s (revision %s)", name, release.repo, release.revision)
                got = hf_hub_download(repo_id=release.repo, filename=name, revision=release.revision,
                                      etag_timeout=PROBE_TIMEOUT_S)
            except Exception as exc:  # network, auth, missing repo: all end the same way for the user
                log.debug("download of %s failed", name, exc_info=True)
                raise CheckpointError(missing_weights_message(folder, _download_reason(exc), names)) from None
            found[name] = verified(Path(got), release)
    return CheckpointPaths(found[HUBERT_FILE], found[ANALYZER_FILE], found[VOCODER_FILE])


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of the whole file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, release: Release) -> Path:
    """``path`` if its sha256 is the pinned one (or none is pinned), else one :class:`CheckpointError`."""
    if release.sha256 is None:
        return path
    actual = file_sha256(path)
    if actual != release.sha256.lower():
        raise CheckpointError(
            f"{path}: sha256 {actual} differs from the released {path.name} ({release.repo}@{release.revision}: "
            f"{release.sha256}); the file was not used: delete it and download again")
    return path


def _download_reason(exc: BaseException) -> str:
    """Why a download failed, in words: an unreachable endpoint, else the error's type and message."""
    from huggingface_hub import constants

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = " ".join(type(c).__name__ for c in chain)
    if any(word in names for word in ("Connect", "Timeout", "LocalEntryNotFound")):
        detail = next((one_line(c, 160) for c in reversed(chain) if "Connect" in type(c).__name__
                       or "Timeout" in type(c).__name__), one_line(chain[-1], 160))
        return f"{constants.ENDPOINT} cannot be reached ({detail})"
    return f"the download failed ({type(exc).__name__}: {one_line(exc, 200)})"


@contextmanager
def _quiet_hub(progress: bool) -> Iterator[None]:
    """Silence huggingface_hub's retry warnings (our one error line says it all); progress bars only if ``progress``."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)
    bars = None
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        bars = are_progress_bars_disabled()
        if not progress:
            disable_progress_bars()
    except ImportError:
        pass
    try:
        yield
    finally:
        hub_log.setLevel(level)
        if bars is False:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()
