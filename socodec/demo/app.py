"""The Gradio web app of ``socodec demo``: widgets wired to :mod:`socodec.demo.handlers`.

Two tabs: *Speech → tokens → speech* (upload or record; token files to download, the token
table, the resynthesis at 1-4 streams with both spectrograms; an optional second file lends
its speaker vector) and *Decode a token file*. A bad file shows the command line's one-line
error in the app's error popup.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no usage pings

import gradio as gr  # noqa: E402

from socodec.audio import AUDIO_SUFFIXES  # noqa: E402
from socodec.codes import TOKEN_SUFFIXES  # noqa: E402
from socodec.demo.handlers import STREAM_CHOICES, DemoHandlers  # noqa: E402
from socodec.errors import SoCodecError, one_line  # noqa: E402

__all__ = ["build_app", "launch"]

log = logging.getLogger(__name__)

_INTRO = """# socodec
Speech → 4 ordered streams of tokens (16384 values each, one frame per 120 ms) + one speaker vector → speech.
Decoding the first K streams gives a coarser rendering at K × 116.7 bit/s. Everything runs on this machine."""


def _shown_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a handler; its one-line :class:`SoCodecError` (or any failure) becomes the app's error popup."""

    @functools.wraps(fn)
    def wrapped(*args: Any) -> Any:
        try:
            return fn(*args)
        except SoCodecError as exc:
            message = one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected library error: one line, logged
            log.debug("demo action failed", exc_info=True)
            message = f"unexpected error ({type(exc).__name__}: {one_line(exc)})"
        for arg in args:  # uploads live in Gradio's cache folders: name them as the user knows them
            if isinstance(arg, str) and arg:
                message = message.replace(arg, Path(arg).name)
        log.error("%s", message)
        raise gr.Error(message, print_exception=False)

    return wrapped


def build_app(handlers: DemoHandlers) -> gr.Blocks:
    """The Blocks UI around ``handlers`` (not launched)."""

    @_shown_errors
    def encode(audio: str | None, streams: int, voice: str | None):
        a = handlers.analyse(audio)
        s = handlers.resynthesise(a.soc_path, streams, voice)
        table = {"data": a.rows, "headers": a.headers}
        return (a.summary, [str(a.soc_path), str(a.pt_path)], table, a.spectrogram,
                str(s.wav_path), s.spectrogram, s.summary, str(a.soc_path))

    @_shown_errors
    def redecode(codes: str | None, streams: int, voice: str | None):
        if not codes:
            return gr.skip(), gr.skip(), gr.skip()
        s = handlers.resynthesise(codes, streams, voice)
        return str(s.wav_path), s.spectrogram, s.summary

    @_shown_errors
    def decode_file(token_file: str | None, streams: int, voice: str | None):
        s = handlers.resynthesise(token_file, streams, voice)
        return str(s.wav_path), s.spectrogram, s.summary

    token_types = list(TOKEN_SUFFIXES)
    voice_types = list(AUDIO_SUFFIXES) + token_types
    with gr.Blocks(title="socodec demo", analytics_enabled=False) as app:
        gr.Markdown(_INTRO)
        with gr.Tab("Speech → tokens → speech"):
            with gr.Row():
                audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech",
                                    elem_id="speech-input")
                with gr.Column():
                    streams = gr.Radio(list(STREAM_CHOICES), value=4, label="Streams to decode with",
                                       elem_id="streams")
                    voice = gr.File(label="Optional: another voice (audio or token file) lends its speaker vector",
                                    file_types=voice_types, type="filepath", elem_id="voice")
                    run = gr.Button("Encode and resynthesise", variant="primary", elem_id="encode")
            summary = gr.Markdown(elem_id="summary")
            with gr.Row():
                resynth = gr.Audio(label="Resynthesis", type="filepath", interactive=False, elem_id="resynthesis")
                files = gr.File(label="Tokens: .soc and .pt", file_count="multiple", interactive=False,
                                elem_id="token-files")
            synth_summary = gr.Markdown(elem_id="synthesis-summary")
            with gr.Row():
                spec_in = gr.Image(label="Original (log-mel)", type="numpy", interactive=False)
                spec_out = gr.Image(label="Resynthesis (log-mel)", type="numpy", interactive=False)
            empty_headers = ["frame", "start (s)", *(f"stream {k}" for k in range(1, handlers.codec.num_streams + 1))]
            table = gr.Dataframe(value=[], headers=empty_headers, label="Tokens (one row per 120 ms frame)",
                                 interactive=False, max_height=320, elem_id="token-table")
            codes_state = gr.State(None)
            run.click(encode, [audio_in, streams, voice],
                      [summary, files, table, spec_in, resynth, spec_out, synth_summary, codes_state],
                      api_name="encode")
            for control in (streams, voice):  # a new choice re-decodes the tokens already made
                control.change(redecode, [codes_state, streams, voice], [resynth, spec_out, synth_summary],
                               api_visibility="private")
        with gr.Tab("Decode a token file"):
            with gr.Row():
                token_in = gr.File(label="Token file (.soc or .pt)", file_types=token_types, type="filepath",
                                   elem_id="token-input")
                with gr.Column():
                    streams2 = gr.Radio(list(STREAM_CHOICES), value=4, label="Streams to decode with")
                    voice2 = gr.File(label="Optional: another voice (audio or token file)", file_types=voice_types,
                                     type="filepath")
                    run2 = gr.Button("Decode", variant="primary", elem_id="decode")
            decoded = gr.Audio(label="Decoded speech", type="filepath", interactive=False, elem_id="decoded")
            decoded_summary = gr.Markdown()
            decoded_spec = gr.Image(label="Decoded (log-mel)", type="numpy", interactive=False)
            run2.click(decode_file, [token_in, streams2, voice2], [decoded, decoded_spec, decoded_summary],
                       api_name="decode")
    return app


def launch(handlers: DemoHandlers, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True) -> gr.Blocks:
    """Build and start the app on ``host:port`` (``port`` None: Gradio picks a free one from 7860).

    ``block=False`` returns at once with the server running in a thread (tests); call ``app.close()``.
    """
    app = build_app(handlers)
    app.queue()
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=True,
               show_error=True, allowed_paths=[str(Path(handlers.workdir).resolve())], ssr_mode=False)
    return app
