"""The Gradio web app of ``socodec demo``: widgets wired to :mod:`socodec.demo.app`.

Two tabs: *Speech → tokens → speech* (upload or record; token files to download, the token
table, the resynthesis at 1-4 streams with both spectrograms; an optional second file lends
its speaker vector) and *Decode a token file*. A bad file shows the command line's one-line
error in the app's error popup.

What the demo's buttons do, as plain functions of files and numbers (no gradio here).

The web app (:mod:`socodec.demo.app`) only wires these to widgets; the tests call them
directly. Every failure a user can cause is a :class:`~socodec.errors.SoCodecError` with the
same one-line message the command line prints; the app shows it as the error popup.
Files the handlers make (token files, resynthesised audio) go to ``workdir``.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

import gradio as gr
import numpy as np
import torch

from socodec.audio import AUDIO_SUFFIXES, load_audio, save_audio
from socodec.codes import Codes, TOKEN_SUFFIXES, load_codes, save_codes
from socodec.config import MelConfig, SAMPLES_PER_TOKEN, SAMPLE_RATE
from socodec.errors import SoCodecError, one_line
from socodec.nn.mel import MelSpectrogram

__all__ = ["build_app", "launch", "DemoHandlers", "Analysis", "Synthesis", "token_table", "TOKEN_TABLE_ROWS", "STREAM_CHOICES", "SPECTROGRAM_SECONDS"]


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no usage pings
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


if TYPE_CHECKING:  # pragma: no cover
    from socodec.codec import SoCodec
TOKEN_TABLE_ROWS = 500  # the token table shows at most this many frames (the files hold all)
STREAM_CHOICES = (1, 2, 3, 4)
_SPEC_ROW_PIXELS = 3  # each of the 80 mel bins becomes 3 pixel rows
_SPEC_RANGE = (-11.5, 2.5)  # log-mel values mapped onto the colour scale (natural log)
SPECTROGRAM_SECONDS = 60.0  # spectrogram images show at most the first minute


@dataclass(frozen=True)
class Analysis:
    """Speech -> tokens: the token files, the token table and a summary line.

    Attributes:
        soc_path, pt_path: the codes as ``.soc`` and ``.pt`` (in the workdir).
        headers, rows: the token table: ``frame, start (s), stream 1..S`` for the first frames (start
            times are in the input's time; frames of the 0.5 s lead start before 0).
        summary: one line: frames, streams, duration, bitrate.
        spectrogram: the input's log-mel as an RGB image ``[H, W, 3]`` uint8 (low frequencies at the bottom).
    """

    soc_path: Path
    pt_path: Path
    headers: list[str]
    rows: list[list[float | int]]
    summary: str
    spectrogram: np.ndarray


@dataclass(frozen=True)
class Synthesis:
    """Tokens -> speech: the audio file, its samples and its log-mel image.

    Attributes:
        wav_path: 16 kHz 16-bit wav (in the workdir).
        audio: the samples ``[N]`` float32 at 16 kHz.
        spectrogram: log-mel image ``[H, W, 3]`` uint8.
        summary: one line: streams, bitrate, speaker used.
    """

    wav_path: Path
    audio: np.ndarray
    spectrogram: np.ndarray
    summary: str


class DemoHandlers:
    """The demo's actions on one loaded codec; outputs are written under ``workdir``."""

    def __init__(self, codec: SoCodec, workdir: Path) -> None:
        self.codec = codec
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._mel = MelSpectrogram(MelConfig())

    # ------------------------------------------------------------------ actions
    def analyse(self, audio_path: str | Path | None) -> Analysis:
        """An uploaded or recorded audio file -> tokens (``.soc`` + ``.pt``), table and spectrogram."""
        path = _given(audio_path, "upload or record some speech first")
        wav = load_audio(path)
        codes = self.codec.encode(wav)
        stem = self._stem(path)
        soc = save_codes(codes, self.workdir / f"{stem}.soc")
        pt = save_codes(codes, self.workdir / f"{stem}.pt")
        headers, rows = token_table(codes)
        shown = "" if codes.num_frames <= TOKEN_TABLE_ROWS else f" (table: first {TOKEN_TABLE_ROWS} frames)"
        summary = (f"{codes.num_frames} frames x {codes.num_streams} streams, {codes.duration:.2f} s: "
                   f"{codes.bitrate(include_speaker=False):.1f} bit/s of tokens + a {codes.speaker_dim}-value "
                   f"speaker vector ({codes.bitrate():.0f} bit/s over this file){shown}")
        return Analysis(Path(soc), Path(pt), headers, rows, summary, self.spectrogram(wav))

    def resynthesise(self, codes_path: str | Path | None, streams: int = 4,
                     speaker_path: str | Path | None = None) -> Synthesis:
        """Token file -> speech with the first ``streams`` streams; ``speaker_path`` swaps the voice.

        Args:
            codes_path: a ``.soc`` or ``.pt`` file (the output of :meth:`analyse`, or an uploaded one).
            streams: how many streams to decode with (1-4; more than the file has is an error).
            speaker_path: optional audio or token file whose speaker vector replaces the file's own.
        """
        path = _given(codes_path, "encode some speech or upload a token file (.soc, .pt) first")
        if path.suffix.lower() not in TOKEN_SUFFIXES:
            raise SoCodecError(f"{path.name}: not a token file (expected {' or '.join(TOKEN_SUFFIXES)})")
        codes = load_codes(path)
        k = _streams(streams)
        if k > codes.num_streams:
            raise SoCodecError(f"{path.name}: holds {codes.num_streams} streams, cannot decode with {k}")
        speaker, voice = None, "its own speaker vector"
        if speaker_path:
            speaker = self.speaker_vector(speaker_path)
            voice = f"the speaker vector of {Path(speaker_path).name}"
        try:
            audio = self.codec.decode(codes, streams=k, speaker=speaker)
        except SoCodecError as exc:  # e.g. a speaker vector of another model size: say which file(s)
            voice_file = f" with the voice of {Path(speaker_path).name}" if speaker_path else ""
            raise SoCodecError(f"{path.name}{voice_file}: {exc}") from None
        out = self.workdir / f"{self._stem(path)}-{k}streams.wav"
        save_audio(out, audio)
        rate = codes.with_streams(k).bitrate(include_speaker=False)
        summary = f"decoded with {k} of {codes.num_streams} streams ({rate:.1f} bit/s of tokens) and {voice}"
        return Synthesis(out, audio.numpy(), self.spectrogram(audio), summary)

    def speaker_vector(self, path: str | Path) -> torch.Tensor:
        """The speaker vector ``[D]`` of a token file, or of an audio file (analysed)."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix in TOKEN_SUFFIXES:
            return load_codes(p).speaker
        if suffix in AUDIO_SUFFIXES:
            return self.codec.encode(load_audio(p)).speaker
        raise SoCodecError(f"{p.name}: the voice must be an audio file ({' '.join(AUDIO_SUFFIXES)}) "
                           f"or a token file ({' '.join(TOKEN_SUFFIXES)})")

    def spectrogram(self, wav: torch.Tensor | np.ndarray) -> np.ndarray:
        """Log-mel image ``[80 * 3, frames, 3]`` uint8 (magma colours, low frequencies at the bottom).

        Only the first :data:`SPECTROGRAM_SECONDS` are drawn (100 frames, i.e. pixels, per second).
        """
        x = torch.as_tensor(np.asarray(wav, dtype=np.float32))[: round(SPECTROGRAM_SECONDS * SAMPLE_RATE)]
        if x.numel() <= self._mel.reflect_pad:
            x = torch.nn.functional.pad(x, (0, self._mel.reflect_pad + 1 - x.numel()))
        with torch.inference_mode():
            mel = self._mel(x).numpy()  # [frames, 80]
        lo, hi = _SPEC_RANGE
        scaled = np.clip((mel.T[::-1] - lo) / (hi - lo), 0.0, 1.0)  # [80, frames], top row = highest bin
        return np.repeat(_magma(scaled), _SPEC_ROW_PIXELS, axis=0)

    def _stem(self, path: Path) -> str:
        """A fresh output name: the input's stem + a short random suffix (uploads often share names)."""
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60] or "speech"
        return f"{stem}-{uuid.uuid4().hex[:8]}"


def token_table(codes: Codes, limit: int = TOKEN_TABLE_ROWS) -> tuple[list[str], list[list[float | int]]]:
    """Headers and rows ``[frame, time in s, token of stream 1..S]`` for the first ``limit`` frames."""
    frame_s = SAMPLES_PER_TOKEN / SAMPLE_RATE
    lead_s = (codes.lead or 0) / SAMPLE_RATE
    headers = ["frame", "start (s)", *(f"stream {s + 1}" for s in range(codes.num_streams))]
    rows = [[t, round(t * frame_s - lead_s, 2), *map(int, codes.tokens[t].tolist())]
            for t in range(min(limit, codes.num_frames))]
    return headers, rows


def _given(value: str | Path | None, message: str) -> Path:
    if value is None or str(value) == "":
        raise SoCodecError(message)
    return Path(value)


def _streams(value: object) -> int:
    try:
        k = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SoCodecError(f"streams must be one of {STREAM_CHOICES}, got {value!r}") from None
    if k not in STREAM_CHOICES:
        raise SoCodecError(f"streams must be one of {STREAM_CHOICES}, got {k}")
    return k


def _magma(values: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 through matplotlib's magma colour map."""
    from matplotlib import colormaps

    return (colormaps["magma"](values)[..., :3] * 255).astype(np.uint8)
