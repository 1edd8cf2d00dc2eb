"""Load benchmark of ``socodec serve`` on this machine, loopback only.

    python bench/serve.py [--streams 1 4 16 64] [--seconds 60] [--threads 2] [--workers 1]
                          [--clip-seconds 5] [--request-seconds 30] [--ckpt-dir bench/.cache/ckpts]
                          [--out bench/results-serve-cpu.json]

Starts ``socodec serve`` (real-size random weights, written by
``scripts/make_random_checkpoints.py`` when missing) on 127.0.0.1 and a free port, then:

* encode and decode requests per second for ``--clip-seconds`` clips, 2 clients at once, for
  ``--request-seconds`` each (first, on the idle server);
* then for each N in ``--streams``: N WebSocket streams at once, each feeding random token frames at
  real time (one frame every 120 ms, 8.33 frames/s) for ``--seconds``. Per stream: the
  first-audio latency (first frame sent -> first audio received) and the same beyond the model's
  look-ahead (the audio of the first frames is final only once the 2nd frame is sent, 120 ms
  later), the gaps between audio messages, and the lag of each audio message behind the frame
  that completed it. A stream "stayed real-time" when that lag never exceeded 1 s (a model that
  cannot keep up makes it grow without bound).

Reports p50/p95/p99 first-audio latency, p95 gap, the share of real-time streams, errors and the
server's peak RSS per N, and writes everything to ``--out``. Bounded: every phase stops after
its duration; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import websockets

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import ensure_checkpoints  # noqa: E402
from stages import git_state, loadavg  # noqa: E402

FRAME_S = 0.12
REALTIME_LAG_S = 1.0
GRACE_S = 30.0  # after the last frame, a stream waits this long for its audio, then hangs up


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "socodec", "serve", "--host", "127.0.0.1", "--port", "0", "--ckpt-dir",
         str(args.ckpt_dir), "--threads", str(args.threads), "--workers", str(args.workers),
         "--max-streams", str(max(args.streams)), "--max-queue", "64"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"server failed: {log.read_text()}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in 10 minutes")


def wait_drained(url: str, limit_s: float = 300.0) -> float:
    """Wait until the server holds no stream (streams that hung up finish their step first); seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        found = re.search(r"^socodec_active_streams ([0-9.]+)$", httpx.get(url + "/metrics").text, re.M)
        if found and float(found.group(1)) == 0:
            break
        time.sleep(1)
    return time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


async def one_stream(url: str, seconds: float, speaker: list[float], seed: int) -> dict[str, object]:
    """Feed random frames at real time for ``seconds``; time what comes back."""
    rng = np.random.default_rng(seed)
    frames = int(seconds / FRAME_S)
    sent: list[float] = []
    received: list[tuple[float, int]] = []  # (time, samples so far)
    error = None
    unfinished = False
    try:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"speaker": speaker, "sample_format": "s16le"}))

            async def reader() -> None:
                total = 0
                async for message in ws:
                    total += len(message) // 2
                    received.append((time.perf_counter(), total))

            task = asyncio.create_task(reader())
            start = time.perf_counter()
            for i in range(frames):
                await asyncio.sleep(max(0.0, start + i * FRAME_S - time.perf_counter()))
                sent.append(time.perf_counter())
                await ws.send(json.dumps({"tokens": rng.integers(0, 16384, (1, 4)).tolist()}))
            await ws.send(json.dumps({"end": True}))
            try:
                await asyncio.wait_for(task, timeout=GRACE_S)
            except asyncio.TimeoutError:  # too far behind: hang up (the server then drops the stream)
                unfinished = True
            if not unfinished and ws.close_code != 1000:
                error = f"closed with {ws.close_code}"
    except Exception as exc:  # noqa: BLE001 - counted as an error of this stream
        error = f"{type(exc).__name__}: {exc}"[:200]
    return {"sent": sent, "received": received, "error": error, "unfinished": unfinished}


def stream_stats(result: dict[str, object]) -> dict[str, object] | None:
    sent, received = result["sent"], result["received"]
    if result["error"] or len(sent) < 3 or not received:
        return None
    first = received[0][0] - sent[0]
    beyond = received[0][0] - sent[1]
    lags = []
    for t, total in received[:-1]:  # the last message is the flush after {"end": true}
        frame = -(-(total + 2240) // 1920) - 1  # the frame whose arrival made this audio final
        lags.append(t - sent[min(frame, len(sent) - 1)])
    gaps = np.diff([t for t, _ in received[:-1]]) if len(received) > 2 else np.zeros(1)
    max_lag = max(lags) if lags else 0.0
    return {"first_audio_s": first, "first_audio_beyond_lookahead_s": beyond, "gap_p95_s": float(np.percentile(gaps, 95)),
            "max_lag_s": max_lag, "realtime": max_lag <= REALTIME_LAG_S and not result["unfinished"]}


async def streams_phase(ws_url: str, n: int, seconds: float, speaker: list[float]) -> dict[str, object]:
    results = await asyncio.gather(*(one_stream(ws_url, seconds, speaker, i) for i in range(n)))
    stats = [stream_stats(r) for r in results]
    ok = [s for s in stats if s is not None]
    first = [s["first_audio_s"] for s in ok]
    beyond = [s["first_audio_beyond_lookahead_s"] for s in ok]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {
        "streams": n, "seconds": seconds, "errors": sum(bool(r["error"]) for r in results),
        "no_audio": sum(s is None and not r["error"] for s, r in zip(stats, results)),
        "unfinished": sum(bool(r["unfinished"]) for r in results),
        "error_examples": sorted({str(r["error"]) for r in results if r["error"]})[:3],
        "first_audio_p50_s": pct(first, 50), "first_audio_p95_s": pct(first, 95), "first_audio_p99_s": pct(first, 99),
        "beyond_lookahead_p95_s": pct(beyond, 95),
        "gap_p95_s": pct([s["gap_p95_s"] for s in ok], 95),
        "realtime_share": sum(s["realtime"] for s in ok) / n, "max_lag_s": max((s["max_lag_s"] for s in ok), default=None),
    }


def requests_phase(url: str, route: str, body: bytes, seconds: float, clients: int = 2) -> dict[str, object]:
    async def client(done: list[float], errors: list[str]) -> None:
        async with httpx.AsyncClient(timeout=120) as c:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                r = await c.post(url + route, content=body)
                if r.status_code == 200:
                    done.append(time.perf_counter() - t)
                else:
                    errors.append(str(r.status_code))

    async def run() -> tuple[list[float], list[str], float]:
        done: list[float] = []
        errors: list[str] = []
        t = time.perf_counter()
        await asyncio.gather(*(client(done, errors) for _ in range(clients)))
        return done, errors, time.perf_counter() - t

    done, errors, wall = asyncio.run(run())
    return {"route": route, "clients": clients, "requests": len(done), "errors": len(errors),
            "per_second": len(done) / wall, "latency_p50_s": float(np.median(done)) if done else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--clip-seconds", type=float, default=5.0)
    p.add_argument("--request-seconds", type=float, default=30.0)
    p.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    p.add_argument("--out", type=Path, default=BENCH / "results-serve-cpu.json")
    args = p.parse_args()
    ensure_checkpoints(args.ckpt_dir)
    log = BENCH / ".cache" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(args, log)
    rows, requests = [], []
    try:
        speaker = list(np.random.default_rng(0).normal(0, 1, httpx.get(url + "/healthz").json()["model"]["speaker_dim"]))
        t = np.arange(int(args.clip_seconds * 16000)) / 16000
        clip = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
        wav = io.BytesIO()
        sf.write(wav, clip, 16000, format="WAV", subtype="PCM_16")
        soc = httpx.post(url + "/v1/encode", content=wav.getvalue(), timeout=300).content
        for route, body in (("/v1/encode", wav.getvalue()), ("/v1/decode", soc)):
            requests.append(requests_phase(url, route, body, args.request_seconds))
            print(json.dumps(requests[-1]), flush=True)
        for n in args.streams:
            drained = wait_drained(url)
            load_before = loadavg()
            row = asyncio.run(streams_phase(url.replace("http", "ws") + "/v1/stream", n, args.seconds, speaker))
            row.update(peak_rss_mb=peak_rss_mb(proc.pid), load_before=load_before, load_after=loadavg(),
                       drain_before_s=drained)
            rows.append(row)
            print(json.dumps(row), flush=True)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out = {"git": git_state(REPO), "threads": args.threads, "workers": args.workers, "cpus": os.cpu_count(),
           "streams": rows, "requests": requests, "server_peak_rss_mb": rss, "clip_seconds": args.clip_seconds}
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\n{'N':>4} {'first p50':>9} {'p95':>6} {'p99':>6} {'beyond LA p95':>13} {'gap p95':>7} "
          f"{'real-time':>9} {'errors':>6} {'RSS MB':>7}")
    for r in rows:
        f = lambda x: "-" if x is None else f"{x * 1000:.0f}"  # noqa: E731
        print(f"{r['streams']:>4} {f(r['first_audio_p50_s']):>9} {f(r['first_audio_p95_s']):>6} "
              f"{f(r['first_audio_p99_s']):>6} {f(r['beyond_lookahead_p95_s']):>13} {f(r['gap_p95_s']):>7} "
              f"{r['realtime_share']:>9.0%} {r['errors']:>6} {r['peak_rss_mb']:>7.0f}")
    for q in requests:
        print(f"{q['route']}: {q['per_second']:.2f} req/s ({q['clients']} clients, {args.clip_seconds:.0f} s clips, "
              f"median latency {q['latency_p50_s']} s), errors {q['errors']}")


if __name__ == "__main__":
    main()
