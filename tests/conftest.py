"""Shared fixtures: the golden reference data lives in ``../shared/reference``.

The suite refuses to run (it does not skip) when that folder is missing:
parity with the published model is the point of these tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("SOCODEC_REFERENCE", REPO.parent / "shared" / "reference"))
GOLDEN = REFERENCE / "golden"
MANIFESTS = REFERENCE / "manifests"
CASES = ("ground_truth", "chirp", "edge")

if not (GOLDEN / "README.md").is_file():
    raise pytest.UsageError(f"golden reference data not found at {REFERENCE}: the tests need ../shared/reference")

# Under pytest-xdist (-n 2) each worker gets one thread: the tiny models gain nothing
# from more, and two workers then share the two cores without contention.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))



@pytest.fixture(autouse=True, scope="session")
def _temporary_cache(tmp_path_factory):
    """Every test (and every command it starts, which inherits the environment) caches converted
    weights in a temporary folder, never in the user's ``~/.cache/socodec``."""
    old = os.environ.get("SOCODEC_CACHE_DIR")
    os.environ["SOCODEC_CACHE_DIR"] = str(tmp_path_factory.mktemp("socodec-cache"))
    yield
    if old is None:
        os.environ.pop("SOCODEC_CACHE_DIR", None)
    else:
        os.environ["SOCODEC_CACHE_DIR"] = old


TINY_FILES = ("hubert_tiny_fairseq.pt", "analyzer_tiny.safetensors", "vocoder_tiny.safetensors")
TINY_CONFIGS = ("--analyzer-config", str(GOLDEN / "analyzer_tiny.json"), "--vocoder-config", str(GOLDEN / "vocoder_tiny.json"))


def tiny_ckpt_dir(folder: Path) -> Path:
    """``folder`` (created) holding the tiny golden models under the released file names, as links."""
    from socodec.loading.checkpoints import RELEASED_FILES

    folder.mkdir(parents=True)
    for name, target in zip(RELEASED_FILES, TINY_FILES):
        (folder / name).symlink_to(GOLDEN / target)
    return folder


def assert_close_golden(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The golden tolerance: max |a-b| <= 1e-4 * max(1, max|b|). Returns the error."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    bound = 1e-4 * max(1.0, expected.abs().max().item())
    assert err <= bound, f"max abs error {err:.3e} > {bound:.3e}"
    return err


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session", params=CASES)
def golden_case(request) -> dict[str, torch.Tensor]:
    """Every tensor of one golden case (``input_wav``, ``tokens``, ``mel_pred``, ...)."""
    case = load_file(str(GOLDEN / f"golden_{request.param}.safetensors"))
    case["name"] = request.param
    return case


GOLDEN_CLI = GOLDEN / "cli"
CLI_CASES = ("ground_truth", "tone", "edge", "long40")


@pytest.fixture(scope="session", params=CLI_CASES)
def golden_cli_case(request) -> dict[str, torch.Tensor]:
    """Every tensor of one ``golden/cli`` case: the published command line's path (1919-zero padding)."""
    case = load_file(str(GOLDEN_CLI / f"golden_cli_{request.param}.safetensors"))
    case["name"] = request.param
    return case


def load_tiny_codec(cache_dir: Path, **kwargs):
    """The tiny golden models through the normal loading path."""
    from socodec import SoCodec

    return SoCodec.from_files(
        GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
        analyzer_config=GOLDEN / "analyzer_tiny.json", vocoder_config=GOLDEN / "vocoder_tiny.json",
        cache_dir=cache_dir, **kwargs,
    )


def chromium_path() -> str:
    """The system Chromium: ``$SOCODEC_CHROMIUM``, else ``chromium`` / ``chromium-headless-shell`` on PATH."""
    candidates = [os.environ.get("SOCODEC_CHROMIUM"), shutil.which("chromium"),
                  shutil.which("chromium-headless-shell"), shutil.which("chromium-browser")]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    pytest.fail("no Chromium found for the browser tests: install it (apt-get install -y chromium) "
                "or set SOCODEC_CHROMIUM to its binary")
