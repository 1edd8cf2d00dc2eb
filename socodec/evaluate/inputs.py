"""What ``socodec eval`` measures: the inputs ``socodec tokenize`` reads, as items.

The work list is :func:`socodec.corpus.inputs.collect_work`'s (audio files, folders, globs,
Kaldi folders, JSONL manifests, WebDataset tars, Parquet, lhotse manifests; the same ids), and a
segment is read by seeking into its file as ``tokenize`` reads it
(:func:`socodec.corpus.inputs.read_item`), so an item gives the same samples in both commands.
Two things are eval's own: an input is listed on its own, so one bad input is an error line
while the others are measured, and the same audio listed twice is measured once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from socodec.audio import AUDIO_SUFFIXES
from socodec.corpus.inputs import MANIFEST_SUFFIXES, collect_work
from socodec.corpus.items import WorkItem
from socodec.corpus.inputs import read_item as read_work_item
from socodec.errors import SoCodecError

__all__ = ["EvalItem", "expand_inputs", "read_item", "MANIFEST_SUFFIXES"]

_LISTS = (*MANIFEST_SUFFIXES, ".tar", ".parquet", ".gz")


@dataclass(frozen=True)
class EvalItem:
    """One utterance to measure: a whole file, or ``duration`` seconds from ``offset``.

    ``id`` names it in the tables (the id ``socodec tokenize`` gives it); ids that would clash
    fall back to the full path. ``member`` is its place inside a container (a tar, a Parquet file).
    """

    id: str
    path: Path | str
    offset: float = 0.0
    duration: float | None = None
    member: str | None = None

    @property
    def work(self) -> WorkItem:
        """The same item as ``tokenize``'s work item."""
        return WorkItem(id=self.id, source=self.path, offset=self.offset, duration=self.duration, member=self.member)


def expand_inputs(inputs: list[str | Path]) -> tuple[list[EvalItem], list[str]]:
    """Items for every input, in order, without duplicates; plus one error line per bad input.

    A plain file with a suffix that is neither audio nor a list is an error here (``tokenize``
    would report it when reading). Nothing is opened beyond the lists: unreadable audio is found later.
    """
    items: list[EvalItem] = []
    errors: list[str] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file() and path.suffix.lower() not in (*AUDIO_SUFFIXES, *_LISTS):
            errors.append(f"{path}: not an audio file or a list of audio (audio: {' '.join(AUDIO_SUFFIXES)}; "
                          f"lists: {' '.join(_LISTS)})")
            continue
        try:
            work = collect_work([raw])
        except SoCodecError as exc:
            errors.append(str(exc))
            continue
        items.extend(EvalItem(w.id, w.source, w.offset, w.duration, w.member) for w in work)
    first: dict[tuple[str, float, float | None], EvalItem] = {}
    for item in items:  # the same file (or segment) listed twice is measured once
        first.setdefault((item.work.location, item.offset, item.duration), item)
    unique = list(first.values())
    counts: dict[str, int] = {}
    for item in unique:
        counts[item.id] = counts.get(item.id, 0) + 1
    clashing = {name for name, n in counts.items() if n > 1}
    return [replace(item, id=_full_id(item)) if item.id in clashing else item for item in unique], errors


def _full_id(item: EvalItem) -> str:
    """An id naming the file by its path (and the segment's offset): used when short ids clash."""
    where = item.work.location
    return where if item.offset == 0 and item.duration is None else f"{where}@{item.offset:g}"


def read_item(item: EvalItem) -> torch.Tensor:
    """The item's samples ``[N]`` float32, 16 kHz mono (its segment, read by seeking, when it has one)."""
    return read_work_item(item.work)[0]
