"""Peak memory through the Python API, one fresh process per case.

    python bench/memory.py [--lengths 10 40 120] [--dtypes float32] [--threads 2]
                           [--out bench/results-memory-cpu.json]

Each case runs in its own process: load the real-size codec (random weights of the released
sizes, ``bench/.cache/ckpts``), then either ``codec.encode(array)`` alone or ``encode`` followed
by ``decode`` of the codes in the same process (the model, HuBERT included, stays loaded).
The process reports its peak RSS (VmHWM) after loading and after each step; the parent also
reads the whole process's peak from ``wait4``. The goal is a peak under 2048 MiB at every length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import ensure_checkpoints, run_child  # noqa: E402
from stages import loadavg, report_header  # noqa: E402

CASES = ("encode", "encode_decode")


def child(args: argparse.Namespace) -> None:
    import torch

    from stages import peak_rss_mb
    from worker import DTYPES, RATE, speech_like

    torch.set_num_threads(args.threads)
    from socodec import SoCodec

    wav, _ = speech_like(args.seconds)
    codec = SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir, dtype=DTYPES[args.dtype])
    steps = {"load": peak_rss_mb()}
    codes = codec.encode(wav, RATE)
    steps["encode"] = peak_rss_mb()
    if args.case == "encode_decode":
        audio = codec.decode(codes)
        steps["decode"] = peak_rss_mb()
        assert audio.numel() == wav.size
    print(json.dumps({"case": args.case, "seconds": args.seconds, "dtype": args.dtype, "peak_mib_after": steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 40.0, 120.0])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert")
    parser.add_argument("--out", type=Path, default=BENCH / "results-memory-cpu.json")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.case = args.child
        child(args)
        return
    ensure_checkpoints(args.ckpt_dir)
    rows = []
    for dtype in args.dtypes:
        for seconds in args.lengths:
            for case in CASES:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--seconds", str(seconds),
                       "--dtype", dtype, "--threads", str(args.threads), "--ckpt-dir", str(args.ckpt_dir),
                       "--cache-dir", str(args.cache_dir)]
                result, rss = run_child(cmd, args.threads)
                result["peak_rss_mib"] = rss
                rows.append(result)
                steps = " ".join(f"{k} {v:.0f}" for k, v in result["peak_mib_after"].items())
                print(f"{dtype:9s} {seconds:6.0f} s {case:14s} peak {rss:6.0f} MiB  (after {steps})", flush=True)
    report = {**report_header(args.threads), "rows": rows, "loadavg_end": loadavg()}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"failed: {err}") from None
