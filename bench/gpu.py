"""GPU measurements in one process: parity with the CPU, speed per dtype, token agreement, memory.

    python bench/gpu.py [--lengths 10 600] [--dtypes float32 float16 bfloat16] [--runs 2]
                        [--device cuda] [--ckpt-dir bench/.cache/ckpts] [--out bench/results-gpu.json]

1. Golden parity: the tiny golden models encode the golden inputs on the CPU and on the GPU in
   float32; reports the token frames (all streams) equal to the CPU's and the largest decoded
   sample difference. The same on ``--lengths[0]`` seconds with the real-size random weights.
2. Speed: for every length and dtype, ``encode`` and ``decode`` of speech-like input (one
   untimed warm-up call, then ``--runs`` timed calls, each synchronised), their real-time factors,
   the token frames equal to float32's on the same device, and the peak GPU memory of each phase
   (``torch.cuda.max_memory_allocated``, reset before the phase).
Run by ``bench/gpu.sh``; prints one JSON line per measurement as it goes, and writes all to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from stages import report_header  # noqa: E402
from worker import RATE, speech_like  # noqa: E402

GOLDEN = REPO.parent / "shared" / "reference" / "golden"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def emit(record: dict[str, object], sink: list[dict[str, object]]) -> None:
    sink.append(record)
    print(json.dumps(record), flush=True)


def frames_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of token frames ([T, streams]) equal in every stream (1.0 when all are)."""
    n = min(a.shape[0], b.shape[0])
    if n == 0:
        return 1.0
    same = (a[:n].cpu() == b[:n].cpu()).all(dim=1).float().mean().item()
    return same * n / max(a.shape[0], b.shape[0])


def timed(fn, device: torch.device) -> tuple[object, float]:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def parity(args: argparse.Namespace, device: torch.device, sink: list[dict[str, object]]) -> None:
    from socodec import SoCodec

    if (GOLDEN / "README.md").is_file():
        tiny = {}
        for dev in ("cpu", device):
            tiny[str(dev)] = SoCodec.from_files(
                GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors", GOLDEN / "vocoder_tiny.safetensors",
                analyzer_config=GOLDEN / "analyzer_tiny.json", vocoder_config=GOLDEN / "vocoder_tiny.json",
                cache_dir=args.work / "tiny-cache", device=dev)
        from safetensors.torch import load_file

        for name in ("ground_truth", "chirp", "edge"):
            wav = load_file(str(GOLDEN / f"golden_{name}.safetensors"))["input_wav"].numpy().astype(np.float32)
            wav = wav.mean(axis=1) if wav.ndim == 2 else wav
            cpu_codes = tiny["cpu"].encode(wav, RATE)
            gpu_codes = tiny[str(device)].encode(wav, RATE)
            a = tiny["cpu"].decode(cpu_codes)
            b = tiny[str(device)].decode(cpu_codes)
            emit({"test": "parity_tiny", "input": name, "frames": int(cpu_codes.tokens.shape[0]),
                  "frames_equal_to_cpu": frames_equal(cpu_codes.tokens, gpu_codes.tokens),
                  "decode_max_abs_diff": float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0}, sink)
        del tiny
    wav, _ = speech_like(args.lengths[0])
    codes = {}
    for dev in ("cpu", device):
        codec = SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir, device=dev)
        codes[str(dev)] = codec.encode(wav, RATE)
        del codec
    emit({"test": "parity_real_size", "seconds": args.lengths[0], "frames": int(codes["cpu"].tokens.shape[0]),
          "frames_equal_to_cpu": frames_equal(codes["cpu"].tokens, codes[str(device)].tokens)}, sink)


def speed(args: argparse.Namespace, device: torch.device, sink: list[dict[str, object]]) -> None:
    from socodec import SoCodec

    for seconds in args.lengths:
        wav, source = speech_like(seconds)
        reference = None
        for name in args.dtypes:
            codec = SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir, device=device, dtype=DTYPES[name])
            record: dict[str, object] = {"test": "speed", "seconds": seconds, "dtype": name, "input": source}
            for phase in ("analysis", "synthesis"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                work = (lambda: codec.encode(wav, RATE)) if phase == "analysis" else (lambda: codec.decode(codes))
                out, first = timed(work, device)
                if phase == "analysis":
                    codes = out
                times = [timed(work, device)[1] for _ in range(args.runs)]
                record[f"{phase}_first_s"] = first
                record[f"{phase}_rtf"] = statistics.median(times) / seconds
                record[f"{phase}_peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if reference is None:
                reference = codes.tokens
            record["frames_equal_to_float32"] = frames_equal(reference, codes.tokens)
            emit(record, sink)
            del codec
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 600.0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert")
    parser.add_argument("--work", type=Path, default=BENCH / ".cache" / "gpu")
    parser.add_argument("--out", type=Path, default=BENCH / "results-gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device")
    device = torch.device(args.device)
    if args.dtypes[0] != "float32":
        args.dtypes = ["float32"] + [d for d in args.dtypes if d != "float32"]  # agreement is against float32
    args.work.mkdir(parents=True, exist_ok=True)
    sink: list[dict[str, object]] = []
    report = {**report_header(torch.get_num_threads()), "gpu": torch.cuda.get_device_name(device),
              "cuda": torch.version.cuda, "results": sink}
    try:
        if not args.skip_parity:
            parity(args, device, sink)
        speed(args, device, sink)
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
