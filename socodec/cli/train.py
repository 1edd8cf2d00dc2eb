"""``socodec train DATA... --out RUN_DIR``: fine-tune the analyzer (HuBERT frozen, vocoder fixed).

Running the same command again continues from the run's newest checkpoint up to ``--steps``.
Several GPUs or machines: start it under ``torchrun`` (``torchrun --nproc_per_node 4 -m socodec
train ...``); each process reads its share of every step's batches.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from socodec.cli.common import EXIT_INTERRUPTED, Parser, UsageError
from socodec.cli.options import DTYPES
from socodec.config import ModelOptions

__all__ = ["TrainOptions", "build_parser", "main", "train_options"]

log = logging.getLogger("socodec")


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``socodec train`` was asked to do, typed."""

    data: tuple[str, ...]
    out: Path
    valid: tuple[str, ...]
    init: Path | None
    """The folder whose analyzer training starts from (None: from scratch)."""
    model: ModelOptions
    """HuBERT and the vocoder (and, with ``init``, nothing else: ``init`` names all three files)."""
    config_file: Path | None
    overrides: tuple[tuple[str, object], ...]
    """Training-config fields set on the command line (they win over ``--config``)."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="socodec train",
        description="Fine-tune the SoCodec analyzer (encoder, quantiser, speaker encoder, decoders) on your speech; "
        "HuBERT stays frozen and the vocoder fixed. Rerun the same command to resume.",
        epilog="DATA and --valid take what 'socodec tokenize' reads: audio files, folders, quoted globs, "
        "Kaldi/WeNet data folders (wav.scp, segments), JSONL manifests.",
    )
    p.add_argument("data", nargs="+", metavar="DATA", help="training audio")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                   help="run folder: metrics, checkpoints, samples, export/ (resumed when it holds checkpoints)")
    p.add_argument("--valid", nargs="+", default=[], metavar="DATA", help="validation audio (mel distance, samples)")
    model = p.add_argument_group("model")
    model.add_argument("--init", type=Path, default=None, metavar="CKPT_DIR",
                       help="start from this folder's analyzer (the three released-name files); "
                            "without it the analyzer starts from scratch")
    model.add_argument("--ckpt-dir", type=Path, default=None,
                       help="HuBERT and vocoder for a from-scratch run (default: $SOCODEC_CKPT_DIR or ./ckpts)")
    model.add_argument("--analyzer-config", type=Path, help="JSON config for another analyzer size")
    model.add_argument("--vocoder-config", type=Path, help="JSON config for another vocoder size")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun: cuda = one GPU per process)")
    model.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="frozen HuBERT/vocoder precision; float16/bfloat16 on CUDA only (default: float32)")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    model.add_argument("--no-download", action="store_true", help="never download missing weights")
    run = p.add_argument_group("training (defaults: docs/training.md; flags override --config)")
    run.add_argument("--config", type=Path, default=None, metavar="TRAIN_JSON", help="training config (JSON object)")
    run.add_argument("--steps", type=int, default=None, help="total optimiser steps (default 1000)")
    run.add_argument("--batch-size", type=int, default=None, metavar="B", help="clips per step and process (default 8)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4)")
    run.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    run.add_argument("--every", type=int, default=None, metavar="N",
                     help="checkpoint and validate every N steps (default 100)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def train_options(ns: argparse.Namespace) -> TrainOptions:
    """The typed options of a parsed command line (usage errors for impossible values)."""
    for flag, value, least in (("--steps", ns.steps, 1), ("--batch-size", ns.batch_size, 1),
                               ("--every", ns.every, 1), ("--threads", ns.threads, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} must be at least {least}")
    if ns.lr is not None and not ns.lr > 0:
        raise UsageError("--lr must be positive")
    if ns.init is not None and ns.ckpt_dir is not None:
        raise UsageError("--init already names the HuBERT and vocoder files; leave out --ckpt-dir")
    overrides = (("steps", ns.steps), ("batch_size", ns.batch_size), ("lr", ns.lr), ("seed", ns.seed),
                 ("every", ns.every))
    return TrainOptions(
        data=tuple(ns.data), out=ns.out, valid=tuple(ns.valid), init=ns.init,
        model=ModelOptions(ckpt_dir=ns.ckpt_dir, analyzer_config=ns.analyzer_config, vocoder_config=ns.vocoder_config,
                           device=ns.device, dtype=ns.dtype, threads=ns.threads, allow_download=not ns.no_download),
        config_file=ns.config,
        overrides=tuple((k, v) for k, v in overrides if v is not None),
    )


def main(argv: list[str]) -> int:
    """Run (or resume) training; 0 when the run reached ``--steps`` and was exported."""
    opts = train_options(build_parser().parse_args(argv))
    from socodec.train.config import TrainConfig
    from socodec.train.loop import RunSpec, train

    import torch

    if opts.model.threads is not None:
        torch.set_num_threads(opts.model.threads)
    base = TrainConfig.from_json(opts.config_file) if opts.config_file is not None else TrainConfig()
    config = base.with_overrides(**dict(opts.overrides))
    try:
        result = train(RunSpec(data=opts.data, out=opts.out, model=opts.model, init=opts.init, config=config,
                               valid=opts.valid))
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to continue from the last checkpoint in %s",
                  opts.out / "checkpoints")
        return EXIT_INTERRUPTED
    if result.export_dir is not None:
        log.info("done: step %d; the trained model is in %s", result.step, result.export_dir)
    return 0
