"""bfloat16 (and int8-HuBERT) CPU paths against float32: token agreement, speaker and audio error, speed.

    python bench/agreement.py [--seconds 10] [--threads 2] [--out bench/results-bf16-cpu.json]

In one process, float32 and the other variants are timed interleaved (so machine noise hits
both alike) on the real-size random checkpoints (``bench/.cache/ckpts``) and on the tiny
golden models with the golden inputs. Reports: token frames equal to float32 (all streams),
per-stream agreement, speaker-vector max abs error, decoded-audio max abs difference and SNR
(float32 decode of the same codes as the reference), the analysis / synthesis speed-up, and
how fragile the tokens are (:func:`noise_sensitivity`: agreement under white noise of known
size on the float32 features, beside the bfloat16 features' relative error).
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

GOLDEN = REPO.parent / "shared" / "reference" / "golden"


def bf16_gflops(n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(work) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def compare(ref_codes, codes, ref_audio, audio) -> dict[str, float]:
    equal = ref_codes.tokens == codes.tokens  # [T, S]
    noise = (audio - ref_audio).double()
    snr = 10 * torch.log10(ref_audio.double().pow(2).sum() / noise.pow(2).sum().clamp_min(1e-30))
    return {
        "token_frames_equal": float(equal.all(dim=1).float().mean()),
        "per_stream_equal": [float(v) for v in equal.float().mean(dim=0)],
        "speaker_max_abs_err": float((codes.speaker - ref_codes.speaker).abs().max()),
        "speaker_max_abs": float(ref_codes.speaker.abs().max()),
        "audio_max_abs_diff": float(noise.abs().max()),
        "audio_snr_db": float(snr),
    }


def int8_hubert(codec) -> None:
    """HuBERT's linear layers as dynamically quantised int8 (torch.ao), in place."""
    import warnings

    with warnings.catch_warnings():  # torch.ao's deprecation notices
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        codec._modules["hubert"] = quantize_dynamic(codec.hubert, {torch.nn.Linear}, dtype=torch.qint8)


def noise_sensitivity(codec, low, wav: torch.Tensor, levels=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                      draws: int = 5) -> dict[str, object]:
    """How fragile the tokens are: frames equal when white noise is added to float32 HuBERT features.

    For each relative level r, ``draws`` times: features + noise with norm r * ||features||, then
    the float32 encoder and quantiser; the fraction of token frames (all streams) equal to the
    noiseless tokens. For comparison, the relative error ||f_low - f|| / ||f|| of the features
    of ``low`` (the bfloat16 codec) and its token-frame agreement.
    """
    from socodec.config import LEAD_SAMPLES

    padded = codec.pad(codec.mono(wav, RATE), LEAD_SAMPLES)[None]
    with torch.inference_mode():
        feats = codec.features(padded)
        ref = codec.analyzer.tokens(feats)[0]
        low_feats = low.features(padded)
        out: dict[str, object] = {
            "bfloat16_relative_feature_error": float((low_feats - feats).norm() / feats.norm()),
            "bfloat16_frames_equal": float((codec.analyzer.tokens(low_feats)[0] == ref).all(dim=1).float().mean()),
        }
        gen = torch.Generator().manual_seed(0)
        for level in levels:
            equal = []
            for _ in range(draws):
                noise = torch.randn(feats.shape, generator=gen)
                noisy = feats + noise * (level * feats.norm() / noise.norm())
                equal.append(float((codec.analyzer.tokens(noisy)[0] == ref).all(dim=1).float().mean()))
            out[f"noise_{level:g}"] = {"median": statistics.median(equal), "draws": equal}
    return out


def measure(load, wav: torch.Tensor, runs: int) -> dict[str, object]:
    """float32 vs bfloat16 (and int8 HuBERT) on one model: agreement and interleaved timings."""
    from socodec import SoCodec  # noqa: F401

    variants = {"float32": load(torch.float32), "bfloat16": load(torch.bfloat16)}
    int8 = load(torch.float32)
    int8_hubert(int8)
    variants["int8_hubert"] = int8
    codes = {name: codec.encode(wav) for name, codec in variants.items()}
    sensitivity = noise_sensitivity(variants["float32"], variants["bfloat16"], wav)
    ref = variants["float32"]
    audio = {name: variants[name if name != "int8_hubert" else "float32"].decode(codes[name]) for name in variants}
    ref_from_codes = {name: ref.decode(codes[name]) for name in variants}
    out: dict[str, object] = {"sensitivity": sensitivity}
    for name in ("bfloat16", "int8_hubert"):
        row = compare(codes["float32"], codes[name], audio["float32"], audio[name])
        # synthesis alone: the same codes through float32 and this variant's vocoder
        same = ref_from_codes[name]
        noise = (audio[name] - same).double()
        row["synthesis_only_max_abs_diff"] = float(noise.abs().max())
        row["synthesis_only_snr_db"] = float(10 * torch.log10(same.double().pow(2).sum() / noise.pow(2).sum().clamp_min(1e-30)))
        out[name] = row
    seconds = wav.numel() / RATE
    times: dict[str, dict[str, list[float]]] = {n: {"analysis": [], "synthesis": []} for n in variants}
    for _ in range(runs):
        for name, codec in variants.items():
            times[name]["analysis"].append(_timed(lambda: codec.encode(wav)) / seconds)
            if name != "int8_hubert":
                times[name]["synthesis"].append(_timed(lambda: codec.decode(codes["float32"])) / seconds)
    for name in variants:
        out.setdefault(name, {})
        out[name]["analysis_rtf"] = statistics.median(times[name]["analysis"])
        if times[name]["synthesis"]:
            out[name]["synthesis_rtf"] = statistics.median(times[name]["synthesis"])
    for name in ("bfloat16", "int8_hubert"):
        out[name]["analysis_speedup"] = out["float32"]["analysis_rtf"] / out[name]["analysis_rtf"]
        if "synthesis_rtf" in out[name]:
            out[name]["synthesis_speedup"] = out["float32"]["synthesis_rtf"] / out[name]["synthesis_rtf"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ckpt-dir", type=Path, default=BENCH / ".cache" / "ckpts")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / ".cache" / "hubert")
    parser.add_argument("--out", type=Path, default=BENCH / "results-bf16-cpu.json")
    args = parser.parse_args()
    ensure_checkpoints(args.ckpt_dir)
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    from socodec import SoCodec

    report: dict[str, object] = {**report_header(args.threads), "seconds": args.seconds, "runs": args.runs,
                                 "gemm_gflops": {"float32": matmul_gflops(), "bfloat16": bf16_gflops()}}
    wav, _ = speech_like(args.seconds)
    real = measure(lambda dtype: SoCodec.from_pretrained(args.ckpt_dir, cache_dir=args.cache_dir, dtype=dtype),
                   torch.from_numpy(wav), args.runs)
    report["real_size_random"] = real
    golden = {}
    for case in ("ground_truth", "chirp", "edge"):
        wav_case = load_file(str(GOLDEN / f"golden_{case}.safetensors"))["input_wav"].float().flatten()
        golden[case] = measure(
            lambda dtype: SoCodec.from_files(
                GOLDEN / "hubert_tiny_fairseq.pt", GOLDEN / "analyzer_tiny.safetensors",
                GOLDEN / "vocoder_tiny.safetensors", GOLDEN / "analyzer_tiny.json", GOLDEN / "vocoder_tiny.json",
                cache_dir=args.cache_dir, dtype=dtype),
            wav_case, 1)
    report["golden_tiny"] = golden
    report["loadavg_end"] = loadavg()
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"gemm": report["gemm_gflops"], "real": real,
                      "golden_token_frames_equal": {c: {n: g[n].get("token_frames_equal") for n in ("bfloat16", "int8_hubert")}
                                                    for c, g in golden.items()}}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
