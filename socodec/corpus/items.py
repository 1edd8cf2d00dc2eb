"""A work item: one utterance to tokenise (a file, or a segment of one), and its id rules."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from socodec.errors import SoCodecError

__all__ = ["WorkItem", "check_unique", "relative_id", "metadata_text"]


@dataclass(frozen=True)
class WorkItem:
    """One utterance to tokenise.

    Attributes:
        id: unique name of the utterance (the ``id`` column of the shards).
        source: the audio file it is read from (absolute), or its URL on object storage (a ``str``).
        offset: seconds into ``source`` where the utterance starts.
        duration: seconds to read from ``offset``; None: to the end of the file.
        metadata: extra manifest fields as a JSON object text (None when there are none).
        origin: where the item was listed (e.g. ``data/wav.scp``), for error messages.
        member: the audio's place inside ``source`` when ``source`` is a container (a WebDataset
            tar's member name, ``<column>:<row>`` of a Parquet file); None for an audio file.
        fingerprint: what the item is read from, as JSON ``[location, size, mtime, offset, duration]``
            (set by :func:`~socodec.corpus.inputs.fingerprint`); resume compares it with the row's.
    """

    id: str
    source: Path | str
    offset: float = 0.0
    duration: float | None = None
    metadata: str | None = None
    origin: str = ""
    member: str | None = None
    fingerprint: str | None = None

    @property
    def location(self) -> str:
        """Where the audio is: the file, or ``<container>#<member>`` (the shards' ``source`` column)."""
        return f"{self.source}#{self.member}" if self.member is not None else str(self.source)

    @property
    def is_segment(self) -> bool:
        """True when only part of the file is read (an offset or a duration is set)."""
        return self.offset > 0 or self.duration is not None

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata as a dict (empty when there is none)."""
        return json.loads(self.metadata) if self.metadata else {}

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict; :meth:`from_json` gives the item back."""
        data = asdict(self)
        data["source"] = str(self.source)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkItem":
        source = data["source"]
        return cls(**{**data, "source": source if "://" in source else Path(source)})


def check_unique(items: Iterable[WorkItem]) -> None:
    """Raise :class:`SoCodecError` naming the first id listed twice (and both places)."""
    seen: dict[str, WorkItem] = {}
    for item in items:
        first = seen.setdefault(item.id, item)
        if first is not item:
            raise SoCodecError(
                f"duplicate id '{item.id}': {_where(first)} and {_where(item)}; ids must be unique "
                "(give manifest lines an \"id\", or tokenise the two inputs into separate folders)"
            )


def _where(item: WorkItem) -> str:
    where = item.location if item.origin in ("", str(item.source)) else f"{item.location} (from {item.origin})"
    return where + (f" at {item.offset:g} s" if item.offset else "")


def relative_id(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, without suffix, ``/``-separated (the path's stem if outside ``base``)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(base))
    except ValueError:
        return path.stem
    return rel.with_suffix("").as_posix()


def metadata_text(fields: dict[str, Any]) -> str | None:
    """Extra manifest fields as compact JSON with sorted keys (None when empty)."""
    return json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":")) if fields else None
