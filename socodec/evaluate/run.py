"""Analysis-synthesis of every item at each stream count, and its metrics.

Per group of ``batch_size`` items of similar length: one ``codec.encode(list)``, one
``codec.decode(list, streams=k)`` per stream count, and one ``codec.encode(list)`` of all
the resyntheses (their speaker vectors): the codec's own batch path, whose results equal
the one-by-one results. A group that fails is retried item by item, so one bad file costs
only itself; a failure that is not the file's (out of memory, a bug) stops the run, and so
do more failed files than ``max_errors`` allows.

What ``socodec eval`` measures: the inputs ``socodec tokenize`` reads, as items.

The work list is :func:`socodec.corpus.inputs.collect_work`'s (audio files, folders, globs,
Kaldi folders, JSONL manifests, WebDataset tars, Parquet, lhotse manifests; the same ids), and a
segment is read by seeking into its file as ``tokenize`` reads it
(:func:`socodec.corpus.inputs.read_item`), so an item gives the same samples in both commands.
Two things are eval's own: an input is listed on its own, so one bad input is an error line
while the others are measured, and the same audio listed twice is measured once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TYPE_CHECKING

import numpy as np
import torch

from socodec.audio import AUDIO_SUFFIXES
from socodec.config import DEFAULT_PADDING, SAMPLE_RATE
from socodec.corpus.inputs import MANIFEST_SUFFIXES, collect_work, read_item as read_work_item
from socodec.corpus.containers import WorkItem
from socodec.errors import ErrorLimit, Fallbacks, SoCodecError, is_item_error, one_line
from socodec.evaluate import independent
from socodec.evaluate.metrics import cosine_similarity, is_silent, signal_metrics

__all__ = ["EvalConfig", "FileResult", "Example", "EvalRun", "evaluate", "ROW_METRICS", "worst_key", "EvalItem", "expand_inputs", "read_item", "MANIFEST_SUFFIXES"]


if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec
log = logging.getLogger(__name__)
ROW_METRICS = ("token_bitrate", "bitrate", "pesq", "stoi", "estoi", "mel_distance", "si_sdr", "mrstft",
               "speaker_similarity", *independent.INDEPENDENT_METRICS, "original_dnsmos_ovrl", "length_cut")
"""The numbers of one (file, stream count) row, in CSV order."""


@dataclass(frozen=True)
class EvalConfig:
    """How to run the evaluation.

    Attributes:
        streams: stream counts to decode with, e.g. ``(1, 2, 3, 4)``.
        batch_size: items encoded/decoded together (similar lengths are grouped).
        examples: how many of the worst files keep their audio for the report.
        clip_seconds: the kept audio of each example is cut to this many seconds.
        lead: prepend the published model's 0.5 s of zeros before analysis.
        padding: ``"published"`` or ``"grid"`` (see :meth:`socodec.SoCodec.encode`).
        max_errors: how many failed files stop the run (``--max-errors``).
        independent: the groups of :data:`socodec.evaluate.independent.GROUPS` to compute (their
            metrics are NaN otherwise).
        transcripts: item id -> reference text for the WER; without one, the WER is measured against
            the recognition of the original.
    """

    streams: tuple[int, ...] = (1, 2, 3, 4)
    batch_size: int = 1
    examples: int = 5
    clip_seconds: float = 15.0
    lead: bool = True
    padding: str = DEFAULT_PADDING
    max_errors: ErrorLimit = field(default_factory=ErrorLimit)
    independent: tuple[str, ...] = ()
    transcripts: dict[str, str] | None = None

    @property
    def wer_reference(self) -> str:
        """What the WER is measured against."""
        return "the transcripts" if self.transcripts is not None else "the recognition of the original"


@dataclass(frozen=True)
class FileResult:
    """The metrics of one item: ``rows[k]`` maps each name of :data:`ROW_METRICS` to a value."""

    item: EvalItem
    duration: float
    rows: dict[int, dict[str, float]]


@dataclass(frozen=True)
class Example:
    """Audio kept for the report: the first ``clip_seconds`` of the original and each resynthesis ``[n]``."""

    result: FileResult
    reference: np.ndarray
    resyntheses: dict[int, np.ndarray]


@dataclass
class EvalRun:
    """Everything a report needs: per-file results (input order), errors, the worst examples (worst first)."""

    config: EvalConfig
    results: list[FileResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    model: dict[str, str] = field(default_factory=dict)
    fallbacks: int = 0


def worst_key(result: FileResult) -> tuple[float, float]:
    """Sort key putting the worst file first: PESQ at the most streams, then log-mel distance.

    Files whose PESQ cannot be measured (silence) come last.
    """
    row = result.rows[max(result.rows)]
    pesq = row["pesq"]
    mel = row["mel_distance"]
    return (pesq if math.isfinite(pesq) else math.inf, -mel if math.isfinite(mel) else 0.0)


def evaluate(
    codec: SoCodec,
    items: list[EvalItem],
    config: EvalConfig,
    on_done: Callable[[int], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> EvalRun:
    """Measure every item; ``on_done(n)`` after each group of n items, ``on_error(line)`` per failure."""
    run = EvalRun(config, model=dict(codec.identity))
    fallbacks = Fallbacks(log)
    for group in _groups(items, config.batch_size):
        wavs: dict[EvalItem, torch.Tensor] = {}
        for item in group:
            try:
                wavs[item] = read_item(item)
            except SoCodecError as exc:
                _fail(run, on_error, _naming(item, one_line(exc)))
        results = None
        if len(wavs) > 1:
            results = fallbacks.batch(lambda: _measure(codec, list(wavs), list(wavs.values()), config), len(wavs))
            run.fallbacks = fallbacks.count
        if results is None:
            results = []
            alone = Fallbacks.each(wavs.items(), lambda pair: _measure(codec, [pair[0]], [pair[1]], config))
            for item, outcome in zip(wavs, alone):
                if isinstance(outcome, BaseException):
                    _fail(run, on_error, _failure(item, outcome))
                else:
                    results.extend(outcome)
        for result, example in results:
            run.results.append(result)
            _keep(run, example, config.examples)
        if on_done is not None:
            on_done(len(group))
        processed = len(run.results) + len(run.errors)
        if config.max_errors.exceeded(len(run.errors), processed):
            raise SoCodecError(config.max_errors.message(len(run.errors), processed, "the lines above"))
    order = {item: i for i, item in enumerate(items)}
    run.results.sort(key=lambda r: order[r.item])
    return run


def _groups(items: list[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Items ``batch_size`` at a time, by similar length (duration, else file size) when batching."""
    if batch_size <= 1:
        return [[item] for item in items]

    def size(item: EvalItem) -> float:
        if item.duration is not None:
            return item.duration * SAMPLE_RATE * 2
        try:
            return Path(item.path).stat().st_size if item.member is None else 0.0
        except OSError:
            return 0.0

    ordered = sorted(items, key=size)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _failure(item: EvalItem, exc: BaseException) -> str:
    """The one line of a file that failed."""
    if isinstance(exc, SoCodecError):
        return _naming(item, one_line(exc))
    return f"{item.path}: failed ({type(exc).__name__}: {one_line(exc)})"


def _measure(
    codec: SoCodec, items: list[EvalItem], wavs: list[torch.Tensor], config: EvalConfig
) -> list[tuple[FileResult, Example]]:
    """Encode the clips ``[N_i]`` once, decode at each stream count, re-encode the resyntheses, measure."""
    codes = codec.encode(wavs, lead=config.lead, padding=config.padding)
    resynth = {k: codec.decode(codes, streams=k) for k in config.streams}  # k -> [N_i] per item
    flat = [resynth[k][i] for i in range(len(items)) for k in config.streams]
    again = codec.encode(flat, lead=config.lead, padding=config.padding)  # the resyntheses' speaker vectors
    clip = round(config.clip_seconds * SAMPLE_RATE)
    out = []
    for i, (item, wav) in enumerate(zip(items, wavs)):
        original, text = _original(config, item, wav)
        rows = {}
        for j, k in enumerate(config.streams):
            kept = codes[i].with_streams(k)
            row = {"token_bitrate": kept.bitrate(include_speaker=False), "bitrate": kept.bitrate()}
            row.update(signal_metrics(wav, resynth[k][i]))
            row["speaker_similarity"] = cosine_similarity(codes[i].speaker, again[i * len(config.streams) + j].speaker)
            row.update(original)
            row.update(_independent(config, wav, resynth[k][i], text))
            if is_silent(wav):  # nothing to judge: every quality number is undefined, left out of the means
                row.update({name: math.nan for name in row if name not in ("token_bitrate", "bitrate", "length_cut")})
            rows[k] = row
        result = FileResult(item, wav.numel() / SAMPLE_RATE, rows)
        example = Example(result, wav[:clip].numpy().copy(), {k: resynth[k][i][:clip].numpy().copy()
                                                                 for k in config.streams})
        out.append((result, example))
    return out


def _original(config: EvalConfig, item: EvalItem, wav: torch.Tensor) -> tuple[dict[str, float], str | None]:
    """The original's DNSMOS OVRL, and the WER's reference text (transcript, else its recognition)."""
    score = independent.dnsmos(wav)["dnsmos_ovrl"] if "dnsmos" in config.independent else math.nan
    if "wer" not in config.independent:
        return {"original_dnsmos_ovrl": score}, None
    text = config.transcripts.get(item.id) if config.transcripts is not None else independent.recognise(wav)
    return {"original_dnsmos_ovrl": score}, text


def _independent(config: EvalConfig, wav: torch.Tensor, deg: torch.Tensor, text: str | None) -> dict[str, float]:
    """The metrics of :mod:`socodec.evaluate.independent` of one resynthesis ``[N]`` (NaN when not asked)."""
    row = dict.fromkeys(independent.INDEPENDENT_METRICS, math.nan)
    if "dnsmos" in config.independent:
        row.update(independent.dnsmos(deg))
    if "resemblyzer" in config.independent:
        row["resemblyzer_similarity"] = independent.speaker_similarity(wav, deg)
    if "wer" in config.independent:
        row["wer"] = independent.word_error_rate(text, independent.recognise(deg))
    return row


def _keep(run: EvalRun, example: Example, limit: int) -> None:
    """Keep ``example`` if it is among the ``limit`` worst so far (memory stays bounded)."""
    if limit <= 0:
        return
    run.examples.append(example)
    run.examples.sort(key=lambda e: worst_key(e.result))
    del run.examples[limit:]


def _fail(run: EvalRun, on_error: Callable[[str], None] | None, line: str) -> None:
    run.errors.append(line)
    if on_error is not None:
        on_error(line)


def _naming(item: EvalItem, message: str) -> str:
    """``message``, prefixed with the input file unless it already names it."""
    return message if str(item.path) in message else f"{item.path}: {message}"


_LISTS = (*MANIFEST_SUFFIXES, ".tar", ".parquet", ".gz")


@dataclass(frozen=True)
class EvalItem:
    """One utterance to measure: a whole file, or ``duration`` seconds from ``offset``.

    ``id`` names it in the tables (the id ``socodec tokenize`` gives it); ids that would clash
    fall back to the full path. ``member`` is its place inside a container (a tar, a Parquet file).
    """

    id: str
    path: Path | str
    offset: float = 0.0
    duration: float | None = None
    member: str | None = None

    @property
    def work(self) -> WorkItem:
        """The same item as ``tokenize``'s work item."""
        return WorkItem(id=self.id, source=self.path, offset=self.offset, duration=self.duration, member=self.member)


def expand_inputs(inputs: list[str | Path]) -> tuple[list[EvalItem], list[str]]:
    """Items for every input, in order, without duplicates; plus one error line per bad input.

    A plain file with a suffix that is neither audio nor a list is an error here (``tokenize``
    would report it when reading). Nothing is opened beyond the lists: unreadable audio is found later.
    """
    items: list[EvalItem] = []
    errors: list[str] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file() and path.suffix.lower() not in (*AUDIO_SUFFIXES, *_LISTS):
            errors.append(f"{path}: not an audio file or a list of audio (audio: {' '.join(AUDIO_SUFFIXES)}; "
                          f"lists: {' '.join(_LISTS)})")
            continue
        try:
            work = collect_work([raw])
        except SoCodecError as exc:
            errors.append(str(exc))
            continue
        items.extend(EvalItem(w.id, w.source, w.offset, w.duration, w.member) for w in work)
    first: dict[tuple[str, float, float | None], EvalItem] = {}
    for item in items:  # the same file (or segment) listed twice is measured once
        first.setdefault((item.work.location, item.offset, item.duration), item)
    unique = list(first.values())
    counts: dict[str, int] = {}
    for item in unique:
        counts[item.id] = counts.get(item.id, 0) + 1
    clashing = {name for name, n in counts.items() if n > 1}
    return [replace(item, id=_full_id(item)) if item.id in clashing else item for item in unique], errors


def _full_id(item: EvalItem) -> str:
    """An id naming the file by its path (and the segment's offset): used when short ids clash."""
    where = item.work.location
    return where if item.offset == 0 and item.duration is None else f"{where}@{item.offset:g}"


def read_item(item: EvalItem) -> torch.Tensor:
    """The item's samples ``[N]`` float32, 16 kHz mono (its segment, read by seeking, when it has one)."""
    return read_work_item(item.work)[0]
