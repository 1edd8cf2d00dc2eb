"""SoCodec speed benchmark: real-size random weights, CPU, one fresh process per phase and length.

    python bench/run.py [--lengths 10 60 300] [--runs 3] [--threads 2]
                        [--ckpt-dir bench/.cache/ckpts] [--out bench/results-cpu.json]

(The hour-long test runs the command line under /usr/bin/time: ``bench/hour.py``.)

Creates the real-size random checkpoints (``scripts/make_random_checkpoints.py``)
under ``--ckpt-dir`` if they are missing and converts the HuBERT cache once, then
for every length runs analysis (encode) and synthesis (decode) in separate
processes (``bench/worker.py``) and reports, per phase: median real-time factor
(processing seconds / audio seconds) per stage and in total, the peak RSS of the
process (``wait4``: load included), the codec's load time, FLOPs per audio second
(``torch.utils.flop_counter``) and the ratio of the measured RTF to the compute
floor (FLOPs / the float32 GEMM throughput measured in the same process).
Writes everything to ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from stages import ANALYSIS_STAGES, SYNTHESIS_STAGES, git_state, loadavg, report_header  # noqa: E402

STAGES = {"analysis": ANALYSIS_STAGES, "synthesis": SYNTHESIS_STAGES}


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    return env


def run_child(cmd: list[str], threads: int) -> tuple[dict[str, object], float]:
    """Run a worker; returns (its JSON result, its peak RSS in MB from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_child_env(threads), cwd=REPO, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker failed ({proc.returncode}): {' '.join(cmd)}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), usage.ru_maxrss / 1024


def ensure_checkpoints(ckpt_dir: Path) -> None:
    sys.path.insert(0, str(REPO))
    from socodec.loading.checkpoints import CheckpointPaths

    if CheckpointPaths.in_dir(ckpt_dir).missing():
        print(f"writing real-size random checkpoints to {ckpt_dir} ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_checkpoints.py"), str(ckpt_dir)], check=True)


def summarize(result: dict[str, object], rss_mb: float) -> dict[str, object]:
    """Medians and ratios of one worker result."""
    phase = str(result["phase"])
    seconds = float(result["seconds"])
    runs = result["runs"]
    samples = [r["matmul_gflops"] for r in runs] + [result["matmul_gflops_end"]]
    if result.get("dtype") == "bfloat16" and phase == "analysis":
        # HuBERT's GEMMs run at the bf16 rate; on CPU the vocoder stays float32 (synthesis: float32 rate)
        samples = [r["matmul_gflops_bf16"] for r in runs]
    gemm, gemm_best = statistics.median(samples), max(samples)
    stage_rtf = {}
    for stage in STAGES[phase]:
        stage_rtf[stage] = statistics.median([r["stages"].get(stage, 0.0) for r in runs]) / seconds
    total = statistics.median([r["wall_s"] for r in runs]) / seconds
    stage_rtf["other"] = max(0.0, total - sum(stage_rtf.values()))
    flops = result["flops"]
    flops_per_s = float(flops["total"]) / seconds
    floor = flops_per_s / (gemm_best * 1e9)  # the machine's capability: contention shows as a higher ratio
    floor_median = flops_per_s / (gemm * 1e9)  # throughput while this ran: cancels part of the contention
    return {
        "rtf": total,
        "rtf_runs": [r["wall_s"] / seconds for r in runs],
        "cpu_s_per_audio_s": statistics.median([r["cpu_s"] for r in runs]) / seconds,
        "cores_used": statistics.median([r["cpu_s"] / r["wall_s"] for r in runs]),
        "stage_rtf": stage_rtf,
        "gflop_per_audio_s": flops_per_s / 1e9,
        "stage_gflop_per_audio_s": {k: v / seconds / 1e9 for k, v in flops["stages"].items()},
        "dtype": result.get("dtype", "float32"),
        "gemm_gflops": gemm,
        "gemm_gflops_fp32_bf16": [max(r["matmul_gflops"] for r in runs), max(r.get("matmul_gflops_bf16", 0.0) for r in runs)],
        "gemm_gflops_best": gemm_best,
        "floor_rtf": floor,
        "ratio_to_floor": total / floor if floor else None,
        "ratio_to_floor_median_gemm": total / floor_median if floor_median else None,
        "peak_rss_mb": rss_mb,
        "load_s": result["load_s"],
        "loadavg": [r["loadavg"][0] for r in runs if r["loadavg"]],
    }


def print_table(rows: list[dict[str, object]]) -> None:
    head = (f"{'length':>7} | {'HuBERT':>6} {'enc+VQ':>6} {'mel+spk':>7} {'other':>5} {'ANALYSIS':>8} {'xfloor':>6} "
            f"{'RSS MB':>6} | {'decoders':>8} {'vocoder':>7} {'other':>5} {'SYNTH':>6} {'xfloor':>6} {'RSS MB':>6} | "
            f"{'load s':>6} {'GEMM GF/s':>9} {'cores':>5} {'loadavg':>7}")
    print(head)
    print("-" * len(head))
    for row in rows:
        a, s = row["analysis"], row["synthesis"]
        sa, ss = a["stage_rtf"], s["stage_rtf"]
        load = statistics.median([a["load_s"], s["load_s"]])
        gemm = max(a["gemm_gflops_best"], s["gemm_gflops_best"])
        la = max(a["loadavg"] + s["loadavg"] or [0.0])
        cores = statistics.median([a["cores_used"], s["cores_used"]])
        print(f"{row['seconds']:>5.0f}s{row.get('dtype', 'float32')[:4]:>5} | {sa['hubert']:6.3f} {sa['encoder+quantiser']:6.3f} {sa['mel+speaker']:7.3f} "
              f"{sa['other']:5.3f} {a['rtf']:8.3f} {a['ratio_to_floor']:6.2f} {a['peak_rss_mb']:6.0f} | "
              f"{ss['decoders']:8.3f} {ss['vocoder']:7.3f} {ss['other']:5.3f} {s['rtf']:6.3f} "
              f"{s['ratio_to_floor']:6.2f} {s['peak_rss_mb']:6.0f} | {load:6.2f} {gemm:9.1f} {cores:5.2f} {la:7.2f}")
    print("(stage columns and ANALYSIS/SYNTH: median real-time factor; xfloor: RTF / (FLOPs / best GEMM throughput);"
          " RSS: peak of the whole process; cores: CPU seconds / wall seconds, < threads when the machine is"
          " shared; loadavg: highest 1-min load average seen)")


def resummarize(path: Path) -> None:
    """Recompute the summary rows of a results file from its raw worker results; rewrite it and print the table."""
    report = json.loads(path.read_text())
    rows: dict[tuple[float, str], dict[str, object]] = {}
    for result in report["raw"]:
        seconds, dtype = float(result["seconds_requested"]), str(result.get("dtype", "float32"))
        row = rows.setdefault((seconds, dtype), {"seconds": seconds, "dtype": dtype})
        row[str(result["phase"])] = summarize(result, float(result["peak_rss_mb"]))
    report["results"] = list(rows.values())
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report["results"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0, 300.0], help="seconds")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="HuBERT dtypes to measure (bfloat16: CPUs with native bf16 only; the vocoder stays float32 on CPU)")
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert", help="converted HuBERT cache")
    parser.add_argument("--out", type=Path, default=BENCH / "results-cpu.json")
    parser.add_argument("--from-json", type=Path, help="re-summarise the raw runs of an earlier --out file and print")
    parser.add_argument("--padding", choices=["published", "grid"],
                        help="analysis padding (default: the package's default)")
    parser.add_argument("--package", type=Path, default=REPO,
                        help="folder holding the socodec package to measure, e.g. a `git worktree` of an earlier "
                             "commit (default: this checkout); the harness is always this one")
    args = parser.parse_args()
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be positive")
    if args.from_json is not None:
        resummarize(args.from_json)
        return

    header = report_header(args.threads)
    print(f"host: {header['machine']['cpu']} ({header['machine']['host_kind']}), {args.threads} threads", flush=True)
    ensure_checkpoints(args.ckpt_dir)
    worker = [sys.executable, str(BENCH / "worker.py"), "--threads", str(args.threads),
              "--ckpt-dir", str(args.ckpt_dir), "--cache-dir", str(args.cache_dir), "--package", str(args.package)]
    first, _ = run_child(worker + ["--load-only"], args.threads)  # converts the HuBERT cache if needed
    print(f"first load (converts the HuBERT cache if absent): {first['load_s']:.2f} s", flush=True)

    lengths = list(args.lengths)
    codes_dir = BENCH / ".cache" / "codes"
    codes_dir.mkdir(parents=True, exist_ok=True)
    rows, raw = [], []
    for seconds, dtype in [(s, d) for s in lengths for d in args.dtypes]:
        runs = args.runs
        codes = codes_dir / f"bench_{seconds:g}s_{dtype}{'_' + args.padding if args.padding else ''}.soc"
        row: dict[str, object] = {"seconds": seconds, "dtype": dtype, "padding": args.padding or "default"}
        for phase in ("analysis", "synthesis"):
            print(f"{seconds:g} s {dtype} {phase} ({runs} runs) ...", flush=True)
            cmd = worker + ["--phase", phase, "--seconds", str(seconds), "--runs", str(runs), "--codes", str(codes),
                            "--dtype", dtype] + (["--padding", args.padding] if args.padding else [])
            result, rss = run_child(cmd, args.threads)
            result["peak_rss_wait4_mb"] = rss  # includes the FLOP-counting run
            rss = float(result.get("peak_rss_process_mb", rss))
            result["peak_rss_mb"] = rss
            result["seconds_requested"] = seconds
            raw.append(result)
            row[phase] = summarize(result, rss)
            print(f"  RTF {row[phase]['rtf']:.3f} (floor ratio {row[phase]['ratio_to_floor']:.2f}), "
                  f"peak RSS {rss:.0f} MB, cores {row[phase]['cores_used']:.2f}, load {row[phase]['loadavg']}", flush=True)
        rows.append(row)

    print()
    print_table(rows)
    report = {
        **header,
        "package": {"path": str(args.package), **git_state(args.package)},
        "runs": args.runs,
        "first_load_s": first["load_s"],
        "loadavg_end": loadavg(),
        "results": rows,
        "raw": raw,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
