"""The ``local`` engine: a pool of worker processes on this machine, each holding the model once.

Workers are started with ``spawn`` (no fork of a process holding torch threads), load the
model once (``load()``), set ``threads`` torch threads, and encode whole planned batches.
With ``device="cuda"`` and several workers, worker ``i`` sees only GPU ``i`` (modulo the
GPUs present). A worker whose parent dies (even by ``kill -9``) is ended by the kernel, and
the pool's semaphores are removed without a warning on the terminal.

The ``ray`` engine: Ray Data with a pool of actors that each hold the model.

The planned batches become a Ray dataset (one row per batch, so every batch reaches an
actor whole and the rows equal the local engine's bit for bit), ``map_batches`` runs them
through an :class:`~ray.data.ActorPoolStrategy` of ``workers`` actors (one GPU each on
CUDA), and the driver streams the result tables into the same shard writer as the local
engine (same resume and atomicity). The actors return Arrow tables with plain list
columns, never numpy arrays (ragged numpy output would become a Ray tensor extension type).

Without ``address`` a local Ray is started (with enough logical CPUs for the actors and
Ray's own tasks, whatever the core count); with one, the job joins that cluster, whose
nodes must have socodec (same version) and the model files installed. When the calling
process already runs Ray, that Ray is used and left running; only a Ray this module
started is shut down.

A Ray of our own outlives a socodec killed with ``kill -9`` by minutes (Ray's agents, ~200 MB).
:func:`start_local_ray` (also used by ``socodec serve``) runs each one in a temporary folder of
its own (``socodec-ray-*``) and records it under the cache folder (``$SOCODEC_CACHE_DIR/ray``:
that folder and the socodec process that owns it) from before it starts until it is shut down;
before starting another, it stops the processes of every recorded Ray whose owner is gone, and
removes its folder. A process is stopped only when it is Ray's and belongs to that Ray (its
command line or its open files are in the folder): a Ray that socodec did not start, or that a
live socodec runs, is never touched.

Fault tolerance is set explicitly: an actor whose node is lost is restarted elsewhere
(``max_restarts=-1``) and the batches it held are run again (``max_task_retries=-1``);
the driver keeps a result only once per shard position, and a shard is written only
when all its rows are in, so a lost node neither loses nor duplicates a row.

What every engine's worker does: hold the model, turn a planned batch into token rows.

:class:`BatchEncoder` reads the batch's audio, encodes it as one padded batch
(``codec.encode(list)``, each result equal to the clip's own) and returns an Arrow
table: the shard columns plus the bookkeeping columns of :data:`RESULT_COLUMNS`. An
item that cannot be read or encoded becomes a row with an ``_error`` (and empty tokens)
instead of stopping the batch; a failure that is not the item's (out of memory, a bug) is
raised and stops the run. A batch that fails as a whole is redone item by item; the
table's schema metadata :data:`FALLBACK_KEY` says so (the run counts them).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import nullcontext, suppress
from multiprocessing import resource_tracker
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, Iterator, TYPE_CHECKING

import torch

from socodec.codes import Codes
from socodec.config import DEFAULT_PADDING, PADDINGS, default_cache_dir
from socodec.corpus.containers import STORAGE_OPTIONS_ENV
from socodec.errors import require
from socodec.corpus.inputs import LONG_SECONDS, Batch, item_name, probe_seconds, read_item
from socodec.corpus.quiet import RAY_NATIVE_LOG, drop_stderr_lines
from socodec.corpus.schema import codes_table, pa, shard_schema
from socodec.errors import Fallbacks, SoCodecError, is_item_error, one_line
from socodec.fileio import atomic_write

__all__ = ["run_local", "run_ray", "BatchEncoder", "FALLBACK_KEY", "RESULT_COLUMNS", "load_encoder",
           "start_local_ray", "stop_orphaned_rays"]


log = logging.getLogger(__name__)
_ENCODER: BatchEncoder | None = None
_INIT_ERROR: BaseException | None = None


def run_local(
    batches: Iterable[Batch],
    load: Callable[[], object],
    *,
    workers: int,
    threads: int | None,
    padding: str,
    device: str = "cpu",
    log_level: int = logging.WARNING,
) -> Iterator[pa.Table]:
    """Encode ``batches`` in ``workers`` processes; yield each batch's result table as it completes."""
    ctx = multiprocessing.get_context("spawn")
    _quiet_resource_tracker()
    slots = ctx.SimpleQueue()
    gpus = _gpu_count() if device == "cuda" and workers > 1 else 0
    for i in range(workers):
        slots.put(i % gpus if gpus else None)
    order: dict[Future, int] = {}  # submission order: finished batches are yielded in it
    pending: set[Future] = set()
    todo = iter(batches)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(load, threads, padding, slots, log_level, os.getpid())) as pool:
        try:
            while True:
                while len(pending) < 2 * workers and (batch := next(todo, None)) is not None:
                    future = pool.submit(_encode, batch)
                    order[future] = len(order)
                    pending.add(future)
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                failed = yield from _yield_finished(done, order)
                if failed is not None:
                    # A failure of the run: batches not started are dropped, the ones already
                    # running finish and are kept (a rerun resumes after them), then it is raised.
                    for future in pending:
                        future.cancel()
                    yield from _yield_finished(wait(pending).done, order)
                    raise failed
        finally:
            for future in pending:
                future.cancel()


def _yield_finished(done: Iterable[Future], order: dict[Future, int]) -> Iterator[pa.Table]:
    """Yield the results of ``done`` in submission order; return the first failure instead of raising it."""
    failed: BaseException | None = None
    for future in sorted(done, key=order.__getitem__):
        del order[future]
        if future.cancelled():
            continue
        if (exc := future.exception()) is not None:
            failed = failed or exc
        else:
            yield future.result()
    return failed


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its stderr on /dev/null.

    The tracker outlives a ``kill -9`` of this process and then removes the pool's
    semaphores, as it should, but also prints "There appear to be N leaked semaphore
    objects" to the terminal: a warning about its own clean-up, meaningless to our users.
    A tracker already running (a second run in one process) is left as it is.
    """
    if not sys.platform.startswith("linux"):
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _init_worker(load: Callable[[], object], threads: int | None, padding: str, slots, log_level: int,
                 parent: int) -> None:
    """Runs once in each worker: die with the parent, pick a GPU, load the model."""
    global _ENCODER, _INIT_ERROR
    _die_with_parent()
    if os.getppid() != parent:  # the parent died while this worker was starting: it would wait forever
        os._exit(1)
    logging.basicConfig(level=log_level, format="socodec: %(levelname)s: %(message)s", stream=sys.stderr)
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    try:
        _ENCODER = load_encoder(load, threads, padding)
    except BaseException as exc:  # noqa: BLE001 - reported by the first batch, with its message
        _INIT_ERROR = exc if isinstance(exc, SoCodecError) else SoCodecError(f"cannot load the model ({exc})")


def _encode(batch: Batch) -> pa.Table:
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    assert _ENCODER is not None
    return _ENCODER.encode(batch)


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent ends (best effort elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RayEncoder:
    """The actor: loads the model once; each call encodes one planned batch."""

    def __init__(self, load: Callable[[], object], threads: int | None, padding: str) -> None:
        self.error: str | None = None
        self.encoder: BatchEncoder | None = None
        try:
            self.encoder = load_encoder(load, threads, padding)
        except Exception as exc:  # noqa: BLE001 - raised by the first call, so it reaches the driver once
            self.error = str(exc)

    def __call__(self, rows: pa.Table) -> pa.Table:
        if self.encoder is None:
            raise SoCodecError(self.error or "the model could not be loaded")
        tables = [self.encoder.encode(Batch.from_json(json.loads(text))) for text in rows.column("batch").to_pylist()]
        return pa.concat_tables(tables)


def _actor_class(load: Callable[[], object], threads: int | None, padding: str) -> type:
    """A :class:`RayEncoder` with its arguments bound (shipped with the class, not as constructor arguments
    in Ray's object store, which would make restarted actors depend on them)."""

    class SocodecEncoder(RayEncoder):
        def __init__(self) -> None:
            super().__init__(load, threads, padding)

    return SocodecEncoder


def run_ray(
    batches: Iterable[Batch],
    load: Callable[[], object],
    *,
    workers: int,
    threads: int | None,
    padding: str,
    device: str = "cpu",
    address: str | None = None,
    log_level: int = logging.WARNING,
) -> Iterator[pa.Table]:
    """Encode ``batches`` on Ray; yield the result tables as they arrive."""
    ray = require("ray")
    require("ray.data")
    rows = [{"batch": json.dumps(b.to_json())} for b in batches]
    if not rows:
        return
    stop = _start(ray, workers, address, log_level)
    quiet = drop_stderr_lines(RAY_NATIVE_LOG) if log_level > logging.DEBUG else nullcontext()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        ctx.raise_original_map_exception = True
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        gpu = device.startswith("cuda")
        results = dataset.map_batches(
            _actor_class(load, threads, padding),
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=1 if gpu else 0,
            max_restarts=-1,  # an actor lost with its node is started again on another node
            max_task_retries=-1,  # and the batches it was running are retried there
        )
        try:
            with quiet:  # Ray's core worker warns about every Ray Data actor pool, on fd 2
                for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                    yield table
        except Exception as exc:  # noqa: BLE001 - Ray wraps the actors' errors; keep their message
            raise SoCodecError(f"the ray engine failed: {_original_message(exc)}") from None
    finally:
        if stop is not None:
            stop()


def _start(ray, workers: int, address: str | None, log_level: int) -> Callable[[], None] | None:
    """Join ``address``, or start a quiet local Ray with enough logical CPUs for the actors.

    Ray's Python loggers are set to errors only unless ``log_level`` is DEBUG. Returns what
    shuts it down, or None when this process already runs Ray (it is used as it is, and not
    shut down afterwards).
    """
    if ray.is_initialized():
        return None
    if log_level > logging.DEBUG:
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    env = {k: v for k, v in os.environ.items() if k == STORAGE_OPTIONS_ENV}  # the nodes read the same store
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                  configure_logging=True, ignore_reinit_error=True, runtime_env={"env_vars": env} if env else None)
    try:
        if not address:
            return start_local_ray(ray, num_cpus=max(os.cpu_count() or 1, workers + 2), **kwargs)
        ray.init(address=address, **kwargs)
        return ray.shutdown
    except Exception as exc:  # noqa: BLE001 - e.g. no cluster at the address
        raise SoCodecError(_start_failure(address, _original_message(exc))) from None


def start_local_ray(ray: ModuleType, **init_kwargs: object) -> Callable[[], None]:
    """``ray.init(address="local", **init_kwargs)``: a Ray of our own, never one that happens to run on
    this machine, in a temporary folder of its own and recorded until it is shut down (after
    :func:`stop_orphaned_rays`). Returns the function that shuts it down and forgets it.
    """
    stop_orphaned_rays()
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()  # where Ray would put it (short: sockets)
    temp = Path(tempfile.mkdtemp(prefix=_RAY_PREFIX, dir=base))
    record = _ray_records() / f"{temp.name}.json"
    entry = {"owner": os.getpid(), "owner_started": _psutil().Process().create_time(), "temp_dir": str(temp)}
    try:  # before Ray starts: a kill at any moment leaves its processes findable
        atomic_write(record, lambda tmp: tmp.write_text(json.dumps(entry)), fsync=False)
    except OSError as exc:  # an unwritable cache: Ray still runs, only a kill -9 would leave it behind
        log.debug("cannot record the Ray of this run in %s (%s)", record, one_line(exc))

    def stop() -> None:
        try:
            ray.shutdown()
        finally:
            record.unlink(missing_ok=True)
            shutil.rmtree(temp, ignore_errors=True)

    try:
        ray.init(address="local", _temp_dir=str(temp), **init_kwargs)
    except BaseException:
        stop()
        raise
    return stop


def stop_orphaned_rays() -> int:
    """Stop the processes of the Rays that :func:`start_local_ray` recorded and whose socodec is gone
    (killed), and forget them. Returns the number of processes stopped."""
    psutil = _psutil()
    stopped = 0
    for record in sorted(_ray_records().glob("*.json")):
        try:
            entry = json.loads(record.read_text())
            owner, started, temp = int(entry["owner"]), float(entry["owner_started"]), Path(entry["temp_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            log.debug("%s: not a Ray record, removed", record)
            record.unlink(missing_ok=True)
            continue
        if _alive(owner, started):
            continue
        procs = _ray_processes(temp)
        for proc in procs:
            with suppress(psutil.Error):
                proc.terminate()
        _, left = psutil.wait_procs(procs, timeout=5)
        for proc in left:
            with suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=5)
        if procs:
            log.info("stopped %d Ray processes left behind by a socodec that was killed", len(procs))
        stopped += len(procs)
        if temp.is_absolute() and temp.name.startswith(_RAY_PREFIX):  # never what a damaged record names
            shutil.rmtree(temp, ignore_errors=True)
        record.unlink(missing_ok=True)
    return stopped


_RAY_PREFIX = "socodec-ray-"


def _psutil() -> ModuleType:
    """psutil as Ray ships it (importing Ray puts its own copy on the path)."""
    import ray  # noqa: F401
    import psutil

    return psutil


def _ray_records() -> Path:
    folder = default_cache_dir() / "ray"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` still runs and is the one started at ``started`` (not a reused pid)."""
    psutil = _psutil()
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # cannot tell: leave it alone
        return True


def _ray_processes(temp: Path) -> list:
    """Ray's processes of the Ray in folder ``temp``: a Ray program (its executable or script in Ray's
    package, or a worker named ``ray::...``) whose command line or open files are in that folder."""
    psutil = _psutil()
    package = os.path.dirname(sys.modules["ray"].__file__) + os.sep
    inside = re.compile(re.escape(str(temp)) + r"(?:/|$|[\s\"',;])")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.pid == os.getpid() or not cmd:
            continue
        if not (cmd[0].startswith("ray::") or any(arg.startswith(package) for arg in cmd[:3])):
            continue
        try:
            if any(inside.search(arg) for arg in cmd) or any(inside.search(f.path) for f in proc.open_files()):
                found.append(proc)
        except psutil.Error:  # gone meanwhile, or not ours to inspect
            continue
    return found


def _start_failure(address: str | None, reason: str) -> str:
    """Why Ray did not start, in our words: Ray's own advice names its flags (``--address``), not ours."""
    if not address:
        return f"cannot start a local Ray ({reason})"
    if "Could not find any running Ray instance" in reason or "--address" in reason or "RAY_ADDRESS" in reason:
        return (f"--ray-address {address}: no running Ray cluster found there; start one ('ray start --head') "
                "or leave out --ray-address to start a Ray for this run only")
    return f"--ray-address {address}: cannot join the Ray cluster ({reason})"


def _original_message(exc: BaseException) -> str:
    """The innermost error's first line (Ray wraps actor errors in several layers)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text[:300]


if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec
RESULT_COLUMNS = ("_shard", "_pos", "_error", "_model")
"""Bookkeeping columns of a result table: shard index, work-list position, error (null: ok), model JSON."""
FALLBACK_KEY = b"socodec_fallback"
"""Schema metadata key of a result table whose batch was redone item by item (value ``b"1"``)."""


class BatchEncoder:
    """A loaded codec that encodes planned batches into result tables.

    Args:
        codec: the model (a :class:`~socodec.SoCodec`).
        padding: ``published`` (the published command line's tokens) or ``grid``.
    """

    def __init__(self, codec: SoCodec, padding: str = DEFAULT_PADDING) -> None:
        if padding not in PADDINGS:
            raise SoCodecError(f"unknown padding '{padding}' (choose from {', '.join(PADDINGS)})")
        self.codec = codec
        self.padding = padding
        self._model = json.dumps(dict(codec.identity), sort_keys=True)
        self.fallbacks = Fallbacks(log)

    def _encode(self, x):
        return self.codec.encode(x, padding=self.padding)

    def encode(self, batch: Batch) -> pa.Table:
        """One result row per item of ``batch`` (in batch order)."""
        results: list[tuple[Codes | None, float, str | None]] = [(None, 0.0, None)] * len(batch.items)
        clips: list[tuple[int, torch.Tensor, float]] = []
        for j, item in enumerate(batch.items):
            try:
                if not item.is_segment and item.member is None and probe_seconds(item) > LONG_SECONDS:
                    results[j] = (self._encode(str(item.source)), probe_seconds(item), None)
                else:
                    wav, seconds = read_item(item)
                    clips.append((j, wav, seconds))
            except Exception as exc:  # noqa: BLE001 - a bad input is recorded, anything else stops the run
                if not is_item_error(exc):
                    raise
                results[j] = (None, 0.0, _reason(exc))
        fallback = False
        if clips:
            encoded = self.fallbacks.batch(lambda: self._encode([wav for _, wav, _ in clips]), len(clips))
            if encoded is None:  # find the culprit: each clip alone
                fallback = True
                encoded = Fallbacks.each([wav for _, wav, _ in clips], self._encode)
            for (j, _, seconds), codes in zip(clips, encoded):
                results[j] = ((codes, seconds, None) if isinstance(codes, Codes)
                              else (None, 0.0, _reason(codes, item_name(batch.items[j]))))
        table = self._table(batch, results)
        return table.replace_schema_metadata({FALLBACK_KEY: b"1"}) if fallback else table

    def _table(self, batch: Batch, results: list[tuple[Codes | None, float, str | None]]) -> pa.Table:
        ok = [j for j, r in enumerate(results) if r[0] is not None]
        bad = [j for j, r in enumerate(results) if r[0] is None]
        order = ok + bad
        items = [batch.items[j] for j in order]
        columns = {
            "source": [i.location for i in items],
            "offset": [i.offset for i in items],
            "duration": [results[j][1] if results[j][0] is not None else i.duration for j, i in zip(order, items)],
            "metadata": [i.metadata for i in items],
            "fingerprint": [i.fingerprint for i in items],
        }
        good = codes_table([(batch.items[j].id, results[j][0]) for j in ok],
                           {k: v[: len(ok)] for k, v in columns.items()}, padding=self.padding)
        failed = pa.Table.from_pylist(
            [{"id": batch.items[j].id, "tokens": [], "speaker": [], **{k: v[len(ok) + n] for k, v in columns.items()}}
             for n, j in enumerate(bad)], schema=shard_schema())
        table = pa.concat_tables([good.replace_schema_metadata(None), failed.replace_schema_metadata(None)])
        table = table.append_column("_shard", pa.array([batch.shard] * len(order), pa.int32()))
        table = table.append_column("_pos", pa.array([batch.positions[j] for j in order], pa.int64()))
        table = table.append_column("_error", pa.array([results[j][2] for j in order], pa.string()))
        return table.append_column("_model", pa.array([self._model] * len(order), pa.string()))


def _reason(exc: BaseException, name: str | None = None) -> str:
    """One line for the errors table; unexpected exceptions keep their type's name."""
    text = one_line(exc)
    if not isinstance(exc, SoCodecError):
        text = f"{type(exc).__name__}: {text}"
    return f"{name}: {text}" if name and name not in text else text


def load_encoder(load: Callable[[], SoCodec], threads: int | None, padding: str) -> BatchEncoder:
    """Set torch's thread count, turn heap trimming on, load the model with ``load()`` and wrap it
    (each worker does this once; the worker process is ours)."""
    from socodec.inference.core import trim_heap_after_calls

    trim_heap_after_calls()
    if threads:
        torch.set_num_threads(threads)
    return BatchEncoder(load(), padding)
