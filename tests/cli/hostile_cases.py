"""Generators for the hostile-input cases of ``test_hostile_inputs.py``.

Every case is made on the fly in a temporary folder: bad and odd audio files,
bad token files, broken checkpoints. Each builder writes one file (or folder)
at the path it is given; the tables pair a file name with its builder and with
a fragment the command line's error line must contain. The checks at the end
inspect stderr and the files left on disk.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from socodec.codes import SOC_MAGIC, Codes, save_codes
from socodec.loading.hubert import fairseq_config_dicts, load_fairseq_pickle

Builder = Callable[[Path], None]

SPEAKER_DIM = 64  # the tiny golden analyzer's model size
SOC_PREFIX = struct.Struct("<8sBI")


def speech(n: int, sr: int = 16000, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """Deterministic speech-like test signal ``[n, channels]`` (harmonics plus a little noise)."""
    t = np.arange(n) / sr
    rng = np.random.default_rng(n + channels)
    base = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((140.0, 280.0, 700.0, 1900.0)))
    x = amp * base / 2.1 + 0.01 * rng.standard_normal(n)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def _wav(data: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> Builder:
    return lambda path: sf.write(str(path), data, sr, subtype=subtype, format="WAV")


def _bytes(data: bytes) -> Builder:
    return lambda path: path.write_bytes(data)


def _valid_wav_bytes(tmp: Path) -> bytes:
    path = tmp.with_name(f"_{tmp.stem}_src.wav")
    sf.write(str(path), speech(4000), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.unlink()
    return data


def _truncated_wav(path: Path) -> None:
    data = _valid_wav_bytes(path)
    path.write_bytes(data[: len(data) // 2])


def _unknown_format_tag(path: Path) -> None:
    data = bytearray(_valid_wav_bytes(path))
    assert data[12:16] == b"fmt "
    data[20:22] = struct.pack("<H", 0x1234)  # WAVE format tag: no codec has this number
    path.write_bytes(bytes(data))


def _with_value(value: float) -> Builder:
    def build(path: Path) -> None:
        x = speech(4000)
        x[1000] = value
        sf.write(str(path), x, 16000, subtype="FLOAT")

    return build


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"

#: Audio files the command line must process: name -> (builder, output length at 16 kHz).
AUDIO_OK: dict[str, tuple[Builder, int]] = {
    "pcm16.wav": (_wav(speech(4000)), 4000),
    "pcm_u8.wav": (_wav(speech(4000), subtype="PCM_U8"), 4000),
    "pcm24.wav": (_wav(speech(4000), subtype="PCM_24"), 4000),
    "float32.wav": (_wav(speech(4000), subtype="FLOAT"), 4000),
    "float64.wav": (_wav(speech(4000), subtype="DOUBLE"), 4000),
    "six_channels.wav": (_wav(speech(4000, channels=6)), 4000),
    "rate_8k.wav": (_wav(speech(2000, sr=8000), sr=8000), 4000),
    "rate_96k.wav": (_wav(speech(24000, sr=96000), sr=96000), 4000),
    "one_sample.wav": (_wav(speech(1)), 1),
    "shorter_than_frame.wav": (_wav(speech(1000)), 1000),
    "silence.wav": (_wav(np.zeros((4000, 1), np.float32)), 4000),
    "loud.wav": (_wav(speech(4000, amp=8.0), subtype="FLOAT"), 4000),
}

#: Audio files the command line must refuse: name -> (builder, fragment of the error line).
AUDIO_BAD: dict[str, tuple[Builder, str]] = {
    "empty.wav": (_bytes(b""), "empty file"),
    "text.wav": (_bytes(b"this is a text file, not audio\n" * 20), "not a readable audio file"),
    "png_named.wav": (_bytes(PNG * 10), "not a readable audio file"),
    "truncated.wav": (_truncated_wav, "truncated"),
    "zero_samples.wav": (_wav(np.zeros((0, 1), np.float32)), "no audio samples"),
    "nan.wav": (_with_value(float("nan")), "NaN"),
    "inf.wav": (_with_value(float("inf")), "infinite"),
    "unknown_codec.wav": (_unknown_format_tag, "format tag 0x1234"),
}


# ---------------------------------------------------------------- token files


class Payload:
    """Unpickling this would call ``fn(*args)``: the malicious pickle's payload."""

    def __init__(self, fn: Callable, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def good_codes(frames: int = 6, speaker_dim: int = SPEAKER_DIM, seed: int = 0) -> Codes:
    gen = torch.Generator().manual_seed(seed)
    return Codes(
        tokens=torch.randint(0, 16384, (frames, 4), generator=gen),
        speaker=torch.randn(speaker_dim, generator=gen),
        num_samples=frames * 1920 - 8000 - 100,
        lead=8000,
    )


def _pt(**fields: object) -> Builder:
    """A ``.pt`` holding the good layout with ``fields`` replaced (a value of None removes the key)."""

    def build(path: Path) -> None:
        codes = good_codes()
        obj = {"token": codes.tokens, "speaker": codes.speaker}
        for key, value in fields.items():
            if value is None:
                obj.pop(key)
            else:
                obj[key] = value
        torch.save(obj, path)

    return build


def _torch_save(obj: object) -> Builder:
    return lambda path: torch.save(obj, path)


class Storage:
    """Pickled as torch.save pickles a storage: ``("storage", <torch storage class>, key, "cpu", numel)``."""

    def __init__(self, key: str, numel: int, kind: type = torch.LongStorage) -> None:
        self.pid = ("storage", kind, key, "cpu", numel)


class FakeTensor:
    """Pickled as torch.save pickles a tensor, with any storage, offset, sizes and strides."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _PtPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        return obj.pid if isinstance(obj, Storage) else None


def pt_pickle(obj: object) -> bytes:
    """``data.pkl`` of a zip-format .pt holding ``obj`` (protocol 2, as torch.save)."""
    buf = io.BytesIO()
    _PtPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def pt_zip(records: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Builder:
    """A zip-format .pt written by hand: ``records`` (``data.pkl``, ``data/0``, ...; ``version`` and
    ``byteorder`` added unless given) in the archive's folder."""
    records = {"version": b"3\n", "byteorder": b"little", **records}

    def build(path: Path) -> None:
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name in ("data.pkl", *sorted(set(records) - {"data.pkl"})):  # data.pkl first, as torch.save
                zf.writestr(f"archive/{name}", records[name])

    return build


def torch_records(obj: object) -> dict[str, bytes]:
    """The records of ``torch.save(obj)``, named within the archive's folder (``data.pkl``, ``data/0``, ...)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as zf:
        return {name.split("/", 1)[1]: zf.read(name) for name in zf.namelist()}


def evil_zip_pt(marker: Path) -> Builder:
    """A zip-format .pt whose ``data.pkl`` would run ``os.system`` (made by hand, not by torch.save)."""
    return pt_zip({"data.pkl": pickle.dumps(Payload(os.system, f"touch '{marker}'"), protocol=2)})


def short_storage_pt() -> Builder:
    """A zip-format .pt whose token storage record holds 5 of the 24 values its pickle claims."""
    good = good_codes(frames=6)
    pkl = pt_pickle({"token": FakeTensor(Storage("0", 24), 0, (6, 4), (4, 1)),
                     "speaker": FakeTensor(Storage("1", SPEAKER_DIM, torch.FloatStorage), 0, (SPEAKER_DIM,), (1,))})
    return pt_zip({"data.pkl": pkl, "data/0": good.tokens.numpy().tobytes()[:40],
                   "data/1": good.speaker.numpy().tobytes()})


def _soc(mangle: Callable[[dict, bytes], bytes]) -> Builder:
    """A ``.soc`` made from a valid one: ``mangle(header, payload)`` returns the file's bytes."""

    def build(path: Path) -> None:
        good = save_codes(good_codes(), path.with_name(f"_{path.stem}_src.soc"))
        data = good.read_bytes()
        good.unlink()
        _, _, hlen = SOC_PREFIX.unpack_from(data)
        header = json.loads(data[SOC_PREFIX.size : SOC_PREFIX.size + hlen])
        path.write_bytes(mangle(header, data[SOC_PREFIX.size + hlen :]))

    return build


def soc_bytes(header: object, payload: bytes, magic: bytes = SOC_MAGIC, version: int = 1) -> bytes:
    blob = json.dumps(header).encode()
    return SOC_PREFIX.pack(magic, version, len(blob)) + blob + payload


def token_bad_cases(marker: Path, hubert_pt: Path) -> dict[str, tuple[Builder, str]]:
    """Token files the command line must refuse: name -> (builder, fragment of the error line).

    ``marker`` is the file the malicious payloads would create; ``hubert_pt`` a
    real non-token torch file (the fairseq HuBERT checkpoint).
    """
    good = good_codes()
    tok, spk = good.tokens, good.speaker
    evil_exec = Payload(exec, f"open({str(marker)!r}, 'w').close()")
    evil_system = Payload(os.system, f"touch '{marker}'")
    return {
        "evil_exec.pt": (_torch_save({"token": evil_exec, "speaker": spk}), "cannot unpickle safely"),
        "evil_system.pt": (_torch_save(evil_system), "cannot unpickle safely"),
        "evil_raw_pickle.pt": (_bytes(pickle.dumps(evil_exec, protocol=2)), "cannot unpickle safely"),
        "evil_zip_system.pt": (evil_zip_pt(marker), "needs the Python global"),
        "short_storage.pt": (short_storage_pt(), "record size (40 bytes) does not match"),
        "fairseq_checkpoint.pt": (lambda p: p.write_bytes(hubert_pt.read_bytes()), "cannot unpickle safely"),
        "text.pt": (_bytes(b"not a torch file\n"), "neither a zip archive nor a pickle"),
        "empty.pt": (_bytes(b""), "cannot unpickle safely"),
        "not_a_dict.pt": (_torch_save(tok), "expected a dict"),
        "no_token.pt": (_pt(token=None), "missing key 'token'"),
        "no_speaker.pt": (_pt(speaker=None), "missing key 'speaker'"),
        "rank1.pt": (_pt(token=tok[:, 0]), "shape [frames, streams]"),
        "rank3.pt": (_pt(token=tok[None]), "shape [frames, streams]"),
        "five_streams.pt": (_pt(token=torch.zeros(6, 5, dtype=torch.int64)), "1 to 4 streams"),
        "negative.pt": (_pt(token=tok - 20000), "must lie in [0, 16384)"),
        "too_large.pt": (_pt(token=tok + 16384), "must lie in [0, 16384)"),
        "float_tokens.pt": (_pt(token=tok.float()), "must be integers"),
        "speaker_1024.pt": (_torch_save({"token": tok, "speaker": torch.randn(1024)}), "the model expects 64"),
        "speaker_nan.pt": (_pt(speaker=spk * float("nan")), "NaN"),
        "empty_soc.soc": (_bytes(b""), "truncated"),
        "truncated.soc": (_soc(lambda h, p: soc_bytes(h, p)[:-5]), "payload is"),
        "wrong_magic.soc": (_soc(lambda h, p: soc_bytes(h, p, magic=b"ECDC\x00\x00\x00\x00")), "wrong magic"),
        "wrong_version.soc": (_soc(lambda h, p: soc_bytes(h, p, version=9)), "unsupported .soc version 9"),
        "lying_frames.soc": (_soc(lambda h, p: soc_bytes({**h, "frames": 10**9}, p)), "payload is"),
        "lying_hlen.soc": (_soc(lambda h, p: SOC_PREFIX.pack(SOC_MAGIC, 1, 60000) + b"{}"), "truncated"),
        "bad_json.soc": (_soc(lambda h, p: SOC_PREFIX.pack(SOC_MAGIC, 1, 3) + b"{x}" + p), "not UTF-8 JSON"),
    }


# ---------------------------------------------------------------- checkpoints


def _truncate(src: Path) -> Builder:
    return lambda path: path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def _edit_safetensors(src: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Builder:
    def build(path: Path) -> None:
        state = load_file(str(src))
        edit(state)
        save_file(state, str(path))

    return build


def _drop_first_key(state: dict[str, torch.Tensor]) -> None:
    del state[sorted(state)[0]]


def _reshape_first_key(state: dict[str, torch.Tensor]) -> None:
    key = sorted(k for k in state if state[k].dim() >= 1)[0]
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)


def _fairseq_with(src: Path, **model_fields: object) -> Builder:
    """A plain-dict fairseq-style checkpoint from ``src`` with config fields replaced."""

    def build(path: Path) -> None:
        ckpt = load_fairseq_pickle(src)
        model_cfg, task_cfg = fairseq_config_dicts(ckpt, src)
        state = {k: v.clone() for k, v in ckpt["model"].items()}
        torch.save({"cfg": {"model": {**model_cfg, **model_fields}, "task": task_cfg}, "model": state}, path)

    return build


def checkpoint_cases(golden: Path, marker: Path) -> dict[str, tuple[str, Builder, str]]:
    """Broken checkpoints: case -> (which released file it replaces, builder, fragment of the error line).

    The file key is ``hubert``, ``analyzer`` or ``vocoder``.
    """
    hubert, analyzer, vocoder = (golden / n for n in ("hubert_tiny_fairseq.pt", "analyzer_tiny.safetensors",
                                                     "vocoder_tiny.safetensors"))
    return {
        "truncated_analyzer": ("analyzer", _truncate(analyzer), "not a readable safetensors file"),
        "text_vocoder": ("vocoder", _bytes(b"hello"), "not a readable safetensors file"),
        "vocoder_missing_key": ("vocoder", _edit_safetensors(vocoder, _drop_first_key), "missing key"),
        "analyzer_wrong_shape": ("analyzer", _edit_safetensors(analyzer, _reshape_first_key), "has shape"),
        "hubert_truncated": ("hubert", _truncate(hubert), "not a readable torch checkpoint"),
        "hubert_default_extractor": ("hubert", _fairseq_with(hubert, extractor_mode="default"),
                                     "extractor_mode='default'"),
        "hubert_not_fairseq": ("hubert", _torch_save({"weights": torch.zeros(3)}), "not a fairseq trainer"),
        "hubert_tensor_pickle": ("hubert", _torch_save(torch.zeros(3)), "not a fairseq checkpoint"),
        "hubert_malicious": ("hubert", _torch_save({"model": Payload(os.system, f"touch '{marker}'")}),
                             "refusing to load"),
    }


# ---------------------------------------------------------------- checks


def snapshot(root: Path) -> dict[Path, tuple[int, bytes]]:
    """Every file under ``root`` with its mtime and bytes (symlinks excluded)."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()
            and not p.is_symlink()}


def leftovers(root: Path) -> list[Path]:
    """Temporary files of interrupted or failed atomic writes."""
    return sorted(root.rglob(".*.tmp-*"))


def lines_naming(stderr: str, path: Path) -> list[str]:
    return [ln for ln in stderr.splitlines() if str(path) in ln]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "ERROR" in ln]


def assert_one_error(stderr: str, path: Path, fragment: str) -> None:
    """Exactly one line names ``path``; it is an error line holding ``fragment``; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    named = lines_naming(stderr, path)
    assert len(named) == 1, f"{path}: {named}\n{stderr}"
    assert "ERROR" in named[0] and fragment in named[0], named[0]
    assert "\x1b" not in stderr, "terminal escape codes in the message"


def build(folder: Path, cases: dict[str, tuple]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (builder, _) in cases.items():
        builder(folder / name)
    return {name: folder / name for name in cases}


class _HalfThenFail(io.FileIO):
    """A file whose first write stores half the bytes, then fails with ``errno_code``."""

    errno_code = errno.ENOSPC

    def write(self, data: bytes) -> int:
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(self.errno_code, os.strerror(self.errno_code))


def fail_writes_half_way(monkeypatch, errno_code: int) -> None:
    """Make every file write in this process store half its bytes, then fail (e.g. disk full).

    Covers ``Path.write_bytes`` (token files) and ``Path.open(..., "wb")`` (streamed audio).
    """
    real_write, real_open = Path.write_bytes, Path.open

    def write_bytes(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise OSError(errno_code, os.strerror(errno_code))

    def open_(self: Path, mode: str = "r", *args, **kwargs):
        if "w" not in mode:
            return real_open(self, mode, *args, **kwargs)
        f = _HalfThenFail(str(self), "wb")
        f.errno_code = errno_code
        return f

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "open", open_)
