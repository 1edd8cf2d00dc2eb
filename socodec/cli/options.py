"""Typed, frozen options of the command line.

The argparse ``Namespace`` is turned into these right after parsing (by
:mod:`socodec.cli.options` and :mod:`socodec.cli.convert`) and never travels further:
the job runner, the PCM writer and the subcommands only see these dataclasses.

The model options every command shares: their arguments, their typed form, loading the codec.

A command that needs the model calls :func:`add_model_arguments` on its parser,
:func:`model_options` on the parsed namespace and :func:`load_codec` once::

    add_model_arguments(parser)
    opts = model_options(parser.parse_args(argv))
    codec = load_codec(opts)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from socodec.cli.common import UsageError
from socodec.config import DTYPES, ModelOptions
from socodec.errors import ErrorLimit, SoCodecError, one_line


@dataclass(frozen=True)
class CodingOptions:
    """How inputs are analysed and tokens decoded.

    ``sample_format`` None means not chosen (audio outputs are then 16-bit PCM), so an
    explicit choice that cannot apply can be refused.
    """

    streams: int | None = None
    speaker: Path | None = None
    lead: bool = True
    sample_format: str | None = None
    padding: str = "published"

    @property
    def audio_format(self) -> str:
        """The sample format audio outputs are written in."""
        return self.sample_format or "pcm16"


@dataclass(frozen=True)
class ConvertOptions:
    """The convert command (``socodec IN... OUT``): what goes where, and how."""

    inputs: tuple[Path, ...]
    output: Path
    to: str | None = None
    force: bool = False
    skip_existing: bool = False
    quiet: bool = False
    model: ModelOptions = field(default_factory=ModelOptions)
    coding: CodingOptions = field(default_factory=CodingOptions)
    ids: tuple[str, ...] | None = None
    max_errors: ErrorLimit = field(default_factory=ErrorLimit)

    @property
    def to_stdout(self) -> bool:
        """``OUT`` is ``-``: raw PCM on stdout."""
        return str(self.output) == "-"


if TYPE_CHECKING:  # the codec (and its torch modules) load only when a command needs them
    from socodec.codec import SoCodec
log = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser, threads_default: str = "torch's choice",
                        batch_size: bool = True) -> None:
    """Add the ``model`` argument group (checkpoints, configs, device, dtype, threads, batch size).

    ``threads_default`` is how ``--help`` states the default of ``--threads``; ``batch_size``
    False leaves ``--batch-size`` out (for a command that handles one input at a time).
    """
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt-dir", type=Path, default=None,
                       help="folder with the three released files (default: $SOCODEC_CKPT_DIR or ./ckpts)")
    model.add_argument("--analyzer-config", type=Path, help="JSON config for another analyzer size")
    model.add_argument("--vocoder-config", type=Path, help="JSON config for another vocoder size")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    model.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="precision of HuBERT (and on CUDA the vocoder): float16 on CUDA; bfloat16 on CUDA or "
                            "on CPUs with native bf16, where it makes analysis ~2.5x faster (default: float32)")
    model.add_argument("--threads", type=int, default=None, help=f"CPU threads for torch (default: {threads_default})")
    model.add_argument("--no-download", action="store_true", help="never download missing weights")
    if batch_size:
        model.add_argument("--batch-size", type=int, default=1, metavar="N",
                           help="run up to N files of similar length through the model together "
                                "(default: %(default)s)")
    model.add_argument("--hubert-window", type=float, default=None, metavar="SECONDS",
                       help="analyse inputs longer than SECONDS with HuBERT attention in windows of that length: "
                            "linear time, tokens close to but not the published ones (default: attention over the "
                            "whole input, the published tokens)")
    model.add_argument("--exact-max-seconds", type=float, default=600.0, metavar="SECONDS",
                       help="longest input analysed with attention over the whole input; longer ones fall back "
                            "to 20 s windows with a warning (default: %(default)g, time grows with the square "
                            "of the length)")


def model_options(ns: argparse.Namespace) -> ModelOptions:
    """The typed model options of a namespace filled by :func:`add_model_arguments`."""
    if ns.threads is not None and ns.threads < 1:
        raise UsageError("--threads must be at least 1")
    batch = getattr(ns, "batch_size", 1)
    if batch < 1:
        raise UsageError("--batch-size must be at least 1")
    if ns.hubert_window is not None and not 0.12 <= ns.hubert_window < float("inf"):
        raise UsageError("--hubert-window must be at least 0.12 seconds (one token frame)")
    if not 0 < ns.exact_max_seconds < float("inf"):
        raise UsageError("--exact-max-seconds must be a positive number of seconds")
    if ns.device != "cpu":  # torch knows the other names: converting token files never imports it
        import torch

        try:
            torch.device(ns.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {ns.device}: not a device name (cpu, cuda, cuda:1, ...)") from None
    return ModelOptions(
        ckpt_dir=ns.ckpt_dir,
        analyzer_config=ns.analyzer_config,
        vocoder_config=ns.vocoder_config,
        device=ns.device,
        dtype=ns.dtype,
        threads=ns.threads,
        allow_download=not ns.no_download,
        batch_size=batch,
        hubert_window=ns.hubert_window,
        exact_max_seconds=ns.exact_max_seconds,
    )


def apply_threads(opts: ModelOptions) -> None:
    """``--threads``: torch's CPU thread count for this process."""
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)


def load_codec(opts: ModelOptions, analysis: bool = True) -> SoCodec:
    """Find (or download) the weight files and load the codec on ``opts.device``.

    ``analysis``: audio will be encoded, so HuBERT is needed and loaded now (a broken file is
    reported before any input is read); without it only the two ``.safetensors`` files are
    needed (HuBERT, if present, loads on first use). Every failure, whatever raised it, is a
    :class:`~socodec.errors.SoCodecError` with one line (missing or broken weights, a device
    this torch cannot use, a dtype the device does not support).
    """
    from socodec.codec import SoCodec
    from socodec.inference.core import trim_heap_after_calls
    from socodec.loading.checkpoints import resolve_checkpoints

    trim_heap_after_calls()  # the command line owns its process: hand freed memory back file after file
    paths = resolve_checkpoints(opts.ckpt_dir, allow_download=opts.allow_download, need_hubert=analysis)
    try:
        codec = SoCodec.from_files(
            paths.hubert if paths.hubert.is_file() else None, paths.analyzer, paths.vocoder,
            analyzer_config=opts.analyzer_config, vocoder_config=opts.vocoder_config,
            device=opts.device, dtype=opts.torch_dtype, lazy_hubert=not analysis,
        )
        codec.chunks = dataclasses.replace(codec.chunks, exact_max_seconds=opts.exact_max_seconds,
                                           hubert_window_seconds=opts.hubert_window)
        return codec
    except SoCodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. torch refusing the device: one line, not a traceback
        log.debug("loading the model failed", exc_info=True)
        raise SoCodecError(f"cannot load the model on {opts.device} ({type(exc).__name__}: {one_line(exc)})") from None
