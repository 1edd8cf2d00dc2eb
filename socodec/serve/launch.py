"""Running the app: one uvicorn process (:func:`serve_uvicorn`) or a Ray Serve deployment (:func:`serve_ray`).

Both load the model before the service answers: uvicorn gets a codec already loaded; each Ray
replica calls the (picklable) ``load`` it is given in its constructor, and the command returns
to the user only once every replica is up.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Callable

from socodec.errors import SoCodecError
from socodec.serve.app import ServeOptions, build_app

if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec

__all__ = ["serve_uvicorn", "serve_ray", "listen"]

log = logging.getLogger("socodec")


def listen(host: str, port: int) -> socket.socket:
    """A bound socket on ``host:port`` (0: a free port); SoCodecError naming the address if it cannot be."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise SoCodecError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def serve_uvicorn(codec: SoCodec, opts: ServeOptions, host: str, port: int) -> None:
    """Serve ``codec`` on ``host:port`` until Ctrl-C / SIGTERM (uvicorn, one process)."""
    import uvicorn

    sock = listen(host, port)
    app = build_app(codec, opts)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            ws_max_size=opts.max_message_bytes, ws_ping_interval=None,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    log.info("socodec serve listening on http://%s:%d (Ctrl-C to stop)", host, bound[1])
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: the service stopped as asked
        pass
    finally:
        log.info("socodec serve stopped")
        app.state.pool.executor.shutdown(wait=False, cancel_futures=True)
        sock.close()


class Replica:
    """One Ray Serve replica: loads the model with ``load`` and serves :func:`build_app` of it."""

    def __init__(self, load: Callable[[], SoCodec], opts: ServeOptions) -> None:
        self.codec = load()
        self.opts = opts

    def __serve_build_asgi_app__(self):  # noqa: N807 - the name Ray Serve calls
        return build_app(self.codec, self.opts)


def serve_ray(load: Callable[[], SoCodec], opts: ServeOptions, host: str, port: int, replicas: int,
              address: str | None = None) -> None:
    """Serve the app from ``replicas`` Ray Serve replicas behind Ray's proxy on ``host:port``, until Ctrl-C.

    ``address``: a running Ray cluster (``ray://...`` or ``auto``); None starts a local one,
    shut down again on exit.
    """
    import ray
    from ray import serve

    listen(host, port).close()  # a clear message now rather than a failing proxy later
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        deployment = serve.deployment(
            name="socodec", num_replicas=replicas, max_ongoing_requests=opts.max_queue + opts.max_streams + 4,
        )(serve.ingress()(Replica))
        serve.run(deployment.bind(load, opts), name="socodec", route_prefix="/")
        log.info("socodec serve listening on http://%s:%d with %d Ray Serve replica(s) (Ctrl-C to stop)",
                 host, port, replicas)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C: the service stops as asked
        log.info("socodec serve stopping")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
