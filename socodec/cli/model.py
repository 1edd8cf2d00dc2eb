"""The model options every command shares: their arguments, their typed form, loading the codec.

A command that needs the model calls :func:`add_model_arguments` on its parser,
:func:`model_options` on the parsed namespace and :func:`load_codec` once::

    add_model_arguments(parser)
    opts = model_options(parser.parse_args(argv))
    codec = load_codec(opts)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from socodec.cli.common import UsageError
from socodec.cli.options import DTYPES, ModelOptions

if TYPE_CHECKING:  # the codec (and its torch modules) load only when a command needs them
    from socodec.codec import SoCodec

log = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``model`` argument group (checkpoints, configs, device, dtype, threads, batch size)."""
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt-dir", type=Path, default=None,
                       help="folder with the three released files (default: $SOCODEC_CKPT_DIR or ./ckpts)")
    model.add_argument("--analyzer-config", type=Path, help="JSON config for another analyzer size")
    model.add_argument("--vocoder-config", type=Path, help="JSON config for another vocoder size")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    model.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="HuBERT/vocoder precision; float16/bfloat16 on CUDA only (default: float32)")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    model.add_argument("--no-download", action="store_true", help="never download missing weights")
    model.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="run up to N files of similar length through the model together (default: 1)")


def model_options(ns: argparse.Namespace) -> ModelOptions:
    """The typed model options of a namespace filled by :func:`add_model_arguments`."""
    if ns.threads is not None and ns.threads < 1:
        raise UsageError("--threads must be at least 1")
    if ns.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    return ModelOptions(
        ckpt_dir=ns.ckpt_dir,
        analyzer_config=ns.analyzer_config,
        vocoder_config=ns.vocoder_config,
        device=ns.device,
        dtype=DTYPES[ns.dtype],
        threads=ns.threads,
        allow_download=not ns.no_download,
        batch_size=ns.batch_size,
    )


def apply_threads(opts: ModelOptions) -> None:
    """``--threads``: torch's CPU thread count for this process."""
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)


def load_codec(opts: ModelOptions) -> SoCodec:
    """Find (or download) the three weight files and load the codec on ``opts.device``."""
    from socodec.codec import SoCodec
    from socodec.loading.download import resolve_checkpoints

    paths = resolve_checkpoints(opts.ckpt_dir, allow_download=opts.allow_download)
    return SoCodec.from_files(
        paths.hubert, paths.analyzer, paths.vocoder,
        analyzer_config=opts.analyzer_config, vocoder_config=opts.vocoder_config,
        device=opts.device, dtype=opts.dtype,
    )
