"""Optional dependencies of the corpus tools, each with the one line that says how to get it."""

from __future__ import annotations

import importlib
from types import ModuleType

from socodec.errors import SoCodecError

__all__ = ["MissingExtraError", "require"]

#: top-level module -> the message when it is missing
_MESSAGES = {
    "pyarrow": "Parquet shards need pyarrow: pip install socodec[corpus]",
    "ray": "the ray engine needs Ray Data: pip install socodec[ray]",
    "lhotse": "lhotse manifests need lhotse: pip install socodec[lhotse]",
}


class MissingExtraError(SoCodecError):
    """An optional dependency is not installed (the message names the ``pip install`` line)."""


def require(module: str) -> ModuleType:
    """Import ``module`` (``pyarrow``, ``ray``) or raise :class:`MissingExtraError` with one line to fix it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(_MESSAGES.get(top, f"{top} is not installed: pip install {top}")) from None
