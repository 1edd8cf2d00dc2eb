"""The ``ray`` engine: Ray Data with a pool of actors that each hold the model.

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

Fault tolerance is set explicitly: an actor whose node is lost is restarted elsewhere
(``max_restarts=-1``) and the batches it held are run again (``max_task_retries=-1``);
the driver keeps a result only once per shard position, and a shard is written only
when all its rows are in, so a lost node neither loses nor duplicates a row.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from typing import Callable, Iterable, Iterator

from socodec.corpus.encoder import BatchEncoder, load_encoder
from socodec.corpus.extras import require
from socodec.corpus.plan import Batch
from socodec.corpus.quiet import RAY_NATIVE_LOG, drop_stderr_lines
from socodec.corpus.schema import pa
from socodec.corpus.storage import STORAGE_OPTIONS_ENV
from socodec.errors import SoCodecError

__all__ = ["run_ray"]

log = logging.getLogger(__name__)


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
    started = _start(ray, workers, address, log_level)
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
        if started:
            ray.shutdown()


def _start(ray, workers: int, address: str | None, log_level: int) -> bool:
    """Join ``address``, or start a quiet local Ray with enough logical CPUs for the actors.

    Ray's Python loggers are set to errors only unless ``log_level`` is DEBUG. Returns False
    when this process already runs Ray (it is used as it is, and not shut down afterwards).
    """
    if ray.is_initialized():
        return False
    if log_level > logging.DEBUG:
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    env = {k: v for k, v in os.environ.items() if k == STORAGE_OPTIONS_ENV}  # the nodes read the same store
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                  configure_logging=True, ignore_reinit_error=True, runtime_env={"env_vars": env} if env else None)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, workers + 2), **kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. no cluster at the address
        raise SoCodecError(_start_failure(address, _original_message(exc))) from None
    return True


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
