"""Finding the released weight files: a local folder, else a Hugging Face download."""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, VOCODER_FILE, CheckpointPaths
from socodec.errors import CheckpointError

log = logging.getLogger(__name__)

HUBERT_REPO = "TencentGameMate/chinese-hubert-large"
SOCODEC_REPO = "hhguo/SoCodec"
SOURCES = {HUBERT_FILE: HUBERT_REPO, ANALYZER_FILE: SOCODEC_REPO, VOCODER_FILE: SOCODEC_REPO}
#: seconds to wait for the Hugging Face endpoint to accept a connection before giving up
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


def resolve_checkpoints(
    ckpt_dir: Path | None, allow_download: bool = True, need_hubert: bool = True
) -> CheckpointPaths:
    """Paths of the model files: from ``ckpt_dir`` if there, else downloaded into the HF cache.

    ``need_hubert=False`` (decoding only): the HuBERT file may be absent; its path is then
    returned as it would be in ``ckpt_dir`` (not a file) and nothing is downloaded for it.
    Without a network the download fails within seconds with one :class:`CheckpointError`
    (the Hugging Face endpoint is probed first; its library's own warnings are silenced).
    """
    folder = ckpt_dir if ckpt_dir is not None else default_ckpt_dir()
    local = CheckpointPaths.in_dir(folder)
    names = tuple(name for name in SOURCES if need_hubert or name != HUBERT_FILE)
    todo = [name for name in names if not (folder / name).is_file()]
    if not todo:
        return local
    if not allow_download:
        raise CheckpointError(missing_weights_message(folder, "downloading is disabled (--no-download)", names))
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise CheckpointError(missing_weights_message(folder, "HF_HUB_OFFLINE is set", names))
    try:
        import huggingface_hub
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(missing_weights_message(folder, "huggingface_hub is not installed", names)) from None
    endpoint = huggingface_hub.constants.ENDPOINT
    unreachable = _unreachable(endpoint)
    if unreachable:
        raise CheckpointError(missing_weights_message(folder, f"{endpoint} cannot be reached ({unreachable})", names))
    found = {name: folder / name for name in SOURCES}
    with _quiet_hub(progress=log.isEnabledFor(logging.INFO)):
        for name in todo:
            log.info("downloading %s from %s", name, SOURCES[name])
            try:
                found[name] = Path(hf_hub_download(repo_id=SOURCES[name], filename=name))
            except Exception as exc:  # network, auth, missing repo: all end the same way for the user
                log.debug("download of %s failed", name, exc_info=True)
                reason = f"the download failed ({type(exc).__name__})"
                raise CheckpointError(missing_weights_message(folder, reason, names)) from None
    return CheckpointPaths(found[HUBERT_FILE], found[ANALYZER_FILE], found[VOCODER_FILE])


def _unreachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``endpoint`` (or the proxy for it) fails, or None if it opens."""
    url = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None  # leave odd endpoints to the hub library
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


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
