"""HuBERT weights: fairseq names -> the network's names, strict checks, and the conversion cache.

* :func:`fairseq_to_hf` — fairseq state-dict names -> :class:`~socodec.nn.hubert.HubertFeatures`
  names (those of ``transformers``' ``HubertModel``), strictly checked. Also used on an analyzer
  file's ``ssl_extractor.model.*`` keys once the prefix is stripped.
* :func:`load_hubert_weights` — a ``.pt`` -> (config, state dict), converted once to a
  memory-mapped safetensors cache; :func:`build_hubert` — strict load into ``HubertFeatures``.

**Reading the fairseq checkpoint** (:func:`read_fairseq_checkpoint` and friends), without fairseq and
without running pickled code.

A fairseq checkpoint is a torch pickle holding ``model`` (the state dict), ``cfg``
(plain dicts or an omegaconf ``DictConfig``; ``args``, an ``argparse.Namespace``,
in old files) and training state made of pickled fairseq objects
(``Dictionary``, meters, ...). It is loaded with ``torch.load(weights_only=True)``,
which only admits tensors and plain containers, plus a deliberate allowlist:

* every ``fairseq.*`` global, ``omegaconf.*`` container/node type, the
  ``typing`` markers omegaconf metadata refers to and ``argparse.Namespace``
  become inert stub classes (:class:`Stub`): constructing one only records its
  arguments and state, nothing is imported or executed;
* numpy scalars and dtypes are admitted as the real (inert) numpy objects;
  numpy arrays (found in optimizer/metric state) become stubs.

Every other global (``posix.system``, ``builtins.eval``, ``subprocess.*``, ...)
is refused with a :class:`~socodec.errors.CheckpointError` naming the file and
the global, before anything is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, _weights_only_unpickler as _wou

from socodec.config import HubertConfig, default_cache_dir
from socodec.errors import CheckpointError, SoCodecError, one_line
from socodec.fileio import atomic_path
from socodec.loading.checkpoints import load_strict, read_safetensors_as
from socodec.nn.hubert import HubertFeatures, POS_CONV


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


#: Globals mapped to stubs besides every ``fairseq.*`` and ``omegaconf.*`` name.
_STUBBED_NAMES = frozenset(
    {
        "argparse.Namespace",
        "typing.Any",
        "typing.Dict",
        "typing.List",
        "typing.Tuple",
        "typing.Optional",
        "typing.Union",
        "numpy.ndarray",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
    }
)
#: Builtin types admitted as themselves (omegaconf metadata stores them as ``object_type``/``ref_type``).
_BUILTIN_TYPES: dict[str, type] = {
    f"builtins.{t.__name__}": t for t in (dict, list, tuple, str, int, float, bool, bytes, frozenset)
}
_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([\w.]+) ")


class Stub:
    """Inert stand-in for a pickled class or function that is deliberately not imported.

    ``Stub(*args)`` (pickle REDUCE/NEWOBJ) records ``args``; pickle BUILD records
    the state. Subclasses carry the original dotted name in ``stub_name``.
    """

    stub_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        obj = object.__new__(cls)
        obj.__dict__["stub_args"] = args
        obj.__dict__["stub_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: ``__new__`` already recorded the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["stub_state"] = state

    def __repr__(self) -> str:
        return f"<stub {self.stub_name}>"


_STUB_CLASSES: dict[str, type[Stub]] = {}


def stub_class(name: str) -> type[Stub]:
    """The (cached) stub class standing for the dotted global ``name``."""
    if name not in _STUB_CLASSES:
        short = re.sub(r"\W", "_", name.rsplit(".", 1)[-1]) or "Stub"
        _STUB_CLASSES[name] = type(short, (Stub,), {"stub_name": name, "__module__": __name__ + ".stubs"})
    return _STUB_CLASSES[name]


def _empty_dict(*args: Any, **kwargs: Any) -> dict:
    """Stand-in for ``collections.defaultdict``: a plain dict (the factory is dropped)."""
    return {}


def _inert_call(*args: Any, **kwargs: Any) -> Stub:
    """Stand-in for ``operator.getitem`` / ``builtins.type`` (typing annotations in omegaconf metadata)."""
    return stub_class("typing annotation")(*args)


def _numpy_globals(name: str) -> Any | None:
    """The real numpy object for an admitted numpy scalar/dtype global, or None."""
    try:
        import numpy as np
    except ImportError:  # without numpy there are no numpy objects to rebuild: stub them
        return stub_class(name) if name.startswith("numpy.") else None
    if name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        return np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    if name == "numpy.dtype":
        return np.dtype
    if name.startswith("numpy.dtypes."):
        cls = getattr(getattr(np, "dtypes", None), name.split(".", 2)[2], None)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            return cls
    return None


def _numpy_dtype_classes() -> list[tuple[Any, str]]:
    """All ``numpy.dtypes.*DType`` classes: rebuilt dtypes get BUILD-ed with these types."""
    try:
        import numpy as np
    except ImportError:
        return []
    out = []
    for attr in dir(getattr(np, "dtypes", object())):
        cls = getattr(np.dtypes, attr)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out.append((cls, f"numpy.dtypes.{attr}"))
    return out


def resolve_global(name: str) -> Any | None:
    """What the unpickler may bind the global ``name`` to, or None if it must be refused."""
    if name.startswith(("fairseq.", "omegaconf.")) or name in _STUBBED_NAMES:
        return stub_class(name)
    if name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[name]
    if name == "collections.defaultdict":
        return _empty_dict
    if name in ("operator.getitem", "_operator.getitem", "builtins.type"):
        return _inert_call
    if name.startswith("numpy."):
        return _numpy_globals(name)
    return None


def _refuse(path: Path, name: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refusing to load: the pickle references the global '{name}', which is not a tensor, "
        "container or known inert fairseq/omegaconf/numpy type (untrusted or malicious checkpoint?)"
    )


def _scan_globals(path: Path) -> tuple[set[str], bool]:
    """Every pickle global in ``path`` that torch does not allow by default, and whether it is a zip file.

    Zip checkpoints are scanned with ``torch.serialization.get_unsafe_globals_in_checkpoint``;
    legacy (pre-1.6) files are a sequence of pickles, the first four of which are scanned.
    """
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))), True
    except ValueError:
        pass  # not a zip checkpoint: legacy format, a raw pickle, or garbage
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({one_line(exc)})") from None
    allowed = set(_wou._get_allowed_globals())
    found: set[str] = set()
    with path.open("rb") as f:
        data = io.BytesIO(f.read(64 << 20))  # the pickles precede the tensor data
    for _ in range(4):  # magic number, protocol, sys info, the object
        try:
            found |= _wou.get_globals_in_pkl(data)
        except EOFError:
            break
        except (pickle.UnpicklingError, ValueError, IndexError, UnicodeDecodeError) as exc:
            if found - allowed:
                break  # report the unsafe global rather than the parse error
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({one_line(exc)})") from None
    return found - allowed, False


def load_fairseq_pickle(path: str | Path) -> dict[str, Any]:
    """Unpickle a fairseq checkpoint safely (see the module docstring) → its top-level dict.

    Tensors are memory-mapped when the file is in torch's zip format.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found" if not p.exists() else f"{p}: not a file")
    names, is_zip = _scan_globals(p)
    admitted: list[tuple[Any, str]] = []
    for name in sorted(names):
        obj = resolve_global(name)
        if obj is None:
            raise _refuse(p, name)
        admitted.append((obj, name))
    admitted.extend(_numpy_dtype_classes() if any(n.startswith("numpy.") for n in names) else [])
    logger.debug("%s: admitting globals %s", p, sorted(names))
    try:
        with torch.serialization.safe_globals(admitted):
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        match = _GLOBAL_IN_ERROR.search(str(exc))
        if match and resolve_global(match.group(1)) is None:
            raise _refuse(p, match.group(1)) from None
        raise CheckpointError(f"{p}: not a loadable checkpoint ({_unpickling_reason(exc)})") from None
    except Exception as exc:  # torch/zip/pickle raise many types for corrupt or truncated files
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({one_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a fairseq checkpoint (top level is {type(ckpt).__name__}, not a dict)")
    return ckpt


def to_plain(obj: Any, _active: frozenset[int] = frozenset()) -> Any:
    """Convert config objects (omegaconf stubs, Namespace stubs, numpy scalars, enum stubs) to plain Python.

    Dicts, lists and tuples are converted recursively; what cannot be converted is returned as is.
    """
    if id(obj) in _active:
        return None  # a reference cycle (omegaconf parents are never followed, so this is defensive)
    active = _active | {id(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v, active) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, active) for v in obj]
    if isinstance(obj, Stub):
        return _stub_to_plain(obj, active)
    if type(obj).__module__.startswith("numpy") and hasattr(obj, "item"):
        return obj.item()
    return obj


def _stub_to_plain(obj: Stub, active: frozenset[int]) -> Any:
    state = obj.stub_state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = {**state[0], **(state[1] or {})}
    name = obj.stub_name
    if isinstance(state, dict):
        if name.startswith("omegaconf.") and "_content" in state:  # DictConfig / ListConfig
            return to_plain(state["_content"], active)
        if name.startswith("omegaconf.") and "_val" in state:  # value nodes
            return to_plain(state["_val"], active)
        if name == "argparse.Namespace":
            return to_plain(state, active)
        if "_value_" in state:  # an Enum member rebuilt field by field
            return to_plain(state["_value_"], active)
    if state is None and len(obj.stub_args) == 1:  # Enum member: Class(value)
        return to_plain(obj.stub_args[0], active)
    return obj


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def resolve_interpolations(root: dict[str, Any]) -> dict[str, Any]:
    """Replace omegaconf ``${a.b}`` strings (absolute, whole-value) by the value they point to."""

    def lookup(dotted: str, depth: int) -> Any:
        node: Any = root
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return "${" + dotted + "}"
            node = node[part]
        return walk(node, depth + 1)

    def walk(node: Any, depth: int) -> Any:
        if depth > 32:
            return node
        if isinstance(node, dict):
            return {k: walk(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        if isinstance(node, str) and (m := _INTERPOLATION.match(node)):
            return lookup(m.group(1), depth)
        return node

    return walk(root, 0)


def fairseq_config_dicts(ckpt: dict[str, Any], source: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (model, task) config dicts of a loaded checkpoint: from ``cfg``, else from legacy ``args``."""
    cfg = ckpt.get("cfg")
    if cfg is not None:
        plain = to_plain(cfg)
        if not isinstance(plain, dict):
            raise CheckpointError(f"{source}: 'cfg' is a {type(plain).__name__}, expected a dict or DictConfig")
        plain = resolve_interpolations(plain)
        model_cfg, task_cfg = plain.get("model"), plain.get("task")
        if not isinstance(model_cfg, dict):
            raise CheckpointError(f"{source}: checkpoint 'cfg' has no 'model' section")
        return model_cfg, task_cfg if isinstance(task_cfg, dict) else {}
    args = ckpt.get("args")
    if args is not None:
        plain = to_plain(args)
        if not isinstance(plain, dict):
            raise CheckpointError(f"{source}: 'args' is not an argparse.Namespace")
        return plain, plain
    raise CheckpointError(f"{source}: checkpoint has no 'cfg' or 'args' (not a fairseq trainer checkpoint?)")


def read_fairseq_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], HubertConfig]:
    """Read a fairseq HuBERT checkpoint → (state dict with fairseq names, :class:`HubertConfig`).

    The tensors of a zip-format file are memory-mapped from it: do not rewrite the file while they live.

    Raises:
        CheckpointError: missing, corrupt, truncated or unsafe file; no ``model`` or config.
    """
    p = Path(path)
    ckpt = load_fairseq_pickle(p)
    model = ckpt.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{p}: checkpoint has no 'model' state dict (not a fairseq trainer checkpoint?)")
    state: dict[str, Tensor] = {}
    for key, value in model.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{p}: 'model' entry {key!r} is a {type(value).__name__}, expected a tensor")
        state[key] = value
    model_cfg, task_cfg = fairseq_config_dicts(ckpt, p)
    try:
        cfg = HubertConfig.from_fairseq(model_cfg, task_cfg)
    except SoCodecError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    logger.debug("read %s: %d tensors, %s", p, len(state), cfg)
    return state, cfg


def _unpickling_reason(exc: BaseException) -> str:
    """The informative line of torch's long weights-only error message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Trying", "Can only", "Only", "persistent")):
            return ln
    return lines[0] if lines else type(exc).__name__


__all__: list[str] = [
    "Stub",
    "stub_class",
    "resolve_global",
    "load_fairseq_pickle",
    "to_plain",
    "resolve_interpolations",
    "fairseq_config_dicts",
    "read_fairseq_checkpoint",
]
