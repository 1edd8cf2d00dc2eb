"""Two variants side by side, in alternating fresh processes: paired ratios that survive a noisy machine.

    python bench/compare.py --package-a /tmp/prev [--lengths 10 120] [--rounds 3]
    python bench/compare.py --padding-a grid --lengths 10
    python bench/compare.py --dtype-b bfloat16

A variant is a socodec checkout (``--package-*``, default: this one), an analysis padding
(``--padding-*``, default: the package's) and a dtype (``--dtype-*``, default float32). For every
length and round, A and B each run analysis and then synthesis of their own codes in fresh
``bench/worker.py`` processes (one warm-up call, one timed call, no FLOP counting); the order
alternates (AB, BA, AB, ...) so that a slow drift of the machine hits both alike. Reports per
length and phase the median RTF of each variant and the median of the per-round ratios B / A
(below 1: B is faster). On a shared or throttled machine absolute RTFs move by tens of percent
from minute to minute; the paired ratio moves much less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import ensure_checkpoints, run_child  # noqa: E402
from stages import git_state, loadavg, report_header  # noqa: E402

PHASES = ("analysis", "synthesis")


def variant(args: argparse.Namespace, side: str) -> dict[str, str]:
    package = Path(getattr(args, f"package_{side}")).resolve()
    return {"package": str(package), "commit": str(git_state(package)["commit"]),
            "padding": getattr(args, f"padding_{side}") or "", "dtype": getattr(args, f"dtype_{side}")}


def run_variant(args: argparse.Namespace, spec: dict[str, str], seconds: float, codes: Path) -> dict[str, float]:
    """Analysis then synthesis of ``spec`` at ``seconds``: RTF of the timed call of each."""
    rtf: dict[str, float] = {}
    for phase in PHASES:
        cmd = [sys.executable, str(BENCH / "worker.py"), "--phase", phase, "--seconds", str(seconds), "--runs", "1",
               "--no-flops", "--threads", str(args.threads), "--ckpt-dir", str(args.ckpt_dir), "--codes", str(codes),
               "--cache-dir", str(args.cache_dir if spec["package"] == str(REPO) else args.other_cache_dir),
               "--package", spec["package"], "--dtype", spec["dtype"]]
        if spec["padding"]:
            cmd += ["--padding", spec["padding"]]
        result, _ = run_child(cmd, args.threads)
        rtf[phase] = float(result["runs"][0]["wall_s"]) / float(result["seconds"])
    return rtf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for side in ("a", "b"):
        parser.add_argument(f"--package-{side}", type=Path, default=REPO, help="socodec checkout (default: this one)")
        parser.add_argument(f"--padding-{side}", choices=["published", "grid"], help="analysis padding")
        parser.add_argument(f"--dtype-{side}", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 120.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert", help="HuBERT cache of this checkout")
    parser.add_argument("--other-cache-dir", type=Path, default=BENCH / ".cache" / "hubert-other",
                        help="HuBERT cache for another checkout (its format may differ)")
    parser.add_argument("--out", type=Path, default=BENCH / "results-compare-cpu.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    ensure_checkpoints(args.ckpt_dir)
    specs = {"a": variant(args, "a"), "b": variant(args, "b")}
    codes_dir = BENCH / ".cache" / "codes"
    codes_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seconds in args.lengths:
        rounds: list[dict[str, dict[str, float]]] = []
        for r in range(args.rounds):
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            measured = {side: run_variant(args, specs[side], seconds, codes_dir / f"compare_{side}_{seconds:g}s.soc")
                        for side in order}
            rounds.append(measured)
            print(f"{seconds:g} s round {r + 1}: " + "  ".join(
                f"{phase} A {measured['a'][phase]:.4f} B {measured['b'][phase]:.4f}" for phase in PHASES), flush=True)
        row: dict[str, object] = {"seconds": seconds, "rounds": rounds}
        for phase in PHASES:
            row[phase] = {
                "rtf_a": statistics.median(m["a"][phase] for m in rounds),
                "rtf_b": statistics.median(m["b"][phase] for m in rounds),
                "ratio_b_to_a": statistics.median(m["b"][phase] / m["a"][phase] for m in rounds),
            }
        rows.append(row)
    print(f"\nA = {specs['a']}\nB = {specs['b']}")
    print(f"{'length':>7} | {'phase':9} | {'RTF A':>7} {'RTF B':>7} | B / A (median of paired rounds)")
    for row in rows:
        for phase in PHASES:
            v = row[phase]
            print(f"{row['seconds']:>6.0f}s | {phase:9} | {v['rtf_a']:7.4f} {v['rtf_b']:7.4f} | {v['ratio_b_to_a']:.3f}")
    report = {**report_header(args.threads), "variants": specs, "rounds": args.rounds, "results": rows,
              "loadavg_end": loadavg()}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
