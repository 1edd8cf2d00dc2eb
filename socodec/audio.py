"""Audio file input/output, downmixing and resampling to the model rate, and long signals read on demand.

Reading uses libsndfile (wav, flac, ogg, mp3, ... whatever the installed
libsndfile supports); resampling uses soxr (VHQ). Writing is atomic: the output
appears under its final name only once it is complete.

Where a long signal's samples come from: :class:`TensorSource` (a tensor in memory) or
:class:`FileSource` (an audio file read on demand). Both give 16 kHz mono float32 samples by
``read(start, stop)``; :class:`~socodec.inference.longform.PaddedSignal` serves the model from
either, so an hour-long file is analysed without ever holding its waveform.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable

import numpy as np
import soundfile as sf
import soxr

from socodec.config import AUDIO_SUFFIXES, SAMPLE_FORMATS, SAMPLE_RATE, WRITE_SUFFIXES
from socodec.errors import AudioError, one_line
from socodec.fileio import atomic_path, write_reason

if TYPE_CHECKING:  # imported where a tensor is made: listing and copying files never loads torch
    import torch
    from torch import Tensor

log = logging.getLogger(__name__)



def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a file as float32 ``[N, C]`` plus its sample rate.

    Raises :class:`AudioError` with one line naming the file for anything that is
    not a readable audio file.
    """
    p = Path(path)
    with open_audio(p) as f:
        data = read_block(f, p, -1)
        return data, int(f.samplerate)


def open_audio(path: str | Path) -> sf.SoundFile:
    """Open an audio file for reading (libsndfile), after the checks :func:`read_audio` makes.

    Raises :class:`AudioError` naming the file: missing, a folder, empty, a truncated wav,
    an unsupported wav codec, or anything libsndfile cannot read.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, expected an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file")
    try:
        tag, announced, present = _wav_layout(p) or (None, None, 0)
    except OSError as exc:
        raise AudioError(f"{p}: cannot read ({one_line(exc)})") from None
    if announced is not None and announced not in _UNKNOWN_SIZE and present < announced:
        raise AudioError(f"{p}: truncated wav file: the header announces {announced} bytes of audio, "
                         f"only {present} are present")
    try:
        return sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        if tag is not None and tag not in _WAV_TAGS:
            raise AudioError(f"{p}: unsupported wav codec (format tag 0x{tag:04x}; readable: "
                             f"{', '.join(_WAV_TAGS.values())})") from None
        raise AudioError(f"{p}: not a readable audio file ({_read_error(exc)})") from None


def read_block(f: sf.SoundFile, path: Path, frames: int) -> np.ndarray:
    """The next ``frames`` frames (-1: all the rest) of an open file as float32 ``[n, C]``; AudioError on failure."""
    try:
        return f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_read_error(exc)})") from None


def _read_error(exc: BaseException) -> str:
    return exc.error_string if isinstance(exc, sf.LibsndfileError) else one_line(exc)


_WAV_TAGS = {1: "PCM", 2: "MS ADPCM", 3: "float", 6: "A-law", 7: "u-law", 0x11: "IMA ADPCM", 0x31: "GSM 6.10",
             0xFFFE: "extensible"}
_UNKNOWN_SIZE = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset


def _wav_layout(path: Path) -> tuple[int | None, int | None, int] | None:
    """``(format tag, data bytes announced, data bytes present)`` of a RIFF/WAVE file, None for other files.

    Only chunk headers are read (at most 64 chunks); a missing ``fmt``/``data`` chunk gives None fields.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        tag, pos = None, 12
        for _ in range(64):
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                break
            cid, clen = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt " and clen >= 2:
                tag = int.from_bytes(f.read(2), "little")
            if cid == b"data":
                return tag, clen, size - pos - 8
            pos += 8 + clen + (clen & 1)
    return tag, None, 0


def to_model_input(data: np.ndarray | torch.Tensor, sample_rate: int, name: str = "input") -> torch.Tensor:
    """Downmix and resample to 16 kHz mono float32.

    Args:
        data: ``[N]`` mono or ``[N, C]`` samples (soundfile layout).
        sample_rate: rate of ``data`` in Hz.
        name: used in error messages.
    Returns:
        ``[N']`` float32 tensor at 16 kHz.
    """
    import torch

    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if arr.ndim == 2:
        arr = arr.mean(axis=1) if arr.shape[1] > 1 else arr[:, 0]
    elif arr.ndim != 1:
        raise AudioError(f"{name}: expected [samples] or [samples, channels] audio, got shape {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate}")
    if arr.size == 0:
        raise AudioError(f"{name}: no audio samples")
    warn_out_of_range(name, checked_peak(arr, name))
    if sample_rate != SAMPLE_RATE:
        arr = soxr.resample(arr, sample_rate, SAMPLE_RATE, quality="VHQ").astype(np.float32, copy=False)
    return torch.from_numpy(arr)


def checked_peak(arr: np.ndarray, name: str) -> float:
    """Largest ``|sample|`` of ``arr``; :class:`AudioError` if any sample is NaN or infinite."""
    peak = float(np.abs(arr).max()) if arr.size else 0.0
    if not math.isfinite(peak):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return peak


def warn_out_of_range(name: str, peak: float) -> None:
    """Log one warning when the peak is outside [-1, 1] (the model expects [-1, 1] audio)."""
    if peak > 1.0:
        log.warning("%s: samples reach %.3g, outside [-1, 1]; the model expects [-1, 1] audio", name, peak,
                    extra={"socodec_range_warning": True})


def load_audio(path: str | Path) -> torch.Tensor:
    """Read any supported file and return 16 kHz mono float32 ``[N]``."""
    data, sr = read_audio(path)
    return to_model_input(data, sr, name=str(path))


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, sample_format: str = "pcm16") -> None:
    """Write mono ``[N]`` audio atomically as wav or flac (see :func:`save_audio_stream`)."""
    save_audio_stream(path, [wav], sample_rate, sample_format)


def save_audio_stream(
    path: str | Path, pieces: Iterable[torch.Tensor], sample_rate: int = SAMPLE_RATE, sample_format: str = "pcm16"
) -> None:
    """Write consecutive mono pieces ``[n_i]`` atomically as one wav or flac file.

    Each piece is written as soon as it arrives, so the whole waveform is never held
    (hours of audio in bounded memory). ``sample_format`` is ``pcm16`` (default), ``pcm24``
    or ``float`` (wav only); samples are clipped to [-1, 1] for PCM formats. The file
    appears under ``path`` only once complete; whatever fails (the pieces' producer
    included) leaves no file behind. Disk errors are raised as :class:`AudioError`
    carrying the system's message (e.g. "No space left on device").
    """
    p = Path(path)
    fmt = WRITE_SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise AudioError(f"{p}: cannot write audio with suffix '{p.suffix}' (use .wav or .flac)")
    subtype = SAMPLE_FORMATS.get(sample_format)
    if subtype is None:
        raise AudioError(f"unknown sample format '{sample_format}' (choose from {', '.join(SAMPLE_FORMATS)})")
    if fmt == "FLAC" and subtype == "FLOAT":
        raise AudioError(f"{p}: flac cannot hold float samples; use pcm16 or pcm24")
    if fmt == "WAV" and subtype == "FLOAT":
        fmt = "WAVEX"  # float WAV with the extensible header that tools such as sox expect
    try:
        with atomic_path(p) as tmp, tmp.open("wb") as raw:
            sink = _ErrorKeepingFile(raw)
            try:
                with sf.SoundFile(sink, "w", samplerate=sample_rate, channels=1, format=fmt, subtype=subtype) as out:
                    for piece in pieces:
                        arr = piece.detach().cpu().float().numpy().reshape(-1)
                        out.write(arr if subtype == "FLOAT" else np.clip(arr, -1.0, 1.0))
                        sink.check()
            except (sf.LibsndfileError, RuntimeError, AssertionError):  # soundfile asserts on short writes
                sink.check()
                raise
            sink.check()  # closing writes the header
    except (sf.LibsndfileError, RuntimeError, AssertionError, OSError) as exc:
        raise AudioError(f"{p}: cannot write ({write_reason(exc)})") from None


class _ErrorKeepingFile:
    """A binary file for libsndfile's virtual I/O that keeps the first ``OSError`` of a write.

    libsndfile would turn it into a generic "unspecified internal error" (and ``cffi`` would
    print a traceback): instead the write (or the seek, which flushes) reports failure and
    :meth:`check` re-raises the original error (ENOSPC, EFBIG, ...) with its message.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        try:
            written = self.raw.write(data)
        except OSError as exc:
            self.error = exc
            return 0
        return len(data) if written is None else written

    def read(self, size: int = -1) -> bytes:
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        try:  # a buffered file flushes before seeking: the disk error can surface here too
            return self.raw.seek(offset, whence)
        except OSError as exc:
            self.error = self.error or exc
            return -1

    def tell(self) -> int:
        try:
            return self.raw.tell()
        except OSError as exc:
            self.error = self.error or exc
            return -1

    def check(self) -> None:
        if self.error is not None:
            raise self.error


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
        import torch

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
