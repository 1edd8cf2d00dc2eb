"""Encoder, quantiser and mel decoders against the golden tensors; strict loading."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import GOLDEN, MANIFESTS, assert_close_golden
from socodec.loading.checkpoints import read_safetensors
from socodec.config import AnalyzerConfig
from socodec.errors import CheckpointError
from socodec.loading.modules import is_unused_analyzer_key, load_analyzer
from socodec.nn.analyzer import Analyzer


@pytest.fixture(scope="module")
def tiny_analyzer() -> Analyzer:
    cfg = AnalyzerConfig.from_json(GOLDEN / "analyzer_tiny.json")
    path = GOLDEN / "analyzer_tiny.safetensors"
    return load_analyzer(cfg, read_safetensors(path), source=path)


@torch.inference_mode()
def test_tokens_from_golden_features(tiny_analyzer, golden_case):
    tokens = tiny_analyzer.tokens(golden_case["hubert_features"][None])[0]
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, golden_case["tokens"])


@torch.inference_mode()
@pytest.mark.parametrize("streams", [1, 2, 3, 4])
def test_mel_prediction_first_k_streams(tiny_analyzer, golden_case, streams):
    mel = tiny_analyzer.decode_mel(golden_case["tokens"][None], golden_case["speaker"][None], streams)[0]
    key = "mel_pred" if streams == 4 else f"mel_pred_streams{streams}"
    assert_close_golden(mel, golden_case[key])


@torch.inference_mode()
def test_speaker_from_golden_mel(tiny_analyzer, golden_case):
    assert_close_golden(tiny_analyzer.speaker(golden_case["mel"][None])[0], golden_case["speaker"])


def test_real_size_manifest_loads_strictly():
    manifest = json.loads((MANIFESTS / "manifest_analyzer_real.json").read_text())
    cfg = AnalyzerConfig.released()
    with torch.device("meta"):
        model = Analyzer(cfg)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    listed = {k: tuple(v["shape"]) for k, v in manifest.items()}
    used = {k: s for k, s in listed.items() if not is_unused_analyzer_key(k)}
    assert used == wanted
    ignored = set(listed) - set(used)
    assert ignored, "the real file has training-only keys that must be accepted"
    assert all(k.startswith(("quantizer.quantizers.0._codebook.", "decoder_1.layers.8.")) for k in ignored)


def _tiny_state() -> dict[str, torch.Tensor]:
    return read_safetensors(GOLDEN / "analyzer_tiny.safetensors")


def _drop(state, key):
    del state[key]


@pytest.mark.parametrize("spoil, message", [
    (lambda st: _drop(st, "encoder.layers.0.weight"),
     r"x\.safetensors: missing key 'encoder\.layers\.0\.weight' \(expected shape \[64, 64, 3\]\)"),
    (lambda st: st.__setitem__("decoder_2.layers.0.bias", torch.zeros(65)),
     r"'decoder_2\.layers\.0\.bias' has shape \[65\], expected \[64\]"),
    (lambda st: st.__setitem__("encoder.extra.weight", torch.zeros(1)), r"unexpected key 'encoder\.extra\.weight'"),
], ids=["missing", "shape", "unknown"])
def test_bad_state_names_file_key_and_shapes(spoil, message):
    state = _tiny_state()
    spoil(state)
    with pytest.raises(CheckpointError, match=message):
        load_analyzer(AnalyzerConfig.from_json(GOLDEN / "analyzer_tiny.json"), state, source="x.safetensors")


def test_real_config_with_tiny_file_fails_cleanly():
    with pytest.raises(CheckpointError, match="expected"):
        load_analyzer(AnalyzerConfig.released(), _tiny_state(), source="analyzer_tiny.safetensors")


def test_training_only_keys_are_ignored_whatever_their_shape():
    state = _tiny_state()
    state["quantizer.quantizers.0._codebook.codebooks.0.embed_avg"] = torch.zeros(3)
    state["decoder_1.layers.8.weight"] = torch.zeros(2)
    cfg = AnalyzerConfig.from_json(GOLDEN / "analyzer_tiny.json")
    load_analyzer(cfg, state, source="x.safetensors")


def test_corrupt_safetensors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((GOLDEN / "analyzer_tiny.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable safetensors file"):
        read_safetensors(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_safetensors(tmp_path / "absent.safetensors")


class _MatmulSpy(torch.Tensor):
    """Records the TF32 settings in force at each matrix product it takes part in."""

    seen: list[tuple[bool, str]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("__matmul__", "matmul", "mm"):
            cls.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_nearest_code_search_is_full_float32_under_tf32_and_restores_it() -> None:
    from socodec.nn.analyzer import Codebook

    book = Codebook(16, 8)
    book.embed.copy_(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        matmul.allow_tf32 = True  # what a host process may have set
        torch.set_float32_matmul_precision("high")
        _MatmulSpy.seen.clear()
        idx = book.nearest(x.as_subclass(_MatmulSpy))
        assert _MatmulSpy.seen and all(s == (False, "highest") for s in _MatmulSpy.seen), _MatmulSpy.seen
        assert (matmul.allow_tf32, torch.get_float32_matmul_precision()) == (True, "high")
    finally:
        matmul.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])
    assert torch.equal(idx.as_subclass(torch.Tensor), torch.cdist(x, book.embed).argmin(-1))


def test_inference_layout_equals_the_training_layout(tiny_analyzer):
    """Without gradients the causal stacks run time-major (unfolded products, channels-last grouped
    convolutions, in-place activations); with them, channels-first through nn.Sequential. Same numbers,
    and the inference path leaves its input alone."""
    a = tiny_analyzer
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 6 * 29 + 4, a.cfg.in_dim, generator=gen)
    x = torch.randn(2, 23, a.cfg.model_size, generator=gen)
    kept = feats.clone(), x.clone()
    with torch.inference_mode():
        fast = a.encoder(feats), a.decoder_2.project(a.decoder_2(a.decoder_1(x)))
    assert torch.equal(feats, kept[0]) and torch.equal(x, kept[1])
    with torch.enable_grad():
        feats_g, x_g = feats.clone().requires_grad_(), x.clone().requires_grad_()
        slow = a.encoder(feats_g), a.decoder_2.project(a.decoder_2(a.decoder_1(x_g)))
        slow[0].sum().backward()  # the training path is differentiable
    assert feats_g.grad is not None
    for got, want in zip(fast, slow):
        assert got.shape == want.shape and got.is_contiguous()
        assert (got - want.detach()).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("c_out, kernel, stride, groups", [(320, 3, 1, 1), (256, 4, 2, 1), (288, 6, 3, 1), (64, 3, 1, 1),
                                                            (320, 3, 1, 32)])
@pytest.mark.parametrize("batch", [1, 2])
def test_time_major_convolutions_equal_the_padded_ones(c_out, kernel, stride, groups, batch):
    """Every branch of CausalConv1d.frames (row-blocked products over 2048 frames, channels-last for grouped
    or narrow outputs) and the transposed conv's product form give the channels-first layers' numbers."""
    from socodec.nn.causal import CausalConv1d, CausalConvTranspose1d

    torch.manual_seed(kernel * 100 + c_out + batch)
    conv = CausalConv1d(320, c_out, kernel, stride=stride, groups=groups)
    x = torch.randn(batch, 4500, 320)
    with torch.no_grad():
        want = conv(x.transpose(1, 2)).transpose(1, 2)
        padded = torch.cat([x.new_zeros(batch, kernel - 1, 320), x], dim=1)
        got = conv.frames(padded)
    assert got.shape == want.shape and got.is_contiguous()
    assert (got - want).abs().max().item() < 1e-4
    up = CausalConvTranspose1d(320, 96, stride)
    with torch.no_grad():
        want = up(x[:, :300].transpose(1, 2)).transpose(1, 2)
        got = up.frames(x[:, :300])
    assert (got - want).abs().max().item() < 1e-4


def test_the_streamer_is_differentiable(tiny_analyzer):
    """With gradients the time-major layers take differentiable paths: a streamed encoder and decoder
    give the whole-sequence numbers and their gradients."""
    from socodec.nn.causal import CausalStreamer, CausalConv1d

    a = tiny_analyzer
    wide = CausalConv1d(a.cfg.model_size, 256, 3)  # the product path (>= 256 outputs)
    x = torch.randn(1, 30, a.cfg.model_size, requires_grad=True)
    with torch.enable_grad():
        streamer = CausalStreamer()
        parts = [streamer.decoder_body(a.decoder_1, x[:, :11]), streamer.decoder_body(a.decoder_1, x[:, 11:])]
        streamed = torch.cat(parts, dim=1)
        wide_out = CausalStreamer().run(wide, x)
        (streamed.square().sum() + wide_out.sum()).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(streamed, a.decoder_1(x), atol=1e-5)
        assert torch.allclose(wide_out, wide(x.transpose(1, 2)).transpose(1, 2), atol=1e-5)
