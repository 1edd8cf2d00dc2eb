"""Exact (full-attention) against windowed HuBERT analysis on long inputs, one fresh process per case.

    python bench/exact.py [--lengths 30 120 300 600] [--modes exact windowed] [--threads 2]
                          [--agreement 40] [--out bench/results-exact-cpu.json]

Each case loads the real-size codec (random weights of the released sizes, ``bench/.cache/ckpts``),
loads HuBERT, then times one ``codec.encode(array)`` of speech-like input: ``exact`` is the
default (attention over the whole input, the published arithmetic), ``windowed`` passes
``hubert_window=20.04`` (the fall-back beyond ``--exact-max-seconds``). It reports the real-time
factor, the peak RSS of the process (VmHWM, loading included) and, per length, the share of token
frames on which the two modes agree.

``--agreement SECONDS`` also checks exactness without the published code: the same input is
analysed by a float64 copy of the model with full attention (the reference), and the float32
exact and windowed token frames are compared with it (all four streams equal).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import ensure_checkpoints, run_child  # noqa: E402
from stages import loadavg, report_header  # noqa: E402

MODES = {"exact": None, "windowed": 20.04}


def child(args: argparse.Namespace) -> None:
    import torch

    from stages import peak_rss_mb
    from worker import RATE, speech_like

    torch.set_num_threads(args.threads)
    from socodec import SoCodec

    wav, _ = speech_like(args.seconds)
    codec = SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir)
    codec.hubert  # loaded before timing
    if args.child == "reference":
        from socodec.config import LEAD_SAMPLES

        x = codec.mono(wav, RATE)
        tokens = {}
        with torch.inference_mode():  # HuBERT and the encoder in float64, one pass, full attention
            encoder = codec.analyzer.encoder
            codec.hubert.double()
            encoder.double()
            padded = codec.pad(x.double(), LEAD_SAMPLES)[None]
            tokens["reference"] = codec.analyzer.vq.encode(encoder(codec.hubert(padded)).float())[0]
            codec.hubert.float()
            encoder.float()
        for mode, window in MODES.items():
            tokens[mode] = codec.encode(wav, RATE, hubert_window=window).tokens
        ref = tokens["reference"]
        print(json.dumps({"seconds": args.seconds, "frames": int(ref.shape[0]), **{
            f"{mode}_vs_float64": float((tokens[mode] == ref).all(dim=1).float().mean()) for mode in MODES}}))
        return
    loaded = peak_rss_mb()
    start = time.perf_counter()
    codes = codec.encode(wav, RATE, hubert_window=MODES[args.child])
    elapsed = time.perf_counter() - start
    out = args.codes_dir / f"{args.child}_{args.seconds:g}.pt"
    torch.save(codes.tokens, out)
    print(json.dumps({"mode": args.child, "seconds": args.seconds, "encode_s": elapsed, "rtf": elapsed / args.seconds,
                      "attention": codes.attention, "peak_mib_loaded": loaded, "peak_mib": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 120.0, 300.0, 600.0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--agreement", type=float, nargs="*", default=[40.0], metavar="SECONDS")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert")
    parser.add_argument("--codes-dir", type=Path, default=BENCH / ".cache" / "exact")
    parser.add_argument("--out", type=Path, default=BENCH / "results-exact-cpu.json")
    parser.add_argument("--child", choices=[*MODES, "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch

    ensure_checkpoints(args.ckpt_dir)
    args.codes_dir.mkdir(parents=True, exist_ok=True)
    common = ["--threads", str(args.threads), "--ckpt-dir", str(args.ckpt_dir), "--cache-dir", str(args.cache_dir),
              "--codes-dir", str(args.codes_dir)]
    rows, agreement = [], []
    for seconds in args.agreement:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "reference", "--seconds", str(seconds), *common]
        result, rss = run_child(cmd, args.threads)
        agreement.append(result)
        print(f"{seconds:6.0f} s  token frames equal to the float64 full-attention reference: "
              f"exact {result['exact_vs_float64']:.2%}, windowed {result['windowed_vs_float64']:.2%}", flush=True)
    for seconds in args.lengths:
        for mode in args.modes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--seconds", str(seconds), *common]
            result, rss = run_child(cmd, args.threads)
            result["peak_rss_mib"] = rss
            rows.append(result)
            print(f"{seconds:6.0f} s {mode:9s} RTF {result['rtf']:.3f}  peak {rss:6.0f} MiB", flush=True)
        paths = [args.codes_dir / f"{mode}_{seconds:g}.pt" for mode in MODES]
        if all(p.is_file() for p in paths):
            a, b = (torch.load(p) for p in paths)
            share = float((a == b).all(dim=1).float().mean())
            rows.append({"seconds": seconds, "exact_vs_windowed_frames_equal": share})
            print(f"{seconds:6.0f} s  exact and windowed token frames equal: {share:.2%}", flush=True)
    report = {**report_header(args.threads), "agreement": agreement, "rows": rows, "loadavg_end": loadavg()}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"failed: {err}") from None
