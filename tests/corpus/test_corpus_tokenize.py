"""``socodec tokenize`` run for real (subprocesses, tiny models): a folder + a Kaldi folder with
segments + a JSONL manifest + broken files, on the local engine (2 workers) and on a real local
Ray; the rows are compared with per-file encoding, with each other, and read back by tools that
never import socodec.

The two runs start together once per session (Ray's start-up is the slow part).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from conftest import GOLDEN, REPO
from corpus_cases import Corpus, cut, finish, make_corpus, one_thread, run, show, socodec, start
from socodec import Codes, SoCodec
from socodec.audio import save_audio
from socodec.corpus import decode_shard, read_codes

GOOD = {"spk1/a", "spk1/b", "spk2/c", "r1a", "r1b", "r1c", "r2a", "j/x", "j-seg"}
BAD = {"empty", "junk", "nan", "no_samples", "r2bad"}
RUN_ARGS = ["--shard-size", "4", "--batch-size", "3", "--threads", "1"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def runs(corpus: Corpus) -> dict:
    """Both engines on the same inputs, started together, plus the per-file commands to compare with."""
    r, m = corpus.root, corpus.model_args
    local = start(socodec("tokenize", *corpus.inputs, "-o", r / "out_local", "--workers", "2", *RUN_ARGS, *m),
                  corpus.env)
    ray = start(socodec("tokenize", *corpus.inputs, "-o", r / "out_ray", "--engine", "ray", "--workers", "1",
                        "-q", *RUN_ARGS, *m), corpus.env)
    seg = cut(*corpus.segments["r1b"], r / "r1b_cut.wav")
    per_file = run(socodec(corpus.folder / "spk1" / "a.wav", seg, r / "per_file", "-t", ".pt", *m), corpus.env)
    decoded = run(socodec(r / "per_file" / "a.pt", r / "per_file_a.wav", *m), corpus.env)
    return {"local": finish(local), "ray": finish(ray), "per_file": per_file, "decoded": decoded}


@pytest.fixture(scope="module")
def codec(corpus: Corpus) -> SoCodec:
    return SoCodec.from_pretrained(corpus.ckpts, cache_dir=corpus.root / "api_cache",
                                   analyzer_config=GOLDEN / "analyzer_tiny.json",
                                   vocoder_config=GOLDEN / "vocoder_tiny.json")


def rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / "shards")
    return {row["id"]: row for row in table.to_pylist()}


def test_runs_report_failures_and_finish(runs: dict) -> None:
    for name in ("local", "ray"):
        result = runs[name]
        assert result.returncode == 1, show(result)  # some inputs are bad
        assert "Traceback" not in result.stderr, show(result)
        assert f"{len(GOOD)} utterances" in result.stderr and f"{len(BAD)} failed" in result.stderr, show(result)
    assert "tokenize:" not in runs["ray"].stderr  # -q: no progress bar
    assert "core_worker" not in runs["ray"].stderr and "INFO" not in runs["ray"].stderr, show(runs["ray"])
    assert runs["per_file"].returncode == 0 and runs["decoded"].returncode == 0, show(runs["per_file"])


def test_every_good_input_is_one_row_and_shards_are_whole(runs: dict, corpus: Corpus) -> None:
    out = corpus.root / "out_local"
    files = sorted(p.name for p in (out / "shards").iterdir())
    assert files == [f"tokens-0000{i}.parquet" for i in range(len(files))]
    ids = [i for f in files for i in pq.read_table(out / "shards" / f, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == sorted(GOOD)
    assert all(pq.read_metadata(out / "shards" / f).num_rows <= 4 for f in files)


def test_tokens_equal_per_file_encoding(runs: dict, corpus: Corpus, codec: SoCodec) -> None:
    with one_thread():  # as the workers and the commands ran
        _check_per_file(corpus, codec)


def _check_per_file(corpus: Corpus, codec: SoCodec) -> None:
    got = dict(read_codes(corpus.root / "out_local"))
    for utt in ("spk1/a", "spk1/b", "spk2/c"):
        ref = codec.encode(next(corpus.folder.glob(utt + ".*")))
        _assert_same(got[utt], ref, utt)
    _assert_same(got["j/x"], codec.encode(corpus.manifest.parent / "j" / "x.wav"), "j/x")
    for utt, (rec, s, e) in corpus.segments.items():  # segments: the per-file tokens of the cut audio
        ref = codec.encode(cut(rec, s, e, corpus.root / f"{utt}_cut.wav"))
        _assert_same(got[utt], ref, utt)
    # and the command line's own per-file output
    _assert_same(got["spk1/a"], Codes.load(corpus.root / "per_file" / "a.pt"), "spk1/a (socodec a.wav a.pt)")
    _assert_same(got["r1b"], Codes.load(corpus.root / "per_file" / "r1b_cut.pt"), "r1b (socodec cut.wav cut.pt)")


def _assert_same(got: Codes, ref: Codes, name: str) -> None:
    assert torch.equal(got.tokens, ref.tokens), name
    torch.testing.assert_close(got.speaker, ref.speaker, rtol=1e-6, atol=1e-6, msg=name)  # batched vs alone
    assert (got.num_samples, got.lead, got.padding) == (ref.num_samples, ref.lead, ref.padding), name
    assert got.model == ref.model, name


def test_columns_types_and_metadata(runs: dict, corpus: Corpus) -> None:
    table = pq.read_table(corpus.root / "out_local" / "shards")
    tokens, speaker = table.schema.field("tokens").type, table.schema.field("speaker").type
    assert pa.types.is_list(tokens) and pa.types.is_list(tokens.value_type) and tokens.value_type.value_type == pa.int16()
    assert pa.types.is_list(speaker) and speaker.value_type == pa.float32()
    assert "extension" not in str(table.schema)
    got = rows(corpus.root / "out_local")
    assert got["r1a"]["offset"] == 0.0 and got["r1a"]["duration"] == pytest.approx(1.5)
    assert got["r1c"]["offset"] == 4.0 and got["r1c"]["duration"] == pytest.approx(2.0)
    assert got["r2a"]["source"].endswith("rec2.wav") and got["r2a"]["num_samples"] == 24000
    assert json.loads(got["r1a"]["metadata"]) == {"text": "你好 世界", "spk": "spkA"}
    assert json.loads(got["j/x"]["metadata"]) == {"text": "hello", "lang": "en"}
    assert json.loads(got["j-seg"]["metadata"]) == {"text": "cut"}
    assert got["spk1/a"]["metadata"] is None and got["spk1/a"]["padding"] == "published"
    assert len(got["spk1/a"]["tokens"][0]) == 4 and len(got["spk1/a"]["speaker"]) == 64


def test_local_and_ray_rows_are_identical(runs: dict, corpus: Corpus) -> None:
    local, ray = corpus.root / "out_local", corpus.root / "out_ray"
    names = sorted(p.name for p in (local / "shards").iterdir())
    assert names == sorted(p.name for p in (ray / "shards").iterdir())
    for name in names:
        a, b = pq.read_table(local / "shards" / name), pq.read_table(ray / "shards" / name)
        assert a.equals(b, check_metadata=True), name
    def errors(out: Path) -> list[dict]:  # each run has its own run id
        return [{k: v for k, v in e.items() if k != "run"} for e in map(json.loads, (out / "errors.jsonl").open())]

    assert errors(local) == errors(ray)


def test_bad_inputs_are_in_the_errors_table_and_manifest(runs: dict, corpus: Corpus, codec: SoCodec) -> None:
    out = corpus.root / "out_local"
    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == BAD
    assert "empty file" in errors["empty"]["reason"]
    assert "NaN" in errors["nan"]["reason"]
    assert "after the end" in errors["r2bad"]["reason"] and errors["r2bad"]["source"].endswith("rec2.wav")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(GOOD) and manifest["errors"] == len(BAD)
    assert manifest["padding"] == "published" and manifest["model"] == codec.identity
    seconds = sum(r["num_samples"] for r in rows(out).values()) / 16000
    assert manifest["hours"] == pytest.approx(seconds / 3600, abs=1e-6)
    assert sum(s["rows"] for s in manifest["shards"]) == len(GOOD)


def test_tools_without_socodec_read_the_shards(runs: dict, corpus: Corpus, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, duckdb, pandas as pd, pyarrow.parquet as pq
        folder = {str(corpus.root / "out_local" / "shards")!r}
        table = pq.read_table(folder)
        df = pd.read_parquet(folder)
        n = duckdb.sql(f"select count(*), sum(len(tokens)) from read_parquet('{{folder}}/*.parquet')").fetchall()[0]
        row = df[df.id == "spk1/a"].iloc[0]
        assert "socodec" not in sys.modules and "torch" not in sys.modules
        print(table.num_rows, len(df), n[0], n[1] == sum(len(t) for t in df.tokens), len(row.tokens[0]))
    """)
    result = run([sys.executable, "-c", script], corpus.env, cwd=tmp_path)
    assert result.returncode == 0, show(result)
    assert result.stdout.split() == [str(len(GOOD))] * 3 + ["True", "4"]


def test_rerun_skips_done_ids_and_refuses_other_padding(runs: dict, corpus: Corpus) -> None:
    out = corpus.root / "out_local"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = run(socodec("tokenize", *corpus.inputs, "-o", out, *RUN_ARGS, *corpus.model_args), corpus.env)
    assert again.returncode == 1 and f"{len(GOOD)} already done" in again.stderr, show(again)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    grid = run(socodec("tokenize", corpus.folder, "-o", out, "--padding", "grid", *corpus.model_args), corpus.env)
    assert grid.returncode == 1 and "padding published" in grid.stderr, show(grid)
    assert len(grid.stderr.strip().splitlines()) == 1, show(grid)


def test_a_shard_decodes_to_the_per_file_audio(runs: dict, corpus: Corpus, codec: SoCodec, tmp_path: Path) -> None:
    out = corpus.root / "out_local"
    shard = out / "shards" / "tokens-00000.parquet"
    ids = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
    report = decode_shard(codec, shard, tmp_path / "wavs")
    assert sorted(report.written) == sorted(tmp_path / "wavs" / f"{i}.wav" for i in ids) and not report.failed
    for utt, codes in read_codes(shard):
        save_audio(tmp_path / "ref.wav", codec.decode(codes))
        assert (tmp_path / "wavs" / f"{utt}.wav").read_bytes() == (tmp_path / "ref.wav").read_bytes(), utt
    with one_thread():  # as the command ran (OMP_NUM_THREADS=1): same float rounding
        one = decode_shard(codec, out, tmp_path / "one", ids=["spk1/a"])
    assert one.written == [tmp_path / "one" / "spk1" / "a.wav"]
    per_file, _ = sf.read(corpus.root / "per_file_a.wav", dtype="int16")  # socodec a.pt a.wav
    ours, _ = sf.read(one.written[0], dtype="int16")
    assert (per_file == ours).all()


def test_the_readme_example_runs_on_the_shards(runs: dict, corpus: Corpus, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Corpus tokenisation"):]
    code = section[section.index("```python\n") + 10:]
    code = code[: code.index("```")]
    (tmp_path / "tokens").symlink_to(corpus.root / "out_local")
    env = {**corpus.env, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    result = run([sys.executable, "-c", code + "\nimport sys; assert 'socodec' not in sys.modules\n"], env,
                 cwd=tmp_path)
    assert result.returncode == 0, show(result)
    first = pq.read_table(corpus.root / "out_local" / "shards" / "tokens-00000.parquet").to_pylist()[0]
    assert result.stdout.split() == [str(len(GOOD)), first["id"], f"({len(first['tokens'])},", "4)", "64"]
