"""Weights from the Hugging Face cache without a network, pinned revisions and sha256 checks.

The cache is built the way ``huggingface_hub`` lays it out (``models--owner--name/blobs``,
``snapshots/<commit>/<file>`` links, ``refs/<branch>``) under a temporary ``HF_HOME``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch
from conftest import GOLDEN, REPO, TINY_CONFIGS, TINY_FILES
from socodec.codes import Codes, save_codes
from socodec.errors import CheckpointError
from socodec.loading import download
from socodec.loading.checkpoints import ANALYZER_FILE, HUBERT_FILE, RELEASED_FILES, VOCODER_FILE

SPEAKER_DIM = 64  # the tiny golden analyzer's model size
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(hub: Path, names: tuple[str, ...], revision: str = "main") -> dict[str, str]:
    """``hub`` (an ``HF_HUB_CACHE``) holding the tiny models as ``names``; their sha256 by name."""
    digests = {}
    for name, tiny in zip(RELEASED_FILES, TINY_FILES):
        if name not in names:
            continue
        repo = hub / ("models--" + download.RELEASES[name].repo.replace("/", "--"))
        data = (GOLDEN / tiny).read_bytes()
        digest = digests[name] = hashlib.sha256(data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / digest).write_bytes(data)
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
        if revision != COMMIT:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / revision).write_text(COMMIT)
    return digests


def test_offline_decode_uses_the_hub_cache(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1, no local weights, both decoder files cached by an earlier download: it runs."""
    fake_hub_cache(tmp_path / "hf" / "hub", (ANALYZER_FILE, VOCODER_FILE))
    codes = Codes(tokens=torch.randint(0, 16384, (6, 4)), speaker=torch.randn(SPEAKER_DIM), num_samples=6 * 1920 - 8100,
                  lead=8000)
    soc = save_codes(codes, tmp_path / "in.soc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOCODEC_", "HF_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", SOCODEC_CACHE_DIR=str(tmp_path / "cache"),
               SOCODEC_CKPT_DIR=str(tmp_path / "empty"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "socodec", str(soc), str(tmp_path / "out.wav"), *TINY_CONFIGS,
                             "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.wav").stat().st_size > 44


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_cache_is_used_with_downloads_disabled_and_pinned_commit(hub: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    digests = fake_hub_cache(hub, RELEASED_FILES, revision=COMMIT)
    for name in RELEASED_FILES:
        release = download.RELEASES[name]
        monkeypatch.setitem(download.RELEASES, name, download.Release(release.repo, COMMIT, digests[name]))
    paths = download.resolve_checkpoints(tmp_path / "empty", allow_download=False)
    for path, name in zip((paths.hubert, paths.analyzer, paths.vocoder), (HUBERT_FILE, ANALYZER_FILE, VOCODER_FILE)):
        assert path.name == name and COMMIT in str(path) and path.is_file()


def test_sha256_mismatch_is_one_error_and_the_file_is_not_used(hub: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub_cache(hub, RELEASED_FILES)
    release = download.RELEASES[ANALYZER_FILE]
    monkeypatch.setitem(download.RELEASES, ANALYZER_FILE, download.Release(release.repo, "main", "ab" * 32))
    with pytest.raises(CheckpointError) as caught:
        download.resolve_checkpoints(tmp_path / "empty", allow_download=False)
    message = str(caught.value)
    assert "sha256" in message and ANALYZER_FILE in message and "not used" in message and "\n" not in message


def test_without_the_cache_offline_still_says_so(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        download.resolve_checkpoints(tmp_path / "empty")


def test_download_error_keeps_its_message() -> None:
    reason = download._download_reason(PermissionError("token refused for hhguo/SoCodec"))
    assert "PermissionError" in reason and "token refused for hhguo/SoCodec" in reason
