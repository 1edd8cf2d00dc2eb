"""Finding the released weight files: a local folder, else the Hugging Face cache, else a download."""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE, CheckpointPaths
from socodec.errors import CheckpointError, one_line

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
