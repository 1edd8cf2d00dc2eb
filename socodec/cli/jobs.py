"""The convert command's work list: which input file becomes which output file.

Routing is by suffix (audio or token file); a directory input is walked
recursively and mirrored into the output directory, a glob is expanded here
(quoted on the shell, ``**`` works). :func:`check_options` refuses coding options that
apply to none of the jobs. :mod:`socodec.cli.runner` then runs the jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from socodec.cli.common import UsageError
from socodec.cli.options import CodingOptions
from socodec.config import AUDIO_SUFFIXES, TOKEN_SUFFIXES, WRITE_SUFFIXES
from socodec.errors import SoCodecError

__all__ = ["Job", "check_options", "is_audio_file", "is_token_file", "plan_jobs"]

log = logging.getLogger("socodec")

#: Suffixes an output file may have: audio written by socodec, then token files.
OUTPUT_SUFFIXES = (*WRITE_SUFFIXES, *TOKEN_SUFFIXES)


def is_token_file(path: Path) -> bool:
    """``path`` has a token-file suffix (``.soc``, ``.pt``)."""
    return path.suffix.lower() in TOKEN_SUFFIXES


def is_audio_file(path: Path) -> bool:
    """``path`` has an audio suffix socodec reads (``.wav``, ``.flac``, ...)."""
    return path.suffix.lower() in AUDIO_SUFFIXES


def is_glob(path: Path) -> bool:
    """``path`` does not exist and holds glob characters: a pattern for socodec to expand."""
    from socodec.corpus import inputs as corpus_inputs  # here: --help and --version never load torch

    return corpus_inputs.is_glob(path)


@dataclass(frozen=True)
class Job:
    """One input file and the file it becomes."""

    input: Path
    output: Path

    @property
    def needs_model(self) -> bool:
        """Everything but a token-file conversion runs the model."""
        return not (is_token_file(self.input) and is_token_file(self.output))


def _expand(item: Path) -> list[tuple[Path, Path]]:
    """``(file, path relative to its root)`` pairs for a file, a directory (recursive) or a glob.

    Folders and globs are listed as every command lists them (:func:`socodec.corpus.inputs.walk_files`):
    a glob's files keep their subfolders below the glob's leading folder, as a folder's do.
    """
    from socodec.corpus import inputs as corpus_inputs

    if is_glob(item):
        try:
            return corpus_inputs.walk_files(item, lambda p: True)
        except SoCodecError:
            raise SoCodecError(f"{item}: no files match") from None
    if item.is_dir():
        try:
            return corpus_inputs.walk_files(item, lambda p: is_audio_file(p) or is_token_file(p))
        except SoCodecError:
            raise SoCodecError(f"{item}: no audio or token files in this directory") from None
    return [(item, Path(item.name))]


def plan_jobs(inputs: list[Path] | tuple[Path, ...], output: Path, to: str | None = None) -> list[Job]:
    """Pair inputs with outputs.

    One input file and an ``output`` with a suffix (not an existing directory): one job,
    routed by the two suffixes. Otherwise ``output`` is a directory (created if needed),
    directory inputs are mirrored into it, and each output gets suffix ``to`` (default
    ``.soc`` for audio, ``.wav`` for tokens). A single input with a suffix-less ``output``
    is refused (:class:`UsageError`) unless ``to`` says it is a directory.
    """
    single = len(inputs) == 1 and not inputs[0].is_dir() and not is_glob(inputs[0]) and not output.is_dir()
    if single and to is None:
        if not output.suffix:
            raise UsageError(
                f"{output}: the output has no suffix; name the file with one "
                f"({' '.join(OUTPUT_SUFFIXES)}), or add -t SUFFIX to write into the folder {output}/"
            )
        jobs = [Job(inputs[0], output)]
    else:
        if single and output.suffix.lower() in OUTPUT_SUFFIXES:
            raise UsageError(f"-t/--to names the suffix of files written into a folder, but {output} names "
                             f"a file; drop -t (the suffix {output.suffix} decides), or name a folder")
        if output.exists() and not output.is_dir():
            raise SoCodecError(f"{output}: several inputs need an output directory, and this is a file")
        jobs = []
        for item in inputs:
            for path, rel in _expand(item):
                suffix = to or (".wav" if is_token_file(path) else ".soc")
                jobs.append(Job(path, output / rel.with_suffix(suffix)))
        if not output.exists() and output.suffix.lower() in (*OUTPUT_SUFFIXES, *AUDIO_SUFFIXES):
            raise UsageError(f"{output}: several inputs are written into a folder, but this names a file "
                             f"({output.suffix}); name a folder (and choose its files' suffix with -t)")
    writers: dict[Path, Path] = {}
    for job in jobs:
        _check_route(job)
        other = writers.setdefault(job.output.resolve(), job.input)
        if other != job.input:
            raise SoCodecError(f"{job.output}: both {other} and {job.input} would be written to this file; "
                               "rename one of them")
    return jobs


def _check_route(job: Job) -> None:
    if not (is_audio_file(job.input) or is_token_file(job.input)):
        raise SoCodecError(
            f"{job.input}: unsupported input suffix '{job.input.suffix}' "
            f"(audio: {' '.join(AUDIO_SUFFIXES)}; tokens: {' '.join(TOKEN_SUFFIXES)})"
        )
    if job.output.suffix.lower() not in WRITE_SUFFIXES and not is_token_file(job.output):
        raise UsageError(
            f"{job.output}: unsupported output suffix '{job.output.suffix}' "
            f"(audio: {' '.join(WRITE_SUFFIXES)}; tokens: {' '.join(TOKEN_SUFFIXES)})"
        )


def check_options(jobs: list[Job], coding: CodingOptions) -> None:
    """Refuse (:class:`UsageError`) coding options that apply to none of ``jobs``.

    ``--streams``/``--speaker``/``--sample-format`` act when decoding to audio, ``--no-lead``
    and ``--padding`` when analysing audio; with mixed outputs ``--streams``/``--speaker``
    are applied to the audio outputs only, with a warning.
    """
    decoded = sum(not is_token_file(job.output) for job in jobs)
    analysed = any(job.needs_model and is_audio_file(job.input) for job in jobs)
    speaker_analysed = decoded and coding.speaker is not None and is_audio_file(coding.speaker)
    given = [name for name, value in (("--streams", coding.streams), ("--speaker", coding.speaker))
             if value is not None]
    if given and not decoded:
        raise UsageError(f"{' and '.join(given)} only {_act(given)} when decoding to audio, and every output "
                         "here is a token file (it keeps all streams and its own speaker vector)")
    if given and decoded < len(jobs):
        log.warning("%s %s on the audio outputs only (%d of %d files); token files keep all streams and their "
                    "own speaker vector", " and ".join(given), _act(given), decoded, len(jobs))
    if coding.sample_format is not None and not decoded:
        raise UsageError("--sample-format only acts on audio outputs (.wav, .flac), and every output here is a "
                         "token file")
    flac = [job.output for job in jobs if job.output.suffix.lower() == ".flac"]
    if coding.sample_format == "float" and flac:
        raise UsageError(f"{flac[0]}: FLAC cannot hold float samples; choose --sample-format pcm16 or pcm24, "
                         "or a .wav output")
    analysis_options = (("--no-lead", not coding.lead), (f"--padding {coding.padding}", coding.padding != "published"))
    for name, changed in analysis_options:
        if changed and not analysed and not speaker_analysed:
            raise UsageError(f"{name} only acts when analysing audio, and every input here is a token file "
                             "(analysed when it was made)")


def _act(options: list[str]) -> str:
    return "act" if len(options) > 1 else "acts"
