"""Token shards record how HuBERT's attention saw each row, and shards without those columns still read."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from socodec.codes import Codes
from socodec.corpus.schema import read_codes, write_codes


def _codes(attention: str | None, window: float | None) -> Codes:
    g = torch.Generator().manual_seed(0)
    return Codes(tokens=torch.randint(0, 16384, (6, 4), generator=g), speaker=torch.randn(8, generator=g),
                 num_samples=3000, lead=8000, padding="published", attention=attention, hubert_window=window)


def test_attention_columns_round_trip(tmp_path):
    rows = [("a", _codes("full", None)), ("b", _codes("windowed", 20.04)), ("c", _codes(None, None))]
    path = write_codes(tmp_path / "t.parquet", rows)
    table = pq.read_table(path)
    assert table.column("attention").to_pylist() == ["full", "windowed", None]
    assert table.column("hubert_window").to_pylist() == [None, 20.04, None]
    back = dict(read_codes(path))
    for key, codes in rows:
        assert (back[key].attention, back[key].hubert_window, back[key].exact) == \
            (codes.attention, codes.hubert_window, codes.exact)
        assert torch.equal(back[key].tokens, codes.tokens)


def test_shards_without_the_columns_read_as_unknown(tmp_path):
    path = write_codes(tmp_path / "new.parquet", [("a", _codes("full", None))])
    table = pq.read_table(path)
    old = table.drop_columns(["attention", "hubert_window"])
    pq.write_table(pa.Table.from_arrays(old.columns, schema=old.schema), tmp_path / "old.parquet")
    (key, codes), = read_codes(tmp_path / "old.parquet")
    assert key == "a" and (codes.attention, codes.hubert_window, codes.exact) == (None, None, None)
    assert dataclasses.replace(codes, attention="full").exact is True


def test_tokenize_records_the_attention_per_row_and_in_the_manifest(tmp_path):
    """``tokenize --hubert-window``: windowed rows for inputs longer than a window, counted in the manifest."""
    import json

    import numpy as np
    import soundfile as sf

    from corpus_cases import TINY, run, show, socodec
    from conftest import tiny_ckpt_dir

    ckpts = tiny_ckpt_dir(tmp_path / "ckpts")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SOCODEC_")}
    env.update(SOCODEC_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(__import__("conftest").REPO))
    folder = tmp_path / "wavs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, seconds in (("long", 9.0), ("short", 1.0)):
        sf.write(folder / f"{name}.wav", (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    out = tmp_path / "tokens"
    result = run(socodec("tokenize", folder, "-o", out, "--workers", "1", "--hubert-window", "2.4",
                         "--ckpt-dir", ckpts, *TINY), env)
    assert result.returncode == 0, show(result)
    rows = dict(read_codes(out))
    assert (rows["long"].attention, rows["long"].hubert_window) == ("windowed", 2.4)
    assert (rows["short"].attention, rows["short"].hubert_window) == ("full", None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attention"] == {"full": 1, "windowed": 1}
