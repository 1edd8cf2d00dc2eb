"""Corpus throughput: ``socodec tokenize`` against the per-file command line, on many short clips.

    python bench/corpus.py [--clips 200] [--min-seconds 1.5] [--max-seconds 6] [--threads 2]
                           [--one-by-one 20] [--skip-ray] [--modes MODE ...] [--tiny] [--tar-size 20]
                           [--ckpt-dir bench/.cache/ckpts] [--out bench/results-corpus-cpu.json]

Writes ``--clips`` clips of speech-like 16-bit audio (lengths spread evenly between
``--min-seconds`` and ``--max-seconds``) to ``bench/.cache/corpus/clips/``, then runs, each
as fresh processes with ``--threads`` CPU threads in all (model loading included, as a user
runs them):

* ``one_by_one``: ``socodec CLIP.wav CLIP.soc`` once per clip, for the first ``--one-by-one`` clips;
* ``directory``: ``socodec CLIPS/ OUT/`` (the per-file directory mode, one file at a time);
* ``directory_batch``: the same with ``--batch-size 8``;
* ``tokenize``: ``socodec tokenize CLIPS/ -o OUT/`` with its defaults (workers, batch size);
* ``tokenize_2x1``: the same with 2 workers of 1 thread each;
* ``tokenize_ray``: ``--engine ray`` (a local Ray started by the command) with the defaults;
* ``tokenize_tars``: the same clips as WebDataset tars (``--tar-size`` clips each) on the local
  disk, ``socodec tokenize 'TARS/clips-{000..N}.tar' -o OUT/``;
* ``tokenize_tars_s3``: those tars in a bucket of a loopback S3 server (moto's
  ``ThreadedMotoServer``, started by this script only when the mode runs), read from
  ``s3://`` and written to ``s3://``.

For each: wall time, throughput in hours of audio per hour of wall time and its ratio to
``directory``, and the peak RSS of every process of the run (main process and each worker
or Ray actor, from ``/proc/PID/status`` ``VmHWM`` sampled every 0.2 s). Ray's overhead is
``tokenize_ray``'s wall time minus ``tokenize``'s. A 2048x2048 GEMM throughput sample and the
load average before each mode show how busy the machine was. Prints a table, writes JSON.

Real-size random weights (``scripts/make_random_checkpoints.py``, ~1.5 GB in ``--ckpt-dir``,
created when missing) by default; ``--tiny`` uses the small test models instead (a quick
check that the script works, written to ``bench/.cache/`` unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import ensure_checkpoints  # noqa: E402
from stages import loadavg, matmul_gflops, report_header  # noqa: E402
from worker import RATE, speech_like  # noqa: E402

WORKER_MARKS = ("spawn_main", "MapWorker")
"""Command lines of the processes that hold the model: local workers, Ray Data actors."""


def write_clips(folder: Path, count: int, lo: float, hi: float) -> float:
    """``count`` clips (different stretches of speech-like audio); returns their total seconds."""
    lengths = np.linspace(lo, hi, count)
    total = float(sum(round(s * RATE) for s in lengths)) / RATE
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == f"{count} {lo} {hi}":
        return total
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    speech, _ = speech_like(total + 1.0)
    start = 0
    for i, seconds in enumerate(lengths):
        n = round(seconds * RATE)
        sf.write(folder / f"clip{i:04d}.wav", speech[start : start + n], RATE, subtype="PCM_16")
        start += n
    marker.write_text(f"{count} {lo} {hi}")
    return total


EXTRA_ENV: dict[str, str] = {}
"""Set for the S3 mode: the loopback server's endpoint and credentials."""


def child_env(threads: int) -> dict[str, str]:
    env = {**os.environ, **EXTRA_ENV}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               PYTHONPATH=str(REPO), SOCODEC_CACHE_DIR=str(BENCH / ".cache" / "hubert"))
    return env


class PeakRss:
    """Samples the peak RSS (VmHWM) of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = pid
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for pid in self._tree():
                mb = _vm_hwm_mb(pid)
                if mb is not None:  # a Ray worker renames itself (ray::IDLE -> ray::MapWorker...): keep the latest
                    old_name, old_mb = self.peaks.get(pid, ("", 0.0))
                    self.peaks[pid] = (_cmdline(pid) or old_name, max(mb, old_mb))
            self._stop.wait(interval)

    def _tree(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, frontier = {self.root}, [self.root]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sorted(tree)

    def stop(self) -> dict[str, object]:
        self._stop.set()
        self._thread.join()
        main = self.peaks.get(self.root, ("", 0.0))[1]
        workers = [mb for pid, (name, mb) in self.peaks.items()
                   if pid != self.root and any(mark in name for mark in WORKER_MARKS)]
        return {"main_peak_rss_mb": round(main, 1), "worker_peak_rss_mb": [round(w, 1) for w in sorted(workers)],
                "all_processes_peak_rss_mb": round(sum(mb for _, mb in self.peaks.values()), 1),
                "processes": [{"pid": pid, "cmd": name[:80], "peak_rss_mb": round(mb, 1)}
                              for pid, (name, mb) in sorted(self.peaks.items())]}


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def timed(commands: list[list[str]], threads: int) -> dict[str, object]:
    """Run ``commands`` one after the other; wall time and the largest peak RSS per role."""
    t0 = time.perf_counter()
    mains: list[float] = []
    workers: list[float] = []
    totals: list[float] = []
    processes: list[dict[str, object]] = []
    for cmd in commands:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(threads), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        sampler = PeakRss(proc.pid)
        _, err = proc.communicate()
        rss = sampler.stop()
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
        mains.append(rss["main_peak_rss_mb"])
        totals.append(rss["all_processes_peak_rss_mb"])
        workers.extend(rss["worker_peak_rss_mb"])
        if len(commands) == 1:
            processes = rss["processes"]
    return {"wall_s": time.perf_counter() - t0, "main_peak_rss_mb": max(mains), "sum_peak_rss_mb": max(totals),
            "worker_peak_rss_mb": workers if len(commands) == 1 else (max(workers) if workers else None),
            "processes": processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--min-seconds", type=float, default=1.5)
    parser.add_argument("--max-seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one-by-one", type=int, default=20, metavar="N", help="clips for the one-by-one mode")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--modes", nargs="+", metavar="MODE", help="run only these modes, in this order")
    parser.add_argument("--tiny", action="store_true", help="the small test models (a quick check of the script)")
    parser.add_argument("--ckpt-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tar-size", type=int, default=20, metavar="N", help="clips per tar (tar modes)")
    args = parser.parse_args()
    cache = BENCH / ".cache"
    model = model_args(args, cache)
    out = args.out or (cache / "results-corpus-tiny.json" if args.tiny else BENCH / "results-corpus-cpu.json")
    work = cache / "corpus"
    clips = work / "clips"
    total = write_clips(clips, args.clips, args.min_seconds, args.max_seconds)
    subset = sorted(clips.glob("*.wav"))[: args.one_by_one]
    subset_seconds = sum(sf.info(str(p)).duration for p in subset)
    py = [sys.executable, "-m", "socodec"]
    t = str(args.threads)
    modes: dict[str, tuple[list[list[str]], float]] = {
        "one_by_one": ([[*py, str(p), str(work / "one" / f"{p.stem}.soc"), "-f", "-q", "--threads", t, *model]
                        for p in subset], subset_seconds),
        "directory": ([[*py, str(clips), str(work / "dir"), "-q", "--threads", t, *model]], total),
        "directory_batch": ([[*py, str(clips), str(work / "dir_batch"), "-q", "--threads", t, "--batch-size", "8",
                              *model]], total),
        "tokenize": ([[*py, "tokenize", str(clips), "-o", str(work / "tok"), "-q", *model]], total),
        "tokenize_2x1": ([[*py, "tokenize", str(clips), "-o", str(work / "tok2"), "-q", "--workers", "2",
                           "--threads", "1", *model]], total),
    }
    tars = write_tars(clips, work / "tars", args.tar_size)
    pattern = f"clips-{{000..{tars - 1:03d}}}.tar"
    modes["tokenize_tars"] = ([[*py, "tokenize", str(work / "tars" / pattern), "-o", str(work / "tok_tars"), "-q",
                                *model]], total)
    modes["tokenize_tars_s3"] = ([[*py, "tokenize", f"s3://bench/tars/{pattern}", "-o", "s3://bench/tok_s3", "-q",
                                   *model]], total)
    if not args.skip_ray:
        modes["tokenize_ray"] = ([[*py, "tokenize", str(clips), "-o", str(work / "tok_ray"), "-q", "--engine",
                                   "ray", *model]], total)
    if args.modes:
        unknown = sorted(set(args.modes) - set(modes))
        if unknown:
            raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(modes)}")
        modes = {name: modes[name] for name in args.modes}
    results: dict[str, dict[str, object]] = {}
    server = start_s3(work / "tars") if "tokenize_tars_s3" in modes else None
    for name, (commands, seconds) in modes.items():
        if server is not None and server[1].exists("bench/tok_s3"):
            server[1].rm("bench/tok_s3", recursive=True)
        for folder in ("one", "dir", "dir_batch", "tok", "tok2", "tok_ray", "tok_tars"):
            shutil.rmtree(work / folder, ignore_errors=True)
        (work / "one").mkdir(parents=True)
        print(f"{name}: {len(commands)} command(s), {seconds:.0f} s of audio ...", flush=True)
        before = {"gemm_gflops": round(matmul_gflops(), 1), "loadavg": loadavg()}
        result = timed(commands, args.threads)
        result.update(before, audio_s=seconds, throughput=seconds / result["wall_s"])
        results[name] = result
    base = results["directory"]["throughput"] if "directory" in results else float("nan")
    for result in results.values():
        result["vs_directory"] = result["throughput"] / base
    if "tokenize_ray" in results and "tokenize" in results:
        results["tokenize_ray"]["overhead_vs_local_s"] = results["tokenize_ray"]["wall_s"] - results["tokenize"]["wall_s"]
    report = {**report_header(args.threads), "clips": args.clips, "seconds": [args.min_seconds, args.max_seconds],
              "audio_s": total, "model": "tiny test models" if args.tiny else "real-size random weights",
              "modes": results}
    if server is not None:
        server[0].stop()
    print_table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def write_tars(clips: Path, folder: Path, size: int) -> int:
    """The clips as WebDataset tars of ``size`` clips each (``clips-000.tar``, ...); returns how many."""
    import tarfile

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = sorted(clips.glob("*.wav"))
    groups = [files[i : i + size] for i in range(0, len(files), size)]
    for n, group in enumerate(groups):
        with tarfile.open(folder / f"clips-{n:03d}.tar", "w") as tar:
            for path in group:
                tar.add(path, arcname=path.name)
    return len(groups)


def start_s3(tars: Path) -> tuple[object, object]:
    """A moto S3 server on loopback holding ``tars`` under ``s3://bench/tars/``; sets the commands' environment."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    EXTRA_ENV.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                     AWS_ENDPOINT_URL=f"http://{host}:{port}")
    fs = s3fs.S3FileSystem(key="bench", secret="bench", endpoint_url=f"http://{host}:{port}")
    fs.mkdir("bench")
    for tar in sorted(tars.glob("*.tar")):
        fs.put_file(str(tar), f"bench/tars/{tar.name}")
    return server, fs


def model_args(args: argparse.Namespace, cache: Path) -> list[str]:
    """The model options for every command: real-size random weights, or the tiny models."""
    if args.tiny:
        ckpts = args.ckpt_dir or cache / "ckpts-tiny"
        if not (ckpts / "analyzer_tiny.json").is_file():
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_checkpoints.py"), str(ckpts), "--tiny"],
                           check=True)
        return ["--ckpt-dir", str(ckpts), "--analyzer-config", str(ckpts / "analyzer_tiny.json"),
                "--vocoder-config", str(ckpts / "vocoder_tiny.json"), "--no-download"]
    ckpts = args.ckpt_dir or cache / "ckpts"
    ensure_checkpoints(ckpts)
    return ["--ckpt-dir", str(ckpts), "--no-download"]


def print_table(results: dict[str, dict[str, object]]) -> None:
    print(f"{'mode':<16} {'wall s':>8} {'audio h/h':>10} {'vs dir':>7} {'main MB':>8} {'all MB':>7}  worker MB  "
          "(GEMM GFLOP/s, load)")
    for name, r in results.items():
        workers = r["worker_peak_rss_mb"]
        shown = ", ".join(f"{w:.0f}" for w in workers) if isinstance(workers, list) else (
            "-" if workers is None else f"{workers:.0f}")
        print(f"{name:<16} {r['wall_s']:>8.1f} {r['throughput']:>10.2f} {r['vs_directory']:>7.2f} "
              f"{r['main_peak_rss_mb']:>8.0f} {r['sum_peak_rss_mb']:>7.0f}  {shown or '-':<10} "
              f"({r['gemm_gflops']}, {r['loadavg'][:1]})")


if __name__ == "__main__":
    main()
