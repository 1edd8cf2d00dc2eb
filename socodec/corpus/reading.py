"""A work item's audio: the whole file, or only its segment, read by seeking.

The samples go through the same downmix and resampling as :func:`socodec.audio.load_audio`,
so a segment gives exactly the tokens of a file holding the cut audio (at the file's own
rate and sample format).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import soundfile as sf
import torch

from socodec.audio import open_audio, read_block, to_model_input
from socodec.corpus.containers import member_bytes
from socodec.corpus.items import WorkItem
from socodec.corpus.storage import is_url, url_filesystem
from socodec.errors import AudioError

__all__ = ["read_item", "probe_seconds", "item_name", "fingerprint"]

log = logging.getLogger(__name__)


def item_name(item: WorkItem) -> str:
    """The item's audio for messages: the file, plus the segment's times when there is one."""
    if not item.is_segment:
        return item.location
    end = "end" if item.duration is None else f"{item.offset + item.duration:g} s"
    return f"{item.location} [{item.offset:g} s - {end}]"


def read_item(item: WorkItem) -> tuple[torch.Tensor, float]:
    """The item's audio as ``[N]`` float32 at 16 kHz mono, and the seconds of the source read.

    Raises:
        AudioError: the file cannot be read, the segment lies outside it, or the audio is
            empty or holds NaN/infinite samples (one line naming the file).
    """
    name = item_name(item)
    with _open(item) as f:
        rate = int(f.samplerate)
        frames = -1
        if item.is_segment:
            start = round(item.offset * rate)
            if start:
                if f.frames > 0 and start >= f.frames:
                    raise AudioError(f"{name}: the segment starts after the end of the file "
                                     f"({f.frames / rate:.3f} s)")
                _skip(f, item, start)
            if item.duration is not None:
                frames = round(item.duration * rate)
        data = read_block(f, Path(item.location), frames)
    if data.shape[0] == 0:
        raise AudioError(f"{name}: no audio samples")
    if frames > 0 and data.shape[0] < frames:
        log.debug("%s: the file ends %.3f s before the segment", name, (frames - data.shape[0]) / rate)
    return to_model_input(data, rate, name=name), data.shape[0] / rate


def _open(item: WorkItem) -> sf.SoundFile:
    """The item's audio opened for reading: the file, or the member's bytes from its container."""
    if item.member is None and not is_url(item.source):
        return open_audio(item.source)
    data = member_bytes(item.source, item.member)
    try:
        return sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        reason = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc).splitlines()[0]
        raise AudioError(f"{item.location}: not a readable audio file ({reason})") from None


def _skip(f: sf.SoundFile, item: WorkItem, start: int) -> None:
    """Position ``f`` at frame ``start``: a seek, or reading past the frames where seeking is impossible."""
    if f.seekable():
        try:
            f.seek(start)
            return
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{item_name(item)}: cannot seek to the segment ({exc})") from None
    left = start
    while left > 0:
        got = read_block(f, Path(item.location), min(left, 1 << 20)).shape[0]
        if got == 0:
            raise AudioError(f"{item_name(item)}: the segment starts after the end of the file")
        left -= got


def probe_seconds(item: WorkItem) -> float:
    """Seconds of audio the item will give, from the manifest or the file's header (0 if unknown).

    Used only to group items of similar length into batches; a file that cannot be probed
    is reported when it is read.
    """
    if item.duration is not None:
        return item.duration
    if item.member is not None or is_url(item.source):
        return 0.0  # inside a container or on object storage: not read twice just to batch by length
    try:
        info = sf.info(str(item.source))
    except Exception:  # noqa: BLE001 - any unreadable file: reported later, by read_item
        return 0.0
    return max(0.0, info.frames / info.samplerate - item.offset) if info.samplerate else 0.0


def fingerprint(item: WorkItem) -> str:
    """A cheap fingerprint of the item's audio: JSON ``[location, size, mtime, offset, duration]``.

    Size and modification time come from the file (or the container, or the object's listing on
    object storage); a file that cannot be examined gets nulls (it is reported when it is read).
    """
    size: int | None = None
    mtime: float | str | None = None
    try:
        if is_url(item.source):
            fs, path = url_filesystem(str(item.source))
            info = fs.info(path)
            size, mtime = info.get("size"), str(info.get("LastModified") or info.get("mtime") or info.get("ETag"))
        else:
            stat = Path(item.source).stat()
            size, mtime = stat.st_size, stat.st_mtime_ns / 1e9
    except Exception:  # noqa: BLE001 - any file that cannot be examined: reported later, by read_item
        pass
    return json.dumps([item.location, size, mtime, item.offset, item.duration], separators=(",", ":"))
