"""The random-checkpoint script writes files in the released formats (benchmarks rely on it)."""

from __future__ import annotations

import json
import sys

import torch

from conftest import GOLDEN, MANIFESTS, REPO
from socodec import SoCodec
from socodec.config import AnalyzerConfig, HubertConfig, VocoderConfig

sys.path.insert(0, str(REPO / "scripts"))
from make_random_checkpoints import fairseq_hubert_shapes, make_random_checkpoints  # noqa: E402


def test_fairseq_key_layout_matches_real_manifest():
    manifest = json.loads((MANIFESTS / "manifest_hubert_large_fairseq.json").read_text())
    expected = {k: tuple(v["shape"]) for k, v in manifest.items()}
    assert fairseq_hubert_shapes(HubertConfig()) == expected


def test_tiny_random_checkpoints_load_and_run(tmp_path):
    hubert = HubertConfig(
        conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
        embed_dim=64, ffn_dim=128, num_layers=2, num_heads=4, conv_pos=16, conv_pos_groups=4,
    )
    analyzer = AnalyzerConfig.from_json(GOLDEN / "analyzer_tiny.json")
    vocoder = VocoderConfig.from_json(GOLDEN / "vocoder_tiny.json")
    make_random_checkpoints(tmp_path / "ckpts", hubert=hubert, analyzer=analyzer, vocoder=vocoder, seed=1)
    codec = SoCodec.from_files(
        tmp_path / "ckpts" / "chinese-hubert-large-fairseq-ckpt.pt",
        tmp_path / "ckpts" / "socodec_16384x4_120ms_16khz_chinese.safetensors",
        tmp_path / "ckpts" / "mel_vocoder_80dim_10ms_16khz.safetensors",
        analyzer_config=analyzer, vocoder_config=vocoder, cache_dir=tmp_path / "cache",
    )
    wav = torch.randn(16000) * 0.1
    codes = codec.encode(wav, 16000, padding="grid")
    assert codes.tokens.shape == (13, 4)  # (8000 + 16000) / 1920 rounded up
    out = codec.decode(codes)
    assert out.shape == (16000,) and torch.isfinite(out).all()
