"""Gathering the engines' result tables into shards: each shard is written once all its items are back.

Results arrive in any order (several workers, Ray's scheduling). The collector keeps
each shard's rows until every planned item of the shard has come back (as a row or as
an error), sorts them by their place in the work list, and writes the shard, so a
shard's contents depend only on the plan, never on the engine or the timing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from socodec.corpus.encoder import FALLBACK_KEY
from socodec.corpus.plan import ShardPlan
from socodec.corpus.schema import COLUMNS, pa, pc, shard_schema
from socodec.corpus.shards import ShardStats, ShardStore
from socodec.errors import SoCodecError

__all__ = ["ShardCollector", "BatchReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    """What one result table brought: items done, items failed, seconds of audio encoded, batch redone one by one."""

    done: int
    failed: int
    seconds: float
    fallback: bool = False


@dataclass
class ShardCollector:
    """Collects result tables and writes each shard when it is complete.

    Args:
        store: the output folder.
        plans: the shards of this run.
        stats: statistics of the shards already in the folder, updated as shards are written.
        padding: this run's padding mode (recorded in the manifest).
        run: what the manifest says about this run (engine, workers, ...).
    """

    store: ShardStore
    plans: list[ShardPlan]
    stats: ShardStats
    padding: str
    run: dict
    errors: list[dict[str, str]] = field(default_factory=list)
    earlier_errors: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, str] | None = None
    fallbacks: int = 0
    _pending: dict[int, list[pa.Table]] = field(default_factory=dict)
    _received: dict[int, int] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._expected = {plan.index: plan.size for plan in self.plans}

    def add(self, table: pa.Table) -> BatchReport:
        """Take one result table; write the shards it completes."""
        if table.num_rows == 0:
            return BatchReport(0, 0, 0.0)
        positions = table.column("_pos").to_pylist()
        fresh = [i for i, p in enumerate(positions) if p not in self._seen]
        if len(fresh) < table.num_rows:  # a batch run twice (a retried task): keep the first rows only
            log.debug("dropping %d rows received twice", table.num_rows - len(fresh))
            table = table.take(pa.array(fresh, pa.int64()))
            if table.num_rows == 0:
                return BatchReport(0, 0, 0.0)
        self._seen.update(table.column("_pos").to_pylist())
        self._check_model(table.column("_model")[0].as_py())
        fallback = FALLBACK_KEY in (table.schema.metadata or {})
        if fallback:
            self.fallbacks += 1
            self.run["fallbacks"] = self.fallbacks
            table = table.replace_schema_metadata(None)
        errors = table.column("_error").to_pylist()
        failed = [i for i, e in enumerate(errors) if e is not None]
        for i in failed:
            self.errors.append({"id": table.column("id")[i].as_py(), "source": table.column("source")[i].as_py(),
                                "reason": errors[i], "run": self.run.get("run_id")})
            log.warning("%s", errors[i])
        seconds = sum(d or 0.0 for d, e in zip(table.column("duration").to_pylist(), errors) if e is None)
        for shard in set(table.column("_shard").to_pylist()):
            part = table.filter(pc.equal(table.column("_shard"), shard))
            self._pending.setdefault(shard, []).append(part)
            self._received[shard] = self._received.get(shard, 0) + part.num_rows
            if self._received[shard] > self._expected.get(shard, -1):
                raise SoCodecError(f"internal error: shard {shard} received more rows than planned")
            if self._received[shard] == self._expected[shard]:
                self._write(shard)
        return BatchReport(table.num_rows - len(failed), len(failed), seconds, fallback)

    def _check_model(self, text: str) -> None:
        model = json.loads(text)
        if self.model is None:
            if self.stats.model and self.stats.model != model:
                raise SoCodecError(
                    f"{self.store.root}: its shards were written with another model ({_short(self.stats.model)}, "
                    f"now {_short(model)}); use a new output folder")
            self.model = model
        elif model != self.model:
            raise SoCodecError("the workers loaded different models; check the model files on every node")

    def _write(self, shard: int) -> None:
        table = pa.concat_tables(self._pending.pop(shard))
        table = table.take(pc.sort_indices(table, [("_pos", "ascending")]))
        ok = table.filter(pc.is_null(table.column("_error")))
        if ok.num_rows:
            rows = ok.select(list(COLUMNS)).cast(shard_schema(self.model))
            path = self.store.write_shard(shard, rows)
            self.stats.add(path.name, rows, self.model or {}, {self.padding})
            log.debug("wrote %s (%d rows)", path, rows.num_rows)
        self.write_manifest()

    def write_manifest(self) -> None:
        """Rewrite the manifest and the errors file for the shards written so far."""
        self.store.write_manifest(self.stats, self.padding,
                                  self.earlier_errors + sorted(self.errors, key=lambda e: e["id"]), self.run,
                                  run_errors=len(self.errors))

    @property
    def unfinished(self) -> list[int]:
        """Shards still waiting for results (empty once the run is complete)."""
        return [p.index for p in self.plans if self._received.get(p.index, 0) < p.size]


def _short(model: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(model.items())) or "unknown"
