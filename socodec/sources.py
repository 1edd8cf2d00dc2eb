"""Where a long signal's samples come from: a tensor in memory, or an audio file read on demand.

Both give 16 kHz mono float32 samples by ``read(start, stop)``; :class:`~socodec.longform.PaddedSignal`
serves the model from either, so an hour-long file is analysed without ever holding its waveform.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr
import torch
from torch import Tensor

from socodec.audio import checked_peak, open_audio, read_block, warn_out_of_range
from socodec.config import SAMPLE_RATE
from socodec.errors import AudioError, one_line

__all__ = ["TensorSource", "FileSource", "file_duration"]

log = logging.getLogger(__name__)

BLOCK_FRAMES = 1 << 20
"""Frames read from the file at a time (~65 s at 16 kHz) while checking or converting it."""


class TensorSource:
    """``[n]`` float32 16 kHz mono samples held in memory."""

    def __init__(self, audio: Tensor) -> None:
        if audio.dim() != 1:
            raise ValueError(f"expected [n] samples, got shape {list(audio.shape)}")
        self.audio = audio
        self.num_samples = int(audio.shape[0])

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` as ``[stop - start]`` float32 (0 <= start <= stop <= num_samples)."""
        return self.audio[start:stop]

    def close(self) -> None:
        """Nothing to release."""


class FileSource:
    """The 16 kHz mono samples of an audio file, read on demand; the file is never held whole.

    On opening, the file is passed through once, block by block: samples are checked (NaN or
    infinite: :class:`AudioError`; a peak outside [-1, 1]: one warning naming the file). A
    16 kHz mono file is then read in place; any other file is converted in that pass — channels
    averaged, then soxr VHQ resampling in streaming mode, which gives the same samples as
    :func:`socodec.audio.load_audio` — into a temporary float32 file (4 bytes per output sample,
    in ``temp_dir``, default the system's), removed by :meth:`close`. Use it as a context manager.

    Args:
        path: any file :func:`socodec.audio.read_audio` reads.
        temp_dir: folder for the converted samples (when the file needs converting).
    """

    def __init__(self, path: str | Path, temp_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self._file = open_audio(self.path)
        self._raw: BinaryIO | None = None
        self._raw_path: Path | None = None
        try:
            if self._file.samplerate == SAMPLE_RATE and self._file.channels == 1:
                self.num_samples = self._check_in_place()
            else:
                self.num_samples = self._convert(temp_dir)
            if self.num_samples == 0:
                raise AudioError(f"{self.path}: no audio samples")
        except BaseException:
            self.close()
            raise

    def _blocks(self):
        """The file's frames, ``[n, C]`` float32 blocks, from the start."""
        self._file.seek(0)
        while True:
            block = read_block(self._file, self.path, BLOCK_FRAMES)
            if block.shape[0] == 0:
                return
            yield block

    def _check_in_place(self) -> int:
        count, peak = 0, 0.0
        for block in self._blocks():
            peak = max(peak, checked_peak(block, str(self.path)))
            count += block.shape[0]
        warn_out_of_range(str(self.path), peak)
        return count

    def _convert(self, temp_dir: str | Path | None) -> int:
        rate, channels = self._file.samplerate, self._file.channels
        if rate <= 0:
            raise AudioError(f"{self.path}: invalid sample rate {rate}")
        fd, name = tempfile.mkstemp(prefix="socodec-", suffix=".f32", dir=temp_dir)
        self._raw_path = Path(name)
        self._raw = os.fdopen(fd, "w+b")
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="VHQ")
        count, peak = 0, 0.0
        try:
            blocks = self._blocks()
            block = next(blocks, None)
            while block is not None:
                following = next(blocks, None)
                peak = max(peak, checked_peak(block, str(self.path)))
                mono = block.mean(axis=1) if channels > 1 else block[:, 0]
                out = resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=following is None)
                self._raw.write(out.astype(np.float32, copy=False).tobytes())
                count += out.shape[0]
                block = following
        except OSError as exc:
            raise AudioError(f"{self.path}: cannot convert to 16 kHz in {self._raw_path.parent} "
                             f"({one_line(exc)})") from None
        warn_out_of_range(str(self.path), peak)
        log.debug("%s: %d Hz x %d converted to %d samples at 16 kHz in %s", self.path, rate, channels, count,
                  self._raw_path)
        return count

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` as ``[stop - start]`` float32 (0 <= start <= stop <= num_samples)."""
        if not 0 <= start <= stop <= self.num_samples:
            raise ValueError(f"bad range [{start}, {stop}) of {self.num_samples} samples")
        if self._raw is not None:
            self._raw.seek(4 * start)
            data = np.frombuffer(self._raw.read(4 * (stop - start)), dtype=np.float32).copy()
        else:
            self._file.seek(start)
            data = read_block(self._file, self.path, stop - start)[:, 0]
        if data.shape[0] != stop - start:
            raise AudioError(f"{self.path}: file changed while being read")
        return torch.from_numpy(np.ascontiguousarray(data))

    def close(self) -> None:
        """Close the file and delete the converted samples, if any."""
        self._file.close()
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._raw_path is not None:
            self._raw_path.unlink(missing_ok=True)
            self._raw_path = None

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_duration(path: str | Path) -> float:
    """Duration in seconds of an audio file, from its header (checked like :func:`open_audio`)."""
    with open_audio(path) as f:
        if f.samplerate <= 0:
            raise AudioError(f"{path}: invalid sample rate {f.samplerate}")
        return f.frames / f.samplerate

