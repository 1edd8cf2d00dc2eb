"""HuBERT weights: fairseq names -> the network's names, strict checks, and the conversion cache.

* :func:`fairseq_to_hf` — fairseq state-dict names -> :class:`~socodec.nn.hubert.HubertFeatures`
  names (those of ``transformers``' ``HubertModel``), strictly checked. Also used on an analyzer
  file's ``ssl_extractor.model.*`` keys once the prefix is stripped.
* :func:`load_hubert_weights` — a ``.pt`` -> (config, state dict), converted once to a
  memory-mapped safetensors cache; :func:`build_hubert` — strict load into ``HubertFeatures``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from socodec.config import HubertConfig
from socodec.errors import CheckpointError, SoCodecError
from socodec.fileio import atomic_path
from socodec.loading.checkpoints import load_strict, read_safetensors_as
from socodec.loading.fairseq import read_fairseq_checkpoint
from socodec.nn.hubert import POS_CONV, HubertFeatures

logger = logging.getLogger(__name__)

#: fairseq keys that exist in the checkpoint but are not used at inference.
IGNORED_FAIRSEQ_KEYS = ("mask_emb", "label_embs_concat")
IGNORED_FAIRSEQ_PREFIXES = ("final_proj.",)
CACHE_FORMAT = "socodec-hubert-hf-v1"
_SIGNATURE_BYTES = 1 << 20
#: the positional conv's weight-norm factors in the cache (HF names): g [1, 1, K] and v [E, E/G, K]
POS_CONV_G = f"{POS_CONV}.parametrizations.weight.original0"
POS_CONV_V = f"{POS_CONV}.parametrizations.weight.original1"


def is_ignored_fairseq_key(key: str) -> bool:
    """True for training-only fairseq keys (``mask_emb``, ``label_embs_concat``, ``final_proj.*``)."""
    return key in IGNORED_FAIRSEQ_KEYS or key.startswith(IGNORED_FAIRSEQ_PREFIXES)


def fairseq_layout(cfg: HubertConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every fairseq key inference needs → (``HubertModel`` key, shape), computed from ``cfg``."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    in_dim = 1
    for i, (dim, kernel, _) in enumerate(cfg.conv_layers):
        src, dst = f"feature_extractor.conv_layers.{i}", f"feature_extractor.conv_layers.{i}"
        out[f"{src}.0.weight"] = (f"{dst}.conv.weight", (dim, in_dim, kernel))
        if cfg.conv_bias:
            out[f"{src}.0.bias"] = (f"{dst}.conv.bias", (dim,))
        for p in ("weight", "bias"):
            out[f"{src}.2.1.{p}"] = (f"{dst}.layer_norm.{p}", (dim,))
        in_dim = dim
    c, e, f = cfg.extractor_dim, cfg.embed_dim, cfg.ffn_dim
    for p in ("weight", "bias"):
        out[f"layer_norm.{p}"] = (f"feature_projection.layer_norm.{p}", (c,))
    out["post_extract_proj.weight"] = ("feature_projection.projection.weight", (e, c))
    out["post_extract_proj.bias"] = ("feature_projection.projection.bias", (e,))
    out["encoder.pos_conv.0.weight_g"] = (POS_CONV_G, (1, 1, cfg.conv_pos))
    out["encoder.pos_conv.0.weight_v"] = (POS_CONV_V, (e, e // cfg.conv_pos_groups, cfg.conv_pos))
    out["encoder.pos_conv.0.bias"] = (f"{POS_CONV}.bias", (e,))
    for n in range(cfg.num_layers):
        src, dst = f"encoder.layers.{n}", f"encoder.layers.{n}"
        for p in ("weight", "bias"):
            for proj in ("q", "k", "v", "out"):
                shape = (e, e) if p == "weight" else (e,)
                out[f"{src}.self_attn.{proj}_proj.{p}"] = (f"{dst}.attention.{proj}_proj.{p}", shape)
            out[f"{src}.self_attn_layer_norm.{p}"] = (f"{dst}.layer_norm.{p}", (e,))
            out[f"{src}.fc1.{p}"] = (f"{dst}.feed_forward.intermediate_dense.{p}", (f, e) if p == "weight" else (f,))
            out[f"{src}.fc2.{p}"] = (f"{dst}.feed_forward.output_dense.{p}", (e, f) if p == "weight" else (e,))
            out[f"{src}.final_layer_norm.{p}"] = (f"{dst}.final_layer_norm.{p}", (e,))
    for p in ("weight", "bias"):
        out[f"encoder.layer_norm.{p}"] = (f"encoder.layer_norm.{p}", (e,))
    return out


def fairseq_to_hf(
    state: Mapping[str, Tensor], cfg: HubertConfig, *, source: str | Path = "<state dict>"
) -> dict[str, Tensor]:
    """Rename a fairseq HuBERT state dict to HF names, checking every key and shape.

    ``mask_emb``, ``label_embs_concat`` and ``final_proj.*`` are ignored. Without ``post_extract_proj``
    (fairseq omits it when the extractor and model widths are equal) an identity projection is used.

    Raises:
        CheckpointError: naming ``source``, the key and the shapes, for a missing, unknown or
            wrongly shaped key.
    """
    layout = fairseq_layout(cfg)
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if is_ignored_fairseq_key(key):
            continue
        if key not in layout:
            raise CheckpointError(f"{source}: unexpected HuBERT key '{key}' (is this checkpoint for another model?)")
        hf_key, shape = layout[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{source}: HuBERT key '{key}' has shape {list(tensor.shape)}, expected {list(shape)} "
                "(checkpoint and config describe different model sizes?)"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{source}: HuBERT key '{key}' has dtype {tensor.dtype}, expected floating point")
        out[hf_key] = tensor
    proj = ("post_extract_proj.weight", "post_extract_proj.bias")
    if cfg.extractor_dim == cfg.embed_dim and not any(k in state for k in proj):
        ref = next(iter(out.values()), torch.empty(0))
        eye = torch.eye(cfg.embed_dim, dtype=ref.dtype, device=ref.device)
        out[layout[proj[0]][0]] = eye
        out[layout[proj[1]][0]] = torch.zeros(cfg.embed_dim, dtype=ref.dtype, device=ref.device)
    missing = [k for k, (hf_key, _) in layout.items() if hf_key not in out]
    if missing:
        raise CheckpointError(
            f"{source}: missing HuBERT key '{missing[0]}' (expected shape {list(layout[missing[0]][1])})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return out


def build_hubert(
    cfg: HubertConfig, state: Mapping[str, Tensor], source: str | Path, dtype: torch.dtype = torch.float32
) -> HubertFeatures:
    """A :class:`HubertFeatures` in eval mode holding ``state`` (HF names) in ``dtype``, strictly checked.

    The module is built on the meta device and the tensors are assigned (no random init, no copy
    when they already have ``dtype``). The positional conv's weight norm (g, v) is folded into one
    weight here, once (in the precision of g and v): the numbers the parametrisation would compute
    on every call.
    """
    with torch.device("meta"):
        module = HubertFeatures(cfg).to(dtype)
    tensors = {k: v.to("cpu") for k, v in state.items()}
    if POS_CONV_G in tensors and POS_CONV_V in tensors:
        g, v = tensors.pop(POS_CONV_G), tensors.pop(POS_CONV_V)
        tensors[f"{POS_CONV}.weight"] = torch._weight_norm(v, g, 2)
    load_strict(module.model, tensors, source=source)
    return module.eval().requires_grad_(False)


def default_cache_dir() -> Path:
    """``$SOCODEC_CACHE_DIR``, else ``~/.cache/socodec``."""
    env = os.environ.get("SOCODEC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "socodec"


def source_signature(path: Path) -> dict[str, str]:
    """Size, mtime and a SHA-256 of the first and last MiB of ``path``: a change invalidates the cache."""
    st = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(_SIGNATURE_BYTES))
        f.seek(max(_SIGNATURE_BYTES, st.st_size - _SIGNATURE_BYTES))
        digest.update(f.read())
    return {
        "source_size": str(st.st_size),
        "source_mtime_ns": str(st.st_mtime_ns),
        "source_head_tail_sha256": digest.hexdigest(),
    }


def cache_path(pt_path: Path, cache_dir: Path) -> Path:
    """The cache file for ``pt_path``: named after its stem and a hash of its absolute path."""
    tag = hashlib.sha256(str(pt_path.resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"{pt_path.stem}.{tag}.hf.safetensors"


def load_hubert_weights(
    pt_path: str | Path, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[HubertConfig, dict[str, Tensor]]:
    """HuBERT config and state dict (HF names) from a fairseq ``.pt``, via a safetensors cache.

    The first call converts the checkpoint and writes ``cache_dir`` (default :func:`default_cache_dir`)
    atomically; later calls memory-map the cached file as long as the source's size, mtime and
    head/tail hash are unchanged. With another ``dtype`` than float32 the cached tensors are read
    one by one and converted instead (the positional conv's weight-norm pair stays float32 for
    :func:`build_hubert` to fold), so that float32 and converted weights are never all in memory
    at once. An unwritable cache directory only costs a warning.
    """
    p = Path(pt_path)
    if not p.is_file():
        raise CheckpointError(f"{p}: HuBERT checkpoint not found" if not p.exists() else f"{p}: not a file")
    signature = source_signature(p)
    cache = cache_path(p, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    cached = _read_cache(cache, signature, dtype)
    if cached is not None:
        logger.debug("HuBERT weights from cache %s", cache)
        return cached
    with _conversion_lock(cache):  # one process converts; the others wait here, then read its cache
        cached = _read_cache(cache, signature, dtype, quiet=True)
        if cached is not None:
            logger.debug("HuBERT weights from cache %s (converted by another process)", cache)
            return cached
        state, cfg = read_fairseq_checkpoint(p)  # memory-mapped from the .pt
        hf_state = fairseq_to_hf(state, cfg, source=p)
        _write_cache(cache, cfg, hf_state, {**signature, "source": str(p.resolve())})
    cached = _read_cache(cache, signature, dtype)
    if cached is not None:
        return cached
    # No cache: copy out of the .pt's memory map, so that rewriting the .pt later cannot
    # pull pages from under live tensors (SIGBUS). The cache file is only ever replaced atomically.
    return cfg, {k: v.clone() for k, v in hf_state.items()}


def cache_lock_path(cache: Path) -> Path:
    """The lock file guarding the conversion into ``cache`` (``<cache>.lock``)."""
    return cache.with_name(cache.name + ".lock")


@contextmanager
def _conversion_lock(cache: Path) -> Iterator[None]:
    """Hold :func:`cache_lock_path` (waiting for another process that converts); no lock where none can be made."""
    from filelock import FileLock, Timeout

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache_lock_path(cache)), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("another process is converting HuBERT into %s: waiting for it", cache)
            lock.acquire()
    except OSError as exc:  # a read-only cache folder: convert without the cache (it only warns)
        logger.debug("no lock for the HuBERT cache %s (%s)", cache, exc)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _read_cache(
    cache: Path, signature: Mapping[str, str], dtype: torch.dtype, quiet: bool = False
) -> tuple[HubertConfig, dict[str, Tensor]] | None:
    if not cache.is_file():
        return None
    try:
        with safe_open(str(cache), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT or any(meta.get(k) != v for k, v in signature.items()):
            if not quiet:
                logger.info("HuBERT cache %s is stale: converting the checkpoint again", cache)
            return None
        cfg = _config_from_json(meta["config"])
        if dtype != torch.float32:
            return cfg, read_safetensors_as(cache, dtype, keep=(POS_CONV_G, POS_CONV_V))
        with torch.inference_mode(False):  # these become parameters: never inference tensors
            return cfg, load_file(str(cache), device="cpu")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, SoCodecError) as exc:
        logger.warning("HuBERT cache %s is unreadable (%s): converting the checkpoint again", cache, exc)
        return None


def _write_cache(cache: Path, cfg: HubertConfig, state: Mapping[str, Tensor], meta: Mapping[str, str]) -> None:
    """Write the converted weights atomically; failing to (read-only folder, full disk) only warns."""
    metadata = {**meta, "format": CACHE_FORMAT, "config": json.dumps(dataclasses.asdict(cfg))}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        logger.info("cached converted HuBERT weights at %s", cache)
    except (OSError, SafetensorError, RuntimeError) as exc:
        logger.warning("cannot write the HuBERT cache %s (%s): continuing without it", cache, exc)


def _config_from_json(text: str) -> HubertConfig:
    data = json.loads(text)
    data["conv_layers"] = tuple(tuple(int(v) for v in layer) for layer in data["conv_layers"])
    cfg = HubertConfig(**data)
    cfg.validate()
    return cfg
