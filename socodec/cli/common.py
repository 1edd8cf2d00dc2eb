"""What every ``socodec`` command shares: logging set-up and turning failures into exit statuses.

:func:`run_command` is the one place where an exception becomes a one-line message on
stderr and an exit status (see ``docs/guarantees.md``):

* :class:`UsageError` (options that contradict each other or do not apply): 2
* :class:`~socodec.errors.SoCodecError` (bad input, files or settings): 1
* any other exception (a bug or an unexpected library error): 1, details with ``-v``
* Ctrl-C: 130
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from typing import Callable, NoReturn

from socodec.errors import ErrorLimit, SoCodecError, one_line

log = logging.getLogger("socodec")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Libraries whose informational chatter is not for our users (errors still show).
NOISY_LOGGERS = ("huggingface_hub", "urllib3", "filelock", "httpx", "httpcore")


class UsageError(Exception):
    """The command line asks for something impossible or contradictory (exit status 2)."""


class MissingExtra(SoCodecError):
    """An optional dependency is not installed (exit status 1): the message names the pip command."""

    def __init__(self, what: str, package: str, extra: str) -> None:
        super().__init__(f"{what} needs the Python package '{package.split('.')[0]}', which is not installed: "
                         f"pip install 'socodec[{extra}]'")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose option errors are one line (``UsageError``, exit status 2), not the usage text.

    Every ``socodec`` command builds its parser from this class, so ``--streams 7`` and
    ``--sample-format pcm8`` are reported alike: ``socodec: ERROR: <what>; see 'socodec --help'``.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def require_extra(what: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` unless every module in ``modules`` can be imported.

    e.g. ``require_extra("'socodec demo'", "demo", "gradio")`` at the start of a command.
    """
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtra(what, name, extra) from None


def add_max_errors_argument(p: argparse.ArgumentParser) -> None:
    """``--max-errors``: the failed-input limit of the batch commands (parsed into an :class:`ErrorLimit`)."""

    def limit(text: str) -> ErrorLimit:
        try:
            return ErrorLimit.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("--max-errors takes", "takes")) from None

    p.add_argument("--max-errors", type=limit, default=ErrorLimit(), metavar="N|P%",
                   help="stop when more inputs than this fail: a count, a percentage of the inputs done "
                        "(judged after 100 inputs) or 'none' (default: 1%%)")


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """``socodec: LEVEL: message`` on stderr; ``quiet``: errors only; ``verbose``: debug."""
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("socodec: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)


def logging_flags(argv: list[str]) -> tuple[bool, bool]:
    """``(quiet, verbose)`` from raw arguments, so logging is set up before parsing reports anything."""
    return ("-q" in argv or "--quiet" in argv), ("-v" in argv or "--verbose" in argv)


def exit_status(exc: SystemExit) -> int:
    """The status argparse (or a command) asked for with ``SystemExit``."""
    if exc.code is None:
        return EXIT_OK
    return exc.code if isinstance(exc.code, int) else EXIT_FAILED


def run_command(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run ``command(argv)``; every failure becomes one line on stderr and an exit status."""
    try:
        return command(argv)
    except SystemExit as exc:  # argparse: --help, --version, bad options (it printed the message)
        return exit_status(exc)
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept, run again with --skip-existing to resume")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        log.error("%s", one_line(exc))
        return EXIT_USAGE
    except SoCodecError as exc:
        log.error("%s", one_line(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a bug or an unexpected library error: one line, no traceback
        log.debug("unexpected error", exc_info=True)
        log.error("unexpected error (%s: %s); run with -v for details", type(exc).__name__, one_line(exc))
        return EXIT_FAILED


def add_host_argument(parser: argparse.ArgumentParser) -> None:
    """``--host`` of the commands that listen on the network (default 127.0.0.1)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
