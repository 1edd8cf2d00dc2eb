"""Token files: the Codes container, the ``.pt`` and ``.soc`` formats, atomic writes, hostile input."""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GOLDEN
from socodec import codes as codes_module
from socodec.codes import SOC_MAGIC, SOC_MAX_HEADER, TOKEN_SUFFIXES, Codes, load_codes, save_codes
from socodec.errors import CodesError
from socodec.fileio import atomic_write

sys.path.insert(0, str(Path(__file__).parent / "cli"))
import hostile_cases as hc  # noqa: E402 - the hand-made token files of the command-line tests

PREFIX = struct.Struct("<8sBI")
TOK = torch.zeros(5, 4, dtype=torch.int64)
SPK = torch.zeros(64)


def make_codes(frames: int = 7, streams: int = 4, dim: int = 64, seed: int = 0) -> Codes:
    """Random valid codes with full metadata: tokens [frames, streams], speaker [dim]."""
    g = torch.Generator().manual_seed(seed)
    lead = 8000 if frames >= 5 else 0
    return Codes(
        tokens=torch.randint(0, 16384, (frames, streams), generator=g, dtype=torch.int64),
        speaker=torch.randn(dim, generator=g),
        num_samples=max(0, frames * 1920 - lead - 5),
        lead=lead,
        model={"analyzer": "ab12cd34", "hubert": "ef56", "vocoder": "0011"},
    )


def assert_same(a: Codes, b: Codes) -> None:
    assert a.tokens.dtype == b.tokens.dtype == torch.int64 and b.speaker.dtype == torch.float32
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.speaker, b.speaker)
    assert (a.sample_rate, a.num_samples, a.lead, a.model) == (b.sample_rate, b.num_samples, b.lead, b.model)


def soc_parts(path: Path) -> tuple[int, dict, bytes]:
    """Split a .soc file into (version, header, payload)."""
    data = path.read_bytes()
    _, version, hlen = PREFIX.unpack_from(data)
    return version, json.loads(data[PREFIX.size:PREFIX.size + hlen]), data[PREFIX.size + hlen:]


def soc_bytes(header: object, payload: bytes, version: int = 1, magic: bytes = SOC_MAGIC) -> bytes:
    blob = json.dumps(header).encode()
    return PREFIX.pack(magic, version, len(blob)) + blob + payload


# ---------------------------------------------------------------- the container


def test_properties_and_bitrate() -> None:
    c = make_codes(frames=10)
    assert (c.num_frames, c.num_streams, c.speaker_dim) == (10, 4, 64)
    assert c.duration == pytest.approx((10 * 1920 - 8005) / 16000)
    assert c.bitrate(include_speaker=False) == pytest.approx(4 * 14 / 0.12)
    assert c.bitrate() == pytest.approx(4 * 14 / 0.12 + 64 * 32 / c.duration)
    unknown = Codes(tokens=c.tokens, speaker=c.speaker)
    assert unknown.duration == pytest.approx(10 * 0.12)
    one = c.with_streams(1)
    assert one.tokens.shape == (10, 1) and torch.equal(one.tokens[:, 0], c.tokens[:, 0])
    assert one.bitrate(include_speaker=False) == pytest.approx(14 / 0.12)
    for k in (0, 5):
        with pytest.raises(CodesError):
            c.with_streams(k)
    empty = Codes(tokens=torch.zeros(0, 4, dtype=torch.int64), speaker=torch.zeros(8), num_samples=0, lead=0)
    assert math.isinf(empty.validate().bitrate())
    summary = c.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["frames"] == 10 and summary["streams"] == 4 and summary["speaker_dim"] == 64
    assert summary["bitrate_without_speaker"] == pytest.approx(466.6667, rel=1e-4)
    assert summary["model"] == c.model and summary["format_version"] == 1
    assert empty.summary()["bitrate"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"tokens": TOK[0]}, {"tokens": TOK[..., None]}, {"tokens": TOK.float()}, {"tokens": TOK.bool()},
        {"tokens": torch.zeros(5, 5, dtype=torch.int64)}, {"tokens": TOK[:, :0]},
        {"tokens": torch.full((5, 4), -1)}, {"tokens": torch.full((5, 4), 16384)},
        {"speaker": torch.zeros(4, 16)}, {"speaker": torch.zeros(0)}, {"speaker": torch.zeros(16, dtype=torch.int32)},
        {"speaker": torch.tensor([0.0, float("nan")])}, {"speaker": torch.tensor([float("inf")])},
        {"sample_rate": 0}, {"sample_rate": True}, {"num_samples": -1}, {"lead": 1.5},
        {"lead": 8000, "num_samples": 5 * 1920 - 7999}, {"model": {"analyzer": 3}}, {"model": None},
        {"attention": "sliding"}, {"attention": "windowed"}, {"attention": "windowed", "hubert_window": 0},
        {"attention": "windowed", "hubert_window": float("inf")}, {"attention": "windowed", "hubert_window": "20"},
        {"attention": "full", "hubert_window": 20.0}, {"hubert_window": 20.0},
    ],
)
def test_validate_rejects(change: dict) -> None:
    with pytest.raises(CodesError):
        Codes(**{"tokens": TOK, "speaker": SPK, **change}).validate()


def test_validate_speaker_dim_and_cardinality(tmp_path: Path) -> None:
    c = load_codes(save_codes(make_codes(), tmp_path / "x.soc"))
    c.validate(speaker_dim=64)
    for kwargs in ({"speaker_dim": 1024}, {"cardinality": 10}, {"max_streams": 2}):
        with pytest.raises(CodesError):
            c.validate(**kwargs)


# ---------------------------------------------------------------- round trips and the published files


@pytest.mark.parametrize("suffix", TOKEN_SUFFIXES)
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    codes = make_codes()
    path = save_codes(codes, tmp_path / f"x{suffix}")
    assert_same(codes, load_codes(path))
    two = codes.with_streams(2)
    assert_same(two, Codes.load(two.save(tmp_path / f"y{suffix}")))
    bare = Codes(tokens=codes.tokens[:, :3], speaker=codes.speaker.double())
    back = load_codes(save_codes(bare, tmp_path / f"z{suffix}"))
    assert back.num_samples is None and back.lead is None and back.model == {}
    assert torch.equal(back.tokens, codes.tokens[:, :3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}{suffix}" for n in "xyz")


@pytest.mark.parametrize("suffix", TOKEN_SUFFIXES)
def test_round_trip_edge_cases(tmp_path: Path, suffix: str) -> None:
    empty = Codes(tokens=torch.zeros(0, 4, dtype=torch.int32), speaker=torch.ones(3), num_samples=0, lead=0)
    back = load_codes(save_codes(empty, tmp_path / f"empty{suffix}"))
    assert back.tokens.shape == (0, 4) and back.tokens.dtype == torch.int64 and back.num_samples == 0
    extremes = Codes(tokens=torch.tensor([[0, 16383]], dtype=torch.int16), speaker=torch.tensor([-3e38, 1e-45]))
    back = load_codes(save_codes(extremes, tmp_path / f"extremes{suffix}"))
    assert back.tokens.tolist() == [[0, 16383]] and torch.equal(back.speaker, extremes.speaker)
    with pytest.raises(CodesError, match="invalid"):  # finite in float64, infinite in float32
        save_codes(Codes(tokens=TOK, speaker=torch.tensor([1e300], dtype=torch.float64)), tmp_path / f"o{suffix}")
    with pytest.raises(CodesError, match="invalid"):
        save_codes(Codes(tokens=TOK.float(), speaker=SPK), tmp_path / f"f{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"empty{suffix}", f"extremes{suffix}"])


@pytest.mark.parametrize("suffix", TOKEN_SUFFIXES)
def test_numpy_codes_read_write_and_validate_like_tensors(tmp_path: Path, suffix: str) -> None:
    import numpy as np

    codes = make_codes()
    path = save_codes(codes, tmp_path / f"t{suffix}")
    arrays = load_codes(path, as_numpy=True)
    assert isinstance(arrays.tokens, np.ndarray) and arrays.tokens.dtype == np.int64
    assert isinstance(arrays.speaker, np.ndarray) and arrays.speaker.dtype == np.float32
    assert arrays.summary() == load_codes(path).summary()
    assert np.array_equal(arrays.tokens, codes.tokens.numpy()) and np.array_equal(arrays.speaker, codes.speaker.numpy())
    assert save_codes(arrays, tmp_path / f"n{suffix}").read_bytes() == path.read_bytes()  # the same file
    assert_same(codes, load_codes(tmp_path / f"n{suffix}"))
    assert arrays.with_streams(2).tokens.shape == (7, 2) and arrays.tokens.shape == (7, 4)
    bad = {"tokens": arrays.tokens + 16384, "speaker": np.full(64, np.nan, np.float32)}
    for name, value in bad.items():
        with pytest.raises(CodesError, match="16384|NaN"):
            dataclasses.replace(arrays, **{name: value}).validate()
    with pytest.raises(CodesError, match="invalid"):  # float64 beyond float32: refused as for tensors
        save_codes(dataclasses.replace(arrays, speaker=np.full(64, 1e300)), tmp_path / f"o{suffix}")
    with pytest.raises(CodesError, match="must be integers, got float32"):
        dataclasses.replace(arrays, tokens=arrays.tokens.astype(np.float32)).validate()
    with pytest.raises(CodesError, match="dense tensor or numpy array, got list"):
        dataclasses.replace(arrays, tokens=arrays.tokens.tolist()).validate()


@pytest.mark.parametrize("suffix", TOKEN_SUFFIXES)
def test_round_trip_records_the_attention(tmp_path: Path, suffix: str) -> None:
    """Every token format tells exact tokens (full attention) from approximate ones (windows)."""
    codes = make_codes()
    for attention, window in (("full", None), ("windowed", 20.04), (None, None)):
        c = dataclasses.replace(codes, attention=attention, hubert_window=window)
        back = load_codes(save_codes(c, tmp_path / f"a{suffix}"))
        assert (back.attention, back.hubert_window, back.exact) == (attention, window, c.exact)
        assert (back.summary()["attention"], back.summary()["hubert_window"]) == (attention, window)
    assert [c.exact for c in (dataclasses.replace(codes, attention="full"), codes)] == [True, None]
    if suffix == ".soc":  # unknown stays out of the header: files without the keys still read
        save_codes(codes, tmp_path / "old.soc")
        assert not {"attention", "hubert_window"} & set(soc_parts(tmp_path / "old.soc")[1])


def test_soc_model_identity_too_large(tmp_path: Path) -> None:
    huge = Codes(tokens=TOK, speaker=SPK, model={"analyzer": "x" * (SOC_MAX_HEADER + 1)})
    with pytest.raises(CodesError, match="exceeds"):
        save_codes(huge, tmp_path / "x.soc")
    save_codes(huge, tmp_path / "x.pt")  # the .pt format has no header limit
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_pt_is_published_layout(tmp_path: Path) -> None:
    save_codes(make_codes(), tmp_path / "x.pt")
    raw = torch.load(tmp_path / "x.pt", weights_only=True)
    assert raw["token"].dtype == torch.int64 and raw["token"].shape == (7, 4)
    assert raw["speaker"].dtype == torch.float32 and raw["speaker"].shape == (64,)
    assert raw["format"] == "socodec-pt/1" and raw["lead"] == 8000


_WRITE_WITHOUT_TORCH = """
import json, sys
import numpy as np
from socodec.codes import Codes, save_codes
for npz, meta, out in json.loads(sys.argv[1]):
    arrays = np.load(npz)
    save_codes(Codes(tokens=arrays["tokens"], speaker=arrays["speaker"], **meta), out)
assert "torch" not in sys.modules, "torch was imported"
"""


def assert_same_pt(a: dict, b: dict) -> None:
    """Two dicts ``torch.load`` read: the same keys, tensors of the same dtype, shape and values, the rest equal."""
    assert list(a) == list(b)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert (value.dtype, value.shape) == (b[key].dtype, b[key].shape) and torch.equal(value, b[key]), key
        else:
            assert (type(value), value) == (type(b[key]), b[key]), key


def test_pt_numpy_codes_are_written_without_torch(tmp_path: Path) -> None:
    """numpy codes become a .pt file without torch, read by torch (mmap too) as torch.save's own file."""
    cases, refs = [], []
    for streams in (1, 2, 3, 4):
        for frames in (0, 7):
            for keys in ("bare", "usual", "optional"):
                codes = make_codes(frames, streams, seed=streams + frames)
                if keys == "bare":
                    codes = Codes(tokens=codes.tokens, speaker=codes.speaker)
                elif keys == "optional":
                    codes = dataclasses.replace(codes, padding="grid", attention="windowed", hubert_window=20.04)
                name = tmp_path / f"{streams}-{frames}-{keys}"
                np.savez(name.with_suffix(".npz"), tokens=codes.tokens.numpy(), speaker=codes.speaker.numpy())
                meta = {f.name: getattr(codes, f.name) for f in dataclasses.fields(codes)
                        if f.name not in ("tokens", "speaker")}
                cases.append((str(name.with_suffix(".npz")), meta, str(name.with_suffix(".pt"))))
                ref = name.with_name(name.name + "-ref.pt")  # torch.save's file
                ref.write_bytes(codes_module.encode_pt(codes_module._meta(codes), codes.tokens, codes.speaker))
                refs.append(ref)
    r = subprocess.run([sys.executable, "-c", _WRITE_WITHOUT_TORCH, json.dumps(cases)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(codes_module.__file__).parents[1])})
    assert r.returncode == 0, r.stderr
    for (_, _, out), ref in zip(cases, refs):
        expected = torch.load(ref, weights_only=True)
        assert_same_pt(torch.load(out, weights_only=True), expected)
        assert_same_pt(torch.load(out, weights_only=True, mmap=True), expected)
        with zipfile.ZipFile(out) as ours, zipfile.ZipFile(ref) as theirs:  # torch's records, in its order
            assert [i.filename for i in ours.infolist()] == [i.filename for i in theirs.infolist()]
            for info in ours.infolist():
                if info.filename.startswith("archive/data/"):
                    assert ours.read(info) == theirs.read(info.filename)
        assert_same(load_codes(ref), load_codes(out))


def test_pt_archive_writer_takes_plain_data_and_arrays(tmp_path: Path) -> None:
    from socodec.fileio import read_torch_archive, write_torch_archive

    arrays = {"i64": np.arange(6, dtype=">i8").reshape(2, 3), "f32": np.linspace(-1, 1, 5, dtype=np.float32)[::2],
              "i32": np.arange(4, dtype=np.int32).reshape(2, 2).T, "u8": np.arange(3, dtype=np.uint8),
              "f16": np.ones((2, 0, 3), np.float16), "f64": np.array(2.5), "i16": np.zeros(300, np.int16),
              "i8": np.array([-1, 1], np.int8)}
    plain = {"ints": [0, 255, 256, 65535, 65536, -1, -2**31, 2**31, -2**31 - 1, 2**70, -2**70], "bools": (True, False),
             "none": None, "floats": (1.5, -0.0, math.inf), "text": "é\u20ac", "empty": {}, "one": {"k": ["v"]},
             "nested": {"a": {"b": ()}, "c": (1, 2, 3, 4)}, "many": {str(i): i for i in range(300)}}
    path = tmp_path / "x.pt"
    path.write_bytes(write_torch_archive({**arrays, **plain}))
    for loaded in (torch.load(path, weights_only=True), torch.load(path, weights_only=True, mmap=True)):
        assert {k: loaded[k] for k in plain} == plain
        for key, array in arrays.items():
            assert loaded[key].dtype == getattr(torch, array.dtype.name) and loaded[key].is_contiguous()
            assert torch.equal(loaded[key], torch.from_numpy(array.astype(array.dtype.newbyteorder("="))))
    ours = read_torch_archive(path)
    assert {k: ours[k] for k in plain} == plain
    assert all(np.array_equal(ours[k], a) and ours[k].dtype == a.dtype.newbyteorder("=") for k, a in arrays.items())
    assert path.read_bytes() == write_torch_archive({**arrays, **plain})  # deterministic
    with zipfile.ZipFile(path) as zf:  # every record's data starts at a multiple of 64 bytes, as torch's
        data = path.read_bytes()
        for info in zf.infolist():
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    for bad in ({"x": {1, 2}}, {"x": np.array([True])}, {"x": object()}):
        with pytest.raises(TypeError, match="cannot write"):
            write_torch_archive(bad)


def test_soc_layout(tmp_path: Path) -> None:
    codes = make_codes(frames=3, streams=2, dim=5)
    path = save_codes(codes, tmp_path / "x.soc")
    data = path.read_bytes()
    assert data[:8] == b"SOCODEC\x00" and data[8] == 1
    version, header, payload = soc_parts(path)
    assert version == 1 and header["format"] == "socodec-soc/1"
    assert header["frames"] == 3 and header["streams"] == 2 and header["speaker_dim"] == 5
    assert header["token_dtype"] == "uint16le" and header["cardinality"] == 16384
    assert len(payload) == 3 * 2 * 2 + 5 * 4
    assert struct.unpack_from("<H", payload)[0] == codes.tokens[0, 0]


def test_golden_reference_features(golden_case: dict) -> None:
    """The published tool's feature files (one per golden case) read as [T, 4] int64 + [64] float32."""
    codes = load_codes(GOLDEN / f"reference_features_{golden_case['name']}.pt")
    assert codes.tokens.dtype == torch.int64 and codes.tokens.dim() == 2 and codes.num_streams == 4
    assert codes.speaker.dtype == torch.float32 and codes.speaker.shape == (64,)
    assert codes.num_samples is None and codes.lead is None and codes.model == {}
    assert torch.equal(codes.tokens, golden_case["tokens"].to(torch.int64))
    codes.validate(speaker_dim=64)


# ---------------------------------------------------------------- .pt read without torch


def _outcome(path: Path, as_numpy: bool) -> tuple:
    """What ``load_codes`` gives: its error line, or the codes (dtypes, shapes, values, description)."""
    try:
        c = load_codes(path, as_numpy=as_numpy)
    except CodesError as exc:
        return ("error", str(exc))
    tok, spk = np.asarray(c.tokens), np.asarray(c.speaker)
    return ("codes", tok.dtype.str, tok.shape, tok.tolist(), spk.dtype.str, spk.shape, spk.tobytes(), c.summary())


def _saved(obj: object, **options: object) -> hc.Builder:
    return lambda path: torch.save(obj, path, **options)


def _rezipped(obj: object, edit: Callable[[dict[str, bytes]], None], compression: int = zipfile.ZIP_STORED) -> hc.Builder:
    """``torch.save(obj)`` written again by hand after ``edit(records)``."""
    records = hc.torch_records(obj)
    edit(records)
    return hc.pt_zip(records, compression)


def _big_endian(records: dict[str, bytes]) -> None:
    """Storages 0 (int64) and 1 (float32) byte-swapped, and the byte order record saying so."""
    records["byteorder"] = b"big"
    for key, dtype in (("data/0", "<i8"), ("data/1", "<f4")):
        records[key] = np.frombuffer(records[key], dtype).astype(dtype.replace("<", ">")).tobytes()


def _copy(src: Path) -> hc.Builder:
    return lambda path: shutil.copyfile(src, path)


_G = torch.Generator().manual_seed(5)
_WIDE = torch.randint(0, 16384, (30, 10), generator=_G)  # slices of it keep the whole storage
_SPK = torch.randn(200, generator=_G)
_LAYOUT = {"token": _WIDE[:, :4].contiguous(), "speaker": _SPK[:64].clone()}
_FULL = dataclasses.replace(make_codes(), padding="grid", attention="windowed", hubert_window=20.04)

def _crafted(tensors: dict[str, hc.FakeTensor], records: dict[str, bytes]) -> hc.Builder:
    return hc.pt_zip({"data.pkl": hc.pt_pickle(tensors), **records})


def _reduce(fn: Callable, *args: object, state: object = None) -> hc.Payload:
    payload = hc.Payload(fn, *args)
    payload.__reduce__ = lambda: (fn, args, state)  # a BUILD opcode follows the call
    return payload


_TOK = torch.arange(24).reshape(6, 4)
_TOK_BYTES, _SPK_BYTES = _TOK.numpy().tobytes(), _SPK[:64].numpy().tobytes()
_SPEAKER = hc.FakeTensor(hc.Storage("1", 64, torch.FloatStorage), 0, (64,), (1,))


def _token(numel: int = 24, offset: int = 0, size: tuple = (6, 4), stride: tuple = (4, 1),
           data: bytes = _TOK_BYTES) -> hc.Builder:
    """A hand-made token tensor on storage 0 (``numel`` int64 values claimed, ``data`` stored)."""
    tensor = hc.FakeTensor(hc.Storage("0", numel), offset, size, stride)
    return _crafted({"token": tensor, "speaker": _SPEAKER}, {"data/0": data, "data/1": _SPK_BYTES})


def _damage(path: Path, data: bytes) -> None:
    """A valid file (the layout) with one bit of ``data``, stored in it, changed."""
    _rezipped(_LAYOUT, lambda r: None)(path)
    raw = path.read_bytes()
    at = raw.index(data)
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:])


def _marker(path: Path) -> Path:
    return path.with_name("PWNED")


#: .pt files the torch-free reader takes: name -> builder
PLAIN_PT: dict[str, hc.Builder] = {
    "ours": lambda path: save_codes(make_codes(), path),  # no optional keys
    "ours_all_keys": lambda path: save_codes(_FULL, path),
    "published_layout": _saved(_LAYOUT),
    **{f"published_cli_{n}": _copy(GOLDEN / "cli" / f"reference_cli_features_{n}.pt")
       for n in ("edge", "ground_truth", "long40", "tone")},
    **{f"published_{n}": _copy(GOLDEN / f"reference_features_{n}.pt") for n in ("chirp", "edge", "ground_truth")},
    "offset_slices": _saved({"token": _WIDE[7:19, 3:7], "speaker": _SPK[100:164]}),
    "transposed": _saved({"token": _WIDE[:4].t(), "speaker": _SPK[::3][:64]}),
    "ordered_dict": _saved(OrderedDict(token=_WIDE[::2, 1:4], speaker=_SPK[:8], model={"hubert": "ab"})),
    "int32_float64": _saved({"token": _WIDE[:, :2].int(), "speaker": _SPK[:64].double()}),
    "int16_float16": _saved({"token": _WIDE[:, :1].short(), "speaker": _SPK[:64].half()}),
    "uint8_tokens": _saved({"token": (_WIDE[:, :4] % 256).to(torch.uint8), "speaker": _SPK[:64]}),
    "zero_frames": _saved({"token": torch.zeros(0, 4, dtype=torch.int64), "speaker": _SPK[:64]}),
    "hand_made": _token(),
    "big_endian": _rezipped(_LAYOUT, _big_endian),
    "no_byteorder_record": _rezipped(_LAYOUT, lambda r: r.pop("byteorder")),  # little-endian, as torch reads it
}


#: .pt files torch reads (or refuses) and the torch-free reader leaves to it: name -> (builder, outcome)
TORCH_PT: dict[str, tuple[Callable[[Path], None], str]] = {
    "legacy_format": (_saved(_LAYOUT, _use_new_zipfile_serialization=False), "codes"),
    "deflated_records": (_rezipped(_LAYOUT, lambda r: None, zipfile.ZIP_DEFLATED), "codes"),
    "bfloat16_speaker": (_saved({**_LAYOUT, "speaker": _SPK[:64].bfloat16()}), "codes"),
    "parameter": (_saved({**_LAYOUT, "speaker": torch.nn.Parameter(_SPK[:64])}), "codes"),
    "expanded": (_saved({**_LAYOUT, "token": torch.arange(4).expand(6, 4)}), "codes"),
    "zip_system": (lambda p: hc.evil_zip_pt(_marker(p))(p), "needs the Python global"),
    "zip_exec_in_token": (lambda p: _crafted({"token": hc.Payload(exec, f"open({str(_marker(p))!r}, 'w').close()"),
                                              "speaker": _SPEAKER}, {"data/1": _SPK_BYTES})(p), "exec"),
    "zip_build": (lambda p: hc.pt_zip({"data.pkl": pickle.dumps(_reduce(OrderedDict, state={"x": 1}), protocol=2)})(p),
                  "missing key 'token'"),  # torch's unpickler runs BUILD on an OrderedDict; ours none
    "short_storage": (hc.short_storage_pt(), "record size (40 bytes) does not match"),
    "huge_storage": (_token(numel=10**15), "cannot unpickle safely"),
    "tensor_past_storage": (_token(size=(60, 4)), "cannot unpickle safely"),
    "offset_past_storage": (_token(offset=20), "cannot unpickle safely"),
    "missing_storage": (_crafted({"token": _SPEAKER, "speaker": _SPEAKER}, {}), "cannot unpickle safely"),
    "unknown_version": (_rezipped(_LAYOUT, lambda r: r.update(version=b"99\n")), "cannot unpickle safely"),
    "damaged_storage": (lambda p: _damage(p, _SPK_BYTES[:8]), "codes"),  # a CRC error for us
}


def _refuse_torch_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("torch.load was called")


@pytest.mark.parametrize("name", sorted(PLAIN_PT))
def test_pt_is_read_without_torch_as_torch_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    path = tmp_path / f"{name}.pt"
    PLAIN_PT[name](path)
    through_torch = _outcome(path, as_numpy=False)
    assert through_torch[0] == "codes", through_torch
    assert codes_module.read_pt_arrays(path) is not None
    monkeypatch.setattr(torch, "load", _refuse_torch_load)
    assert _outcome(path, as_numpy=True) == through_torch
    arrays = load_codes(path, as_numpy=True)
    assert arrays.tokens.flags.c_contiguous and arrays.tokens.flags.owndata


def test_pt_uint16_tokens_are_read_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save writes dtypes without a storage class (uint16) with ``_rebuild_tensor_v3``."""
    path = tmp_path / "uint16.pt"
    torch.save({"token": _WIDE[:, :4].to(torch.uint16)[::2], "speaker": _SPK[:64]}, path)
    raw = torch.load(path, weights_only=True)
    monkeypatch.setattr(torch, "load", _refuse_torch_load)
    codes = load_codes(path, as_numpy=True)
    assert codes.tokens.dtype == np.int64 and np.array_equal(codes.tokens, raw["token"].to(torch.int64).numpy())
    assert np.array_equal(codes.speaker, raw["speaker"].numpy())


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_pt_unsigned_tokens_are_checked_through_torch_too(tmp_path: Path, dtype: torch.dtype) -> None:
    """Tensors of unsigned types torch cannot take the minimum of: the torch path reads them as the
    numpy path does, and refuses values out of range with the one-line error (not a crash)."""
    path = tmp_path / "unsigned.pt"
    torch.save({"token": _WIDE[:, :4].to(dtype), "speaker": _SPK[:64]}, path)
    codes = load_codes(path)
    assert torch.equal(codes.tokens.to(torch.int64), _WIDE[:, :4].to(torch.int64))
    assert np.array_equal(codes.tokens.to(torch.int64).numpy(), load_codes(path, as_numpy=True).tokens)
    torch.save({"token": torch.full((3, 4), 16384, dtype=dtype), "speaker": _SPK[:64]}, path)
    for as_numpy in (False, True):
        with pytest.raises(CodesError, match=r"token values must lie in \[0, 16384\)"):
            load_codes(path, as_numpy=as_numpy)


@pytest.mark.parametrize("name", sorted(TORCH_PT))
def test_pt_the_torch_free_reader_does_not_take_is_read_by_torch(tmp_path: Path, name: str) -> None:
    """Legacy files, other globals and dtypes, inconsistent storages, hostile pickles: the same codes,
    or the same one-line error, as through torch; nothing in them runs."""
    builder, expected = TORCH_PT[name]
    path = tmp_path / f"{name}.pt"
    builder(path)
    assert codes_module.read_pt_arrays(path) is None and not _marker(path).exists()
    outcome = _outcome(path, as_numpy=True)
    assert outcome == _outcome(path, as_numpy=False)
    assert outcome[0] == "codes" if expected == "codes" else expected in outcome[1], outcome[:2]
    assert "\n" not in str(outcome[1]) and not _marker(path).exists()


# ---------------------------------------------------------------- hostile and corrupt files


class _Evil:
    """Unpickling this calls ``fn(arg)``."""

    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("how", ["system", "exec", "exec-in-token"])
def test_malicious_pickle_is_not_executed(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    if how == "system":
        evil = _Evil(os.system, f"touch '{marker}'")
    else:
        evil = _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    payload = {"token": evil, "speaker": torch.zeros(4)} if how == "exec-in-token" else evil
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CodesError, match="not a valid token file"):
        load_codes(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        [TOK, SPK], {"speaker": SPK}, {"token": TOK}, {"token": TOK.tolist(), "speaker": SPK},
        {"token": TOK, "speaker": SPK.numpy()}, {"token": TOK[0], "speaker": SPK}, {"token": TOK[None], "speaker": SPK},
        {"token": torch.zeros(5, 6, dtype=torch.int64), "speaker": SPK}, {"token": TOK - 3, "speaker": SPK},
        {"token": TOK + 16384, "speaker": SPK}, {"token": TOK.float(), "speaker": SPK},
        {"token": TOK, "speaker": SPK[None]},
        {"token": TOK, "speaker": SPK / 0}, {"token": TOK.to_sparse(), "speaker": SPK},
        {"token": TOK, "speaker": SPK, "lead": "8000"}, {"token": TOK, "speaker": SPK, "num_samples": 5 * 1920 + 1},
        {"token": TOK, "speaker": SPK, "model": ["x"]}, {"token": TOK, "speaker": SPK, "format": "socodec-pt/99"},
    ],
)
def test_bad_pt(tmp_path: Path, obj: object) -> None:
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CodesError, match="bad.pt"):
        load_codes(tmp_path / "bad.pt")


def test_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(CodesError, match="not found"):
        load_codes(tmp_path / "nope.soc")
    with pytest.raises(CodesError, match=r"\.pt, \.soc"):
        load_codes(tmp_path / "x.npy")
    with pytest.raises(CodesError, match=r"\.pt, \.soc"):
        save_codes(make_codes(), tmp_path / "x.ecdc")
    with pytest.raises(CodesError, match="invalid"):
        save_codes(Codes(tokens=torch.full((2, 4), 99999), speaker=SPK), tmp_path / "x.soc")
    assert list(tmp_path.iterdir()) == []


def _with(**fields):
    """A case builder: the valid header with ``fields`` overridden, the valid payload."""
    return lambda h, p: soc_bytes({**h, **fields}, p)


SOC_CASES = {
    "truncated": lambda h, p: soc_bytes(h, p)[:-3],
    "truncated-prefix": lambda h, p: SOC_MAGIC + b"\x01",
    "empty": lambda h, p: b"",
    "magic": lambda h, p: soc_bytes(h, p, magic=b"ECDC\x00\x00\x00\x00"),
    "version": lambda h, p: soc_bytes(h, p, version=2),
    "frames-lie": lambda h, p: soc_bytes({**h, "frames": h["frames"] + 1}, p),
    "frames-huge": _with(frames=10**12),
    "header-too-large": lambda h, p: PREFIX.pack(SOC_MAGIC, 1, SOC_MAX_HEADER + 1) + b" " * (SOC_MAX_HEADER + 1) + p,
    "header-len-past-eof": lambda h, p: PREFIX.pack(SOC_MAGIC, 1, 60000) + b"{}",
    "trailing": lambda h, p: soc_bytes(h, p) + b"\x00",
    "not-utf8": lambda h, p: PREFIX.pack(SOC_MAGIC, 1, 4) + b"\xff\xfe{}" + p,
    "json-list": lambda h, p: soc_bytes([h], p),
    "extra-key": _with(x=1),
    "missing-key": lambda h, p: soc_bytes({k: v for k, v in h.items() if k != "lead"}, p),
    "bool-frames": _with(frames=True),
    "float-streams": _with(streams=4.0),
    "five-streams": _with(streams=5),
    "dtype": _with(token_dtype="uint32le"),
    "cardinality": _with(cardinality=65536),
    "negative-lead": _with(lead=-1),
    "lead-too-long": _with(lead=10**9),
    "sample-rate": _with(sample_rate="16k"),
    "model-type": _with(model={"a": 1}),
    "token-range": lambda h, p: soc_bytes(h, b"\xff\xff" + p[2:]),
    "speaker-nan": lambda h, p: soc_bytes(h, p[:-4] + struct.pack("<f", float("nan"))),
}


@pytest.mark.parametrize("name", SOC_CASES)
def test_bad_soc(tmp_path: Path, name: str) -> None:
    _, header, payload = soc_parts(save_codes(make_codes(), tmp_path / "good.soc"))
    bad = tmp_path / "bad.soc"
    bad.write_bytes(SOC_CASES[name](header, payload))
    with pytest.raises(CodesError, match="bad.soc"):
        load_codes(bad)


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.soc"

    def half_then_fail(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp.suffix == ".soc" and tmp.name.startswith(".out")
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(FileNotFoundError):  # the write function created nothing
        atomic_write(target, lambda tmp: None)
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_save_failure_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = save_codes(make_codes(seed=1), tmp_path / "x.pt")
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(Path, "write_bytes", boom)  # the disk fails while the file is written
    with pytest.raises(CodesError, match="cannot write"):
        save_codes(make_codes(seed=2), target)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------- fuzzing


def _check_outcome(path: Path, intact: Path | None = None) -> None:
    """The reader either returns codes that validate, or raises CodesError: nothing else; the same
    with numpy arrays (read without torch where it can). Where ``path`` is the file ``intact`` with
    random damage, torch's stricter zip reader may refuse what ours reads: the intact file's codes
    (every record's CRC is checked); and its message for a broken archive may hold bytes it did not
    initialise (then it differs from run to run)."""
    with_numpy, with_torch = _outcome(path, as_numpy=True), _outcome(path, as_numpy=False)
    if with_numpy != with_torch:
        assert intact is not None and with_torch[0] == "error", (with_numpy[:2], with_torch[:2])
        assert with_numpy[0] == "error" or with_numpy == _outcome(intact, as_numpy=False)
    try:
        codes = load_codes(path)
    except CodesError:
        return
    codes.validate()
    assert codes.tokens.dtype == torch.int64 and codes.speaker.dtype == torch.float32


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few random byte overwrites, a truncation, an insertion or an appendix."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    action, at = draw(st.sampled_from(["none", "truncate", "insert"])), draw(st.integers(0, len(data)))
    if action == "truncate":
        data = data[:at]
    elif action == "insert":  # at == len(data) appends
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("kind", ["arbitrary", "mutated"])
@pytest.mark.parametrize("suffix", TOKEN_SUFFIXES)
def test_fuzz_bytes(fuzz_dir: Path, suffix: str, kind: str) -> None:
    """Arbitrary bytes (alone or after a valid prefix), or a valid file with random damage."""
    intact = save_codes(make_codes(frames=3, dim=8), fuzz_dir / f"valid{suffix}")
    valid = intact.read_bytes()
    path = fuzz_dir / f"{kind}{suffix}"
    arbitrary = st.one_of(st.binary(max_size=512), st.binary(max_size=64).map(lambda b: valid[:20] + b))

    @FUZZ
    @given(arbitrary if kind == "arbitrary" else mutated(valid))
    def run(data: bytes) -> None:
        path.write_bytes(data)
        _check_outcome(path, intact)

    run()


def test_fuzz_pt_pickle(fuzz_dir: Path) -> None:
    """A valid ``.pt`` whose ``data.pkl`` is damaged, in a sound zip archive: the torch-free reader
    gives what torch gives (the same codes or the same error)."""
    save_codes(make_codes(frames=3, dim=8), fuzz_dir / "pickle-valid.pt")
    records = hc.torch_records(torch.load(fuzz_dir / "pickle-valid.pt", weights_only=True))
    path = fuzz_dir / "pickle.pt"

    @FUZZ
    @given(mutated(records["data.pkl"]))
    def run(data: bytes) -> None:
        hc.pt_zip({**records, "data.pkl": data})(path)
        _check_outcome(path)

    run()


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 70000), st.floats(),
    st.text(max_size=6), st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.integers()), max_size=2),
)


def test_fuzz_soc_header_fields(fuzz_dir: Path) -> None:
    """Well-formed JSON headers with hostile field values, and payloads of any length."""
    _, header, payload = soc_parts(save_codes(make_codes(frames=3, dim=8), fuzz_dir / "fields-valid.soc"))
    path = fuzz_dir / "fields.soc"

    @settings(FUZZ, max_examples=200)
    @given(
        st.dictionaries(st.sampled_from(sorted(header) + ["extra"]), JSON_VALUES, max_size=3),
        st.sampled_from(sorted(header) + [None] * 30),  # mostly keep every key
        st.one_of(st.just(payload), st.binary(max_size=80)),
    )
    def run(changes: dict, dropped: str | None, body: bytes) -> None:
        bad = {k: v for k, v in {**header, **changes}.items() if k != dropped}
        path.write_bytes(soc_bytes(bad, body))
        _check_outcome(path)

    run()
