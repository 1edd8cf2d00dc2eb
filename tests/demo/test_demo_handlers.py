"""The demo's handlers (plain functions, no web server) on the tiny golden models."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import GOLDEN, tiny_ckpt_dir
from socodec import Codes, SoCodec
from socodec.audio import load_audio
from socodec.errors import SoCodecError
from socodec.demo.app import DemoHandlers, token_table

SPEECH = GOLDEN / "ground_truth.wav"


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> SoCodec:
    ckpts = tiny_ckpt_dir(tmp_path_factory.mktemp("demo-handlers") / "ckpts")
    return SoCodec.from_pretrained(ckpts, analyzer_config=GOLDEN / "analyzer_tiny.json",
                                   vocoder_config=GOLDEN / "vocoder_tiny.json")


@pytest.fixture(scope="module")
def handlers(codec, tmp_path_factory) -> DemoHandlers:
    return DemoHandlers(codec, tmp_path_factory.mktemp("demo-work"))


@pytest.fixture(scope="module")
def analysis(handlers):
    return handlers.analyse(str(SPEECH))


def test_analyse_writes_both_token_files_and_the_table(handlers, codec, analysis):
    a = analysis
    expected = codec.encode(load_audio(SPEECH))
    for path in (a.soc_path, a.pt_path):
        assert path.parent == handlers.workdir
        codes = Codes.load(path)
        assert torch.equal(codes.tokens, expected.tokens) and torch.equal(codes.speaker, expected.speaker)
        assert codes.num_samples == expected.num_samples
    assert a.headers == ["frame", "start (s)", "stream 1", "stream 2", "stream 3", "stream 4"]
    assert len(a.rows) == expected.num_frames
    assert a.rows[0][:2] == [0, -0.5] and a.rows[5][1] == pytest.approx(0.1)
    assert [row[2:] for row in a.rows] == expected.tokens.tolist()
    assert f"{expected.num_frames} frames x 4 streams" in a.summary and "466.7 bit/s" in a.summary
    assert a.spectrogram.dtype == np.uint8 and a.spectrogram.shape == (240, -(-expected.num_samples // 160), 3)


def test_token_table_is_bounded(codec):
    codes = Codes(torch.zeros(700, 4, dtype=torch.long), torch.zeros(64), num_samples=700 * 1920 - 8000, lead=8000)
    headers, rows = token_table(codes)
    assert len(rows) == 500 and len(headers) == 6


@pytest.mark.parametrize("streams", [1, 2, 3, 4])
def test_resynthesis_is_the_codecs_decode(handlers, codec, analysis, streams):
    a = analysis
    s = handlers.resynthesise(a.soc_path, streams)
    expected = codec.decode(Codes.load(a.soc_path), streams=streams)
    assert np.array_equal(s.audio, expected.numpy())
    written, sr = sf.read(s.wav_path, dtype="float32")
    assert sr == 16000 and written.shape == expected.shape
    assert np.abs(written - np.clip(expected.numpy(), -1, 1)).max() <= 1 / 32768 + 1e-7
    assert f"{streams} of 4 streams" in s.summary and "its own speaker vector" in s.summary


def test_voice_swap_from_an_audio_or_a_token_file(handlers, codec, analysis, tmp_path):
    a = analysis
    other = tmp_path / "other.wav"
    wav = load_audio(SPEECH)
    sf.write(other, np.flip(wav.numpy()).copy(), 16000)  # the same voice backwards: another speaker vector
    voice = codec.encode(load_audio(other))
    voice.save(tmp_path / "voice.soc")
    expected = codec.decode(Codes.load(a.soc_path), speaker=voice.speaker).numpy()
    for source in (other, tmp_path / "voice.soc"):
        s = handlers.resynthesise(a.soc_path, 4, str(source))
        assert np.array_equal(s.audio, expected) and source.name in s.summary
    assert not np.array_equal(expected, handlers.resynthesise(a.soc_path, 4).audio)


def test_decode_an_uploaded_pt_file(handlers, codec, tmp_path):
    codes = codec.encode(load_audio(SPEECH))
    codes.save(tmp_path / "mine.pt")
    s = handlers.resynthesise(str(tmp_path / "mine.pt"), 3)
    assert np.array_equal(s.audio, codec.decode(codes, streams=3).numpy())
    assert s.wav_path.name.startswith("mine-") and s.wav_path.name.endswith("-3streams.wav")


def test_bad_inputs_give_the_command_lines_one_line_errors(handlers, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00")
    two = tmp_path / "two.soc"
    Codes(torch.zeros(10, 2, dtype=torch.long), torch.zeros(64), num_samples=1000, lead=8000).save(two)
    wide = tmp_path / "wide.soc"
    Codes(torch.zeros(10, 4, dtype=torch.long), torch.zeros(1024), num_samples=1000, lead=8000).save(wide)
    cases = [
        (lambda: handlers.analyse(None), "upload or record some speech first"),
        (lambda: handlers.analyse(str(broken)), f"{broken}: not a readable audio file"),
        (lambda: handlers.resynthesise(None), "encode some speech or upload a token file"),
        (lambda: handlers.resynthesise(str(SPEECH)), "ground_truth.wav: not a token file"),
        (lambda: handlers.resynthesise(str(two), 4), "two.soc: holds 2 streams, cannot decode with 4"),
        (lambda: handlers.resynthesise(str(two), 7), "streams must be one of"),
        (lambda: handlers.resynthesise(str(two), 1, str(tmp_path / "x.txt")), "x.txt: the voice must be"),
        (lambda: handlers.resynthesise(str(wide), 4), "wide.soc: speaker vector has 1024 values"),
        (lambda: handlers.resynthesise(str(two), 1, str(wide)), "two.soc with the voice of wide.soc: speaker vector"),
    ]
    for call, message in cases:
        with pytest.raises(SoCodecError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)
    assert not list(handlers.workdir.glob("broken*")) and not list(handlers.workdir.glob("two*"))


def test_spectrogram_sizes(handlers):
    image = handlers.spectrogram(np.zeros(100, dtype=np.float32))
    assert image.shape[0] == 240 and image.shape[1] >= 1 and image.shape[2] == 3
    assert handlers.spectrogram(np.zeros(61 * 16000, dtype=np.float32)).shape == (240, 6000, 3)  # the first minute
