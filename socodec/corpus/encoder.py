"""What every engine's worker does: hold the model, turn a planned batch into token rows.

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
from typing import TYPE_CHECKING, Callable

import torch

from socodec.codes import Codes
from socodec.config import DEFAULT_PADDING, PADDINGS
from socodec.corpus.plan import LONG_SECONDS, Batch
from socodec.corpus.reading import item_name, probe_seconds, read_item
from socodec.corpus.schema import codes_table, pa, shard_schema
from socodec.errors import Fallbacks, SoCodecError, is_item_error, one_line

if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec

__all__ = ["BatchEncoder", "FALLBACK_KEY", "RESULT_COLUMNS", "load_encoder"]

log = logging.getLogger(__name__)

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
