"""Corpus tokenisation: work lists, Parquet token shards, local and Ray engines.

Modules, top down::

    run.py          tokenize(options, load): work list -> plan -> engine -> shards, progress, summary
    engines.py      the local engine (worker processes, each holding the model once), the ray engine
                    (Ray Data map_batches over an actor pool) and a worker's job (batch -> result rows)
    quiet.py        keeping a native library's log lines off the terminal (a helper process)
    shards.py       the output folder: atomic shards (on disk or object storage), resume scan,
                    manifest.json, errors.jsonl, and the collector that writes complete shards
    export.py       lhotse cuts and WebDataset tars; shard rows (any format) -> wav files named by id
    schema.py       Arrow schema, Codes <-> rows, read_codes / write_codes
    inputs.py       files, folders, globs, Kaldi and JSONL manifests -> work items; their audio
                    (segments read by seeking); the plan: work list -> shards -> length-bucketed batches
    containers.py   WebDataset tars, Hugging Face Parquet, lhotse manifests, object storage;
                    WorkItem and the id rules

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
    "WorkItem": "containers", "collect_work": "inputs", "read_item": "inputs",
    "read_codes": "schema", "write_codes": "schema", "codes_table": "schema", "shard_files": "schema",
    "decode_shard": "export", "DecodeReport": "export",
    "TokenizeOptions": "run", "TokenizeSummary": "run", "tokenize": "run",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"socodec.corpus.{_HOMES[name]}"), name)
