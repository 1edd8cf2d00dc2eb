"""Per-stage timing, FLOP counting and machine measurements for the benchmark.

:class:`StageTimer` attributes wall time (and, while a ``FlopCounterMode`` is
active, FLOPs) to the codec's stages without touching the package: global module
forward hooks map every submodule to its stage, and a few plain methods that do
work outside any module forward (the quantiser's ``encode``/``decode``, the mel
front end's block function) are wrapped on the instance. Only the outermost entry
into a stage is timed, so nested calls and chunked paths (windows, streaming
state machines calling layers directly) are counted once, whatever route the
codec takes.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ANALYSIS_STAGES = ("hubert", "encoder+quantiser", "mel+speaker")
SYNTHESIS_STAGES = ("decoders", "vocoder")
_QUANTISER = "quantiser"  # belongs to analysis when encoding, to the decoders when decoding


class StageTimer:
    """Accumulates seconds (and FLOPs) per stage of one :class:`socodec.SoCodec`.

    Use ``with timer.phase("analysis"): codec.encode(...)``; read :attr:`seconds`
    and :attr:`flops` (dicts stage -> total) and reset with :meth:`reset`.
    """

    def __init__(self, codec: nn.Module) -> None:
        self._stage_of: dict[int, str] = {}
        # HuBERT only if it is loaded: touching ``codec.hubert`` would load it (synthesis never does)
        hubert = dict(codec.named_children()).get("hubert")
        roots = {
            "hubert": hubert if hubert is not None else (),
            "encoder+quantiser": codec.analyzer.encoder,
            _QUANTISER: codec.analyzer.vq,
            "mel+speaker": codec.analyzer.speaker_encoder,
            "decoders": (codec.analyzer.decoder_1, codec.analyzer.decoder_2),
            "vocoder": codec.vocoder,
        }
        for stage, modules in roots.items():
            for root in modules if isinstance(modules, tuple) else (modules,):
                for module in root.modules():
                    self._stage_of[id(module)] = stage
        self._stage_of[id(codec.mel)] = "mel+speaker"
        self._phase = ""
        self._active: tuple[str, object] | None = None
        self._start = 0.0
        self._flops_start = 0
        self.counter: FlopCounterMode | None = None
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._pre_hook),
            nn.modules.module.register_module_forward_hook(self._post_hook),
        ]
        vq = codec.analyzer.vq
        self._wrap(vq, "encode", _QUANTISER)
        self._wrap(vq, "decode", _QUANTISER)
        for name in ("forward", "log_mel"):
            if hasattr(codec.mel, name):
                self._wrap(codec.mel, name, "mel+speaker")
        self._restore: list[tuple[type, str, object]] = []
        self._wrap_streamer()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for cls, name, original in self._restore:
            setattr(cls, name, original)
        self._restore = []

    def _wrap_streamer(self) -> None:
        """The causal streaming helper runs layers without calling their ``forward``: time its ``run``."""
        try:
            from socodec.nn.causal import CausalStreamer
        except ImportError:
            return
        original = getattr(CausalStreamer, "run", None)
        if original is None:
            return
        timer = self

        def run(streamer: object, module: nn.Module, *args: object, **kwargs: object) -> object:
            stage = timer._stage_of.get(id(module))
            token = object()
            if stage is not None:
                timer._enter(stage, token)
            try:
                return original(streamer, module, *args, **kwargs)
            finally:
                timer._leave(token)

        CausalStreamer.run = run
        self._restore.append((CausalStreamer, "run", original))

    def reset(self) -> None:
        self.seconds, self.flops = {}, {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Everything inside belongs to ``name`` ("analysis" or "synthesis")."""
        self._phase, self._active = name, None
        try:
            yield
        finally:
            self._phase, self._active = "", None

    def _resolve(self, stage: str) -> str:
        if stage != _QUANTISER:
            return stage
        return "encoder+quantiser" if self._phase == "analysis" else "decoders"

    def _enter(self, stage: str, owner: object) -> None:
        if self._active is None and self._phase:
            self._active = (self._resolve(stage), owner)
            self._flops_start = self.counter.get_total_flops() if self.counter is not None else 0
            self._start = time.perf_counter()

    def _leave(self, owner: object) -> None:
        if self._active is not None and self._active[1] is owner:
            elapsed = time.perf_counter() - self._start
            stage = self._active[0]
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
            if self.counter is not None:
                self.flops[stage] = self.flops.get(stage, 0) + self.counter.get_total_flops() - self._flops_start
            self._active = None

    def _pre_hook(self, module: nn.Module, _args: object) -> None:
        stage = self._stage_of.get(id(module))
        if stage is not None:
            self._enter(stage, module)

    def _post_hook(self, module: nn.Module, _args: object, _out: object) -> None:
        self._leave(module)

    def _wrap(self, obj: object, name: str, stage: str) -> None:
        method: Callable[..., object] = getattr(obj, name)
        token = object()

        def timed(*args: object, **kwargs: object) -> object:
            self._enter(stage, token)
            try:
                return method(*args, **kwargs)
            finally:
                self._leave(token)

        setattr(obj, name, timed)


def _sdpa_flops(query: tuple[int, ...], key: tuple[int, ...], *_args: object, **_kwargs: object) -> int:
    """Q K^T and P V of scaled dot-product attention: 4 * batch * heads * s_q * s_k * head_dim."""
    *batch_heads, s_q, head_dim = query
    n = 1
    for v in batch_heads:
        n *= v
    return 4 * n * s_q * key[-2] * head_dim


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting the CPU flash-attention kernel (not counted by default)."""
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def matmul_gflops(n: int = 2048, reps: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """GEMM throughput (float32 unless ``dtype``) on the current torch threads, GFLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def peak_rss_mb() -> float:
    """Peak RSS of this process so far, MB (VmHWM; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def lscpu() -> dict[str, str]:
    """``lscpu``'s fields (model name, vendor, flags, caches, hypervisor ...), or {} where it is missing."""
    try:
        out = subprocess.run(["lscpu", "--json"], capture_output=True, text=True, check=True, timeout=30).stdout
        return {str(e["field"]).rstrip(":"): str(e["data"]) for e in json.loads(out)["lscpu"] if e.get("data") is not None}
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return {}


_KIND_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def host_kind(fields: dict[str, str]) -> str:
    """A short name of the host kind: vendor and the vector / matrix extensions that set the speed,
    e.g. "GenuineIntel avx2 avx512f avx512_bf16 amx_bf16 amx_tile"."""
    flags = set(fields.get("Flags", "").split())
    return " ".join([fields.get("Vendor ID", "unknown vendor")] + [f for f in _KIND_FLAGS if f in flags])


def machine() -> dict[str, object]:
    fields = lscpu()
    return {
        "cpu": cpu_model(),
        "host_kind": host_kind(fields),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "lscpu": fields,
    }


def git_state(root: Path | None = None) -> dict[str, object]:
    """The commit of the checkout at ``root`` (default: this one) and whether tracked files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root or Path(__file__).resolve().parents[1], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def report_header(threads: int) -> dict[str, object]:
    """What every results file starts with: date, command, machine, git state, threads."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(),
        "git": git_state(),
        "threads": threads,
    }
