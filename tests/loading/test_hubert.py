"""HuBERT: safe fairseq checkpoint reading, key mapping, feature parity with the golden data, caching."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import types
import typing
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

from conftest import GOLDEN, MANIFESTS, REPO, assert_close_golden
from socodec.config import HubertConfig
from socodec.errors import CheckpointError
from socodec.loading.fairseq import load_fairseq_pickle, read_fairseq_checkpoint
from socodec.loading import hubert as hubert_mod
from socodec.loading.hubert import (
    POS_CONV_G,
    POS_CONV_V,
    build_hubert,
    fairseq_to_hf,
    is_ignored_fairseq_key,
    load_hubert_weights,
)
from socodec.nn.hubert import HubertFeatures

HUBERT_PT = GOLDEN / "hubert_tiny_fairseq.pt"


@pytest.fixture(scope="module")
def hubert(tmp_path_factory: pytest.TempPathFactory) -> HubertFeatures:
    """The tiny golden HuBERT, loaded the way real checkpoints are (through the cache)."""
    cfg, state = load_hubert_weights(HUBERT_PT, cache_dir=tmp_path_factory.mktemp("hubert_cache"))
    return build_hubert(cfg, state, HUBERT_PT)


@pytest.fixture(scope="module")
def golden_fairseq() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The golden checkpoint's fairseq state dict and its plain ``cfg`` dict."""
    ckpt = load_fairseq_pickle(HUBERT_PT)
    return dict(ckpt["model"]), ckpt["cfg"]


# --- (a), (b) parity ---------------------------------------------------------------------------------


def test_parity_with_golden(hubert: HubertFeatures, golden_case: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        feats = hubert(golden_case["padded_wav"][None])[0]
    err = assert_close_golden(feats, golden_case["hubert_features"])
    logging.getLogger(__name__).info("HuBERT %s: max abs error %.3e", golden_case["name"], err)


def test_batch_equals_single_items(hubert: HubertFeatures) -> None:
    long = load_file(str(GOLDEN / "golden_ground_truth.safetensors"))["padded_wav"]
    short = load_file(str(GOLDEN / "golden_chirp.safetensors"))["padded_wav"]
    batch = torch.zeros(2, long.numel())
    batch[0], batch[1, : short.numel()] = long, short
    batch[1, short.numel():] = 0.5  # beyond the item's length: must be ignored
    with torch.inference_mode():
        out = hubert(batch, torch.tensor([long.numel(), short.numel()]))
        single_long, single_short = hubert(long[None])[0], hubert(short[None])[0]
    n_short = short.numel() // 320
    assert out.shape == (2, long.numel() // 320, hubert.cfg.embed_dim)
    assert (out[0] - single_long).abs().max() <= 1e-5
    assert (out[1, :n_short] - single_short).abs().max() <= 1e-5
    assert out[1, n_short:].abs().max() == 0


def test_rejects_bad_lengths(hubert: HubertFeatures) -> None:
    with pytest.raises(ValueError):
        hubert(torch.zeros(1, 0))
    with pytest.raises(ValueError):
        hubert(torch.zeros(2, 1920), torch.tensor([1920, 3840]))
    with pytest.raises(ValueError):
        hubert(torch.zeros(2, 1920), torch.tensor([0, 1920]))
    # any positive length: ceil(L / 320) frames (the published command line's L = n + 1919)
    assert hubert(torch.zeros(1, 1000)).shape[1] == 4


# --- (c) no fairseq ----------------------------------------------------------------------------------


def test_loads_without_fairseq(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "fairseq"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('fairseq must not be imported')\n")
    code = (
        "import json, sys\n"
        "from socodec.loading.fairseq import read_fairseq_checkpoint\n"
        f"state, cfg = read_fairseq_checkpoint({str(HUBERT_PT)!r})\n"
        "loaded = 'fairseq' in sys.modules\n"
        "try:\n    import fairseq\n    shim = False\nexcept ImportError:\n    shim = True\n"
        "print(json.dumps({'n': len(state), 'dim': cfg.embed_dim, 'loaded': loaded, 'shim': shim}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"n": 66, "dim": 64, "loaded": False, "shim": True}


# --- (d) malicious pickles ---------------------------------------------------------------------------


class _Payload:
    """Unpickles as ``func(*args)``."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    """Keyed by the global the pickle names (protocol 2 writes subprocess.call as 'commands.call')."""
    return {
        "posix.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "commands.call": _Payload(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("global_name", ["posix.system", "builtins.eval", "commands.call"])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw_pickle"])
def test_malicious_pickle_is_refused_not_run(tmp_path: Path, global_name: str, fmt: str) -> None:
    marker = tmp_path / "pwned"
    obj = {"model": {"w": torch.zeros(2)}, "cfg": {"model": _payloads(marker)[global_name]}}
    path = tmp_path / f"evil_{fmt}.pt"
    if fmt == "raw_pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    with pytest.raises(CheckpointError) as info:
        read_fairseq_checkpoint(path)
    assert str(path) in str(info.value) and global_name in str(info.value)
    assert not marker.exists()


# --- (e) corrupt files -------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    data = HUBERT_PT.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 64,
        "empty": b"",
        "text": b"this is not a checkpoint\n",
    }
    out = {}
    for name, payload in files.items():
        out[name] = tmp_path / f"{name}.pt"
        out[name].write_bytes(payload)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save({"cfg": {"model": {}}}, tmp_path / "no_model.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": None, "args": None}, tmp_path / "no_cfg.pt")
    out.update({n: tmp_path / f"{n}.pt" for n in ("list", "no_model", "no_cfg")})
    out["missing"] = tmp_path / "does_not_exist.pt"
    return out


def test_corrupt_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            read_fairseq_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (name, message)
    with pytest.raises(CheckpointError, match="'model'"):
        read_fairseq_checkpoint(tmp_path / "no_model.pt")
    with pytest.raises(CheckpointError, match="'cfg' or 'args'"):
        read_fairseq_checkpoint(tmp_path / "no_cfg.pt")


# --- other config encodings: legacy args, omegaconf DictConfig, numpy scalars, enums ------------------


def test_legacy_args_checkpoint(tmp_path: Path, golden_fairseq: tuple[dict, dict]) -> None:
    state, cfg = golden_fairseq
    path = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(**cfg["model"], normalize=True), "cfg": None, "model": state}, path)
    _, hcfg = read_fairseq_checkpoint(path)
    assert hcfg == read_fairseq_checkpoint(HUBERT_PT)[1]


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **members: Any) -> None:
    """Register module ``name`` (and missing parents) in sys.modules holding ``members`` (for pickling)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod_name = ".".join(parts[:i])
        if mod_name not in sys.modules:
            monkeypatch.setitem(sys.modules, mod_name, types.ModuleType(mod_name))
    for attr, obj in members.items():
        obj.__module__, obj.__qualname__ = name, attr
        monkeypatch.setattr(sys.modules[name], attr, obj, raising=False)


def test_omegaconf_cfg_with_numpy_and_enum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, golden_fairseq) -> None:
    """A cfg pickled as omegaconf DictConfig (as older fairseq saved it) loads through inert stubs."""
    import enum

    import numpy as np

    @dataclass
    class ContainerMetadata:
        ref_type: Any = Any
        object_type: Any = dict
        optional: bool = True
        key: Any = None
        flags: dict = field(default_factory=dict)
        resolver_cache: Any = field(default_factory=lambda: defaultdict(dict))

    @dataclass
    class Metadata:
        ref_type: Any = typing.Optional[int]
        object_type: Any = None
        optional: bool = True
        key: Any = None

    class AnyNode:
        def __init__(self, value: Any, parent: Any, key: str) -> None:
            self._val, self._parent, self._metadata, self._flags_cache = value, parent, Metadata(key=key), None

        def __getstate__(self) -> dict:
            return {k: v for k, v in self.__dict__.items() if k != "_flags_cache"}

    class DictConfig:
        def __init__(self, content: dict, parent: Any = None) -> None:
            self._metadata, self._parent, self._flags_cache = ContainerMetadata(), parent, None
            self._content = {k: DictConfig(v, self) if isinstance(v, dict) else AnyNode(v, self, k)
                             for k, v in content.items()}

        __getstate__ = AnyNode.__getstate__

    class Choices(str, enum.Enum):
        layer_norm = "layer_norm"

    _fake_module(monkeypatch, "omegaconf.base", ContainerMetadata=ContainerMetadata, Metadata=Metadata)
    _fake_module(monkeypatch, "omegaconf.nodes", AnyNode=AnyNode)
    _fake_module(monkeypatch, "omegaconf.dictconfig", DictConfig=DictConfig)
    _fake_module(monkeypatch, "fairseq.dataclass.constants", Choices=Choices)

    state, cfg = golden_fairseq
    model_cfg = {**cfg["model"], "extractor_mode": Choices.layer_norm, "label_rate": "${task.label_rate}"}
    model_cfg["encoder_layers"] = np.int64(model_cfg["encoder_layers"])
    task_cfg = {**cfg["task"], "label_rate": np.float64(50.0)}
    path = tmp_path / "omegaconf.pt"
    torch.save({"cfg": DictConfig({"model": model_cfg, "task": task_cfg}), "model": state}, path)
    monkeypatch.undo()  # the reader must not need the fake modules

    before = set(sys.modules)
    _, hcfg = read_fairseq_checkpoint(path)
    assert hcfg == read_fairseq_checkpoint(HUBERT_PT)[1]
    assert not {m.split(".")[0] for m in set(sys.modules) - before} & {"omegaconf", "fairseq"}


# --- (f) cache ---------------------------------------------------------------------------------------


def test_cache_roundtrip_and_invalidation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, golden_fairseq, caplog: pytest.LogCaptureFixture
) -> None:
    src, cache_dir = tmp_path / "hubert.pt", tmp_path / "cache"
    shutil.copyfile(HUBERT_PT, src)
    cfg1, state1 = load_hubert_weights(src, cache_dir)
    assert len(list(cache_dir.glob("*.safetensors"))) == 1 and not list(cache_dir.glob("*.tmp"))

    with monkeypatch.context() as m:
        m.setattr(hubert_mod, "read_fairseq_checkpoint", lambda *a: pytest.fail("cache not used"))
        cfg2, state2 = load_hubert_weights(src, cache_dir)
    assert cfg2 == cfg1 and state2.keys() == state1.keys()
    assert all(torch.equal(state1[k], state2[k]) for k in state1)

    fs_state, fs_cfg = golden_fairseq
    changed = {**fs_state, "encoder.layer_norm.bias": fs_state["encoder.layer_norm.bias"] + 1.0}
    torch.save({"model": changed, "cfg": fs_cfg}, src)
    _, state3 = load_hubert_weights(src, cache_dir)
    assert torch.equal(state3["encoder.layer_norm.bias"], state1["encoder.layer_norm.bias"] + 1.0)

    blocked = tmp_path / "a_file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="socodec"):
        cfg4, state4 = load_hubert_weights(src, blocked / "cache")
    assert cfg4 == cfg1 and torch.equal(state4["encoder.layer_norm.bias"], state3["encoder.layer_norm.bias"])
    assert any("cache" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --- (g) real-size key mapping, strictness ------------------------------------------------------------


def test_manifest_maps_onto_real_size_model() -> None:
    manifest = json.loads((MANIFESTS / "manifest_hubert_large_fairseq.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    assert {k for k in manifest if is_ignored_fairseq_key(k)} == {
        "mask_emb", "label_embs_concat", "final_proj.weight", "final_proj.bias"
    }
    hf_state = fairseq_to_hf(state, HubertConfig(), source="manifest")
    with torch.device("meta"):
        model_state = HubertFeatures(HubertConfig()).model.state_dict()
    # the positional conv's weight norm (g, v) is folded into one weight at load
    g, v = hf_state.pop(POS_CONV_G), hf_state.pop(POS_CONV_V)
    hf_state["encoder.pos_conv_embed.conv.weight"] = torch._weight_norm(v, g, 2)
    assert hf_state.keys() == model_state.keys()
    for key, tensor in model_state.items():
        assert hf_state[key].shape == tensor.shape, key
    assert len(hf_state) == len(manifest) - 4 - 1


def test_key_mapping_is_strict(golden_fairseq) -> None:
    state, _ = golden_fairseq
    cfg = read_fairseq_checkpoint(HUBERT_PT)[1]
    key = "encoder.layers.1.fc1.weight"
    with pytest.raises(CheckpointError, match=f"src.pt.*missing HuBERT key '{key}'"):
        fairseq_to_hf({k: v for k, v in state.items() if k != key}, cfg, source="src.pt")
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \[128, 63\], expected \[128, 64\]"):
        fairseq_to_hf({**state, key: torch.zeros(128, 63)}, cfg, source="src.pt")
    with pytest.raises(CheckpointError, match="unexpected HuBERT key 'encoder.layers.2.fc1.weight'"):
        fairseq_to_hf({**state, "encoder.layers.2.fc1.weight": torch.zeros(1)}, cfg, source="src.pt")
    hf_state = fairseq_to_hf(state, cfg)
    with pytest.raises(CheckpointError, match=r"x: missing key 'encoder\.layer_norm\."):
        build_hubert(cfg, {k: v for k, v in hf_state.items() if "encoder.layer_norm" not in k}, "x")


def test_a_cold_cache_is_converted_once_others_wait_and_reuse_it(tmp_path: Path) -> None:
    """Another process holds the conversion lock: this load waits, then reads that process's cache."""
    import shutil
    import threading

    from filelock import FileLock

    from socodec.loading.hubert import cache_lock_path, cache_path, load_hubert_weights

    pt = GOLDEN / "hubert_tiny_fairseq.pt"
    load_hubert_weights(pt, cache_dir=tmp_path / "done")  # what the other process will have written
    cache = cache_path(pt, tmp_path / "cold")
    cache.parent.mkdir()
    converted: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: converted.append(record.getMessage())  # type: ignore[method-assign]
    hub_log = logging.getLogger("socodec.loading.hubert")
    hub_log.addHandler(handler)
    level = hub_log.level
    hub_log.setLevel(logging.DEBUG)
    try:
        with FileLock(str(cache_lock_path(cache))):
            waiter = threading.Thread(target=load_hubert_weights, args=(pt,), kwargs={"cache_dir": tmp_path / "cold"})
            waiter.start()
            waiter.join(1.0)
            assert waiter.is_alive() and not cache.exists()  # it waits instead of converting too
            shutil.copy(cache_path(pt, tmp_path / "done"), cache)
        waiter.join(60)
    finally:
        hub_log.removeHandler(handler)
        hub_log.setLevel(level)
    assert not waiter.is_alive()
    assert any("waiting" in m for m in converted) and not any("cached converted" in m for m in converted), converted
