"""``socodec info FILE...``: describe token files (frames, streams, duration, bitrate, model)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from socodec.cli.common import Parser
from socodec.errors import SoCodecError, one_line

__all__ = ["build_parser", "main"]

log = logging.getLogger("socodec")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="socodec info", description="Describe token files (.soc or .pt).")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str]) -> int:
    """Print a summary of each file; exit status 1 if any cannot be read."""
    args = build_parser().parse_args(argv)
    from socodec.codes import load_codes  # numpy arrays: describing .soc files never imports torch

    files: list[Path] = args.files
    status = 0
    results = []
    for path in files:
        try:
            summary = load_codes(path, as_numpy=True).summary()
        except SoCodecError as exc:
            log.error("%s", one_line(exc))
            status = 1
            continue
        summary["model"] = dict(sorted((summary.get("model") or {}).items()))  # one order for .pt and .soc
        summary["file"] = str(path)
        results.append(summary)
        if not args.json:
            sys.stdout.write(format_summary(summary))
    if args.json:
        sys.stdout.write(json.dumps(results[0] if len(files) == 1 and results else results, indent=2) + "\n")
    return status


def format_summary(s: dict) -> str:
    """The human-readable form of :meth:`Codes.summary` (plus ``file``)."""
    model = ", ".join(f"{k} {v}" for k, v in (s.get("model") or {}).items()) or "unknown"
    lines = [
        f"{s['file']}:",
        f"  frames        {s['frames']} x {s['streams']} streams",
        f"  duration      {s['duration']:.3f} s",
        f"  bitrate       {s['bitrate_without_speaker']:.1f} bit/s tokens, {_rate(s['bitrate'])} with speaker",
        f"  speaker       {s['speaker_dim']} float32",
        f"  input length  {s['num_samples'] if s['num_samples'] is not None else 'unknown'} samples, "
        f"lead {s['lead'] if s['lead'] is not None else 'unknown'}",
        f"  padding       {s.get('padding') or 'unknown'}",
        f"  attention     {_attention(s)}",
        f"  model         {model}",
    ]
    return "\n".join(lines) + "\n"


def _attention(s: dict) -> str:
    """How HuBERT's attention saw the input: whether the tokens are the published ones."""
    attention = s.get("attention")
    if attention == "full":
        return "full (the published model's tokens)"
    if attention == "windowed":
        return f"windowed, {s.get('hubert_window'):g} s windows (approximate tokens)"
    return "unknown (not recorded in this file)"


def _rate(bitrate: float | None) -> str:
    return "n/a" if bitrate is None else f"{bitrate:.1f} bit/s"
