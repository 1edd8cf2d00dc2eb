"""The published SoCodec command line, on top of the ``socodec`` command.

    python example.py -i speech.wav -o resynthesis.wav   # analysis-synthesis
    python example.py -i speech.wav -o features.pt       # speech -> tokens + speaker
    python example.py -i features.pt -o resynthesis.wav  # tokens -> speech

Routing is by suffix, as in the published script (``.soc`` token files and
other audio formats work too), and the tokens are the published script's
(``--padding published``, always). Any other option is handed to ``socodec``
unchanged, e.g. ``--ckpt-dir DIR``, ``--streams 2``, ``--sample-format float``;
see ``socodec --help``. Exit status and messages are those of ``socodec``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from socodec.cli import main as socodec_main
from socodec.cli.convert import build_parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="example.py",
        description="SoCodec analysis/synthesis, routed by file suffix (wav->wav, wav->pt, pt->wav).",
        epilog="Other options are passed to socodec unchanged; see 'socodec --help'.",
        allow_abbrev=False,
    )
    p.add_argument("-i", "--input", type=Path, required=True, help="audio (.wav, .flac, ...) or token (.pt, .soc) file")
    p.add_argument("-o", "--output", type=Path, required=True, help="audio (.wav, .flac) or token (.pt, .soc) file")
    return p


def forwarded_args(argv: list[str] | None = None) -> list[str]:
    """The ``socodec`` command line equivalent to ``example.py`` arguments ``argv``."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    forwarded = [str(args.input), str(args.output), *rest]
    # Parse once with socodec's own parser: bad options fail here the same way, and a
    # stray positional argument cannot silently become a second input or the output.
    parsed = build_parser().parse_args(forwarded)
    positionals = [*parsed.inputs, parsed.output]
    if len(positionals) != 2:
        parser.error(f"unexpected arguments: {' '.join(str(a) for a in positionals[2:])}")
    if parsed.padding != "published":
        parser.error("example.py always pads as the published command line does; "
                     "use 'socodec --padding grid' for the grid padding")
    return forwarded


def main(argv: list[str] | None = None) -> int:
    return socodec_main(forwarded_args(argv))


if __name__ == "__main__":
    sys.exit(main())
