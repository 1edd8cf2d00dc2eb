"""The native library (the vocoder activation's kernel here): built here, equal to the spec, and optional.

The test machine has a C compiler (the set-up installs one), so the kernel must build and be
used; without one, or with ``SOCODEC_NATIVE=0``, the PyTorch path must give the same numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from socodec.loading.native import native_kernel, native_status
from socodec.nn.vocoder import Activation1d, Vocoder, channels_last_1d, native_agrees
from socodec.config import VocoderConfig


def _activation(channels: int, seed: int) -> Activation1d:
    gen = torch.Generator().manual_seed(seed)
    act = Activation1d(channels)
    with torch.no_grad():
        act.act.alpha.copy_(torch.randn(channels, generator=gen) * 0.7)
        act.act.beta.copy_(torch.randn(channels, generator=gen) * 0.7)
    act.native = native_kernel()
    return act.eval()


def test_the_kernel_is_built_checked_and_used_here() -> None:
    kernel = native_kernel()
    assert kernel is not None, native_status()
    assert native_agrees(kernel)
    assert native_status().startswith("native kernels: ") and "threads" in native_status()
    vocoder = Vocoder(VocoderConfig(upsample_initial_channel=32))
    assert vocoder.use_native(kernel) and vocoder.activation_post.native is kernel
    assert not vocoder.use_native(None) and vocoder.activation_post.native is None


def test_a_kernel_with_other_numbers_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    class Wrong:
        def activation(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    vocoder = Vocoder(VocoderConfig(upsample_initial_channel=32))
    assert not vocoder.use_native(Wrong())
    assert vocoder.activation_post.native is None and "not used" in caplog.text


@pytest.mark.parametrize("channels", [1, 5, 16, 64, 256])
@pytest.mark.parametrize("length", [1, 2, 3, 6, 7, 255, 256, 257, 600])
def test_kernel_equals_the_spec(channels: int, length: int) -> None:
    act = _activation(channels, channels * 1000 + length)
    x = torch.randn(3, channels, length, generator=torch.Generator().manual_seed(length)) * 2
    exact = act.reference(x.double())
    with torch.inference_mode():
        got = act(channels_last_1d(x)).squeeze(2)
    assert got.shape == x.shape
    assert (got.double() - exact).abs().max().item() < 1e-5


def test_results_do_not_depend_on_threads_or_batching() -> None:
    act = _activation(32, 7)
    x = channels_last_1d(torch.randn(2, 32, 1500, generator=torch.Generator().manual_seed(3)) * 3)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = act(x)
            torch.set_num_threads(3)
            three = act(x)
            alone = act(x[1:].contiguous(memory_format=torch.channels_last))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three) and torch.equal(alone, three[1:])


def test_nan_and_huge_inputs_stay_bounded_like_the_spec() -> None:
    act = _activation(16, 1)
    x = torch.randn(1, 16, 40) * 1e4
    x[0, 3, 20] = float("nan")
    with torch.inference_mode():
        got = act(channels_last_1d(x)).squeeze(2)
    spec = act.reference(x)
    assert torch.equal(got.isnan(), spec.isnan())
    finite = ~spec.isnan()
    # sin^2 of |u| ~ 1e4 is reduced exactly enough that both agree to float32 rounding of u
    assert (got[finite] - spec[finite]).abs().max().item() < 1e-3 * spec[finite].abs().max().item()


_PROBE = """
import json, sys, torch
from socodec.loading.native import native_kernel, native_status
from socodec.nn.vocoder import Activation1d, channels_last_1d
gen = torch.Generator().manual_seed(0)
act = Activation1d(16)
act.native = native_kernel()
with torch.no_grad():
    act.act.alpha.copy_(torch.randn(16, generator=gen))
x = channels_last_1d(torch.randn(2, 16, 333, generator=gen))
with torch.inference_mode():
    y = act(x)
torch.save(y, sys.argv[1])
print(json.dumps(native_status()))
"""


def _probe(tmp_path: Path, name: str, **env: str) -> tuple[str, torch.Tensor]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SOCODEC_NATIVE", "CC")}
    environ.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    out = tmp_path / f"{name}.pt"
    done = subprocess.run([sys.executable, "-c", _PROBE, str(out)], env=environ, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(out)


def test_without_a_compiler_or_when_switched_off_the_numbers_are_the_same(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    status, native = _probe(tmp_path, "native", SOCODEC_CACHE_DIR=cache)
    assert status.startswith("native kernels: ")
    no_compiler = tmp_path / "bin"
    no_compiler.mkdir()
    status_off, plain = _probe(tmp_path, "nocc", SOCODEC_CACHE_DIR=str(tmp_path / "empty"), PATH=str(no_compiler))
    assert status_off == "native kernels off: no C compiler (set CC, or install gcc or clang)"
    status_env, env_off = _probe(tmp_path, "env", SOCODEC_CACHE_DIR=cache, SOCODEC_NATIVE="0")
    assert status_env == "native kernels off: SOCODEC_NATIVE=0"
    assert torch.equal(plain, env_off)
    assert (native - plain).abs().max().item() < 1e-5


def test_the_build_is_cached_rebuilt_when_damaged_and_never_loaded_when_others_can_write_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _probe(tmp_path, "first", SOCODEC_CACHE_DIR=str(cache))
    (built,) = (cache / "native").glob("kernels-*.so")
    stamp = built.stat().st_mtime_ns
    _probe(tmp_path, "again", SOCODEC_CACHE_DIR=str(cache))
    assert built.stat().st_mtime_ns == stamp  # loaded, not built again

    built.write_bytes(b"not a library")
    status, _ = _probe(tmp_path, "damaged", SOCODEC_CACHE_DIR=str(cache))
    assert status.startswith("native kernels: ") and built.stat().st_size > 1000

    built.chmod(0o666)
    stamp = built.stat().st_mtime_ns
    status, _ = _probe(tmp_path, "writable", SOCODEC_CACHE_DIR=str(cache))
    assert status.startswith("native kernels: ")
    assert built.stat().st_mtime_ns != stamp and not built.stat().st_mode & 0o022
    assert [p.name for p in (cache / "native").iterdir()] == [built.name]  # no temporary files left
