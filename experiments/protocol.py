"""Kornblith et al. 2019's protocol: each row at its own best peak rate, chosen on validation.

"Do Better ImageNet Models Transfer Better?" (CVPR 2019) tunes every fine-tuning method's
learning rate on a validation split held out from the training set, then reports test
accuracy at the chosen rate. Here:

1. *grid*: every row trains once per rate of `GRID` (on `GRID_SEEDS`), on a training set from
   which a fixed validation split was held out, and is evaluated on that validation split. A
   row whose best rate on `GRID` is at one of its edges also runs the next rate beyond that
   edge (`BEYOND`), once: a best at the edge may not be the best;
2. *choice*: `choose_rate` picks, per (setting, regime, row), the rate with the highest mean
   validation accuracy among the rates its grid holds. It accepts validation records only and
   refuses anything else, so test accuracy cannot feed the choice;
3. *test*: 5 seeds at the chosen rate on the full training pool, evaluated on the test set.

Records are dicts as `experiments.transfer_study` writes them: ``split`` is ``"validation"``
or ``"test"``, ``peak_lr`` the row's peak (head) learning rate.
"""

from __future__ import annotations

# Adam peak rates; 3e-3 was v1's one common rate. 3e-2 because the first cell chose 1e-2,
# the top of the first grid, for one rate and both Auto-RGN rows (whose multipliers are <= 1:
# their mean was 0.05-0.2, so their effective rates sit well below the peak).
GRID = (1e-3, 3e-3, 1e-2, 3e-2)
# The rate beyond each edge of GRID. On GRID alone the full study chose 3e-2 for 17 of its 38
# rows (fine_tune with and without --train_bn, head only, Auto-RGN, ...) and 1e-3 for one.
BEYOND = {1e-3: 3e-4, 3e-2: 1e-1}
RATES = tuple(sorted({*GRID, *BEYOND.values()}))  # every rate a row's grid may hold
GRID_SEEDS = (0,)  # the grid runs on one seed (its labelled draw from the held-out pool)
VALIDATION = "validation"
TEST = "test"


def choose_rate(validation_records: list[dict]) -> float:
    """The peak rate of the highest mean validation accuracy (ties: the smaller rate).

    Args:
      validation_records: one row's grid records (``split == "validation"``); each has
        ``peak_lr`` and ``accuracy`` (validation accuracy).

    Raises:
      ValueError: no records, or a record that is not a validation record (a test
        accuracy must never choose a rate), or records of more than one row.
    """
    if not validation_records:
        raise ValueError("choose_rate: no validation records")
    keys = set()
    by_rate: dict[float, list[float]] = {}
    for r in validation_records:
        if r.get("split") != VALIDATION:
            raise ValueError(
                f"choose_rate: record {r.get('run', '?')} has split={r.get('split')!r}; "
                "the rate is chosen on validation records only"
            )
        keys.add((r["setting"], r["regime"], r["row"]))
        by_rate.setdefault(float(r["peak_lr"]), []).append(float(r["accuracy"]))
    if len(keys) > 1:
        raise ValueError(f"choose_rate: records of several rows: {sorted(keys)}")
    means = {lr: sum(a) / len(a) for lr, a in by_rate.items()}
    return max(sorted(means), key=lambda lr: (means[lr], -lr))


def grid_status(records: list[dict], grid=GRID, seeds=GRID_SEEDS, beyond=BEYOND) -> dict:
    """{(setting, regime, row): dict(rate, complete, rates, missing, validation)}.

    Only validation records are read (test records are dropped before anything is
    computed). ``rates`` is the row's grid: `grid`, and once all of it has run and its best
    rate is an edge with a rate `beyond` it, that rate too. ``missing`` lists the (rate,
    seed) runs of ``rates`` without a record; ``complete`` is ``not missing``. ``rate`` is
    the choice among ``rates`` that ran (records at other rates are not read), and
    ``validation`` maps each of them to its mean accuracy.
    """
    by_row: dict = {}
    for r in records:
        if r.get("split") == VALIDATION:
            by_row.setdefault((r["setting"], r["regime"], r["row"]), []).append(r)
    out = {}
    for key, rows in by_row.items():
        done = {(float(r["peak_lr"]), r["seed"]) for r in rows}
        rates = list(grid)
        if all((lr, s) in done for lr in grid for s in seeds):
            best_on_grid = choose_rate([r for r in rows if float(r["peak_lr"]) in grid])
            if best_on_grid in beyond:
                rates.append(beyond[best_on_grid])
        rows = [r for r in rows if float(r["peak_lr"]) in rates]
        if not rows:
            continue
        means: dict[float, list[float]] = {}
        for r in rows:
            means.setdefault(float(r["peak_lr"]), []).append(r["accuracy"])
        missing = [(lr, s) for lr in rates for s in seeds if (lr, s) not in done]
        out[key] = dict(
            rate=choose_rate(rows),
            complete=not missing,
            rates=sorted(rates),
            missing=missing,
            validation={lr: sum(a) / len(a) for lr, a in sorted(means.items())},
        )
    return out
