"""Two processes with the gloo backend: identical codebooks (EMA statistics all-reduced) and weights."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import tiny_ckpt_dir
from socodec.train.checkpoint import list_checkpoints
from socodec.train.checkpoint import read_csv
from train_helpers import ddp_worker, make_clips

TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(tmp, from_scratch: bool) -> tuple[dict, dict]:
    ctx = mp.start_processes(ddp_worker, args=(2, _free_port(), str(tmp), from_scratch), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the 2-process run did not finish in time")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return load_file(str(tmp / "rank0.safetensors")), load_file(str(tmp / "rank1.safetensors"))


@pytest.mark.parametrize("from_scratch", [False, True], ids=["fine-tune", "scratch-kmeans"])
def test_two_gloo_processes_keep_identical_codebooks(tmp_path, from_scratch):
    make_clips(tmp_path / "data", count=8, low=0.8, high=1.6)
    tiny_ckpt_dir(tmp_path / "ckpt")
    a, b = _run_two(tmp_path, from_scratch)
    assert a.keys() == b.keys()
    codebook_keys = [k for k in a if "_codebook" in k]
    assert len(codebook_keys) == 32
    for key in codebook_keys:  # EMA statistics all-reduced, k-means broadcast: bit-identical
        assert torch.equal(a[key], b[key]), key
    for key in a:  # gradients averaged by DDP: the same weights
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert all(a[k].item() == 1.0 for k in codebook_keys if k.endswith("inited"))
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
    assert (run / "export" / "socodec_16384x4_120ms_16khz_chinese.safetensors").is_file()
    state = torch.load(run / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert len(state["generators"]) == 2  # each process's random draws are saved
    if not from_scratch:  # validation ran on both processes (1 + 2 of the 3 clips), reduced over all 3
        for rank, share in ((0, 2), (1, 1)):
            assert (tmp_path / f"validated{rank}.txt").read_text().split("\n")[:-1] == [f"{s} {share}" for s in (0, 2, 4)]
        rows = read_csv(run / "valid.csv")
        assert [(r["step"], r["clips"]) for r in rows] == [("0", "3"), ("2", "3"), ("4", "3")]
        assert (run / "samples" / "step_00000004").is_dir()
