"""Typed, frozen options of the command line.

The argparse ``Namespace`` is turned into these right after parsing (by
:mod:`socodec.cli.model` and :mod:`socodec.cli.parser`) and never travels further:
the job runner, the PCM writer and the subcommands only see these dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a dtype is looked up: --help and --version never load it
    import torch


class _TorchDtypes(Mapping):
    """``--dtype`` names -> torch dtypes; torch is imported on the first look-up, not before."""

    NAMES = ("float32", "float16", "bfloat16")

    def __getitem__(self, name: str) -> torch.dtype:
        if name not in self.NAMES:
            raise KeyError(name)
        import torch

        return getattr(torch, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


from socodec.errors import ErrorLimit

#: ``--dtype`` names and the torch types they stand for.
DTYPES: Mapping[str, torch.dtype] = _TorchDtypes()


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its ``--dtype`` name (a dtype is returned as is)."""
    if not isinstance(name, str):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}' (choose from {', '.join(DTYPES)})") from None


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load and how to run it (shared by every command that needs the model)."""

    ckpt_dir: Path | None = None
    analyzer_config: Path | None = None
    vocoder_config: Path | None = None
    device: str = "cpu"
    dtype: torch.dtype | str = "float32"  # a name becomes the torch dtype
    threads: int | None = None
    allow_download: bool = True
    batch_size: int = 1
    hubert_window: float | None = None
    exact_max_seconds: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_from_name(self.dtype))




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
