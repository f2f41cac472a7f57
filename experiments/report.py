"""EXPERIMENTS.md and its plots from the transfer study's results.

    python3 -m experiments.report [--results=experiments/results] [--out=EXPERIMENTS.md]

Reads every ``runs/*.json`` that `experiments.transfer_study` wrote and writes, per setting
and regime, a table of mean +- sample standard deviation of the test accuracy over the seeds
that ran (with their number), the mean wall time of a run, and each row's flags; the plots
(training-loss curves and per-segment learning rates of the main rows, seed 0) go next to
EXPERIMENTS.md in docs/experiments/. The conclusions paragraph is written by hand from these
tables: `HEADER` and `CONCLUSIONS` below hold the text, the numbers come from the results.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os

from experiments import transfer_study as study

FIGURES = "docs/experiments"
MAIN_ROWS = ("scratch", "one_lr_sgdr", "diff_lr_sgdr", "layer_decay_sgdr", "fine_tune")


def load(results: str) -> list[dict]:
    records = []
    for path in sorted(glob.glob(os.path.join(results, "runs", "*.json"))):
        with open(path) as f:
            records.append(json.load(f))
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _rows_with_averaging(records):
    """Splits the SGDR rows' SWA and ensemble accuracies into rows of their own."""
    out = []
    for r in records:
        out.append(r)
        for key, suffix in (("swa", "+swa"), ("snapshot_ensemble", "+ensemble")):
            if r.get(key) is not None:
                out.append(dict(r, row=r["row"] + suffix, accuracy=r[key]))
    return out


def summarize(records: list[dict]) -> dict:
    """{(setting, regime): {row: dict(mean, std, n, wall, flags, max_lr)}}."""
    table: dict = {}
    for r in _rows_with_averaging(records):
        key = (r["setting"], r["regime"])
        table.setdefault(key, {}).setdefault(r["row"], []).append(r)
    out = {}
    for key, by_row in table.items():
        out[key] = {}
        for row, runs in by_row.items():
            mean, std = mean_std([x["accuracy"] for x in runs])
            out[key][row] = dict(
                mean=mean,
                std=std,
                n=len(runs),
                wall=sum(x["wall_time_sec"] for x in runs) / len(runs),
                flags=runs[0]["flags"],
                max_lr=[x["max_lr"] for x in runs],
                steps=runs[0]["steps"],
                cpu=runs[0].get("cpu", "unknown"),
            )
    return out


def _order(rows):
    known = list(study.ROW_TITLES)
    return sorted(rows, key=lambda r: known.index(r) if r in known else len(known))


def format_table(summary_of_regime: dict) -> str:
    lines = [
        "| Row | Test accuracy (mean ± std) | Seeds | Wall time / run |",
        "|---|---|---|---|",
    ]
    best = max(v["mean"] for v in summary_of_regime.values())
    for row in _order(summary_of_regime):
        v = summary_of_regime[row]
        acc = f"{v['mean']:.4f} ± {v['std']:.4f}"
        if v["mean"] == best:
            acc = f"**{acc}**"
        title = study.ROW_TITLES.get(row, row)
        if row == "diff_lr_sgdr_auto":
            lrs = sorted(v["max_lr"])
            title += f" (chose {lrs[0]:.2g}-{lrs[-1]:.2g})"
        wall = "(same run)" if "+" in row else f"{v['wall']:.0f} s"
        lines.append(f"| {title} | {acc} | {v['n']} | {wall} |")
    return "\n".join(lines)


def plot(records: list[dict], setting: str, regime: str, path: str) -> str | None:
    """Training loss and per-segment learning rates of the main rows at seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {
        r["row"]: r
        for r in records
        if r["setting"] == setting and r["regime"] == regime and r["seed"] == 0
    }
    rows = [row for row in MAIN_ROWS if row in chosen]
    if not rows:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        scalars = chosen[row]["scalars"]
        steps, losses = zip(*scalars.get("loss", [[0, float("nan")]]))
        ax_loss.plot(steps, losses, label=study.ROW_TITLES[row].split(" (")[0])
        segments = sorted(k for k in scalars if k.startswith("lr/segment_"))
        line = None
        for i, key in enumerate((segments[0], segments[-1]) if segments else ()):
            s, lr = zip(*scalars[key])
            style = "-" if i else ":"
            color = line.get_color() if line is not None else None
            (line,) = ax_lr.plot(s, lr, style, color=color, label=None if i == 0 else row)
    ax_loss.set(xlabel="step", ylabel="training loss (mean per logged interval)", yscale="log")
    ax_loss.set_title(f"{setting}, {regime}: training loss (seed 0)")
    ax_loss.legend(fontsize=7)
    ax_lr.set(xlabel="step", ylabel="learning rate", yscale="log")
    ax_lr.set_title("learning rate: head (solid), first segment (dotted)")
    ax_lr.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="experiments/results")
    parser.add_argument("--out", default="EXPERIMENTS.md")
    parser.add_argument("--figures", default=FIGURES)
    args = parser.parse_args(argv)
    records = load(args.results)
    summary = summarize(records)
    for (setting, regime), rows in sorted(summary.items()):
        print(f"\n## {setting}, {regime}\n")
        print(format_table(rows))
        name = f"{setting}_{regime.replace('/', '_per_')}.png"
        plot(records, setting, regime, os.path.join(args.figures, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
