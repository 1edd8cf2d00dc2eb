"""The Python API (:class:`socodec.SoCodec`) end to end on the tiny golden models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
from safetensors.torch import load_file

from conftest import GOLDEN, assert_close_golden
from socodec import Codes, SoCodec
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, RELEASED_FILES, VOCODER_FILE
from socodec.codes import load_codes
from socodec.errors import CheckpointError, SoCodecError

LEAD = 8000
HOP = 1920
TINY = {
    HUBERT_FILE: GOLDEN / "hubert_tiny_fairseq.pt",
    ANALYZER_FILE: GOLDEN / "analyzer_tiny.safetensors",
    VOCODER_FILE: GOLDEN / "vocoder_tiny.safetensors",
}
CONFIGS = {"analyzer_config": GOLDEN / "analyzer_tiny.json", "vocoder_config": GOLDEN / "vocoder_tiny.json"}


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> SoCodec:
    return SoCodec.from_files(
        TINY[HUBERT_FILE], TINY[ANALYZER_FILE], TINY[VOCODER_FILE], **CONFIGS,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


@pytest.fixture(scope="module")
def encoded(codec: SoCodec) -> dict[str, Codes]:
    """Cache of ``codec.encode`` results by golden case name, so each input is encoded once."""
    return {}


def _encode(codec: SoCodec, encoded: dict[str, Codes], case: dict) -> Codes:
    if case["name"] not in encoded:
        encoded[case["name"]] = codec.encode(case["input_wav"], 16000, padding="grid")
    return encoded[case["name"]]


def test_encode_matches_golden(codec, encoded, golden_case):
    codes = _encode(codec, encoded, golden_case)
    assert codes.tokens.dtype == torch.int64
    assert torch.equal(codes.tokens, golden_case["tokens"])
    assert codes.speaker.dtype == torch.float32
    assert_close_golden(codes.speaker, golden_case["speaker"])
    n = golden_case["input_wav"].numel()
    assert (codes.num_samples, codes.lead, codes.sample_rate) == (n, LEAD, 16000)
    assert set(codes.model) == {"hubert", "analyzer", "vocoder"}


def test_decode_returns_input_duration(codec, encoded, golden_case):
    codes = _encode(codec, encoded, golden_case)
    wav = codec.decode(codes)
    n = golden_case["input_wav"].numel()
    assert wav.dtype == torch.float32 and wav.shape == (n,)
    assert_close_golden(wav, golden_case["output_wav"][LEAD : LEAD + n])


def test_decode_reference_features_gives_full_output(codec, golden_case):
    codes = load_codes(GOLDEN / f"reference_features_{golden_case['name']}.pt")
    assert codes.lead is None and codes.num_samples is None
    wav = codec.decode(codes)
    assert_close_golden(wav, golden_case["output_wav"])


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_decode_first_k_streams(codec, streams):
    case = _golden("chirp")
    codes = Codes(case["tokens"], case["speaker"])
    wav = codec.decode(codes, streams=streams)
    with torch.inference_mode():
        expected = codec.vocoder(case[f"mel_pred_streams{streams}"][None])[0]
    assert_close_golden(wav, expected)
    if streams == 2:  # dropping streams from the codes is the same as decoding fewer
        assert torch.equal(codec.decode(codes.with_streams(streams)), wav)


@pytest.mark.parametrize("streams", [0, 5])
def test_decode_rejects_bad_stream_count(codec, golden_case, streams):
    with pytest.raises(SoCodecError, match="streams"):
        codec.decode(Codes(golden_case["tokens"], golden_case["speaker"]), streams=streams)


def test_speaker_override(codec):
    case = _golden("edge")
    codes = Codes(case["tokens"], case["speaker"], num_samples=case["input_wav"].numel(), lead=LEAD)
    other = -case["speaker"]
    swapped = codec.decode(codes, speaker=other)
    same = codec.decode(Codes(codes.tokens, other, num_samples=codes.num_samples, lead=codes.lead))
    assert torch.equal(swapped, same)
    with pytest.raises(SoCodecError, match="speaker"):
        codec.decode(codes, speaker=other[:10])


@pytest.mark.parametrize("n", [1, 1920, 1921])
def test_no_lead(codec, n):
    wav = torch.from_numpy(np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32))
    codes = codec.encode(wav, lead=False, padding="grid")
    assert codes.num_frames == math.ceil(n / HOP)
    assert (codes.lead, codes.num_samples) == (0, n)
    assert codec.decode(codes).shape == (n,)


def test_multichannel_44k_equals_resampled_mono(codec):
    mono16 = _golden("ground_truth")["input_wav"].numpy()
    left = soxr.resample(mono16, 16000, 44100, quality="VHQ").astype(np.float32)
    stereo = np.stack([left, 0.5 * left])  # [C, N], channels differ
    expected_input = soxr.resample(stereo.mean(axis=0), 44100, 16000, quality="VHQ").astype(np.float32)
    got = codec.encode(torch.from_numpy(stereo), 44100)
    want = codec.encode(torch.from_numpy(expected_input), 16000)
    assert torch.equal(got.tokens, want.tokens)
    assert_close_golden(got.speaker, want.speaker)
    assert got.num_samples == expected_input.size


def _golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / f"golden_{name}.safetensors"))


def _released_dir(root: Path) -> Path:
    root.mkdir()
    for name, target in TINY.items():
        (root / name).symlink_to(target)
    return root


def test_from_pretrained_released_names(tmp_path, codec):
    loaded = SoCodec.from_pretrained(_released_dir(tmp_path / "ckpts"), cache_dir=tmp_path / "cache", **CONFIGS)
    assert loaded.identity == codec.identity
    case = _golden("edge")
    assert torch.equal(loaded.encode(case["input_wav"], padding="grid").tokens, case["tokens"])


def test_from_pretrained_empty_dir_names_the_files(tmp_path):
    with pytest.raises(CheckpointError) as err:
        SoCodec.from_pretrained(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for name in RELEASED_FILES:
        assert name in message


def test_from_pretrained_one_file_missing(tmp_path):
    folder = _released_dir(tmp_path / "ckpts")
    (folder / VOCODER_FILE).unlink()
    with pytest.raises(CheckpointError, match=VOCODER_FILE) as err:
        SoCodec.from_pretrained(folder, **CONFIGS)
    assert HUBERT_FILE not in str(err.value).split("(")[0]


def test_half_precision_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(SoCodecError, match="CUDA"):
        SoCodec.from_files(
            TINY[HUBERT_FILE], TINY[ANALYZER_FILE], TINY[VOCODER_FILE], **CONFIGS,
            dtype=torch.float16, cache_dir=tmp_path,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda(tmp_path, dtype):
    golden_case = _golden("ground_truth")
    gpu = SoCodec.from_files(
        TINY[HUBERT_FILE], TINY[ANALYZER_FILE], TINY[VOCODER_FILE], **CONFIGS,
        device="cuda", dtype=dtype, cache_dir=tmp_path,
    )
    codes = gpu.encode(golden_case["input_wav"], padding="grid")
    wav = gpu.decode(codes)
    assert wav.device.type == "cpu" and wav.dtype == torch.float32
    assert wav.shape == golden_case["input_wav"].shape
    if dtype == torch.float32:
        assert torch.equal(codes.tokens, golden_case["tokens"])
        assert_close_golden(wav, golden_case["output_wav"][LEAD : LEAD + wav.numel()])


def test_decode_iter_does_not_leak_inference_mode(codec, golden_case):
    """A half-consumed decode_iter must leave the caller's autograd state alone."""
    pieces = codec.decode_iter(load_codes(GOLDEN / f"reference_features_{golden_case['name']}.pt"))
    next(pieces)
    assert not torch.is_inference_mode_enabled()
    x = torch.ones(2, requires_grad=True)
    assert (x * 2).sum().requires_grad


def test_every_call_hands_freed_heap_back(codec, golden_case, monkeypatch):
    """encode, decode and a fully consumed decode_iter each end by trimming the heap once."""
    import socodec.codec as codec_module

    calls = []
    monkeypatch.setattr(codec_module, "release_heap", lambda: calls.append(1))
    codes = codec.encode(golden_case["input_wav"])
    assert len(calls) == 1
    audio = codec.decode(codes)
    assert len(calls) == 2
    pieces = list(codec.decode_iter(codes))
    assert len(calls) == 3
    assert torch.equal(torch.cat(pieces), audio)


def test_heap_trimming_is_opt_in_for_the_api(codec, golden_case, monkeypatch):
    """A library call leaves the process heap alone; the corpus workers (and the command line) opt in."""
    from socodec.corpus.engines import load_encoder
    import socodec.inference.core as heap

    trims = []
    monkeypatch.setattr(heap, "_trim_function", lambda: trims.append)
    monkeypatch.setattr(heap, "_TRIM", False)
    codec.encode(golden_case["input_wav"])
    assert trims == [] and not heap.heap_trimming()
    load_encoder(lambda: codec, None, "published")
    assert heap.heap_trimming()
    codec.encode(golden_case["input_wav"])
    assert trims == [0]


def test_a_deferred_hubert_loads_once_when_threads_ask_together(codec):
    """The demo's events run in threads: the first-use load must not run twice at once."""
    import threading
    import time

    from socodec.inference.core import CodecCore

    calls = []

    class SlowSource:
        def __call__(self, dtype):
            calls.append(dtype)
            time.sleep(0.3)
            return codec.hubert

        def fingerprint(self) -> str:
            return "slow"

        def check(self) -> None:
            pass

    core = CodecCore(SlowSource(), codec.analyzer, codec.vocoder)
    got = []
    threads = [threading.Thread(target=lambda: got.append(core.hubert)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(got) == 4 and all(m is codec.hubert for m in got)
