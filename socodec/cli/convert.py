"""The convert command, ``socodec IN... OUT``: routes by suffix, like the published tool.

* audio -> audio   analysis-synthesis (``speech.wav out.wav``)
* audio -> tokens  ``speech.wav tokens.soc`` / ``tokens.pt``
* tokens -> audio  ``tokens.soc out.wav``
* tokens -> tokens convert between ``.pt`` and ``.soc`` (no model needed)

Several inputs, a directory (recursive, mirrored) or a glob go to an output
directory; ``OUT`` = ``-`` streams raw PCM to stdout (:mod:`socodec.cli.pcm`); token
shards (``.parquet``) decode to one audio file per row (:mod:`socodec.cli.shards`).
Options that cannot apply to any job are refused (exit status 2) rather than ignored;
``--streams``/``--speaker`` that apply to some jobs of a batch only get a warning.
"""

from __future__ import annotations

import logging

from socodec.cli.common import UsageError
from socodec.cli.jobs import check_options, plan_jobs
from socodec.cli.model import apply_threads
from socodec.cli.options import ConvertOptions
from socodec.cli.parser import parse_convert

__all__ = ["main", "convert"]

log = logging.getLogger("socodec")


def main(argv: list[str]) -> int:
    """Parse ``argv`` and convert; returns the exit status."""
    return convert(parse_convert(argv))


def convert(opts: ConvertOptions) -> int:
    """Plan and run the jobs of ``opts``; returns the exit status (0 all done, 1 some failed)."""
    from socodec.cli.runner import run_jobs  # torch and the model code: not for --help or --version
    from socodec.cli.shards import decode_shards, is_shard_input

    apply_threads(opts.model)
    if opts.to_stdout:
        from socodec.cli.pcm import stream_pcm

        return stream_pcm(opts)
    if any(is_shard_input(p) for p in opts.inputs):
        return decode_shards(opts)
    if opts.ids is not None:
        raise UsageError("--ids applies to token shard inputs (.parquet) only")
    jobs = plan_jobs(opts.inputs, opts.output, to=opts.to)
    check_options(jobs, opts.coding)
    if opts.skip_existing:
        todo = [job for job in jobs if not job.output.exists()]
        if len(todo) < len(jobs):
            log.info("skipping %d of %d files: their output exists", len(jobs) - len(todo), len(jobs))
        jobs = todo
    new_folder = bool(jobs) and jobs[0].output != opts.output and not opts.output.exists()
    status = run_jobs(jobs, opts)
    if new_folder and opts.output.is_dir():  # said once it exists, never for a folder left uncreated
        log.info("%s/: new folder with %d output file%s", opts.output, len(jobs), "s" if len(jobs) > 1 else "")
    return status
