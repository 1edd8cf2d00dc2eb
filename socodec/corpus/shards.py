"""The output folder of ``socodec tokenize``: Parquet shards, ``manifest.json``, ``errors.jsonl``.

::

    OUT/
      shards/tokens-00000.parquet   rows of the schema in socodec.corpus.schema
      shards/tokens-00001.parquet   ...
      manifest.json                 counts, hours, model fingerprint, padding, rows per HuBERT attention
                                    (full: the published tokens; windowed), socodec version
      errors.jsonl                  one {"id", "source", "reason", "run"} object per failed item, every run's

A shard appears under its name only once complete (written to a hidden temporary file,
then renamed), so every ``tokens-*.parquet`` is whole. Resuming reads the ids of the
existing shards and skips them: after a crash at any moment, a rerun writes every id
exactly once. One process at a time may write a folder (a lock file, released when the
process ends, however it ends).

On object storage (``OUT`` an fsspec URL such as ``s3://bucket/tokens``), where there is no
rename, the commit is the store's own: each shard is one object written in a single upload
(a PUT, or a multipart upload completed only when the whole shard is sent), which becomes
visible under its final name only when complete; nothing is ever written under a temporary
name, so there is nothing to clean after a kill. A reader globbing ``shards/*.parquet`` sees
whole shards only, and resume counts exactly those. The lock file has no equivalent there:
run one ``tokenize`` per output URL at a time.

Gathering the engines' result tables into shards: each shard is written once all its items are back.

Results arrive in any order (several workers, Ray's scheduling). The collector keeps
each shard's rows until every planned item of the shard has come back (as a row or as
an error), sorts them by their place in the work list, and writes the shard, so a
shard's contents depend only on the plan, never on the engine or the timing.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from socodec import __version__
from socodec.config import SAMPLE_RATE
from socodec.corpus.containers import check_store, is_url, local_path, store_error
from socodec.corpus.engines import FALLBACK_KEY
from socodec.corpus.inputs import ShardPlan
from socodec.corpus.schema import COLUMNS, SHARD_FORMAT, pa, pc, pq, shard_info, shard_schema
from socodec.errors import SoCodecError, one_line
from socodec.fileio import atomic_path, atomic_write, write_reason

__all__ = ["ShardStore", "ShardStats", "MANIFEST_FORMAT", "ShardCollector", "BatchReport"]


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
    attention: dict[str, int] = field(default_factory=dict)

    @property
    def hours(self) -> float:
        return self.samples / SAMPLE_RATE / 3600

    def add(self, name: str, table: pa.Table, model: dict[str, str], paddings: set[str]) -> None:
        """Count a complete shard's rows (``table``: its rows, at least ``num_samples``, ``attention``)."""
        rows = table.num_rows
        samples = sum(n or 0 for n in table.column("num_samples").to_pylist())
        self.rows += rows
        self.samples += samples
        self.shards.append({"file": f"shards/{name}", "rows": rows, "hours": round(samples / SAMPLE_RATE / 3600, 6)})
        self.model = self.model or model
        self.padding |= paddings
        attention = table.column("attention").to_pylist() if "attention" in table.column_names else [None] * rows
        for value in attention:  # how HuBERT's attention saw each row: "full" = the published tokens
            key = value or "unknown"
            self.attention[key] = self.attention.get(key, 0) + 1


class ShardStore:
    """An output folder, locked for writing while the object is open (use it as a context manager)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.url = str(out_dir).rstrip("/") if is_url(out_dir) else None
        self.fs: Any = None
        self.root: Any = self.url or local_path(out_dir)
        if self.url is None and self.root.exists() and not self.root.is_dir():
            raise SoCodecError(f"{self.root}: the output must be a folder, and this is a file")
        self.shard_dir = self.root / "shards" if self.url is None else PurePosixPath("shards")
        self._lock = None
        self._made: list[Path] = []

    def _key(self, name: str) -> str:
        """The store path of ``name`` (``shards/x.parquet``, ``manifest.json``) under a remote output."""
        return f"{self._base}/{name}"

    def __enter__(self) -> "ShardStore":
        if self.url is not None:
            self.fs, self._base = check_store(self.url)
            self._base = self._base.rstrip("/")
            return self
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
        errors = self.root / "errors.jsonl"
        if {p.name for p in self.root.iterdir()} - {"shards", ".lock", "manifest.json", "errors.jsonl"}:
            return
        if errors.exists() and errors.stat().st_size:  # failed items are worth keeping
            return
        for name in (".lock", "manifest.json", "errors.jsonl"):
            (self.root / name).unlink(missing_ok=True)
        for folder in self._made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    def _remove_leftovers(self) -> None:
        """Delete temporary shard files left by a run that was killed while writing."""
        if self.url is not None:
            return
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
        if self.url is not None:
            self.fs.invalidate_cache()
            paths = [PurePosixPath(p) for p in self.fs.glob(self._key("shards/tokens-*.parquet"))]
        else:
            paths = list(self.shard_dir.glob("tokens-*.parquet"))
        found = [(int(m.group(1)), p) for p in paths if (m := _SHARD_NAME.fullmatch(p.name))]
        return sorted(found)

    def _read(self, path: Path | PurePosixPath, columns: list[str] | None) -> tuple[pa.Table, dict[str, Any]]:
        """A shard's columns and its ``socodec`` metadata, from disk or from the store."""
        if self.url is None:
            return pq.read_table(path, columns=columns), shard_info(path)
        with self.fs.open(str(path), "rb") as f:
            return pq.read_table(f, columns=columns), shard_info(f)

    def next_index(self) -> int:
        shards = self.complete_shards()
        return shards[-1][0] + 1 if shards else 0

    def scan(self) -> tuple[dict[str, str | None], ShardStats]:
        """The ids already written (with their fingerprints; None in rows written without one) and the
        statistics of the complete shards."""
        ids: dict[str, str | None] = {}
        stats = ShardStats()
        for _, path in self.complete_shards():
            try:
                table, info = self._read(path, None)
            except (OSError, pa.ArrowException) as exc:
                raise SoCodecError(f"{path}: unreadable shard ({one_line(exc)}); move it away and run again") \
                    from None
            prints = (table.column("fingerprint").to_pylist() if "fingerprint" in table.column_names
                      else [None] * table.num_rows)
            ids.update(zip(table.column("id").to_pylist(), prints))
            paddings = {p for p in table.column("padding").to_pylist() if p}
            stats.add(path.name, table, info.get("model") or {}, paddings)
        return ids, stats

    def drop_ids(self, ids: set[str]) -> int:
        """Rewrite the shards holding ``ids`` without them (a shard left empty is deleted); rows dropped.

        Each shard is replaced whole (renamed into place, or one upload on object storage), so a
        crash leaves every id either in its old row or absent, to be tokenised by the next run.
        """
        dropped = 0
        for _, path in self.complete_shards():
            table, _ = self._read(path, None)
            keep = pc.invert(pc.is_in(table.column("id"), pa.array(sorted(ids), pa.string())))
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue
            dropped += table.num_rows - kept.num_rows
            kept = kept.replace_schema_metadata(table.schema.metadata)
            if self.url is not None:
                if kept.num_rows:
                    buf = io.BytesIO()
                    pq.write_table(kept, buf)
                    self._put(str(path), buf.getvalue())
                else:
                    self.fs.rm_file(str(path))
            elif kept.num_rows:
                with atomic_path(path) as tmp:
                    pq.write_table(kept, tmp)
            else:
                Path(path).unlink()
        return dropped

    def previous_errors(self) -> list[dict[str, Any]]:
        """The lines of ``errors.jsonl`` written by earlier runs (kept: the file is appended run by run)."""
        try:
            if self.url is not None:
                key = self._key("errors.jsonl")
                text = self.fs.cat_file(key).decode() if self.fs.exists(key) else ""
            else:
                path = self.root / "errors.jsonl"
                text = path.read_text("utf-8") if path.is_file() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise SoCodecError(f"{self.root}: cannot read errors.jsonl ({one_line(exc)})") from None
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def write_shard(self, index: int, table: pa.Table) -> Path | PurePosixPath:
        """Write one shard atomically (it is complete, or absent)."""
        if self.url is not None:
            key = self._key(f"shards/{self.shard_name(index)}")
            if self.fs.exists(key):
                raise SoCodecError(f"{self.url}/shards/{self.shard_name(index)}: exists already; "
                                   "refusing to overwrite a complete shard")
            buf = io.BytesIO()
            pq.write_table(table, buf)
            self._put(key, buf.getvalue())
            return PurePosixPath(key)
        path = self.shard_dir / self.shard_name(index)
        if path.exists():
            raise SoCodecError(f"{path}: exists already; refusing to overwrite a complete shard")
        try:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        except OSError as exc:  # a full disk: one line naming the file; the shard is written on the next run
            raise SoCodecError(f"{path}: cannot write ({write_reason(exc)})") from None
        return path

    def write_manifest(self, stats: ShardStats, padding: str, errors: list[dict[str, Any]], run: dict[str, Any],
                       run_errors: int | None = None) -> None:
        """Rewrite ``manifest.json`` and ``errors.jsonl`` (atomically) from the shards written so far."""
        manifest = {
            "format": MANIFEST_FORMAT,
            "shard_format": SHARD_FORMAT,
            "socodec_version": __version__,
            "model": stats.model or {},
            "padding": padding,
            "attention": dict(sorted(stats.attention.items())),
            "sample_rate": SAMPLE_RATE,
            "rows": stats.rows,
            "hours": round(stats.hours, 6),
            "shards": stats.shards,
            "errors": len(errors) if run_errors is None else run_errors,
            "errors_file": "errors.jsonl",
            "last_run": run,
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        if self.url is not None:
            self._put(self._key("manifest.json"), text.encode())
            self._put(self._key("errors.jsonl"), lines.encode())
            return
        for name, content in {"manifest.json": text, "errors.jsonl": lines}.items():
            try:
                atomic_write(self.root / name, lambda p: p.write_text(content, "utf-8"))
            except OSError as exc:
                raise SoCodecError(f"{self.root / name}: cannot write ({write_reason(exc)})") from None

    def _put(self, key: str, data: bytes) -> None:
        """One object in one upload: visible under ``key`` only once complete."""
        try:
            self.fs.pipe_file(key, data)
        except Exception as exc:  # noqa: BLE001 - every store failure becomes one line
            raise store_error(f"{self.url}", exc) from None


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
