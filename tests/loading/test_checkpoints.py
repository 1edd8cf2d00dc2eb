"""Reading safetensors files with conversion, and HuBERT loaded straight into a lower precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import GOLDEN
from socodec.errors import CheckpointError
from socodec.loading.checkpoints import read_safetensors_as
from socodec.loading.hubert import POS_CONV_G, load_hubert_weights
from socodec.loading.modules import HubertLoader


def _mixed_file(path: Path) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(7, 5, generator=gen),
        "a.bias": torch.randn(7, generator=gen).double(),
        "half": torch.randn(3, 4, generator=gen).half(),
        "steps": torch.arange(6, dtype=torch.int64).view(2, 3),
        "empty": torch.zeros(0, 4),
        "keep.me": torch.randn(2, 2, generator=gen),
    }
    save_file(tensors, str(path), metadata={"note": "test"})
    return tensors


def test_read_as_converts_floating_tensors_only(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    stored = _mixed_file(path)
    got = read_safetensors_as(path, torch.bfloat16, keep=("keep.me",))
    assert set(got) == set(stored)
    for key, tensor in stored.items():
        if key == "keep.me" or not tensor.is_floating_point():
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
        else:
            assert got[key].dtype == torch.bfloat16 and got[key].shape == tensor.shape, key
            assert torch.equal(got[key], tensor.to(torch.bfloat16)), key
    assert not any(t.is_inference() for t in got.values())


def test_read_as_float32_equals_load_file(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    _mixed_file(path)
    expected = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    got = read_safetensors_as(path, torch.float32)
    assert all(torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in expected)


def _with_header(data: bytes, header: bytes) -> bytes:
    size = int.from_bytes(data[:8], "little")
    return len(header).to_bytes(8, "little") + header + data[8 + size :]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "list_header", "wrong_size", "unknown_dtype"])
def test_read_as_damaged_file_is_one_checkpoint_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "mixed.safetensors"
    _mixed_file(path)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + size]
    damaged = {
        "truncate": lambda: data[: len(data) - 20],
        "garbage": lambda: b"\xff" * 8 + data[8:],
        "list_header": lambda: _with_header(data, b"[]"),
        "wrong_size": lambda: _with_header(data, header.replace(b'"shape":[7,5]', b'"shape":[7,6]')),
        "unknown_dtype": lambda: _with_header(data, header.replace(b'"dtype":"F16"', b'"dtype":"F8_E4M3"')),
    }[damage]()
    assert damaged != data
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="mixed.safetensors"):
        read_safetensors_as(path, torch.bfloat16)


def test_hubert_loads_straight_into_bfloat16(tmp_path: Path) -> None:
    """Same weights as loading in float32 and converting, the folded positional conv included."""
    pt = GOLDEN / "hubert_tiny_fairseq.pt"
    cfg, _ = load_hubert_weights(pt, tmp_path)  # writes the cache
    _, state = load_hubert_weights(pt, tmp_path, torch.bfloat16)
    assert state[POS_CONV_G].dtype == torch.float32  # folded by build_hubert, then converted
    assert {v.dtype for k, v in state.items() if not k.startswith("encoder.pos_conv_embed")} == {torch.bfloat16}
    loader = HubertLoader(pt, {}, GOLDEN / "analyzer_tiny.safetensors", cfg.embed_dim, cache_dir=tmp_path)
    direct = loader(torch.bfloat16).state_dict()
    converted = {k: v.to(torch.bfloat16) for k, v in loader().state_dict().items()}
    assert {v.dtype for v in direct.values()} == {torch.bfloat16}
    assert set(direct) == set(converted)
    assert all(torch.equal(direct[k], converted[k]) for k in direct)


def test_eager_hubert_loads_in_the_requested_dtype(tmp_path: Path) -> None:
    from socodec.loading.modules import load_modules

    modules = load_modules(
        GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
        GOLDEN / "analyzer_tiny.json", GOLDEN / "vocoder_tiny.json", cache_dir=tmp_path,
        lazy_hubert=False, hubert_dtype=torch.bfloat16,
    )
    assert {p.dtype for p in modules.hubert.parameters()} == {torch.bfloat16}
