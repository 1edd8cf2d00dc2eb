"""The ASGI app of ``socodec serve``: routes, limits, API key and metrics around one loaded codec.

:func:`build_app` returns a Starlette app serving

* ``GET /healthz``: the model (fingerprints, streams, frame length, sample rate); no key needed;
* ``POST /v1/encode``: an audio file -> ``.soc`` / ``.pt`` / JSON codes;
* ``POST /v1/decode``: a token file or JSON codes -> wav / flac;
* ``WS /v1/stream``: token frames in as they arrive, 16 kHz PCM out as soon as it is final;
* ``GET /metrics``: Prometheus text.

Model calls run on a fixed pool of ``workers`` threads. At most ``max_queue`` HTTP requests
wait for it (more are answered ``429`` with ``Retry-After``) and at most ``max_streams``
WebSocket sessions are open (more are closed with 1013); a stream's synthesis steps queue for
the same threads. Errors are one JSON line ``{"error": ...}`` (422 bad input, 413 too large,
401 no or wrong key, 429 busy, 500 internal), never a traceback or a server path.

Running the app: one uvicorn process (:func:`serve_uvicorn`) or a Ray Serve deployment (:func:`serve_ray`).

Both load the model before the service answers: uvicorn gets a codec already loaded; each Ray
replica calls the (picklable) ``load`` it is given in its constructor, and the command returns
to the user only once every replica is up.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TYPE_CHECKING

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from socodec.config import PADDINGS, SAMPLE_RATE
from socodec.errors import SoCodecError, one_line
from socodec.inference.synthesis import LOOKAHEAD_MEL_FRAMES, SynthesisStream
from socodec.serve.payloads import (
    AUDIO_FORMATS, BadRequest, CODE_FORMATS, MEDIA_TYPES, decode_body, encode_body, parse_codes, parse_frames,
    parse_stream_start, pcm_bytes,
)

__all__ = ["ServeOptions", "build_app", "WS_BUSY", "WS_BAD_DATA", "WS_POLICY", "serve_uvicorn", "serve_ray", "listen"]


if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec
log = logging.getLogger(__name__)
WS_BAD_DATA, WS_POLICY, WS_TOO_BIG, WS_INTERNAL, WS_BUSY = 1007, 1008, 1009, 1011, 1013
_QUEUED_MESSAGES = 256  # client messages a stream holds before the client has to wait


@dataclass(frozen=True)
class ServeOptions:
    """Limits and security of the service.

    Attributes:
        max_streams: WebSocket sessions open at once (more are closed with 1013).
        max_queue: HTTP requests waiting for a model thread (more are answered 429).
        workers: threads running model calls (CPU: 1 or 2 uses the cores best).
        max_body_bytes: largest request body (more is 413).
        max_message_bytes: largest WebSocket message (more closes the session with 1009).
        api_key: when set, every route but ``/healthz`` needs ``Authorization: Bearer <api_key>``.
    """

    max_streams: int = 16
    max_queue: int = 8
    workers: int = 1
    max_body_bytes: int = 64 << 20
    max_message_bytes: int = 1 << 20
    api_key: str | None = None


class _Failure(Exception):
    """An HTTP answer other than 200: ``status``, a one-line ``message``, the metrics ``kind``."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


class _ModelFailure(Exception):
    """A model call of a stream failed for a reason other than its input (a bug): close 1011."""


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("socodec_requests", "Requests by route", ["route"], registry=r)
        self.errors = Counter("socodec_errors", "Failed requests and streams by kind", ["kind"], registry=r)
        self.active_streams = Gauge("socodec_active_streams", "Open /v1/stream sessions", registry=r)
        self.pending = Gauge("socodec_model_calls_pending", "Model calls queued or running", registry=r)
        self.frames = Counter("socodec_frames_decoded", "Token frames decoded to audio", registry=r)
        self.audio_seconds = Counter("socodec_audio_seconds", "Seconds of audio produced", registry=r)
        self.first_audio = Histogram(
            "socodec_first_audio_seconds", "Stream: first token message to first audio sent", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10))
        self.latency = Histogram(
            "socodec_request_seconds", "HTTP request latency by route", ["route"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class ModelPool:
    """A fixed number of threads for model calls, and the count of calls queued or running."""

    def __init__(self, workers: int, max_queue: int, metrics: Metrics) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="socodec-model")
        self.capacity = workers + max_queue
        self.pending = 0
        self.metrics = metrics

    def full(self) -> bool:
        """True when a new HTTP request would wait behind ``max_queue`` others."""
        return self.pending >= self.capacity

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a model thread."""
        self.pending += 1
        self.metrics.pending.set(self.pending)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.pending -= 1
            self.metrics.pending.set(self.pending)


def model_summary(codec: SoCodec) -> dict[str, Any]:
    """What ``/healthz`` says about the model."""
    return {"fingerprints": dict(codec.identity), "streams": codec.num_streams,
            "frame_ms": codec.hop * 1000 // SAMPLE_RATE, "sample_rate": SAMPLE_RATE,
            "speaker_dim": codec.analyzer.cfg.model_size, "cardinality": codec.analyzer.vq.cardinality,
            "lookahead_ms": LOOKAHEAD_MEL_FRAMES * codec.vocoder.hop_length * 1000 // SAMPLE_RATE}


def build_app(codec: SoCodec, opts: ServeOptions = ServeOptions()) -> Starlette:
    """The ASGI app serving ``codec`` under ``opts`` (see the module docstring)."""
    metrics = Metrics()
    pool = ModelPool(opts.workers, opts.max_queue, metrics)
    state = {"streams": 0}
    summary = model_summary(codec)

    def authorized(headers: Any) -> bool:
        if opts.api_key is None:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), opts.api_key.encode())

    async def body(request: Request) -> bytes:
        """The request body, refused (413) as soon as it passes the limit."""
        limit = opts.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Failure(413, f"body of {declared} bytes exceeds the limit of {limit}", "too_large")
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > limit:
                raise _Failure(413, f"body exceeds the limit of {limit} bytes", "too_large")
        return bytes(data)

    def query(request: Request, allowed: dict[str, tuple[str, ...] | None]) -> dict[str, str]:
        params = dict(request.query_params)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise _Failure(422, f"unknown query parameter(s): {', '.join(unknown)}", "bad_request")
        for name, choices in allowed.items():
            if choices and name in params and params[name] not in choices:
                raise _Failure(422, f"{name} must be one of {', '.join(choices)}, got {params[name]!r}"[:200],
                               "bad_request")
        return params

    def route(name: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """``handler`` with the key check, the busy check, metrics and errors as one JSON line."""

        async def endpoint(request: Request) -> Response:
            metrics.requests.labels(name).inc()
            started = time.perf_counter()
            try:
                if name != "healthz" and not authorized(request.headers):
                    raise _Failure(401, "missing or wrong API key (Authorization: Bearer ...)", "unauthorized",
                                   {"WWW-Authenticate": "Bearer"})
                return await handler(request)
            except _Failure as exc:
                metrics.errors.labels(exc.kind).inc()
                return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)
            except BadRequest as exc:
                metrics.errors.labels("bad_request").inc()
                return JSONResponse({"error": one_line(exc)}, 422)
            except SoCodecError as exc:  # e.g. a CodesError from the model's own checks
                metrics.errors.labels("bad_request").inc()
                return JSONResponse({"error": one_line(exc)}, 422)
            except ClientDisconnect:
                metrics.errors.labels("disconnect").inc()
                return Response(status_code=400)
            except Exception:  # noqa: BLE001 - a bug: logged here, never shown to the client
                log.exception("%s failed", name)
                metrics.errors.labels("internal").inc()
                return JSONResponse({"error": "internal error"}, 500)
            finally:
                metrics.latency.labels(name).observe(time.perf_counter() - started)

        return endpoint

    def admit() -> None:
        if pool.full():
            raise _Failure(429, "busy: too many requests waiting for the model, retry later", "busy",
                           {"Retry-After": "1"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": summary})

    async def encode(request: Request) -> Response:
        params = query(request, {"format": CODE_FORMATS, "padding": PADDINGS})
        data = await body(request)
        admit()
        fmt = params.get("format", "soc")
        out = await pool.run(encode_body, codec, data, fmt, params.get("padding", "published"))
        return Response(out, media_type=MEDIA_TYPES[fmt])

    async def decode(request: Request) -> Response:
        params = query(request, {"format": AUDIO_FORMATS, "streams": None})
        streams = params.get("streams")
        if streams is not None and not (streams.isdigit() and 1 <= int(streams) <= codec.num_streams):
            raise _Failure(422, f"streams must be an integer from 1 to {codec.num_streams}", "bad_request")
        data = await body(request)
        admit()
        codes = parse_codes(data)
        fmt = params.get("format", "wav")
        out, seconds = await pool.run(decode_body, codec, codes, None if streams is None else int(streams), fmt)
        metrics.frames.inc(codes.num_frames)
        metrics.audio_seconds.inc(seconds)
        return Response(out, media_type=MEDIA_TYPES[fmt])

    async def metrics_text(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def stream(ws: WebSocket) -> None:
        if not authorized(ws.headers):
            metrics.errors.labels("unauthorized").inc()
            await ws.close(WS_POLICY)  # before accepting: the handshake is refused (HTTP 403)
            return
        metrics.requests.labels("stream").inc()
        await ws.accept()
        if state["streams"] >= opts.max_streams:
            metrics.errors.labels("busy").inc()
            await ws.close(WS_BUSY, "busy: too many open streams, retry later")
            return
        state["streams"] += 1
        metrics.active_streams.inc()
        try:
            code, reason = await _run_stream(ws)
        except (WebSocketDisconnect, RuntimeError, OSError):  # the client went away: nothing to answer
            metrics.errors.labels("disconnect").inc()
            return
        finally:
            state["streams"] -= 1
            metrics.active_streams.dec()
        if code != 1000:
            metrics.errors.labels("bad_request" if code in (WS_BAD_DATA, WS_TOO_BIG) else "internal").inc()
        try:
            await ws.close(code, reason[:120])
        except (RuntimeError, OSError):
            pass

    async def receive(ws: WebSocket) -> str | bytes | None:
        """The next text or binary message; None when the client has gone."""
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("text") if message.get("text") is not None else message.get("bytes")
        if data is not None and len(data) > opts.max_message_bytes:
            raise _Failure(413, f"message exceeds {opts.max_message_bytes} bytes", "too_large")
        return data

    async def _run_stream(ws: WebSocket) -> tuple[int, str]:
        """Serve one session; returns the close code and reason.

        A reader task queues the client's messages (at most ``_QUEUED_MESSAGES``, then the
        client waits); each synthesis step takes every frame queued so far, so a stream that
        fell behind catches up with fewer, larger steps (the output does not depend on them).
        """
        inbox: asyncio.Queue = asyncio.Queue(maxsize=_QUEUED_MESSAGES)

        async def read() -> None:
            try:
                while True:
                    await inbox.put(await receive(ws))
            except Exception as exc:  # noqa: BLE001 - handed to the synthesis loop, in order
                await inbox.put(exc)

        reader = asyncio.create_task(read())
        try:
            return await _synthesise(ws, inbox)
        except _Failure as exc:
            return WS_TOO_BIG, exc.message
        except SoCodecError as exc:  # BadRequest and the synthesis checks (CodesError)
            return WS_BAD_DATA, one_line(exc)
        except _ModelFailure as exc:  # a bug: logged, the client only learns that it failed
            log.error("stream failed", exc_info=exc.__cause__)
            return WS_INTERNAL, "internal error"
        except (WebSocketDisconnect, RuntimeError, OSError):  # sending to or reading from a client that left
            raise
        except Exception:  # noqa: BLE001 - a bug outside the model: logged, one line to the client
            log.exception("stream failed")
            return WS_INTERNAL, "internal error"
        finally:
            reader.cancel()

    async def model_step(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """A synthesis step on the pool; failures that are not about the input become _ModelFailure."""
        try:
            return await pool.run(fn, *args)
        except SoCodecError:
            raise
        except Exception as exc:  # noqa: BLE001 - told apart from a client that went away
            raise _ModelFailure() from exc

    async def _synthesise(ws: WebSocket, inbox: asyncio.Queue) -> tuple[int, str]:
        def take(item: Any) -> Any:
            if isinstance(item, BaseException):
                raise item
            return item

        start = parse_stream_start(take(await inbox.get()) or "", summary["speaker_dim"], codec.num_streams)
        synth = SynthesisStream(codec, start.speaker, start.streams, start.lead, start.num_samples,
                                codec.chunks.vocoder_chunk)
        first_tokens: float | None = None
        sent_audio = end = False
        while not end:
            pieces = []
            item = await inbox.get()
            while True:
                frames = parse_frames(take(item) or "")
                if frames is None:
                    end = True
                elif frames.shape[0]:
                    pieces.append(frames)
                if end or inbox.empty():
                    break
                item = inbox.get_nowait()
            if first_tokens is None and (pieces or end):
                first_tokens = time.perf_counter()
            if pieces:
                frames = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                audio = await model_step(synth.push, frames)
                metrics.frames.inc(frames.shape[0])
                await send_audio(ws, audio, start.sample_format)
                if audio.numel() and not sent_audio:
                    metrics.first_audio.observe(time.perf_counter() - first_tokens)
                    sent_audio = True
        await send_audio(ws, await model_step(synth.finish), start.sample_format)
        return 1000, ""

    async def send_audio(ws: WebSocket, audio: torch.Tensor, sample_format: str) -> None:
        if audio.numel():
            await ws.send_bytes(pcm_bytes(audio, sample_format))
            metrics.audio_seconds.inc(audio.numel() / SAMPLE_RATE)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unexpected error: %s", one_line(exc))
        return JSONResponse({"error": "internal error"}, 500)

    app = Starlette(
        routes=[
            Route("/healthz", route("healthz", healthz), methods=["GET"]),
            Route("/v1/encode", route("encode", encode), methods=["POST"]),
            Route("/v1/decode", route("decode", decode), methods=["POST"]),
            Route("/metrics", route("metrics", metrics_text), methods=["GET"]),
            WebSocketRoute("/v1/stream", stream),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.codec, app.state.metrics, app.state.pool = codec, metrics, pool
    return app


console = logging.getLogger("socodec")  # what the user sees on the terminal


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
    console.info("socodec serve listening on http://%s:%d (Ctrl-C to stop)", host, bound[1])
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: the service stopped as asked
        pass
    finally:
        console.info("socodec serve stopped")
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

    from socodec.corpus.engines import start_local_ray

    listen(host, port).close()  # a clear message now rather than a failing proxy later
    settings = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **settings)
        stop = ray.shutdown
    else:  # a Ray of our own, never one that happens to run on this machine; stopped even after a kill -9
        stop = start_local_ray(ray, **settings)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        deployment = serve.deployment(
            name="socodec", num_replicas=replicas, max_ongoing_requests=opts.max_queue + opts.max_streams + 4,
        )(serve.ingress()(Replica))
        serve.run(deployment.bind(load, opts), name="socodec", route_prefix="/")
        console.info("socodec serve listening on http://%s:%d with %d Ray Serve replica(s) (Ctrl-C to stop)",
                 host, port, replicas)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C: the service stops as asked
        console.info("socodec serve stopping")
    finally:
        try:
            serve.shutdown()
        finally:
            stop()
