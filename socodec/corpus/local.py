"""The ``local`` engine: a pool of worker processes on this machine, each holding the model once.

Workers are started with ``spawn`` (no fork of a process holding torch threads), load the
model once (``load()``), set ``threads`` torch threads, and encode whole planned batches.
With ``device="cuda"`` and several workers, worker ``i`` sees only GPU ``i`` (modulo the
GPUs present). A worker whose parent dies (even by ``kill -9``) is ended by the kernel, and
the pool's semaphores are removed without a warning on the terminal.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import resource_tracker
from typing import Callable, Iterable, Iterator

from socodec.corpus.encoder import BatchEncoder, load_encoder
from socodec.corpus.plan import Batch
from socodec.corpus.schema import pa
from socodec.errors import SoCodecError

__all__ = ["run_local"]

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
    pending: set[Future] = set()
    todo = iter(batches)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(load, threads, padding, slots, log_level, os.getpid())) as pool:
        try:
            while True:
                while len(pending) < 2 * workers and (batch := next(todo, None)) is not None:
                    pending.add(pool.submit(_encode, batch))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


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
