"""Moves the v1 study's results aside and keeps those the new protocol can reuse.

    python3 -m experiments.migrate_v1 [--results=experiments/results]

v1 (commit 2c251c9) ran every row at one peak rate, 3e-3, and the near-domain test set was
2,000 of the 5,000 test images. Its records (no ``split`` field) move to
RESULTS/v1/runs/. The cross-domain ones (the digits' test set is unchanged) are also copied
back as test records at rate 3e-3 under the new names: the study uses them only for rows
whose validation grid chooses 3e-3, exactly as if it had run them. Each copy says so
(``source``) and keeps its v1 flags (``flags_v1``); v1's fine_tune row predates --train_bn
and ran with frozen BatchNorm, the row now spelled with --notrain_bn. The near-domain ones
are not reused (another test set).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from experiments import protocol
from experiments import transfer_study as study

SOURCE = "v1 study (commit 2c251c9, Intel Xeon), same data and flags, rate 3e-3"


def migrate(results: str) -> list[str]:
    runs = os.path.join(results, "runs")
    archive = os.path.join(results, "v1", "runs")
    os.makedirs(archive, exist_ok=True)
    written = []
    for path in sorted(glob.glob(os.path.join(runs, "*.json"))):
        with open(path) as f:
            record = json.load(f)
        if "split" in record:
            continue  # already a new-protocol record
        os.replace(path, os.path.join(archive, os.path.basename(path)))
        if record["setting"] != "cross":
            continue
        regime = next(r for r in study.SETTINGS["cross"].regimes if r.name == record["regime"])
        lr = "auto" if record["row"] in study.GRIDLESS_ROWS else 3e-3
        run = study.Run("cross", regime, record["row"], record["seed"], protocol.TEST, lr)
        flags = [
            f"--model_dir=/tmp/lrtech_study/runs/{run.name}" if a.startswith("--model_dir") else a
            for a in record["flags"]
        ]
        if record["row"] == "fine_tune":
            flags.append("--notrain_bn")
        record.update(
            run=run.name,
            split=protocol.TEST,
            peak_lr=record["max_lr"],
            flags=flags,
            flags_v1=record["flags"],
            source=SOURCE,
        )
        new = os.path.join(runs, f"{run.name}.json")
        with open(new, "w") as f:
            json.dump(record, f)
        written.append(new)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="experiments/results")
    args = parser.parse_args(argv)
    print(f"{len(migrate(args.results))} v1 records reused")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
