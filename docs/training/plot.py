"""Plot a run's loss curves (and validation mel distance per stream count) to a png.

    python docs/training/plot.py RUN_DIR OUT.png [--title TEXT]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def smooth(values: list[float], width: int = 10) -> list[float]:
    out, acc = [], []
    for v in values:
        acc = (acc + [v])[-width:]
        out.append(sum(acc) / len(acc))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--title", default="")
    args = p.parse_args()
    rows = read(args.run / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("loss", "total"), ("loss_mel", "log-mel L1 (decoder 2)"), ("loss_ssl", "HuBERT L2 (decoder 1)")):
        values = [float(r[key]) for r in rows]
        axes[0].plot(steps, values, alpha=0.25)
        axes[0].plot(steps, smooth(values), label=label, color=axes[0].lines[-1].get_color())
    axes[0].set(xlabel="step", ylabel="loss (log scale)", yscale="log",
                title="training loss (thin: per step, thick: 10-step mean)")
    axes[0].legend()
    commit = [float(r["loss_commit"]) for r in rows]
    axes[1].plot(steps, smooth(commit), label="commitment")
    axes[1].set(xlabel="step", ylabel="commitment", title="commitment loss (10-step mean)")
    twin = axes[1].twinx()
    for k in range(1, 5):
        twin.plot(steps, smooth([float(r[f"perplexity_{k}"]) for r in rows]), "--", lw=0.8, label=f"perplexity {k}")
    twin.set_ylabel("codebook perplexity per stream (batch)")
    twin.legend(loc="upper right", fontsize=7)
    valid_path = args.run / "valid.csv"
    if valid_path.is_file():
        valid = read(valid_path)
        vsteps = [int(r["step"]) for r in valid]
        for k in range(1, 5):
            axes[2].plot(vsteps, [float(r[f"mel_distance_{k}"]) for r in valid], marker="o", label=f"{k} stream(s)")
        axes[2].set(xlabel="step", ylabel="mean |log-mel error|", title="validation mel distance (unseen voices)")
        axes[2].legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
