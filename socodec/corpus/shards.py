"""The output folder of ``socodec tokenize``: Parquet shards, ``manifest.json``, ``errors.jsonl``.

::

    OUT/
      shards/tokens-00000.parquet   rows of the schema in socodec.corpus.schema
      shards/tokens-00001.parquet   ...
      manifest.json                 counts, hours, model fingerprint, padding, socodec version
      errors.jsonl                  one {"id", "source", "reason"} object per failed item

A shard appears under its name only once complete (written to a hidden temporary file,
then renamed), so every ``tokens-*.parquet`` is whole. Resuming reads the ids of the
existing shards and skips them: after a crash at any moment, a rerun writes every id
exactly once. One process at a time may write a folder (a lock file, released when the
process ends, however it ends).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from socodec import __version__
from socodec.config import SAMPLE_RATE
from socodec.corpus.schema import SHARD_FORMAT, pa, pq, shard_info
from socodec.errors import SoCodecError, one_line
from socodec.fileio import atomic_path, atomic_write, write_reason

__all__ = ["ShardStore", "ShardStats", "MANIFEST_FORMAT"]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "socodec-corpus/1"
_SHARD_NAME = re.compile(r"tokens-(\d{5,})\.parquet")


@dataclass
class ShardStats:
    """What the complete shards of a folder hold."""

    rows: int = 0
    samples: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, str] | None = None
    padding: set[str] = field(default_factory=set)

    @property
    def hours(self) -> float:
        return self.samples / SAMPLE_RATE / 3600

    def add(self, name: str, rows: int, samples: int, model: dict[str, str], paddings: set[str]) -> None:
        self.rows += rows
        self.samples += samples
        self.shards.append({"file": f"shards/{name}", "rows": rows, "hours": round(samples / SAMPLE_RATE / 3600, 6)})
        self.model = self.model or model
        self.padding |= paddings


class ShardStore:
    """An output folder, locked for writing while the object is open (use it as a context manager)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise SoCodecError(f"{self.root}: the output must be a folder, and this is a file")
        self.shard_dir = self.root / "shards"
        self._lock = None
        self._made: list[Path] = []

    def __enter__(self) -> "ShardStore":
        from filelock import FileLock, Timeout

        self._made = [d for d in (self.shard_dir, *self.shard_dir.parents) if not d.exists()]
        try:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.root / ".lock"), thread_local=False)
            lock.acquire(timeout=0)
        except Timeout:
            raise SoCodecError(f"{self.root}: another socodec tokenize is writing this folder") from None
        except OSError as exc:
            raise SoCodecError(f"{self.root}: cannot create the output folder ({one_line(exc)})") from None
        self._lock = lock
        self._remove_leftovers()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            if exc_type is not None:
                self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """After a failed run: the folders this run made are removed again while nothing was written in them."""
        if not self._made or any(self.shard_dir.iterdir()):
            return
        if {p.name for p in self.root.iterdir()} - {"shards", ".lock"}:
            return
        (self.root / ".lock").unlink(missing_ok=True)
        for folder in self._made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    def _remove_leftovers(self) -> None:
        """Delete temporary shard files left by a run that was killed while writing."""
        leftovers = [*self.shard_dir.glob(".tokens-*.tmp-*"), *self.root.glob(".manifest.tmp-*"),
                     *self.root.glob(".errors.tmp-*")]
        for tmp in leftovers:
            log.debug("removing the unfinished %s", tmp)
            tmp.unlink(missing_ok=True)

    @staticmethod
    def shard_name(index: int) -> str:
        return f"tokens-{index:05d}.parquet"

    def complete_shards(self) -> list[tuple[int, Path]]:
        """``(index, path)`` of every complete shard, by index."""
        found = [(int(m.group(1)), p) for p in self.shard_dir.glob("tokens-*.parquet")
                 if (m := _SHARD_NAME.fullmatch(p.name))]
        return sorted(found)

    def next_index(self) -> int:
        shards = self.complete_shards()
        return shards[-1][0] + 1 if shards else 0

    def scan(self) -> tuple[set[str], ShardStats]:
        """The ids already written and the statistics of the complete shards."""
        ids: set[str] = set()
        stats = ShardStats()
        for _, path in self.complete_shards():
            try:
                table = pq.read_table(path, columns=["id", "num_samples", "padding"])
            except (OSError, pa.ArrowException) as exc:
                raise SoCodecError(f"{path}: unreadable shard ({one_line(exc)}); move it away and run again") \
                    from None
            ids.update(table.column("id").to_pylist())
            samples = sum(n or 0 for n in table.column("num_samples").to_pylist())
            paddings = {p for p in table.column("padding").to_pylist() if p}
            stats.add(path.name, table.num_rows, samples, shard_info(path).get("model") or {}, paddings)
        return ids, stats

    def write_shard(self, index: int, table: pa.Table) -> Path:
        """Write one shard atomically (it is complete, or absent)."""
        path = self.shard_dir / self.shard_name(index)
        if path.exists():
            raise SoCodecError(f"{path}: exists already; refusing to overwrite a complete shard")
        try:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        except OSError as exc:  # a full disk: one line naming the file; the shard is written on the next run
            raise SoCodecError(f"{path}: cannot write ({write_reason(exc)})") from None
        return path

    def write_manifest(self, stats: ShardStats, padding: str, errors: list[dict[str, str]], run: dict[str, Any]) \
            -> None:
        """Rewrite ``manifest.json`` and ``errors.jsonl`` (atomically) from the shards written so far."""
        manifest = {
            "format": MANIFEST_FORMAT,
            "shard_format": SHARD_FORMAT,
            "socodec_version": __version__,
            "model": stats.model or {},
            "padding": padding,
            "sample_rate": SAMPLE_RATE,
            "rows": stats.rows,
            "hours": round(stats.hours, 6),
            "shards": stats.shards,
            "errors": len(errors),
            "errors_file": "errors.jsonl",
            "last_run": run,
        }
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        files = {"manifest.json": json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "errors.jsonl": lines}
        for name, text in files.items():
            try:
                atomic_write(self.root / name, lambda p: p.write_text(text, "utf-8"))
            except OSError as exc:
                raise SoCodecError(f"{self.root / name}: cannot write ({write_reason(exc)})") from None
