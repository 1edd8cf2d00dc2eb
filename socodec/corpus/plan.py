"""Cutting the work list into shards and each shard into length-bucketed batches.

The plan is computed once, in the main process, and every engine runs exactly its
batches: the same items meet in the same batch whatever the engine, so the rows are
the same bit for bit. Shard ``k`` holds the next ``shard_size`` items of the work list
(in order); inside it, items are sorted by length and taken ``batch_size`` at a time,
so a batch pads little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from socodec.corpus.containers import WorkItem

__all__ = ["Batch", "ShardPlan", "plan_shards", "LONG_SECONDS"]

LONG_SECONDS = 60.0
"""Whole files longer than this are encoded alone, read from disk as needed (bounded memory)."""


@dataclass(frozen=True)
class Batch:
    """Items encoded together; ``positions`` are their places in the work list (the row order)."""

    shard: int
    positions: tuple[int, ...]
    items: tuple[WorkItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "positions": list(self.positions), "items": [i.to_json() for i in self.items]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Batch":
        return cls(int(data["shard"]), tuple(int(p) for p in data["positions"]),
                   tuple(WorkItem.from_json(i) for i in data["items"]))


@dataclass(frozen=True)
class ShardPlan:
    """One shard file to write: its index and its batches."""

    index: int
    batches: tuple[Batch, ...]

    @property
    def size(self) -> int:
        """Items planned for the shard (rows, less the items that fail)."""
        return sum(len(b.items) for b in self.batches)


def plan_shards(
    items: Sequence[WorkItem], seconds: Sequence[float], shard_size: int, batch_size: int, first_index: int = 0
) -> list[ShardPlan]:
    """Shards of ``shard_size`` consecutive items, numbered from ``first_index``, each in batches.

    Args:
        items: the work list (items already done excluded).
        seconds: each item's expected length (0 when unknown), to batch similar lengths.
        shard_size: items per shard (the last one may be smaller).
        batch_size: items per batch at most; whole files over :data:`LONG_SECONDS` go alone.
        first_index: index of the first new shard.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}")
    if len(seconds) != len(items):
        raise ValueError("one length per item is needed")
    plans = []
    for k, start in enumerate(range(0, len(items), shard_size)):
        index = first_index + k
        positions = sorted(range(start, min(start + shard_size, len(items))), key=lambda p: (seconds[p], p))
        batches: list[Batch] = []
        group: list[int] = []
        for p in positions:
            if seconds[p] > LONG_SECONDS and not items[p].is_segment:
                batches.append(Batch(index, (p,), (items[p],)))
                continue
            group.append(p)
            if len(group) == batch_size:
                batches.append(Batch(index, tuple(group), tuple(items[q] for q in group)))
                group = []
        if group:
            batches.append(Batch(index, tuple(group), tuple(items[q] for q in group)))
        plans.append(ShardPlan(index, tuple(batches)))
    return plans
