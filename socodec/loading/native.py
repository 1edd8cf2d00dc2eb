"""A small native kernel for the vocoder's anti-aliased activation, compiled on this machine.

The anti-aliased SnakeBeta (:class:`socodec.nn.vocoder.Activation1d`) is cheap in arithmetic but,
as PyTorch operators, several passes over a signal at twice the layer's rate: about a quarter
of the synthesis time on CPU. ``socodec/nn/activation.c`` does it in one pass over tiles that
stay in the CPU's cache, on PyTorch's own threads. :func:`socodec.loading.modules.load_vocoder`
hands the kernel to the vocoder (:meth:`socodec.nn.vocoder.Vocoder.use_native`, which checks it
against the PyTorch path first).

It is compiled once per machine with the C compiler found (``$CC``, else ``cc``, ``gcc`` or
``clang``), for this CPU (``-march=native`` where the compiler takes it), into
``<cache dir>/native/`` (:func:`socodec.config.default_cache_dir`): a file named after a hash
of the source, the compiler, the flags and the CPU, so that a cache folder shared by machines
of different kinds keeps one build per kind. Building takes about a second and happens
when the vocoder is loaded, not in the first call.

Without a compiler, on other systems than Linux and macOS, when building or loading fails,
or with ``SOCODEC_NATIVE=0`` in the environment, nothing changes but the speed: the PyTorch
path runs (the reason is logged once at DEBUG level, ``-v`` on the command line, and
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
SOURCE = Path(str(importlib.resources.files("socodec.nn").joinpath("activation.c")))
_ABI = 1
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
    """The loaded library: :meth:`activation` runs the one-pass activation (a
    :class:`socodec.nn.vocoder.NativeActivation`)."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.openmp = bool(library.socodec_activation_openmp())
        self._run = library.socodec_activation
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
        self._run.restype = ctypes.c_int

    def activation(self, x: Tensor, weights: Tensor) -> Tensor | None:
        """Channels-last float32 ``x`` ``[B, C, 1, T]`` (CPU) with ``weights`` ``[29, C]`` -> ``[B, C, 1, T]``.

        None when ``x`` is not laid out so (the caller then takes the PyTorch path) or scratch
        memory could not be had. The library releases the interpreter lock while it runs.
        """
        b, c, h, t = x.shape
        if (not _kernel_layout(x) or h != 1 or weights.shape != (29, c) or weights.dtype != torch.float32
                or not weights.is_contiguous()):
            return None
        y = torch.empty_like(x, memory_format=torch.channels_last)
        status = self._run(x.data_ptr(), y.data_ptr(), weights.data_ptr(), b, t, c, torch.get_num_threads())
        return y if status == 0 else None


def _kernel_layout(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > 0)


def native_status() -> str:
    """One line: the library in use, or why the PyTorch path runs."""
    kernel, reason = _load()
    if kernel is None:
        return f"native activation kernel off: {reason}"
    return f"native activation kernel: {kernel.path} ({'OpenMP' if kernel.openmp else 'POSIX'} threads)"


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
        log.debug("native activation kernel off: %s; the PyTorch path runs", reason)
        return None, reason
    try:
        kernel = _build_and_open(compiler)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        reason = f"build failed ({exc})"
        log.debug("native activation kernel off: %s; the PyTorch path runs", reason)
        return None, reason
    log.debug("native activation kernel: %s", kernel.path)
    return kernel, ""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _build_and_open(compiler: str) -> NativeKernel:
    folder = default_cache_dir() / "native"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = SOURCE.read_bytes()
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
        path = folder / f"activation-{key[:20]}.so"
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
    fd, tmp = tempfile.mkstemp(prefix=".activation-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, *_COMMON_FLAGS, "-o", tmp, str(SOURCE), *libraries, "-lm"],
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
    abi = library.socodec_activation_abi
    abi.restype = ctypes.c_int
    if abi() != _ABI:
        raise RuntimeError(f"{path.name}: unexpected interface version")
    return NativeKernel(library, path)


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (a build with ``-march=native`` is for this CPU only)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    return model + "\n" + flags
