"""Corpora as they are shipped: WebDataset tars, Hugging Face Parquet (written by ``datasets``) and lhotse
manifests (written by ``lhotse``), tokenised by the real command; rows equal per-file encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from conftest import GOLDEN
from corpus_cases import _noise, cut, one_thread, run, show, socodec, write_tar
from socodec import SoCodec
from socodec.corpus import read_codes
from socodec.corpus.containers import expand_braces
from socodec.corpus.inputs import collect_work
from socodec.corpus.inputs import read_item
from socodec.errors import SoCodecError

TINY = ["--analyzer-config", str(GOLDEN / "analyzer_tiny.json"), "--vocoder-config", str(GOLDEN / "vocoder_tiny.json")]
RUN_ARGS = ["--shard-size", "3", "--batch-size", "2", "--threads", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A corpus shipped three ways, plus the same audio as plain files, and one tokenize run over all of it."""
    from corpus_cases import make_corpus

    corpus = make_corpus(tmp_path_factory.mktemp("shipped"))
    root = corpus.root
    plain = root / "plain"
    plain.mkdir()
    clips = {}
    for n, (seconds, rate, fmt) in enumerate([(1.2, 16000, "WAV"), (0.9, 22050, "FLAC"), (1.5, 16000, "FLAC"),
                                                (0.8, 24000, "WAV")]):
        path = plain / f"clip{n}.{fmt.lower()}"
        sf.write(path, _noise(seconds, rate, seed=10 + n), rate, format=fmt, subtype="PCM_16")
        clips[f"clip{n}"] = path

    # WebDataset: two tars named by a brace pattern; a sample's .json goes to the metadata
    for k, names in enumerate([("clip0", "clip1"), ("clip2",)]):
        members = {}
        for name in names:
            members[f"{name}{clips[name].suffix}"] = clips[name].read_bytes()
            members[f"{name}.json"] = json.dumps({"text": f"words of {name}"}).encode()
        if k == 1:
            members["notaudio.flac"] = b"this is not audio at all"
        write_tar(root / f"shards-{k:03d}.tar", members)

    # Hugging Face Parquet written by datasets itself
    from datasets import Audio, Dataset

    audio = [{"bytes": clips[c].read_bytes(), "path": clips[c].name} for c in ("clip3", "clip1")]  # as on the Hub
    ds = Dataset.from_dict({"audio": audio, "key": ["hf-3", "hf-1"], "text": ["three", "one"]})
    ds = ds.cast_column("audio", Audio())
    (root / "hf").mkdir()
    ds.to_parquet(str(root / "hf" / "train-00000.parquet"))
    import pyarrow as pa

    empty = pa.table({"audio": pa.array([{"bytes": b"", "path": "gone.wav"}]), "key": ["hf-empty"]})
    pq.write_table(empty, root / "hf" / "train-00001.parquet")

    # lhotse: a CutSet with one supervision per cut, one cut without supervisions, one cut past the end
    from lhotse import CutSet, Recording, SupervisionSegment

    rec_path = root / "recordings" / "rec1.wav"
    rec = Recording.from_file(rec_path)
    cuts = [rec.to_cut().truncate(offset=1.0, duration=2.0).with_id("cutA"),
            rec.to_cut().truncate(offset=3.5, duration=1.25).with_id("cutB")]
    cuts[0].supervisions = [SupervisionSegment(id="supA", recording_id=rec.id, start=0.5, duration=1.0,
                                               text="hello", speaker="spk9")]
    past = rec.to_cut().with_id("past")
    past.start, past.duration = 7.0, 1.0  # the recording has 6 s
    CutSet.from_cuts([*cuts, past]).to_file(root / "cuts.jsonl.gz")

    out = root / "out"
    result = run(socodec("tokenize", root / "shards-{000..001}.tar", root / "hf", root / "cuts.jsonl.gz",
                         "-o", out, *RUN_ARGS, "--id-column", "key", *corpus.model_args), corpus.env)
    codec = SoCodec.from_pretrained(corpus.ckpts, cache_dir=root / "api_cache",
                                    analyzer_config=GOLDEN / "analyzer_tiny.json",
                                    vocoder_config=GOLDEN / "vocoder_tiny.json")
    return {"root": root, "clips": clips, "result": result, "out": out, "codec": codec, "rec": rec_path,
            "env": corpus.env, "model_args": corpus.model_args}


def _rows(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in pq.read_table(out / "shards").to_pylist()}


def test_brace_patterns_expand_like_webdataset() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar", "b/x-8.tar", "b/x-9.tar",
                                                      "b/x-10.tar"]
    with pytest.raises(SoCodecError, match="braces"):
        expand_braces("x-{abc}.tar")


def test_every_kind_tokenises_and_bad_items_are_listed(shipped: dict) -> None:
    result = shipped["result"]
    assert result.returncode == 1, show(result)  # three bad items
    assert "Traceback" not in result.stderr, show(result)
    rows = _rows(shipped["out"])
    assert set(rows) == {"clip0", "clip1", "clip2", "hf-3", "hf-1", "supA", "cutB"}
    errors = {json.loads(line)["id"]: json.loads(line) for line in
              (shipped["out"] / "errors.jsonl").read_text().splitlines()}
    assert set(errors) == {"notaudio", "hf-empty", "past"}
    assert "not a readable audio file" in errors["notaudio"]["reason"]
    assert "empty" in errors["hf-empty"]["reason"]
    assert "after the end" in errors["past"]["reason"]


def test_rows_equal_per_file_encoding(shipped: dict) -> None:
    codec, clips = shipped["codec"], shipped["clips"]
    got = dict(read_codes(shipped["out"]))
    expected = {"clip0": clips["clip0"], "clip1": clips["clip1"], "clip2": clips["clip2"], "hf-3": clips["clip3"],
                "hf-1": clips["clip1"],
                "supA": cut(shipped["rec"], 1.5, 2.5, shipped["root"] / "supA.wav"),
                "cutB": cut(shipped["rec"], 3.5, 4.75, shipped["root"] / "cutB.wav")}
    with one_thread():
        for utt, path in expected.items():
            ref = codec.encode(path)
            assert torch.equal(got[utt].tokens, ref.tokens), utt
            torch.testing.assert_close(got[utt].speaker, ref.speaker, rtol=1e-5, atol=1e-5, msg=utt)
            assert got[utt].num_samples == ref.num_samples, utt


def test_rows_keep_metadata_segments_and_absolute_sources(shipped: dict) -> None:
    rows, root = _rows(shipped["out"]), shipped["root"]
    assert json.loads(rows["clip0"]["metadata"]) == {"text": "words of clip0"}
    assert rows["clip0"]["source"] == f"{root / 'shards-000.tar'}#clip0.wav"
    assert rows["hf-3"]["source"] == f"{root / 'hf' / 'train-00000.parquet'}#audio:0"
    assert json.loads(rows["hf-3"]["metadata"]) == {"text": "three"}
    assert rows["supA"]["source"] == str(shipped["rec"]) and rows["supA"]["offset"] == pytest.approx(1.5)
    assert rows["supA"]["duration"] == pytest.approx(1.0)
    assert json.loads(rows["supA"]["metadata"]) == {"text": "hello", "spk": "spk9"}
    assert rows["cutB"]["offset"] == pytest.approx(3.5) and rows["cutB"]["metadata"] is None
    assert all(Path(r["source"].split("#")[0]).is_absolute() for r in rows.values())


def test_relative_inputs_give_absolute_sources(shipped: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shipped["root"])
    items = collect_work(["plain/clip0.wav", "shards-001.tar"])
    assert [(i.id, i.source) for i in items] == [("clip0", shipped["clips"]["clip0"]),
                                                 ("clip2", shipped["root"] / "shards-001.tar"),
                                                 ("notaudio", shipped["root"] / "shards-001.tar")]


def test_a_tar_member_reads_like_its_file(shipped: dict) -> None:
    items = {i.id: i for i in collect_work([shipped["root"] / "shards-000.tar"])}
    wav, seconds = read_item(items["clip1"])
    data, rate = sf.read(shipped["clips"]["clip1"])
    assert seconds == pytest.approx(len(data) / rate)
    assert wav.shape[0] == pytest.approx(len(data) * 16000 / rate, abs=2)
    assert np.isfinite(wav.numpy()).all()


def test_a_missing_parquet_column_is_one_line_before_work(shipped: dict) -> None:
    root = shipped["root"]
    result = run(socodec("tokenize", root / "hf", "-o", root / "never", "--audio-column", "sound",
                         *shipped["model_args"]), shipped["env"])
    assert result.returncode == 1 and "no audio column 'sound'" in result.stderr, show(result)
    assert "Traceback" not in result.stderr and not (root / "never").exists()


@pytest.fixture(scope="module")
def exported(shipped: dict) -> dict:
    """The plain clips tokenised with --format webdataset and --format lhotse, and each decoded back."""
    from corpus_cases import finish, start

    root, env, model = shipped["root"], shipped["env"], shipped["model_args"]
    procs = {fmt: start(socodec("tokenize", root / "plain", "-o", root / f"out_{fmt}", "--format", fmt, *RUN_ARGS,
                                *model), env) for fmt in ("webdataset", "lhotse")}
    results = {fmt: finish(p) for fmt, p in procs.items()}
    decoded = {
        "parquet": run(socodec(root / "out_lhotse", root / "dec_parquet", *model), env),
        "webdataset": run(socodec(root / "out_webdataset" / "webdataset" / "tokens-00001.tar", root / "dec_wds",
                                  *model), env),
        "lhotse": run(socodec(root / "out_lhotse" / "cuts.jsonl.gz", root / "dec_lhotse", *model), env),
    }
    return {"root": root, "results": results, "decoded": decoded}


def test_formats_are_written_beside_the_shards(exported: dict) -> None:
    for fmt, result in exported["results"].items():
        assert result.returncode == 0, show(result)
    root = exported["root"]
    assert sorted(p.name for p in (root / "out_webdataset" / "webdataset").iterdir()) == \
        ["tokens-00000.tar", "tokens-00001.tar"]
    assert (root / "out_lhotse" / "cuts.jsonl.gz").is_file()


def test_webdataset_tars_round_trip_with_webdataset(exported: dict, shipped: dict) -> None:
    import webdataset as wds

    root = exported["root"]
    parquet = dict(read_codes(root / "out_webdataset"))
    url = str(root / "out_webdataset" / "webdataset" / "tokens-{00000..00001}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in samples) == sorted(parquet)
    for s in samples:
        npz, ref = s["socodec.npz"], parquet[s["__key__"]]
        assert npz["tokens"].dtype == np.int16 and npz["tokens"].shape == tuple(ref.tokens.shape)
        assert np.array_equal(npz["tokens"], ref.tokens.numpy())
        assert np.array_equal(npz["speaker"], ref.speaker.numpy())
        assert int(npz["num_samples"]) == ref.num_samples and int(npz["lead"]) == ref.lead
        assert json.loads(str(npz["model"])) == ref.model
        assert str(npz["attention"]) == ref.attention == "full" and float(npz["hubert_window"]) == -1.0
        assert s["json"]["source"] == str(shipped["clips"][s["__key__"]])


def test_lhotse_cuts_round_trip_with_lhotse(exported: dict) -> None:
    from lhotse import load_manifest

    root = exported["root"]
    parquet = dict(read_codes(root / "out_lhotse"))
    cuts = load_manifest(root / "out_lhotse" / "cuts.jsonl.gz")
    assert sorted(c.id for c in cuts) == sorted(parquet)
    for cut in cuts:
        tokens, ref = cut.load_custom("socodec_tokens"), parquet[cut.id]
        assert tokens.shape == tuple(ref.tokens.shape) and tokens.shape[1] == 4
        assert np.array_equal(tokens, ref.tokens.numpy())
        assert np.array_equal(cut.load_custom("socodec_speaker"), ref.speaker.numpy())
        assert cut.socodec_tokens.frame_shift == pytest.approx(0.12)
        assert cut.custom["num_samples"] == ref.num_samples and cut.custom["socodec_model"] == ref.model
        assert (cut.custom["attention"], cut.custom["hubert_window"]) == ("full", None) == (ref.attention, None)


def test_every_format_decodes_to_the_same_audio(exported: dict) -> None:
    root = exported["root"]
    for name, result in exported["decoded"].items():
        assert result.returncode == 0 and "Traceback" not in result.stderr, show(result)
    wds_ids = [p.stem for p in (root / "dec_wds").glob("*.wav")]
    assert wds_ids and len(wds_ids) < 4  # one tar: its rows only
    for utt in ("clip0", "clip1", "clip2", "clip3"):
        ref = sf.read(root / "dec_parquet" / f"{utt}.wav")[0]
        assert np.array_equal(sf.read(root / "dec_lhotse" / f"{utt}.wav")[0], ref), utt
        if utt in wds_ids:
            assert np.array_equal(sf.read(root / "dec_wds" / f"{utt}.wav")[0], ref), utt


def test_a_rerun_cleans_a_killed_export_and_keeps_finished_files(exported: dict) -> None:
    from socodec.corpus.export import export_shards

    out = exported["root"] / "out_webdataset"
    leftover = out / "webdataset" / ".tokens-00001.tmp-123-abcd.tar"
    leftover.write_bytes(b"half a tar")
    def finished() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (out / "webdataset").glob("tokens-*.tar")}

    before = finished()
    assert export_shards(out, "webdataset") == []  # every shard has its tar already
    assert not leftover.exists()
    assert finished() == before and len(before) == 2
