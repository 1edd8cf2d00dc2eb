"""``tokenize``: a corpus -> Parquet token shards, on this machine or on a Ray cluster.

The steps: build the work list (:func:`~socodec.corpus.inputs.collect_work`), skip the ids
already in the output's complete shards, plan shards and length-bucketed batches
(:func:`~socodec.corpus.inputs.plan_shards`), run the batches on an engine (``local`` or
``ray``: same plan, same rows), and write each shard as it completes
(:class:`~socodec.corpus.shards.ShardCollector`), with one progress bar.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from socodec.config import DEFAULT_PADDING, PADDINGS
from socodec.corpus.export import FORMATS, export_shards
from socodec.corpus.inputs import Batch, collect_work, fingerprint, plan_shards, probe_seconds
from socodec.corpus.schema import pa
from socodec.corpus.shards import ShardStore
from socodec.corpus.containers import check_store, is_url
from socodec.corpus.shards import ShardCollector
from socodec.errors import ErrorLimit, SoCodecError

__all__ = ["TokenizeOptions", "TokenizeSummary", "tokenize", "default_workers", "ENGINES"]

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class TokenizeOptions:
    """What to tokenise, where to, and how (the model itself comes as a loader)."""

    inputs: tuple[Path | str, ...]
    out_dir: Path | str
    engine: str = "local"
    workers: int | None = None
    threads: int | None = None
    shard_size: int = 1000
    batch_size: int = 8
    padding: str = DEFAULT_PADDING
    device: str = "cpu"
    ray_address: str | None = None
    quiet: bool = False
    max_errors: ErrorLimit = ErrorLimit()
    audio_column: str = "audio"
    id_column: str | None = None
    format: str = "parquet"
    redo_changed: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format != "parquet" and is_url(self.out_dir):
            raise ValueError(f"format {self.format} is written to a local folder; on object storage only parquet")
        if self.shard_size < 1 or self.batch_size < 1:
            raise ValueError("shard_size and batch_size must be at least 1")


@dataclass(frozen=True)
class TokenizeSummary:
    """The outcome of one run."""

    listed: int
    skipped: int
    written: int
    failed: int
    audio_seconds: float
    wall_seconds: float
    out_dir: Path | str
    fallbacks: int = 0

    @property
    def throughput(self) -> float:
        """Hours of audio per hour of wall time (the inverse of the real-time factor)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def describe(self) -> str:
        hours = self.audio_seconds / 3600
        text = (f"{self.written} utterances ({hours:.3f} h of audio) tokenised in {self.wall_seconds:.1f} s: "
                f"{self.throughput:.2f} h of audio per hour")
        if self.skipped:
            text += f"; {self.skipped} already done"
        if self.failed:
            text += f"; {self.failed} failed (see {str(self.out_dir).rstrip('/')}/errors.jsonl)"
        if self.fallbacks:
            text += f"; {self.fallbacks} batches were redone one by one after failing whole"
        return text


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str) -> int:
    """1 worker per GPU with ``cuda``, one per GPU named otherwise; on CPU one per ~2 cores."""
    if device.startswith("cuda"):
        import torch

        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    return max(1, _cores() // 2)


def tokenize(opts: TokenizeOptions, load: Callable[[], object]) -> TokenizeSummary:
    """Tokenise ``opts.inputs`` into ``opts.out_dir`` with the model ``load()`` returns.

    ``load`` runs once in each worker process or actor, so it must be picklable
    (e.g. ``functools.partial(SoCodec.from_pretrained, "ckpts")``).

    Raises:
        SoCodecError: bad inputs (nothing is written), a model that cannot be loaded, an
            output folder written with another model or padding, or more failed items than
            ``opts.max_errors`` allows. Unreadable or bad audio does not raise: it is counted
            in ``failed`` and listed in ``errors.jsonl``. Any failure that is not one item's
            (out of memory, a bug) stops the run at once; the shards written so far, the
            manifest and ``errors.jsonl`` stay valid and a rerun resumes.
    """
    start = time.perf_counter()
    workers = opts.workers or default_workers(opts.device)
    threads = opts.threads or max(1, _cores() // workers)
    if is_url(opts.out_dir):
        check_store(str(opts.out_dir))  # a missing bucket or bad credentials: one line, before any input
    items = collect_work(opts.inputs, opts.audio_column, opts.id_column)
    with ThreadPoolExecutor(max_workers=8) as pool:
        items = [replace(item, fingerprint=fp) for item, fp in zip(items, pool.map(fingerprint, items))]
    with ShardStore(opts.out_dir) as store:
        done, stats = store.scan()
        other = stats.padding - {opts.padding}
        if other:
            raise SoCodecError(f"{opts.out_dir}: its shards were tokenised with padding {', '.join(sorted(other))}; "
                               f"use the same --padding or a new output folder")
        changed = [i.id for i in items if done.get(i.id) is not None and done[i.id] != i.fingerprint]
        if changed and opts.redo_changed:
            log.info("tokenising again %d utterances whose audio changed: %s", len(changed), _some(changed))
            store.drop_ids(set(changed))
            done, stats = store.scan()
        elif changed:
            log.warning("%d utterances changed since they were tokenised (%s); their old rows are kept: "
                        "add --redo-changed to tokenise them again", len(changed), _some(changed))
        todo = [item for item in items if item.id not in done]
        skipped = len(items) - len(todo)
        if skipped:
            log.info("%d of %d utterances are already in %s; tokenising the other %d",
                     skipped, len(items), opts.out_dir, len(todo))
        with ThreadPoolExecutor(max_workers=8) as pool:
            seconds = list(pool.map(probe_seconds, todo))
        plans = plan_shards(todo, seconds, opts.shard_size, opts.batch_size, store.next_index())
        run = {"run_id": _run_id(), "engine": opts.engine, "workers": workers, "threads": threads,
               "batch_size": opts.batch_size, "device": opts.device}
        collector = ShardCollector(store, plans, stats, opts.padding, run, earlier_errors=store.previous_errors())
        batches = [batch for plan in plans for batch in plan.batches]
        written = failed = 0
        audio = 0.0
        with tqdm(total=len(todo), unit="utt", disable=opts.quiet or not todo, dynamic_ncols=True,
                  desc="tokenize") as bar, logging_redirect_tqdm():
            try:
                for table in _engine(opts, batches, load, workers, threads):
                    report = collector.add(table)
                    written, failed, audio = written + report.done, failed + report.failed, audio + report.seconds
                    if opts.max_errors.exceeded(failed, written + failed):
                        raise SoCodecError(opts.max_errors.message(failed, written + failed,
                                                                   opts.out_dir / "errors.jsonl"))
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"{audio / 3600:.3f} h audio, RTF {elapsed / audio if audio else 0:.2f}",
                                        refresh=False)
                    bar.update(report.done + report.failed)
            except BaseException:  # stopped: the shards written so far stay listed, the errors too
                collector.write_manifest()
                raise
        if collector.unfinished:
            raise SoCodecError(f"internal error: shards {collector.unfinished} did not receive all their results")
        summary = TokenizeSummary(len(items), skipped, written, failed, audio, time.perf_counter() - start,
                                  opts.out_dir, collector.fallbacks)
        run.update(listed=summary.listed, skipped=summary.skipped, written=summary.written, failed=summary.failed,
                   fallbacks=summary.fallbacks,
                   audio_hours=round(audio / 3600, 6), wall_s=round(summary.wall_seconds, 3))
        collector.write_manifest()
        if opts.format != "parquet":
            export_shards(Path(opts.out_dir), opts.format)
    return summary


def _some(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _run_id() -> str:
    """When this run started (UTC) plus a random suffix, e.g. ``20261205T164500Z-3f9a1c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _engine(opts: TokenizeOptions, batches: list[Batch], load: Callable[[], object], workers: int,
            threads: int) -> Iterator[pa.Table]:
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG  # -v: Ray's own logs too
    level = logging.DEBUG if verbose else logging.ERROR if opts.quiet else logging.WARNING
    if not batches:
        return iter(())
    workers = min(workers, len(batches))
    if opts.engine == "ray":
        from socodec.corpus.engines import run_ray

        return run_ray(batches, load, workers=workers, threads=threads, padding=opts.padding, device=opts.device,
                       address=opts.ray_address, log_level=level)
    from socodec.corpus.engines import run_local

    return run_local(batches, load, workers=workers, threads=threads, padding=opts.padding,
                     device=opts.device, log_level=level)


