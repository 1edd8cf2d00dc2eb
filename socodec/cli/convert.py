"""The convert command, ``socodec IN... OUT``: routes by suffix, like the published tool.

* audio -> audio   analysis-synthesis (``speech.wav out.wav``)
* audio -> tokens  ``speech.wav tokens.soc`` / ``tokens.pt``
* tokens -> audio  ``tokens.soc out.wav``
* tokens -> tokens convert between ``.pt`` and ``.soc`` (no model needed)

Several inputs, a directory (recursive, mirrored) or a glob go to an output
directory; ``OUT`` = ``-`` streams raw PCM to stdout (:mod:`socodec.cli.pcm`).
Options that cannot apply to any job are refused (exit status 2) rather than ignored;
``--streams``/``--speaker`` that apply to some jobs of a batch only get a warning.
"""

from __future__ import annotations

import logging

from socodec.cli.common import UsageError
from socodec.cli.jobs import Job, is_audio_file, is_token_file, plan_jobs
from socodec.cli.model import apply_threads
from socodec.cli.options import ConvertOptions
from socodec.cli.parser import parse_convert
from socodec.cli.runner import run_jobs

__all__ = ["main", "convert", "check_options"]

log = logging.getLogger("socodec")


def main(argv: list[str]) -> int:
    """Parse ``argv`` and convert; returns the exit status."""
    return convert(parse_convert(argv))


def convert(opts: ConvertOptions) -> int:
    """Plan and run the jobs of ``opts``; returns the exit status (0 all done, 1 some failed)."""
    apply_threads(opts.model)
    if opts.to_stdout:
        from socodec.cli.pcm import stream_pcm

        return stream_pcm(opts)
    jobs = plan_jobs(opts.inputs, opts.output, to=opts.to)
    check_options(jobs, opts)
    if opts.skip_existing:
        todo = [job for job in jobs if not job.output.exists()]
        if len(todo) < len(jobs):
            log.info("skipping %d of %d files: their output exists", len(jobs) - len(todo), len(jobs))
        jobs = todo
    return run_jobs(jobs, opts)


def check_options(jobs: list[Job], opts: ConvertOptions) -> None:
    """Refuse (:class:`UsageError`) coding options that apply to none of ``jobs``.

    ``--streams``/``--speaker``/``--sample-format`` act when decoding to audio, ``--no-lead``
    when analysing audio; with mixed outputs ``--streams``/``--speaker`` are applied to
    the audio outputs only, with a warning.
    """
    coding = opts.coding
    decoded = sum(not is_token_file(job.output) for job in jobs)
    analysed = any(job.needs_model and is_audio_file(job.input) for job in jobs)
    speaker_analysed = decoded and coding.speaker is not None and is_audio_file(coding.speaker)
    given = [name for name, value in (("--streams", coding.streams), ("--speaker", coding.speaker)) if value is not None]
    if given and not decoded:
        raise UsageError(f"{' and '.join(given)} only {_act(given)} when decoding to audio, and every output here is a "
                         "token file (it keeps all streams and its own speaker vector)")
    if given and decoded < len(jobs):
        log.warning("%s %s on the audio outputs only (%d of %d files); token files keep all streams and their "
                    "own speaker vector", " and ".join(given), _act(given), decoded, len(jobs))
    if coding.sample_format is not None and not decoded:
        raise UsageError("--sample-format only acts on audio outputs (.wav, .flac), and every output here is a "
                         "token file")
    if not coding.lead and not analysed and not speaker_analysed:
        raise UsageError("--no-lead only acts when analysing audio, and every input here is a token file "
                         "(its lead was fixed when it was made)")


def _act(options: list[str]) -> str:
    return "act" if len(options) > 1 else "acts"
