"""``socodec serve``: speech <-> tokens as a local HTTP / WebSocket service (the ``[serve]`` extra).

The model is loaded once, before the port opens; the service runs until Ctrl-C. Bound to
127.0.0.1 unless ``--host`` says otherwise; ``--api-key-env VAR`` requires
``Authorization: Bearer $VAR`` on every route but ``/healthz``. ``--engine ray`` runs the
same app as a Ray Serve deployment of ``--replicas`` copies.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from dataclasses import dataclass, field

from socodec.cli.common import EXIT_OK, Parser, UsageError, add_host_argument, is_loopback, require_extra
from socodec.cli.options import add_model_arguments, apply_threads, load_codec, model_options
from socodec.cli.options import ModelOptions

__all__ = ["ServeCommand", "build_parser", "parse_options", "main", "EXTRA_MODULES", "RAY_MODULES"]

log = logging.getLogger("socodec")

EXTRA_MODULES = ("starlette", "uvicorn", "prometheus_client")
RAY_MODULES = ("ray.serve",)


@dataclass(frozen=True)
class ServeCommand:
    """Where the service listens, how it runs, and which model it serves.

    ``limits`` is a :class:`socodec.serve.app.ServeOptions` field set, kept as plain values here
    so that parsing never imports the ``[serve]`` extra.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "uvicorn"
    replicas: int = 1
    ray_address: str | None = None
    max_streams: int = 16
    max_queue: int = 8
    workers: int = 1
    max_body_bytes: int = 64 << 20
    api_key: str | None = None
    model: ModelOptions = field(default_factory=ModelOptions)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="socodec serve",
        description="Serve the codec over HTTP and WebSocket: POST /v1/encode, POST /v1/decode, WS /v1/stream "
                    "(streaming synthesis), GET /healthz, GET /metrics. Stop it with Ctrl-C.",
    )
    add_host_argument(p)
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    p.add_argument("--engine", choices=("uvicorn", "ray"), default="uvicorn",
                   help="uvicorn: one process (default); ray: a Ray Serve deployment of --replicas copies")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="Ray Serve replicas (default: %(default)s)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to deploy on (default: start a local one)")
    p.add_argument("--max-streams", type=int, default=16, metavar="N",
                   help="WebSocket streams open at once; more are closed with code 1013 (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=8, metavar="N",
                   help="HTTP requests waiting for the model; more get 429 + Retry-After (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="threads running model calls (default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=64.0, metavar="M",
                   help="largest request body in MiB; more gets 413 (default: %(default)s)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer <value of $VAR>' on every route but /healthz")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_model_arguments(p, batch_size=False)
    return p


def parse_options(argv: list[str]) -> ServeCommand:
    """The typed options of a ``socodec serve`` command line (UsageError on bad values)."""
    ns = build_parser().parse_args(argv)
    if not 0 <= ns.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {ns.port}")
    for name in ("replicas", "max_streams", "workers"):
        if getattr(ns, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if ns.max_queue < 0:
        raise UsageError("--max-queue must be at least 0")
    if not ns.max_body_mb > 0:
        raise UsageError("--max-body-mb must be positive")
    if ns.engine == "uvicorn" and (ns.replicas != 1 or ns.ray_address):
        raise UsageError("--replicas and --ray-address need --engine ray")
    if ns.engine == "ray" and ns.port == 0:
        raise UsageError("--engine ray needs a fixed --port")
    api_key = None
    if ns.api_key_env is not None:
        api_key = os.environ.get(ns.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {ns.api_key_env}: that environment variable is not set or empty")
    return ServeCommand(
        host=ns.host, port=ns.port, engine=ns.engine, replicas=ns.replicas, ray_address=ns.ray_address,
        max_streams=ns.max_streams, max_queue=ns.max_queue, workers=ns.workers,
        max_body_bytes=int(ns.max_body_mb * (1 << 20)), api_key=api_key, model=model_options(ns),
    )


def main(argv: list[str]) -> int:
    """Serve until interrupted; returns the exit status."""
    opts = parse_options(argv)
    require_extra("'socodec serve'", "serve", *EXTRA_MODULES)
    if opts.engine == "ray":
        require_extra("'socodec serve --engine ray'", "serve,ray", *RAY_MODULES)
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access", "ray", "ray.serve"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from socodec.serve.app import ServeOptions
    from socodec.serve.app import listen, serve_ray, serve_uvicorn

    limits = ServeOptions(max_streams=opts.max_streams, max_queue=opts.max_queue, workers=opts.workers,
                          max_body_bytes=opts.max_body_bytes, api_key=opts.api_key)
    if not is_loopback(opts.host):
        log.warning("listening on %s: anyone who can reach this machine can use the service%s", opts.host,
                    "" if opts.api_key else " (no --api-key-env)")
    listen(opts.host, opts.port).close()  # the address is checked before the model loads
    if opts.engine == "ray":
        serve_ray(functools.partial(_load, opts.model), limits, opts.host, opts.port, opts.replicas, opts.ray_address)
        return EXIT_OK
    apply_threads(opts.model)
    codec = load_codec(opts.model)
    serve_uvicorn(codec, limits, opts.host, opts.port)
    return EXIT_OK


def _load(model: ModelOptions):
    """The codec of ``model`` in a Ray Serve replica (threads applied there)."""
    apply_threads(model)
    return load_codec(model)
