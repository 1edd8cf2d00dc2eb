"""One benchmark phase at one length in a fresh process (started by ``bench/run.py``).

    python bench/worker.py --phase analysis --seconds 60 --codes X.soc --ckpt-dir DIR --cache-dir DIR
    python bench/worker.py --phase synthesis --codes X.soc --ckpt-dir DIR --cache-dir DIR

Loads the codec (timed), then one warm-up encode (or decode), ``--runs`` timed runs
with per-stage wall times (a float32 and a bfloat16 GEMM throughput sample before each),
reads the process's peak RSS (VmHWM), and last one more run under torch's FLOP counter
(FLOPs per stage; it raises the peak, hence last). Analysis writes its
codes to ``--codes`` for the synthesis process. Prints one JSON line; the parent
also reads the whole process's peak RSS from ``wait4``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from stages import StageTimer, flop_counter, loadavg, matmul_gflops, peak_rss_mb  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SPEECH = REPO.parent / "shared" / "reference" / "golden" / "ground_truth.wav"
RATE = 16000


def speech_like(seconds: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """``seconds`` of 16 kHz audio: the golden utterance tiled, else syllable-modulated pink noise."""
    n = int(round(seconds * RATE))
    if SPEECH.is_file():
        from socodec.audio import read_audio

        data, rate = read_audio(SPEECH)
        data = np.asarray(data, dtype=np.float32)
        data = data.mean(axis=1) if data.ndim == 2 else data
        if rate == RATE and data.size:
            return np.resize(data, n).astype(np.float32), f"tiled {SPEECH.name}"
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 50.0))  # pink
    noise = np.fft.irfft(spectrum, n)
    envelope = 0.5 * (1 + np.sin(2 * math.pi * 4.0 * np.arange(n) / RATE))  # ~4 syllables/s
    wav = noise * envelope
    return (0.3 * wav / (np.abs(wav).max() + 1e-9)).astype(np.float32), "shaped noise"


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from socodec import SoCodec
    from socodec.codes import load_codes, save_codes
    from socodec.loading.native import native_kernel
    from socodec.nn.hubert import HubertFeatures
    from socodec.nn.vocoder import Vocoder

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codec = SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir, dtype=DTYPES[args.dtype])
    load_s = time.perf_counter() - t0
    result: dict[str, object] = {
        "phase": args.phase, "dtype": args.dtype, "threads": torch.get_num_threads(), "import_s": import_s, "load_s": load_s,
        "loadavg_start": loadavg(), "package": str(Path(sys.modules["socodec"].__file__).parent),
    }
    if args.phase == "analysis":
        wav, result["input"] = speech_like(args.seconds)
        result["seconds"] = wav.size / RATE
        options = {"padding": args.padding} if args.padding else {}
        work = lambda: codec.encode(wav, RATE, **options)  # noqa: E731
        codec.hubert  # noqa: B018 -- load the deferred HuBERT now, so the stage timer sees it
    else:
        codes = load_codes(args.codes)
        result["seconds"] = codes.num_samples / RATE
        work = lambda: codec.decode(codes)  # noqa: E731
    timer = StageTimer(codec)

    # Warm-up run (not counted), then the timed runs.
    with timer.phase(args.phase):
        out = work()
    result["warmup"] = {"stages": dict(timer.seconds)}

    runs: list[dict[str, object]] = []
    for _ in range(args.runs):
        record: dict[str, object] = {"matmul_gflops": matmul_gflops(), "matmul_gflops_bf16": matmul_gflops(dtype=torch.bfloat16),
                                     "loadavg": loadavg()}
        timer.reset()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with timer.phase(args.phase):
            out = work()
        record.update(wall_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0,
                      stages=dict(timer.seconds))
        runs.append(record)
    result["runs"] = runs
    # Peak of the process so far (loading, warm-up and runs): what a user's process reaches.
    result["peak_rss_process_mb"] = peak_rss_mb()

    # Last, one more run under torch's FLOP counter (FLOPs per stage). The counter intercepts
    # every op and raises the peak, which is why it comes after the RSS reading.
    # The native kernels are detached for it: the counter sees only PyTorch's operators, and the
    # floor is the model's work, not what the C kernels happen to hide from the counter.
    if not args.no_flops:
        timer.reset()
        kernel = native_kernel()
        natives = [m for m in codec.modules() if isinstance(m, (HubertFeatures, Vocoder))]
        for module in natives:
            module.use_native(None)
        try:
            with flop_counter() as counter:
                timer.counter = counter
                with timer.phase(args.phase):
                    work()
                result["flops"] = {"stages": dict(timer.flops), "total": counter.get_total_flops()}
        finally:
            timer.counter = None
            for module in natives:
                module.use_native(kernel)
    result["matmul_gflops_end"] = matmul_gflops()
    result["loadavg_end"] = loadavg()
    if args.phase == "analysis":
        save_codes(out, args.codes)
        result["tokens"] = list(out.tokens.shape)
    else:
        result["output_samples"] = int(out.numel())
    timer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("analysis", "synthesis"), default="analysis")
    parser.add_argument("--seconds", type=float, default=10.0, help="input length (analysis)")
    parser.add_argument("--codes", type=Path, help="token file: written by analysis, read by synthesis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype of HuBERT (on CPU the vocoder stays float32)")
    parser.add_argument("--load-only", action="store_true", help="only load the codec (converts the HuBERT cache)")
    parser.add_argument("--padding", choices=("published", "grid"), help="analysis padding (default: the package's)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting run")
    parser.add_argument("--package", type=Path, default=REPO, help="folder holding the socodec package to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(args.package.resolve()))  # before the first socodec import
    logging.basicConfig(level=logging.WARNING)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.codes is None and not args.load_only:
        parser.error("--codes is required")
    if args.load_only:
        torch.set_num_threads(args.threads)
        from socodec import SoCodec

        t0 = time.perf_counter()
        SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir)
        print(json.dumps({"load_s": time.perf_counter() - t0}))
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
