"""The hour-long test, run the way a user runs it: the ``socodec`` command under ``/usr/bin/time -v``.

    python bench/hour.py [--seconds 3600] [--rate 16000] [--threads 2]
                         [--ckpt-dir bench/.cache/ckpts] [--cache-dir bench/.cache/hubert]
                         [--out bench/results-hour-cpu.json]

Writes a ``--seconds`` long 16-bit wav at ``--rate`` (the golden utterance tiled, as in
``bench/run.py``; stereo when ``--rate`` is not 16000, to exercise the conversion path) to
``bench/.cache/hour/``, then runs ``socodec IN.wav OUT.soc`` (encode) and
``socodec OUT.soc OUT.wav`` (decode), one fresh process each, and records from
``/usr/bin/time -v``: wall time (real-time factor = wall / audio seconds, model load
included), peak RSS ("Maximum resident set size") and CPU seconds. Prints a table and
writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import _child_env, ensure_checkpoints  # noqa: E402
from stages import loadavg, report_header  # noqa: E402
from worker import speech_like  # noqa: E402

TIME = Path("/usr/bin/time")


def write_input(path: Path, seconds: float, rate: int) -> None:
    """``seconds`` of speech-like audio at ``rate`` (stereo unless 16 kHz), 16-bit PCM, written in blocks."""
    if path.is_file() and abs(sf.info(str(path)).duration - seconds) < 1.0:
        return
    unit, how = speech_like(60.0)  # one minute at 16 kHz, repeated
    if rate != 16000:
        import soxr

        unit = soxr.resample(unit, 16000, rate, quality="VHQ").astype(np.float32)
    channels = 1 if rate == 16000 else 2
    total = int(round(seconds * rate))
    tmp = path.with_suffix(".tmp.wav")
    with sf.SoundFile(str(tmp), "w", samplerate=rate, channels=channels, subtype="PCM_16") as out:
        done = 0
        while done < total:
            block = unit[: total - done]
            out.write(block if channels == 1 else np.stack([block, 0.5 * block], axis=1))
            done += block.shape[0]
    os.replace(tmp, path)
    print(f"wrote {path} ({seconds:g} s, {rate} Hz x {channels}, {how})", flush=True)


def timed(cmd: list[str], threads: int, cache_dir: Path) -> dict[str, float]:
    """Run ``cmd`` under ``/usr/bin/time -v``; wall, user and system seconds and peak RSS (MB)."""
    env = _child_env(threads)
    env["SOCODEC_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([str(TIME), "-v", *cmd], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")

    def field(name: str) -> str:
        match = re.search(rf"^\s*{re.escape(name)}: (.+)$", proc.stderr, re.MULTILINE)
        if match is None:
            raise SystemExit(f"/usr/bin/time printed no '{name}'")
        return match.group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    return {
        "wall_s": wall,
        "user_s": float(field("User time (seconds)")),
        "system_s": float(field("System time (seconds)")),
        "peak_rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--rate", type=int, default=16000, help="input sample rate (not 16000: stereo, converted)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert", help="converted HuBERT cache")
    parser.add_argument("--out", type=Path, default=BENCH / "results-hour-cpu.json")
    args = parser.parse_args()
    if not TIME.is_file():
        raise SystemExit(f"{TIME} is needed (Debian: apt install time)")
    ensure_checkpoints(args.ckpt_dir)
    folder = BENCH / ".cache" / "hour"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"hour_{args.seconds:g}s_{args.rate}"
    wav, codes, out = folder / f"{stem}.wav", folder / f"{stem}.soc", folder / f"{stem}_decoded.wav"
    write_input(wav, args.seconds, args.rate)
    base = [sys.executable, "-m", "socodec", "-q", "-f", "--ckpt-dir", str(args.ckpt_dir),
            "--threads", str(args.threads)]
    results = {}
    for phase, src, dst in (("encode", wav, codes), ("decode", codes, out)):
        print(f"{phase}: {src.name} -> {dst.name} ...", flush=True)
        r = timed(base + [str(src), str(dst)], args.threads, args.cache_dir)
        r["rtf"] = r["wall_s"] / args.seconds
        r["cores_used"] = (r["user_s"] + r["system_s"]) / r["wall_s"]
        results[phase] = r
        print(f"  wall {r['wall_s']:.0f} s, RTF {r['rtf']:.3f}, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"cores {r['cores_used']:.2f}", flush=True)
    decoded = sf.info(str(out))
    report = {
        **report_header(args.threads),
        "seconds": args.seconds,
        "input": {"rate": args.rate, "channels": 1 if args.rate == 16000 else 2, "bytes": wav.stat().st_size},
        "output": {"seconds": decoded.duration, "bytes": out.stat().st_size},
        "loadavg_end": loadavg(),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
