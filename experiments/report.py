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
    for color, row in enumerate(rows):
        scalars, total = chosen[row]["scalars"], chosen[row]["steps"]
        steps, losses = zip(*scalars.get("loss", [[0, float("nan")]]))
        ax_loss.plot(steps, losses, color=f"C{color}", label=SHORT_TITLES[row])
        segments = sorted(
            (k for k in scalars if k.startswith("lr/segment_")), key=lambda k: int(k.split("_")[-1])
        )
        for i, key in enumerate((segments[0], segments[-1]) if segments else ()):
            # The rate logged at step s is the next step's; the one at the end is never used.
            s, lr = zip(*[(a, b) for a, b in scalars[key] if a < total])
            label = SHORT_TITLES[row] if i else None
            ax_lr.plot(s, lr, "-" if i else ":", color=f"C{color}", label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (mean per logged interval)", yscale="log")
    ax_loss.set_title(f"{setting}, {regime}: training loss (seed 0)")
    ax_loss.legend(fontsize=7)
    ax_lr.set(xlabel="step", ylabel="learning rate", yscale="log")
    ax_lr.set_title("learning rate: head (solid), first layers (dotted)")
    ax_lr.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


REPRODUCE = "python3 -m experiments.transfer_study --mode=full && python3 -m experiments.report"
SHORT_TITLES = {
    "scratch": "from scratch",
    "head_only": "head only",
    "one_lr_constant": "one rate, constant",
    "one_lr_sgdr": "one rate, SGDR",
    "diff_lr_sgdr": "differential, SGDR",
    "layer_decay_sgdr": "layer decay, SGDR",
    "fine_tune": "fine_tune recipe",
    "diff_lr_sgdr_auto": "differential, auto lr",
    "diff_lr_sgdr+swa": "differential + SWA",
    "diff_lr_sgdr+ensemble": "differential + ensemble",
}
HEADLINE_ROWS = ("scratch", "one_lr_sgdr", "diff_lr_sgdr", "layer_decay_sgdr", "fine_tune")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEAD_BEGIN, HEAD_END = "<!-- headline:begin -->", "<!-- headline:end -->"


def _columns(summary):
    order = {"near": 0, "cross": 1}
    return sorted(summary, key=lambda k: (order.get(k[0], 9), k[1] != "10/class", k[1]))


def headline(summary: dict) -> str:
    """Rows x (setting, regime): mean +- std test accuracy; the best of each column in bold."""
    columns = _columns(summary)
    head = " | ".join(f"{s}, {r}" for s, r in columns)
    lines = [f"| Recipe | {head} |", "|---" * (len(columns) + 1) + "|"]
    for row in HEADLINE_ROWS:
        cells = []
        for key in columns:
            v = summary[key].get(row)
            if v is None:
                cells.append("-")
                continue
            best = max(x["mean"] for r, x in summary[key].items() if r in HEADLINE_ROWS)
            cell = f"{v['mean']:.3f} ± {v['std']:.3f}"
            cells.append(f"**{cell}**" if v["mean"] == best else cell)
        title = study.ROW_TITLES.get(row, row)
        lines.append(f"| {title} | {' | '.join(cells)} |")
    seeds = sorted({v["n"] for key in columns for v in summary[key].values()})
    seed_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    lines.append("")
    lines.append(
        f"Test accuracy, mean ± std over {seed_text} seeds; the best of each column in bold. "
        f"Reproduce: `{REPRODUCE}`. Tables per setting, flags and wall times: "
        "[EXPERIMENTS.md](EXPERIMENTS.md)."
    )
    return "\n".join(lines)


def headline_plot(summary: dict, path: str) -> str:
    """One panel per (setting, regime): each row's mean test accuracy with its std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(summary)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 4.2), sharey=True)
    axes = axes if len(columns) > 1 else [axes]
    rows = _order({r for key in columns for r in summary[key]})
    labels = [SHORT_TITLES.get(r, r) for r in rows]
    for ax, key in zip(axes, columns):
        means = [summary[key].get(r, {}).get("mean", float("nan")) for r in rows]
        stds = [summary[key].get(r, {}).get("std", 0.0) for r in rows]
        colors = ["tab:orange" if r.startswith("diff_lr") else "tab:blue" for r in rows]
        ax.barh(range(len(rows)), means, xerr=stds, color=colors, alpha=0.8)
        finite = [m for m in means if m == m]
        ax.set_xlim(max(0.0, min(finite) - 0.05), 1.0)
        ax.set_title(f"{key[0]}, {key[1]}", fontsize=9)
        ax.set_xlabel("test accuracy")
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle("Transfer study: mean ± std over seeds (orange: differential learning rates)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def results_markdown(records: list[dict], summary: dict, figures: str) -> str:
    parts = []
    for setting, regime in _columns(summary):
        rows = summary[(setting, regime)]
        any_row = next(iter(rows.values()))
        title = study.SETTINGS[setting].title
        parts.append(f"### {title}, {regime}\n")
        parts.append(
            f"{any_row['steps']} steps of {study.BATCH} for every row (the fine_tune recipe: "
            f"1/7 head only, then all); CPU: {any_row['cpu']}.\n"
        )
        parts.append(format_table(rows))
        parts.append(
            f"\nReproduce: `{REPRODUCE}`; one run: `python3 run_train.py` with the row's flags "
            "below and `--model_dir=DIR`.\n"
        )
        name = f"{setting}_{regime.replace('/', '_per_')}.png"
        if plot(records, setting, regime, os.path.join(figures, name)):
            parts.append(
                f"\n![{setting}, {regime}: training loss and learning rates]({figures}/{name})\n"
            )
        flags = "\n".join(
            f"- `{row}`: `{' '.join(_shown(rows[row]['flags']))}`"
            for row in _order(r for r in rows if "+" not in r)
        )
        parts.append(
            f"<details><summary>Flags of each row (seed 0)</summary>\n\n{flags}\n\n</details>\n"
        )
    return "\n".join(parts)


def _shown(flags: list[str]) -> list[str]:
    return [a for a in flags if not a.startswith(("--model_dir", "--noprogress"))]


def _replace_block(path: str, begin: str, end: str, text: str) -> None:
    with open(path) as f:
        content = f.read()
    if begin not in content or end not in content:
        raise SystemExit(f"report: {path} lacks the markers {begin} ... {end}")
    head, rest = content.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="experiments/results")
    parser.add_argument("--out", default="EXPERIMENTS.md")
    parser.add_argument("--readme", default="README.md", help="its headline block is updated")
    parser.add_argument("--figures", default=FIGURES)
    args = parser.parse_args(argv)
    records = load(args.results)
    if not records:
        raise SystemExit(f"report: no results in {args.results}/runs")
    summary = summarize(records)
    table = headline(summary)
    figure = headline_plot(summary, os.path.join(args.figures, "headline.png"))
    body = f"{table}\n\n![The study at a glance]({figure})\n\n" + results_markdown(
        records, summary, args.figures
    )
    _replace_block(args.out, BEGIN, END, body)
    if args.readme:
        _replace_block(
            args.readme, HEAD_BEGIN, HEAD_END, f"{table}\n\n![The study at a glance]({figure})"
        )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
