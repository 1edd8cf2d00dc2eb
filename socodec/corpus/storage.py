"""Object storage (``s3://``, ``gs://``, ... any fsspec URL) for corpus inputs and the output folder.

Credentials and endpoint come from the store's standard environment (for S3, as botocore reads
them: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE``, ...); anything else goes in ``--storage-options JSON``
(passed to fsspec's filesystem; kept in the ``SOCODEC_STORAGE_OPTIONS`` environment variable so
worker processes see the same options). ``file://`` URLs are local paths.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from socodec.errors import SoCodecError, one_line

__all__ = ["is_url", "local_path", "url_filesystem", "storage_options", "STORAGE_OPTIONS_ENV", "store_error",
           "check_store"]

STORAGE_OPTIONS_ENV = "SOCODEC_STORAGE_OPTIONS"


def is_url(text: str | Path) -> bool:
    """True for a remote fsspec URL (``s3://b/k``); local paths and ``file://`` URLs are not."""
    text = str(text)
    return "://" in text and not text.startswith("file://")


def local_path(text: str | Path) -> Path:
    """A local path from a path or a ``file://`` URL."""
    text = str(text)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(text)


def storage_options() -> dict[str, Any]:
    """The ``--storage-options`` of this run (empty when none were given)."""
    text = os.environ.get(STORAGE_OPTIONS_ENV)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise SoCodecError(f"--storage-options: not JSON ({exc})") from None
    if not isinstance(options, dict):
        raise SoCodecError("--storage-options: expected a JSON object")
    return options


def url_filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; one line naming the extra when it is missing."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # -v shows the clients' own logs
        for name in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import fsspec.core
    except ImportError:
        raise SoCodecError("object storage needs fsspec: pip install socodec[s3]") from None
    try:
        return fsspec.core.url_to_fs(url, **storage_options())
    except ImportError as exc:
        raise SoCodecError(f"{url}: this store needs a package that is not installed ({one_line(exc)}); "
                           "for S3: pip install socodec[s3]") from None
    except ValueError as exc:
        raise SoCodecError(f"{url}: {one_line(exc)}") from None


def store_error(url: str, exc: BaseException) -> SoCodecError:
    """One line for a failure talking to the store (missing bucket, credentials, endpoint)."""
    if isinstance(exc, FileNotFoundError):
        return SoCodecError(f"{url}: no such bucket or object")
    if isinstance(exc, PermissionError):
        return SoCodecError(f"{url}: access denied (check the store's credentials, e.g. AWS_ACCESS_KEY_ID)")
    return SoCodecError(f"{url}: cannot reach the store ({type(exc).__name__}: {one_line(exc)})")


def check_store(url: str) -> tuple[Any, str]:
    """The filesystem and path of ``url`` after checking that its bucket can be listed (else one line)."""
    fs, path = url_filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        fs.invalidate_cache()
        if not fs.exists(bucket):
            raise FileNotFoundError(bucket)
        fs.ls(bucket, detail=False)
    except Exception as exc:  # noqa: BLE001 - every store failure becomes one line
        raise store_error(url, exc) from None
    return fs, path
