"""Work lists: ids, folders, globs, Kaldi data folders, JSONL manifests, duplicates; segment reading;
shard and batch planning (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from socodec.audio import load_audio
from socodec.corpus.inputs import collect_work
from socodec.corpus.containers import WorkItem
from socodec.corpus.inputs import LONG_SECONDS, Batch, plan_shards
from socodec.corpus.inputs import read_item
from socodec.errors import AudioError, SoCodecError


def _wav(path: Path, seconds: float = 0.5, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.sin(np.arange(int(seconds * rate)) * 0.05)
    sf.write(path, x.astype(np.float32), rate, subtype=subtype)
    return path


def test_folder_ids_are_relative_paths_without_suffix(tmp_path: Path) -> None:
    _wav(tmp_path / "c" / "spk1" / "a.wav")
    _wav(tmp_path / "c" / "b.flac")
    (tmp_path / "c" / "notes.txt").write_text("x")
    single = _wav(tmp_path / "one.wav")
    items = collect_work([tmp_path / "c", single])
    assert [(i.id, i.source) for i in items] == [
        ("b", tmp_path / "c" / "b.flac"), ("spk1/a", tmp_path / "c" / "spk1" / "a.wav"), ("one", single)]
    assert all(not i.is_segment for i in items)


def test_glob_ids_are_relative_to_its_fixed_folder(tmp_path: Path) -> None:
    _wav(tmp_path / "d" / "x" / "1.wav")
    _wav(tmp_path / "d" / "y" / "2.wav")
    items = collect_work([str(tmp_path / "d" / "**" / "*.wav")])
    assert [i.id for i in items] == ["x/1", "y/2"]
    with pytest.raises(SoCodecError, match="no audio files match"):
        collect_work([str(tmp_path / "nothing*.wav")])


def test_kaldi_folder_with_segments_text_and_utt2spk(tmp_path: Path) -> None:
    rec = _wav(tmp_path / "audio" / "r.wav", 3.0)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"r {rec}\n\n")
    (data / "segments").write_text("u1 r 0.5 1.25\nu2 r 2 -1\n")
    (data / "text").write_text("u1 some words here\n")
    (data / "utt2spk").write_text("u1 s1\nu2 s2\n")
    u1, u2 = collect_work([data])
    assert (u1.id, u1.source, u1.offset, u1.duration) == ("u1", rec, 0.5, 0.75)
    assert (u2.id, u2.offset, u2.duration) == ("u2", 2.0, None)
    assert u1.meta == {"text": "some words here", "spk": "s1"} and u2.meta == {"spk": "s2"}
    (data / "segments").unlink()
    (whole,) = collect_work([data])
    assert (whole.id, whole.offset, whole.duration) == ("r", 0.0, None)


@pytest.mark.parametrize("scp, segments, message", [
    ("r sox in.wav -t wav - |\n", None, "piped"),
    ("r a.wav\nr b.wav\n", None, "listed twice"),
    ("r a.wav\n", "u1 q 0 1\n", "not in"),
    ("r a.wav\n", "u1 r 2 1\n", "before it starts"),
    ("r a.wav\n", "u1 r x 1\n", "not a number"),
    ("r a.wav\n", "u1 r 0\n", "expected"),
])
def test_kaldi_mistakes_are_one_line_errors(tmp_path: Path, scp: str, segments: str | None, message: str) -> None:
    (tmp_path / "wav.scp").write_text(scp)
    if segments is not None:
        (tmp_path / "segments").write_text(segments)
    with pytest.raises(SoCodecError, match=message) as err:
        collect_work([tmp_path])
    assert "line" in str(err.value) and "\n" not in str(err.value)


def test_jsonl_manifest_ids_offsets_and_metadata(tmp_path: Path) -> None:
    _wav(tmp_path / "m" / "w" / "a.wav")
    rec = _wav(tmp_path / "long.wav", 4.0)
    lines = [{"audio_filepath": "w/a.wav", "text": "hi", "duration": 0.5},
             {"audio_filepath": str(rec), "id": 7, "offset": 1.5, "duration": 2, "speaker": "z"}]
    manifest = tmp_path / "m" / "list.json"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    a, b = collect_work([manifest])
    assert (a.id, a.source, a.offset, a.duration, a.meta) == ("w/a", tmp_path / "m" / "w" / "a.wav", 0.0, 0.5,
                                                              {"text": "hi"})
    assert (b.id, b.offset, b.duration, b.meta) == ("7", 1.5, 2.0, {"speaker": "z"})


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ('{"text": "no audio"}', "audio_filepath"),
    ('{"audio_filepath": "a.wav", "offset": -1}', "offset"),
    ('{"audio_filepath": "a.wav", "duration": 0}', "duration"),
    ('{"audio_filepath": "a.wav", "id": ""}', "id"),
    ('[1, 2]', "JSON object"),
])
def test_jsonl_mistakes_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    manifest = tmp_path / "x.jsonl"
    manifest.write_text('{"audio_filepath": "ok.wav"}\n' + line + "\n")
    with pytest.raises(SoCodecError, match=message) as err:
        collect_work([manifest])
    assert "line 2" in str(err.value)


def test_duplicate_ids_are_refused_before_any_work(tmp_path: Path) -> None:
    _wav(tmp_path / "a" / "u.wav")
    _wav(tmp_path / "b" / "u.flac")
    with pytest.raises(SoCodecError, match="duplicate id 'u'"):
        collect_work([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SoCodecError, match="no such file"):
        collect_work([tmp_path / "missing.wav"])


def test_a_segment_reads_exactly_the_cut_samples(tmp_path: Path) -> None:
    rec = _wav(tmp_path / "r.wav", 3.0, rate=44100)
    item = WorkItem("u", rec, offset=0.75, duration=1.0)
    wav, seconds = read_item(item)
    full, rate = sf.read(rec, dtype="int16")
    sf.write(tmp_path / "cut.wav", full[round(0.75 * rate): round(1.75 * rate)], rate, subtype="PCM_16")
    assert seconds == pytest.approx(1.0)
    assert torch.equal(wav, load_audio(tmp_path / "cut.wav"))
    tail, _ = read_item(WorkItem("t", rec, offset=2.5))
    assert tail.numel() == 8000
    with pytest.raises(AudioError, match="after the end"):
        read_item(WorkItem("late", rec, offset=5.0, duration=1.0))


def test_plan_buckets_by_length_inside_consecutive_shards() -> None:
    items = [WorkItem(f"u{i}", Path(f"{i}.wav")) for i in range(7)]
    seconds = [5, 1, 4, 2, LONG_SECONDS + 1, 3, 0]
    plans = plan_shards(items, seconds, shard_size=5, batch_size=2, first_index=3)
    assert [p.index for p in plans] == [3, 4] and [p.size for p in plans] == [5, 2]
    assert [b.positions for b in plans[0].batches] == [(1, 3), (2, 0), (4,)]  # the long file alone
    assert [b.positions for b in plans[1].batches] == [(6, 5)]
    batch = plans[0].batches[0]
    assert Batch.from_json(json.loads(json.dumps(batch.to_json()))) == batch


def test_every_command_lists_globs_and_folders_the_same_way(tmp_path: Path) -> None:
    """One id rule: a ``**`` glob mirrors subfolders below its leading folder, as a folder input does,
    in tokenize, eval and the convert command (two x files in different folders do not clash)."""
    import os
    import subprocess
    import sys

    from socodec import Codes
    from socodec.evaluate.run import expand_inputs

    root = tmp_path / "data"
    for sub in ("a", "b"):
        _wav(root / sub / "x.wav")
        Codes(tokens=torch.randint(0, 16384, (5, 4)), speaker=torch.zeros(64)).save(root / sub / "x.soc")
    pattern = str(root / "**" / "*.wav")
    assert [i.id for i in collect_work([pattern])] == ["a/x", "b/x"] == [i.id for i in collect_work([root])]
    items, errors = expand_inputs([pattern])
    assert [i.id for i in items] == ["a/x", "b/x"] and not errors
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "socodec", str(root / "**" / "*.soc"), str(tmp_path / "out"),
                             "-t", ".pt"], env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.pt")) == \
        ["a/x.pt", "b/x.pt"]


def test_eval_reads_a_segment_as_tokenize_does(tmp_path: Path) -> None:
    from socodec.evaluate.run import EvalItem, read_item as eval_read

    rec = _wav(tmp_path / "r.wav", 3.0, rate=44100)
    wav, _ = read_item(WorkItem("u", rec, offset=0.75, duration=1.0))
    assert torch.equal(eval_read(EvalItem("u", rec, offset=0.75, duration=1.0)), wav)
