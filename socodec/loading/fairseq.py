"""Read a fairseq HuBERT trainer checkpoint (``.pt``) without fairseq and without running pickled code.

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

import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch import _weights_only_unpickler as _wou  # noqa: PLC2701 - torch's own allow-list hook

from socodec.config import HubertConfig
from socodec.errors import CheckpointError, SoCodecError, one_line

logger = logging.getLogger(__name__)

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
