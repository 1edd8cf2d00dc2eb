"""``socodec demo``: a local web app to try the codec in a browser (the ``[demo]`` extra).

Upload or record speech, download its tokens, hear it resynthesised with 1-4 streams or
another file's voice, decode token files. Bound to 127.0.0.1 unless ``--host`` says otherwise;
``--share on`` asks Gradio for a public link (off by default). Runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from socodec.cli.common import (
    EXIT_INTERRUPTED, EXIT_OK, Parser, UsageError, add_host_argument, is_loopback, require_extra,
)
from socodec.cli.options import add_model_arguments, apply_threads, load_codec, model_options
from socodec.cli.options import ModelOptions
from socodec.errors import SoCodecError

__all__ = ["DemoOptions", "build_parser", "parse_options", "main", "EXTRA_MODULES"]

log = logging.getLogger("socodec")

EXTRA_MODULES = ("gradio", "matplotlib")


@dataclass(frozen=True)
class DemoOptions:
    """Where the demo listens, and which model it runs."""

    host: str = "127.0.0.1"
    port: int | None = None
    share: bool = False
    model: ModelOptions = field(default_factory=ModelOptions)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="socodec demo",
        description="A local web app: speech -> tokens (.soc/.pt, token table) -> speech at 1-4 streams, "
                    "voice swap, token file decoding. Stop it with Ctrl-C.",
    )
    add_host_argument(p)
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--share", choices=("off", "on"), default="off",
                   help="'on' asks Gradio's servers for a public link to this app (default: off)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_model_arguments(p, batch_size=False)
    return p


def parse_options(argv: list[str]) -> DemoOptions:
    """The typed options of a ``socodec demo`` command line."""
    ns = build_parser().parse_args(argv)
    if ns.port is not None and not 1 <= ns.port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {ns.port}")
    return DemoOptions(host=ns.host, port=ns.port, share=ns.share == "on", model=model_options(ns))


def main(argv: list[str]) -> int:
    """Run the demo until interrupted; returns the exit status."""
    opts = parse_options(argv)
    require_extra("'socodec demo'", "demo", *EXTRA_MODULES)
    for noisy in ("matplotlib", "gradio", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    apply_threads(opts.model)
    codec = load_codec(opts.model)
    from socodec.demo.app import launch
    from socodec.demo.app import DemoHandlers

    if not is_loopback(opts.host):
        log.warning("listening on %s: anyone who can reach this machine can use the demo", opts.host)
    if opts.share:
        log.warning("--share on: Gradio's servers relay a public link to this app")
    with tempfile.TemporaryDirectory(prefix="socodec-demo-") as workdir:
        try:
            app = launch(DemoHandlers(codec, Path(workdir)), opts.host, opts.port, opts.share, block=False)
        except OSError as exc:
            raise SoCodecError(_listen_failure(opts, exc)) from None
        log.info("socodec demo running at %s (Ctrl-C to stop)", app.local_url)
        if app.share_url:
            log.info("public link: %s", app.share_url)
        try:
            while app.is_running:  # not Gradio's block_thread: it swallows Ctrl-C and prints to stdout
                time.sleep(0.2)
        except KeyboardInterrupt:
            log.info("socodec demo stopped")
            return EXIT_INTERRUPTED
        finally:
            app.close()
    return EXIT_OK


def _listen_failure(opts: DemoOptions, exc: OSError) -> str:
    """Why the demo cannot listen, in our words and with our options (Gradio's names its own settings)."""
    if opts.port is None:
        return (f"cannot listen on {opts.host}: no free port from 7860 on; choose one with --port "
                f"({exc.strerror or 'all in use'})")
    if exc.strerror:
        return f"cannot listen on {opts.host}:{opts.port} ({exc.strerror}); choose another --host or --port"
    return f"cannot listen on {opts.host}:{opts.port}: the port is in use; choose another with --port"
