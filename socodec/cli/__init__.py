"""The ``socodec`` command line.

``socodec IN... OUT`` converts (:mod:`socodec.cli.convert`); ``socodec <command> ...``
runs a subcommand, each in its own module exposing ``main(argv: list[str]) -> int``,
imported only when called (:data:`COMMANDS`).

Layout: argument parsing (``parser.py``, ``model.py`` for the model options every
command shares) -> typed frozen options (``options.py``) -> the work (``jobs.py`` plans,
``runner.py`` runs, ``pcm.py`` streams to stdout). ``common.py`` sets up logging and turns
every failure into one line and an exit status: 0 all done, 1 some input failed (or the
model could not be loaded), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import sys

from socodec.cli.common import EXIT_USAGE, MissingExtra, UsageError, logging_flags, run_command, setup_logging

__all__ = ["COMMANDS", "main", "UsageError"]

log = logging.getLogger("socodec")

#: Subcommand name -> (module under ``socodec.cli``, optional extra it needs or None).
COMMANDS: dict[str, tuple[str, str | None]] = {
    "info": ("info", None),
    "tokenize": ("tokenize", None),
    "eval": ("evaluate", "eval"),
    "demo": ("demo", "demo"),
    "train": ("train", "train"),
    "serve": ("serve", "serve"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``socodec`` and ``python -m socodec``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(*logging_flags(argv))
    if not argv:
        from socodec.cli.convert import build_parser, commands_text

        sys.stderr.write(f"{build_parser().format_usage()}\n{commands_text()}\n\n'socodec --help' for the options\n")
        return EXIT_USAGE
    if argv and argv[0] in COMMANDS:
        name, rest = argv[0], argv[1:]
        return run_command(lambda args: _command(name).main(args), rest)
    from socodec.cli import convert

    return run_command(convert.main, argv)


def _command(name: str):
    """The module of subcommand ``name``; one clear line when it (or an extra it needs) is missing."""
    module, extra = COMMANDS[name]
    qualified = f"socodec.cli.{module}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            raise UsageError(f"'socodec {name}' is not available in this version of socodec") from None
        if exc.name and not exc.name.startswith("socodec") and extra:
            raise MissingExtra(f"'socodec {name}'", exc.name, extra) from None
        raise
