"""EXPERIMENTS.md and its plots from the transfer study's results.

    python3 -m experiments.report [--results=experiments/results] [--out=EXPERIMENTS.md]

Reads every ``runs/*.json`` that `experiments.transfer_study` wrote and writes, per setting
and regime, a table of each row's rate (chosen on validation by `protocol.grid_status`, with
the validation accuracy of every grid rate), mean +- sample standard deviation of the test
accuracy over the seeds that ran at that rate (with their number), the mean wall time of a
run, and each row's flags; a table of what has run and Auto-RGN against the best other row;
the plots (training-loss curves and per-segment learning rates of the main rows, first seed)
go to docs/experiments/. Only the blocks between the results markers of EXPERIMENTS.md and
the headline markers of README.md are rewritten; the setup and the conclusions around them
are written by hand from these tables.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os

from experiments import protocol
from experiments import transfer_study as study

FIGURES = "docs/experiments"
MAIN_ROWS = (
    "scratch",
    "one_lr_sgdr",
    "diff_lr_sgdr",
    "layer_decay_sgdr",
    "fine_tune_bn",
    "lp_ft",
    "rgn_sgdr",
    "rgn_layer_sgdr",
)


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
    """{(setting, regime): {row: dict(mean, std, n, wall, flags, rate, grid, ...)}}.

    A row with a rate grid counts only its test records at the rate its complete grid chose
    on validation (`protocol.grid_status`, which never sees a test record); a row whose grid
    is incomplete has no test entry yet (its grid shows in `status`). Rows without a grid
    (--max_lr=auto) count all their test records.
    """
    grids = protocol.grid_status(records)
    table: dict = {}
    for r in _rows_with_averaging([r for r in records if r.get("split") == protocol.TEST]):
        base_row = r["row"].split("+")[0]
        grid = grids.get((r["setting"], r["regime"], base_row))
        if base_row not in study.GRIDLESS_ROWS:
            if grid is None or not grid["complete"] or r["peak_lr"] != grid["rate"]:
                continue
        key = (r["setting"], r["regime"])
        table.setdefault(key, {}).setdefault(r["row"], []).append(r)
    out = {}
    for key, by_row in table.items():
        out[key] = {}
        for row, runs in by_row.items():
            runs.sort(key=lambda x: x["seed"])
            mean, std = mean_std([x["accuracy"] for x in runs])
            grid = grids.get((*key, row.split("+")[0]))
            out[key][row] = dict(
                mean=mean,
                std=std,
                n=len(runs),
                wall=sum(x["wall_time_sec"] for x in runs) / len(runs),
                flags=runs[0]["flags"],
                max_lr=[x["max_lr"] for x in runs],
                steps=runs[0]["steps"],
                cpu=runs[0].get("cpu", "unknown"),
                rate=grid["rate"] if grid else None,
                grid=grid["validation"] if grid else None,
                reused=sum(1 for x in runs if x.get("source")),
                load=[x["load_average"][0] for x in runs if x.get("load_average")],
                seed0=runs[0] if runs[0]["seed"] == 0 else None,
            )
    return out


def _order(rows):
    known = list(study.ROW_TITLES)
    return sorted(rows, key=lambda r: known.index(r) if r in known else len(known))


def _rate(v, edge: bool = False) -> str:
    if v["rate"] is None:
        lrs = sorted(v["max_lr"])
        return f"auto: {lrs[0]:.2g}-{lrs[-1]:.2g}"
    if edge and v["grid"] and v["rate"] in (min(v["grid"]), max(v["grid"])):
        return f"{v['rate']:g} (grid's edge)"
    return f"{v['rate']:g}"


def format_table(summary_of_regime: dict) -> str:
    lines = [
        "| Row | Peak rate (chosen) | Validation acc. at "
        + " / ".join(f"{lr:g}" for lr in protocol.RATES)
        + " | Test accuracy (mean ± std) | Seeds | Wall time / run |",
        "|---|---|---|---|---|---|",
    ]
    best = max(v["mean"] for v in summary_of_regime.values())
    for row in _order(summary_of_regime):
        v = summary_of_regime[row]
        acc = f"{v['mean']:.4f} ± {v['std']:.4f}"
        if v["mean"] == best:
            acc = f"**{acc}**"
        title = study.ROW_TITLES.get(row, row)
        grid = "-"
        if v["grid"]:
            grid = " / ".join(
                f"{v['grid'][lr]:.3f}" if lr in v["grid"] else "-" for lr in protocol.RATES
            )
        grid = "(same runs)" if "+" in row else grid
        wall = "(same run)" if "+" in row else f"{v['wall']:.0f} s"
        seeds = f"{v['n']}" + (f" ({v['reused']} from v1)" if v["reused"] else "")
        lines.append(f"| {title} | {_rate(v, True)} | {grid} | {acc} | {seeds} | {wall} |")
    return "\n".join(lines)


def plot(summary_of_regime: dict, setting: str, regime: str, path: str) -> str | None:
    """Training loss and per-segment learning rates of the main rows at seed 0 (each at its
    chosen rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {row: v["seed0"] for row, v in summary_of_regime.items() if v.get("seed0")}
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
CELLS = {  # the full study's cells, in the order of the tables
    ("near", "10/class"): "near_k10",
    ("near", "500/class"): "near_k500",
    ("cross", "10/class"): "cross_k10",
    ("cross", "all"): "cross_kall",
}
SHORT_TITLES = {
    "scratch": "from scratch",
    "head_only": "head only",
    "one_lr_constant": "one rate, constant",
    "one_lr_sgdr": "one rate, SGDR",
    "diff_lr_sgdr": "differential, SGDR",
    "layer_decay_sgdr": "layer decay, SGDR",
    "fine_tune": "fine_tune, frozen BN",
    "fine_tune_bn": "fine_tune, train_bn",
    "lp_ft": "LP-FT",
    "rgn_sgdr": "Auto-RGN, SGDR",
    "rgn_layer_sgdr": "Auto-RGN per layer, SGDR",
    "diff_lr_sgdr_auto": "differential, auto lr",
    "diff_lr_sgdr_auto_min": "differential, auto lr (minimum)",
    "diff_lr_sgdr+swa": "differential + SWA",
    "diff_lr_sgdr+ensemble": "differential + ensemble",
}
# The main rows, and the two baselines the conclusions weigh them against: one rate at a
# constant rate, and fine_tune with frozen BN (what --train_bn changes).
HEADLINE_ROWS = (
    "scratch",
    "one_lr_sgdr",
    "one_lr_constant",
    "diff_lr_sgdr",
    "layer_decay_sgdr",
    "fine_tune",
    "fine_tune_bn",
    "lp_ft",
    "rgn_sgdr",
    "rgn_layer_sgdr",
)
# The goal: Auto-RGN within this much of the best fixed recipe in every cell.
RGN_GOAL = 0.01
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
            cell = f"**{cell}**" if v["mean"] == best else cell
            cells.append(f"{cell} @{_rate(v)} (n={v['n']})")
        title = study.ROW_TITLES.get(row, row)
        lines.append(f"| {title} | {' | '.join(cells)} |")
    lines.append("")
    lines.append(
        "Test accuracy, mean ± std over n seeds, each row at its own peak rate (@) chosen "
        "from " + ", ".join(f"{lr:g}" for lr in study.GRID) + " (and the next rate beyond "
        "the edge it chose: "
        + " or ".join(f"{lr:g}" for lr in protocol.BEYOND.values())
        + ") on a validation split of "
        "the training pool (Kornblith et al. 2019); the best of each column in bold; - : not "
        "run there (the data-rich cells run the main rows only, or it has not run yet). "
        + (
            "Not run under this protocol yet: "
            + "; ".join(f"{a}, {b}" for a, b in CELLS if (a, b) not in summary)
            + " (v1's numbers there, every row at 3e-3 and a 2,000-image near test set, are "
            "in experiments/results/v1/ and EXPERIMENTS.md's history). "
            if any(key not in summary for key in CELLS)
            else ""
        )
        + "Reproduce: "
        f"`{REPRODUCE}`. Tables per setting, what is complete, flags and wall "
        "times: [EXPERIMENTS.md](EXPERIMENTS.md)."
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
        palette = {"rgn_sgdr": "tab:green", "rgn_layer_sgdr": "tab:green"}
        colors = [
            palette.get(r, "tab:orange" if r.startswith("diff_lr") else "tab:blue") for r in rows
        ]
        stds = [x if x == x else 0.0 for x in stds]  # one seed: no error bar
        ax.barh(range(len(rows)), means, xerr=stds, color=colors, alpha=0.8)
        finite = [m for m in means if m == m]
        ax.set_xlim(max(0.0, min(finite) - 0.05), 1.0)
        ax.set_title(f"{key[0]}, {key[1]}", fontsize=9)
        ax.set_xlabel("test accuracy")
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(
        "Transfer study, each row at its validation-chosen rate: mean ± std over seeds "
        "(orange: differential rates, green: Auto-RGN)",
        fontsize=9,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def status(records: list[dict], summary: dict) -> str:
    """What has run: per cell of the full study, each row's grid, chosen rate and test seeds."""
    grids = protocol.grid_status(records)
    seeds = len(study.MODES["full"][1])
    lines = [
        "| Cell | Row | Grid rates run (validation) | Chosen rate | Test seeds at it |",
        "|---|---|---|---|---|",
    ]
    missing = []
    for (setting, regime), cell in CELLS.items():
        _, reg = study.regime_of(cell)
        cell_rows = [r for r in study.ROW_TITLES if "+" not in r]
        cell_rows = [r for r in cell_rows if reg.rows is None or r in reg.rows]
        shown = False
        for row in cell_rows:
            grid = grids.get((setting, regime, row))
            test = summary.get((setting, regime), {}).get(row)
            if grid is None and test is None:
                continue
            shown = True
            if row in study.GRIDLESS_ROWS:
                ran, chosen = "(its own: the range test)", _rate(test)
            else:
                ran = f"{len(grid['validation'])} of {len(grid['rates'])}" if grid else "0"
                chosen = f"{grid['rate']:g}" if grid and grid["complete"] else "(grid incomplete)"
            n = test["n"] if test else 0
            lines.append(
                f"| {setting}, {regime} | {study.ROW_TITLES[row]} | {ran} | {chosen} | "
                f"{n} of {seeds} |"
            )
        if not shown:
            missing.append(f"{setting}, {regime}")
    text = "\n".join(lines)
    if missing:
        text += "\n\nNot run under this protocol yet: " + "; ".join(missing) + "."
    return text


RGN_ROWS = ("rgn_sgdr", "rgn_layer_sgdr")


def rgn_goal(summary: dict) -> str:
    """Per cell and Auto-RGN row: its mean against the best fixed row's (the other rows but
    Auto-RGN's, averaged models excluded)."""
    lines = []
    for key in _columns(summary):
        rows = summary[key]
        fixed = {r: v for r, v in rows.items() if r not in RGN_ROWS and "+" not in r}
        if not fixed:
            continue
        best = max(fixed, key=lambda r: fixed[r]["mean"])
        for row in RGN_ROWS:
            rgn = rows.get(row)
            if rgn is None:
                continue
            gap = fixed[best]["mean"] - rgn["mean"]
            verdict = "yes" if gap <= RGN_GOAL else "no"
            lines.append(
                f"- {key[0]}, {key[1]}: {study.ROW_TITLES[row]} {rgn['mean']:.4f} "
                f"(n={rgn['n']}, @{_rate(rgn)}) against the best fixed row, "
                f"{study.ROW_TITLES[best]}, {fixed[best]['mean']:.4f} (n={fixed[best]['n']}, "
                f"@{_rate(fixed[best])}): gap {gap:+.4f}; within {RGN_GOAL:g}: **{verdict}**."
            )
    if not lines:
        return "Auto-RGN has no test results yet."
    return "\n".join(lines)


def results_markdown(records: list[dict], summary: dict, figures: str) -> str:
    parts = []
    for setting, regime in _columns(summary):
        rows = summary[(setting, regime)]
        any_row = next(iter(rows.values()))
        title = study.SETTINGS[setting].title
        parts.append(f"### {title}, {regime}\n")
        parts.append(
            f"{any_row['steps']} steps of {study.BATCH} for every row (fine_tune: 1/7 head "
            f"only, then all; LP-FT: 1/2 head only, then all); CPU: {_cpus(rows)}.\n"
        )
        parts.append(format_table(rows))
        parts.append(
            f"\nReproduce: `{REPRODUCE}`; one run: `python3 run_train.py` with the row's flags "
            "below and `--model_dir=DIR`.\n"
        )
        name = f"{setting}_{regime.replace('/', '_per_')}.png"
        if plot(rows, setting, regime, os.path.join(figures, name)):
            parts.append(
                f"\n![{setting}, {regime}: training loss and learning rates]({figures}/{name})\n"
            )
        flags = "\n".join(
            f"- `{row}`: `{' '.join(_shown(rows[row]['flags']))}`"
            for row in _order(r for r in rows if "+" not in r)
        )
        parts.append(
            "<details><summary>Flags of each row (its first seed)</summary>\n\n"
            f"{flags}\n\n</details>\n"
        )
    return "\n".join(parts)


def _cpus(rows: dict) -> str:
    cpus = sorted({v["cpu"] for v in rows.values()})
    loads = [x for v in rows.values() for x in v["load"]]
    text = " and ".join(cpus)
    if loads:
        text += (
            f"; 1-minute load average at the end of this protocol's runs {min(loads):.1f}-"
            f"{max(loads):.1f} (other work shared the machine: compare wall times within a "
            "table only)"
        )
    return text


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
    body = (
        f"{table}\n\n![The study at a glance]({figure})\n\n"
        "### What has run (generated from experiments/results/runs)\n\n"
        f"{status(records, summary)}\n\n"
        f"### Auto-RGN against the best fixed recipe (goal: within {RGN_GOAL:g})\n\n"
        f"{rgn_goal(summary)}\n\n" + results_markdown(records, summary, args.figures)
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
