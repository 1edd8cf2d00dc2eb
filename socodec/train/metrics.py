"""Run logs: ``metrics.csv`` (one row per step), ``valid.csv`` (one row per validation) and,
when the ``tensorboard`` package is installed, TensorBoard event files in ``RUN_DIR/tensorboard``.

On resume the CSV rows after the checkpoint's step are dropped (the steps are run again),
so each step appears once. A log with other columns (from another version) is never
overwritten: it is moved aside as ``metrics.<UTC time>.csv`` (``valid.<UTC time>.csv``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from socodec.fileio import atomic_write

log = logging.getLogger(__name__)


def train_columns(n_streams: int) -> list[str]:
    cols = ["step", "loss", "loss_mel", "loss_ssl", "loss_commit"]
    cols += [f"usage_{k}" for k in range(1, n_streams + 1)]
    cols += [f"perplexity_{k}" for k in range(1, n_streams + 1)]
    return cols + ["grad_norm", "lr", "seconds", "skipped"]


def valid_columns(n_streams: int) -> list[str]:
    return (["step"] + [f"mel_distance_{k}" for k in range(1, n_streams + 1)] + ["ordered", "clips"]
            + ["dnsmos_ovrl", "speaker_similarity"])  # the last two need the [eval] extra (else empty)


class CsvLog:
    """Append-only CSV with a fixed header; :meth:`truncate_after` drops rows of later steps."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)

    def truncate_after(self, step: int) -> None:
        """Keep the header and the rows with ``step <= step`` (rewritten atomically); start a new file if absent."""
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                same = reader.fieldnames == self.columns
                if same:
                    rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= step]
            if not same:
                aside = self._aside_path()
                self.path.replace(aside)
                log.warning("%s has other columns (written by another version); moved to %s, starting a new one",
                            self.path, aside.name)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, lambda tmp: tmp.write_text(buf.getvalue()))

    def _aside_path(self) -> Path:
        """``<stem>.<UTC time>.csv`` beside the log (a counter is added when that name is taken)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        candidate = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
        n = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{self.path.stem}.{stamp}-{n}{self.path.suffix}")
            n += 1
        return candidate

    def rows(self) -> list[dict[str, str]]:
        """The rows written so far (none when the file does not exist)."""
        return read_csv(self.path) if self.path.is_file() else []

    def append(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns})


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value: Any) -> Any:
    """Floats as their shortest exact text (a resumed run's rows compare equal digit for digit)."""
    return repr(value) if isinstance(value, float) else value


class Board:
    """TensorBoard scalars when the ``tensorboard`` package is installed; otherwise nothing."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed: no TensorBoard logs (pip install socodec[train])")
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
