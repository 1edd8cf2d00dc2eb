"""Small native kernels for the codec's hot loops on CPU, compiled on this machine.

- ``socodec/nn/activation.c``: the vocoder's anti-aliased SnakeBeta
  (:class:`socodec.nn.vocoder.Activation1d`), cheap in arithmetic but, as PyTorch operators,
  several passes over a signal at twice the layer's rate (about a quarter of the synthesis time);
  here one pass in which nothing of the twice-rate signal goes to memory.
- ``socodec/nn/transformer.c``: HuBERT's attention (flash-style, on AVX-512 CPUs), its
  feed-forward bias + GELU in place, and its front end's LayerNorm + GELU in one pass
  (:class:`socodec.nn.hubert.HubertNetwork`).

Built with OpenMP (where PyTorch runs on an OpenMP runtime), both run on PyTorch's own threads;
without, they start POSIX threads of their own and the attention is left to PyTorch.
:mod:`socodec.loading.modules` hands the library to the vocoder
(:meth:`socodec.nn.vocoder.Vocoder.use_native`) and to HuBERT
(:meth:`socodec.nn.hubert.HubertNetwork.use_native`), which check it against their PyTorch
paths first.

It is compiled once per machine with the C compiler found (``$CC``, else ``cc``, ``gcc`` or
``clang``), for this CPU (``-march=native`` where the compiler takes it), into
``<cache dir>/native/`` (:func:`socodec.config.default_cache_dir`): a file named after a hash
of the sources, the compiler, the flags and the CPU, so that a cache folder shared by machines
of different kinds keeps one build per kind. Building takes about a second and happens
when the models are loaded, not in the first call.

Without a compiler, on other systems than Linux and macOS, when building or loading fails,
or with ``SOCODEC_NATIVE=0`` in the environment, nothing changes but the speed: the PyTorch
paths run (the reason is logged once at DEBUG level, ``-v`` on the command line, and
:func:`native_status` gives it). A built library is loaded only when this
user owns it and it is not writable by others; a damaged one is rebuilt.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from socodec.config import default_cache_dir

__all__ = ["NATIVE_ENV", "NativeKernel", "native_kernel", "native_status"]

log = logging.getLogger(__name__)

NATIVE_ENV = "SOCODEC_NATIVE"
SOURCES = tuple(Path(str(importlib.resources.files("socodec.nn").joinpath(name)))
                for name in ("activation.c", "transformer.c"))
#: what the sources include (part of the build's hash)
HEADERS = (Path(str(importlib.resources.files("socodec.nn").joinpath("parallel.h"))),)
_ABI = 2
_BUILD_TIMEOUT_S = 120
#: tried in order (those with OpenMP only where PyTorch runs on an OpenMP runtime); the first set
#: the compiler accepts is used
_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"),
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native", "-mprefer-vector-width=512"),
    ("-O3", "-march=native"),
    ("-O3",),
)
_COMMON_FLAGS = ("-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared", "-pthread")


class NativeKernel:
    """The loaded library: :meth:`activation` (a :class:`socodec.nn.vocoder.NativeActivation`);
    :meth:`attention`, :meth:`bias_gelu_` and :meth:`layer_norm_gelu` (a
    :class:`socodec.nn.hubert.NativeTransformer`). Each releases the interpreter lock while it runs."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.openmp = bool(library.socodec_activation_openmp())
        #: whether :meth:`attention` runs here (AVX-512 and OpenMP); elsewhere it returns None
        self.has_attention = bool(library.socodec_attention_supported())
        ptr, i64, f32, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        self._activation = _bind(library.socodec_activation, [ptr] * 3 + [i64] * 3 + [c_int], c_int)
        self._attention = _bind(library.socodec_attention, [ptr] * 5 + [i64] * 9 + [f32, c_int], c_int)
        self._bias_gelu = _bind(library.socodec_bias_gelu, [ptr, ptr, i64, i64, c_int], None)
        self._layer_norm_gelu = _bind(library.socodec_layer_norm_gelu, [ptr] * 4 + [i64, i64, f32, c_int], None)

    def activation(self, x: Tensor, weights: Tensor) -> Tensor | None:
        """Channels-last float32 ``x`` ``[B, C, 1, T]`` (CPU) with ``weights`` ``[29, C]`` -> ``[B, C, 1, T]``.

        None when ``x`` is not laid out so (the caller then takes the PyTorch path) or scratch
        memory could not be had.
        """
        b, c, h, t = x.shape
        if not (x.dim() == 4 and _dense(x, torch.channels_last) and h == 1 and weights.shape == (29, c)
                and _dense(weights)):
            return None
        y = torch.empty_like(x, memory_format=torch.channels_last)
        status = self._activation(x.data_ptr(), y.data_ptr(), weights.data_ptr(), b, t, c, torch.get_num_threads())
        return y if status == 0 else None

    def attention(self, q: Tensor, k: Tensor, v: Tensor, kv_len: Tensor) -> Tensor | None:
        """Softmax attention, ``q`` ``[B, Tq, H·D]`` (rows of H heads), ``k`` and ``v`` ``[B, H, Tk, D]``
        contiguous, item b attending to its first ``kv_len[b]`` keys (1 to Tk) -> ``[B, Tq, H·D]``.

        Scaled by ``1/sqrt(D)``; CPU float32 with D a multiple of 16 up to 64. None where it does not
        run (no AVX-512 or OpenMP, another layout, no scratch memory): the caller then takes PyTorch's.
        Raises ValueError for lengths outside 1..Tk.
        """
        batch, heads, keys, width = k.shape
        lengths = kv_len.to(device="cpu", dtype=torch.int64).contiguous()
        if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > keys).any()):
            raise ValueError(f"kv_len must be {batch} lengths in 1..{keys}, got {kv_len.tolist()}")
        if (not self.has_attention or width == 0 or width % 16 or width > 64 or q.dim() != 3
                or q.shape[0] != batch or q.shape[2] != heads * width or v.shape != k.shape or q.stride(2) != 1
                or not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (q, k, v))
                or not (k.is_contiguous() and v.is_contiguous()) or q.shape[1] == 0):
            return None
        out = q.new_empty(q.shape)
        status = self._attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lengths.data_ptr(),
                                 batch, heads, q.shape[1], keys, width, q.stride(0), q.stride(1),
                                 out.stride(0), out.stride(1), width ** -0.5, torch.get_num_threads())
        return out if status == 0 else None

    def bias_gelu_(self, x: Tensor, bias: Tensor) -> bool:
        """``x <- GELU(x + bias)`` in place for a contiguous CPU float32 ``x`` ``[..., C]`` and ``bias``
        ``[C]``; False (``x`` untouched) where it does not apply."""
        if not (_dense(x) and _dense(bias) and bias.shape == x.shape[-1:]):
            return False
        self._bias_gelu(x.data_ptr(), bias.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], torch.get_num_threads())
        return True

    def layer_norm_gelu(self, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor | None:
        """``GELU(LayerNorm(x))`` over the last axis of a contiguous CPU float32 ``x`` ``[..., C]``,
        with ``weight`` and ``bias`` ``[C]``; None where it does not apply."""
        if not (_dense(x) and _dense(weight) and _dense(bias) and weight.shape == bias.shape == x.shape[-1:]):
            return None
        y = torch.empty_like(x)
        self._layer_norm_gelu(x.data_ptr(), y.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                              x.numel() // x.shape[-1], x.shape[-1], eps, torch.get_num_threads())
        return y


def _bind(function: ctypes._CFuncPtr, argtypes: list[type], restype: type | None) -> ctypes._CFuncPtr:
    function.argtypes = argtypes
    function.restype = restype
    return function


def _dense(t: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> bool:
    """A non-empty CPU float32 tensor laid out in ``memory_format``: what the kernels read."""
    return (t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() >= 1 and t.numel() > 0
            and t.is_contiguous(memory_format=memory_format))


def native_status() -> str:
    """One line: the library in use, or why the PyTorch path runs."""
    kernel, reason = _load()
    if kernel is None:
        return f"native kernels off: {reason}"
    attention = "native attention" if kernel.has_attention else "PyTorch's attention (no AVX-512 or OpenMP)"
    return f"native kernels: {kernel.path} ({'OpenMP' if kernel.openmp else 'POSIX'} threads; {attention})"


def native_kernel() -> NativeKernel | None:
    """The kernel, built and loaded on first use (then cached for the process); None where unavailable."""
    return _load()[0]


@functools.lru_cache(maxsize=1)
def _load() -> tuple[NativeKernel | None, str]:
    if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"{NATIVE_ENV}=0"
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        return None, f"not built on {sys.platform}"
    compiler = _compiler()
    if compiler is None:
        reason = "no C compiler (set CC, or install gcc or clang)"
        log.debug("native kernels off: %s; the PyTorch paths run", reason)
        return None, reason
    try:
        kernel = _build_and_open(compiler)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        reason = f"build failed ({exc})"
        log.debug("native kernels off: %s; the PyTorch paths run", reason)
        return None, reason
    log.debug("native kernels: %s", kernel.path)
    return kernel, ""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _build_and_open(compiler: str) -> NativeKernel:
    folder = default_cache_dir() / "native"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = b"\0".join(path.read_bytes() for path in SOURCES + HEADERS)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    runtime = _openmp_runtime()
    errors = []
    for flags in _FLAG_SETS:
        libraries = (runtime,) if "-fopenmp" in flags else ()
        if "-fopenmp" in flags and runtime is None:
            continue
        key = hashlib.sha256(b"\0".join(s.encode() if isinstance(s, str) else s for s in (
            source, compiler, version, " ".join(flags + _COMMON_FLAGS + libraries), platform.machine(),
            _cpu_signature()))).hexdigest()
        path = folder / f"kernels-{key[:20]}.so"
        if path.exists() and _trusted(path):
            try:
                return _open(path)
            except (OSError, RuntimeError):
                path.unlink(missing_ok=True)  # damaged: built again below
        error = _compile(compiler, flags, libraries, path)
        if error is None:
            return _open(path)
        errors.append(error)
    raise RuntimeError(errors[-1])


def _openmp_runtime() -> str | None:
    """The OpenMP library PyTorch's threads belong to, when its parallel backend is OpenMP (Linux)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit(" ", 1)[-1]
        if Path(name).name.startswith(("libgomp", "libiomp5", "libomp")) and ".so" in name:
            return name
    return None


def _compile(compiler: str, flags: tuple[str, ...], libraries: tuple[str, ...], path: Path) -> str | None:
    """Compile into ``path`` (atomically: a temporary file renamed); the compiler's complaint, or None."""
    fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, *_COMMON_FLAGS, "-o", tmp, *map(str, SOURCES), *libraries, "-lm"],
                              capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return f"{Path(compiler).name} {' '.join(flags)}: {lines[0] if lines else f'exit {done.returncode}'}"
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        return None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _trusted(path: Path) -> bool:
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _open(path: Path) -> NativeKernel:
    library = ctypes.CDLL(str(path))
    try:
        abi = library.socodec_abi
        abi.restype = ctypes.c_int
        if abi() != _ABI:
            raise RuntimeError(f"{path.name}: unexpected interface version")
        return NativeKernel(library, path)
    except AttributeError as exc:  # a function missing: not our library
        raise RuntimeError(f"{path.name}: {exc}") from None


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (a build with ``-march=native`` is for this CPU only)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    return model + "\n" + flags
