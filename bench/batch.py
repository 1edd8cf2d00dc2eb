"""Many short files versus one long file, per audio second (real-size random weights, CPU).

    python bench/batch.py [--clips 20] [--clip-seconds 3] [--batch-size 8] [--runs 3] [--threads 2]
                          [--out bench/results-batch-cpu.json]

In one process: ``--clips`` clips of ``--clip-seconds`` (different stretches of the golden
utterance, tiled) are encoded and decoded (a) one by one, (b) as lists of ``--batch-size``
(``SoCodec.encode/decode`` of a list: what ``socodec --batch-size`` does), and (c) one file
as long as all the clips together. Reports the median RTF (processing seconds / audio seconds,
the clips' own duration, lead and padding not counted) of each mode and the ratios to (c).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from run import ensure_checkpoints  # noqa: E402
from stages import loadavg, matmul_gflops, report_header  # noqa: E402
from worker import RATE, speech_like  # noqa: E402


def median_rtf(work, seconds: float, runs: int) -> dict[str, object]:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        walls.append(time.perf_counter() - t0)
    return {"rtf": statistics.median(walls) / seconds, "rtf_runs": [w / seconds for w in walls]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert")
    parser.add_argument("--out", type=Path, default=BENCH / "results-batch-cpu.json")
    args = parser.parse_args()
    ensure_checkpoints(args.ckpt_dir)
    torch.set_num_threads(args.threads)
    from socodec import SoCodec

    codec = SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir)
    total = args.clips * args.clip_seconds
    speech, _ = speech_like(total)
    n = int(args.clip_seconds * RATE)
    clips = [torch.from_numpy(speech[i * n : (i + 1) * n].copy()) for i in range(args.clips)]
    whole = torch.from_numpy(speech[: args.clips * n].copy())
    groups = [clips[i : i + args.batch_size] for i in range(0, len(clips), args.batch_size)]

    codec.encode(clips[0])  # warm-up
    results: dict[str, dict[str, object]] = {"analysis": {}, "synthesis": {}}
    gemm = [matmul_gflops()]
    print(f"analysis: {args.clips} clips of {args.clip_seconds:g} s ...", flush=True)
    a = results["analysis"]
    a["one_by_one"] = median_rtf(lambda: [codec.encode(c) for c in clips], total, args.runs)
    a["batched"] = median_rtf(lambda: [codec.encode(g) for g in groups], total, args.runs)
    a["one_long_file"] = median_rtf(lambda: codec.encode(whole), total, args.runs)
    gemm.append(matmul_gflops())
    codes = [codec.encode(c) for c in clips]
    code_groups = [codes[i : i + args.batch_size] for i in range(0, len(codes), args.batch_size)]
    long_codes = codec.encode(whole)
    print("synthesis ...", flush=True)
    s = results["synthesis"]
    s["one_by_one"] = median_rtf(lambda: [codec.decode(c) for c in codes], total, args.runs)
    s["batched"] = median_rtf(lambda: [codec.decode(g) for g in code_groups], total, args.runs)
    s["one_long_file"] = median_rtf(lambda: codec.decode(long_codes), total, args.runs)
    gemm.append(matmul_gflops())
    print(f"{'':10} {'one by one':>11} {'batched':>9} {'long file':>10}  (RTF; ratio to the long file)")
    for phase, modes in results.items():
        base = modes["one_long_file"]["rtf"]
        for mode in modes.values():
            mode["ratio_to_long_file"] = mode["rtf"] / base
        print(f"{phase:10} " + " ".join(
            f"{modes[m]['rtf']:6.3f} ({modes[m]['ratio_to_long_file']:.2f})"
            for m in ("one_by_one", "batched", "one_long_file")))
    report = {
        **report_header(args.threads), "runs": args.runs,
        "clips": args.clips, "clip_seconds": args.clip_seconds, "batch_size": args.batch_size,
        "gemm_gflops": gemm, "loadavg_end": loadavg(), "results": results,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
