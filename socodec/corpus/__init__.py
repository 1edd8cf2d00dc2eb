"""Corpus tokenisation: work lists, Parquet token shards, local and Ray engines.

Modules, top down::

    run.py          tokenize(options, load): work list -> plan -> engine -> shards, progress, summary
    local.py        the local engine: worker processes, each holding the model once
    ray_engine.py   the ray engine: Ray Data map_batches over an actor pool
    writer.py       result tables -> complete shards (order and contents fixed by the plan)
    encoder.py      a worker's job: planned batch -> result rows (errors as rows)
    plan.py         work list -> shards -> length-bucketed batches
    shards.py       the output folder: atomic shards, resume scan, manifest.json, errors.jsonl
    decode.py       shard rows -> wav files named by id
    schema.py       Arrow schema, Codes <-> rows, read_codes / write_codes
    inputs.py       files, folders, globs -> work items (+ manifests.py: Kaldi and JSONL)
    reading.py      a work item's audio (segments read by seeking)
    items.py        WorkItem and the id rules

Parquet needs ``pyarrow`` (``pip install socodec[corpus]``), the ray engine Ray Data
(``pip install socodec[ray]``); ``import socodec.corpus`` itself needs neither.
The names below are imported on first use.
"""

from __future__ import annotations

import importlib

__all__ = [
    "WorkItem", "collect_work", "read_item",
    "read_codes", "write_codes", "codes_table", "shard_files",
    "decode_shard", "DecodeReport",
    "TokenizeOptions", "TokenizeSummary", "tokenize",
]

_HOMES = {
    "WorkItem": "items", "collect_work": "inputs", "read_item": "reading",
    "read_codes": "schema", "write_codes": "schema", "codes_table": "schema", "shard_files": "schema",
    "decode_shard": "decode", "DecodeReport": "decode",
    "TokenizeOptions": "run", "TokenizeSummary": "run", "tokenize": "run",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"socodec.corpus.{_HOMES[name]}"), name)
