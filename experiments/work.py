"""Works through a study's runs: resumable, shared by --jobs processes, grid before test.

Each result is written to OUT/NAME.json as soon as its run ends; a run with a result is not
run again. A process claims a run (OUT/NAME.claim holding its pid) before it starts it; the
claim of a process that is gone is taken over. A test run whose rate is still to be chosen
(``lr is None``) waits until its row's grid is complete, then takes the rate
`protocol.grid_status` chose from the validation results alone. When a grid's best rate is
at its edge, the run beyond it (`protocol.BEYOND`) is added here, before the test runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import json
import os
import sys
import time

from experiments import protocol


def work(runs, out: str, train, stop_at: float | None = None, poll: float = 15.0) -> list:
    """Trains every run of `runs` without a result in `out` (``train(run) -> record``).

    Returns the runs left undone: test runs whose grid nothing is running, or everything
    not started before `stop_at` (seconds since the epoch).
    """
    started = time.time()
    pending = list(runs)
    added = set()  # grid runs beyond an edge, added once
    while pending:
        waiting, trained, beyond = [], False, []
        for i, run in enumerate(pending):
            chosen = None
            if run.lr is None:
                key = (run.setting, run.regime.name, run.row)
                chosen = protocol.grid_status(load_validation(out)).get(key)
                if chosen is None or not chosen["complete"]:
                    for lr, seed in chosen["missing"] if chosen else ():
                        extra = dataclasses.replace(
                            run, split=protocol.VALIDATION, lr=lr, seed=seed
                        )
                        if lr not in protocol.GRID and extra not in added:
                            added.add(extra)
                            beyond.append(extra)
                    waiting.append(run)
                    continue
                run = dataclasses.replace(run, lr=chosen["rate"])
            path = os.path.join(out, f"{run.name}.json")
            if os.path.exists(path):
                continue
            if stop_at is not None and time.time() >= stop_at:
                print(f"--stop_at reached: {run.name} and the runs after it not started")
                return [*waiting, *pending[i:]]
            if not _claim(path):
                continue  # a live process runs it
            if os.path.exists(path):  # finished by another process just before the claim
                os.remove(_claim_path(path))
                continue
            record = train(run)
            if chosen is not None:
                record["validation_by_rate"] = {
                    f"{lr:g}": a for lr, a in chosen["validation"].items()
                }
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, path)
            os.remove(_claim_path(path))
            trained = True
            print(
                f"[{(time.time() - started) / 60:.1f} min] {run.name}: {run.split} accuracy "
                f"{record['accuracy']:.4f}  {record['wall_time_sec']:.0f} s",
                flush=True,
            )
        if not waiting or trained or beyond:
            pending = beyond + waiting
            continue
        if not _live_claims(out):
            names = sorted({f"{r.cell}_{r.row}" for r in waiting})
            print(f"test runs wait for grids that no process runs: {', '.join(names)}")
            return waiting
        time.sleep(poll)  # another process is running a grid run they wait for
        pending = waiting
    return []


def load_validation(out: str) -> list[dict]:
    """The grid's records (validation accuracy), and nothing else."""
    records = []
    for path in sorted(glob.glob(os.path.join(out, "*_val_lr*.json"))):
        with open(path) as f:
            records.append(json.load(f))
    return [r for r in records if r.get("split") == protocol.VALIDATION]


def remove_results(out: str, runs) -> None:
    """--rerun: removes the results and claims of `runs` (a test run's at any rate)."""
    for run in runs:
        name = f"{run.cell}_{run.row}_lr*_s{run.seed}" if run.lr is None else run.name
        for suffix in (".json", ".claim"):
            for path in glob.glob(os.path.join(out, name + suffix)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


def deadline(stop_at: str, now: datetime.datetime | None = None) -> float | None:
    """'HH:MM' -> seconds since the epoch ('' -> None): today's HH:MM, or tomorrow's when
    today's is more than 12 hours past (23:00 with --stop_at=01:00); a time up to 12 hours
    past has passed, and nothing starts."""
    if not stop_at:
        return None
    hour, minute = (int(x) for x in stop_at.split(":"))
    now = now or datetime.datetime.now()
    when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if now - when > datetime.timedelta(hours=12):
        when += datetime.timedelta(days=1)
    return when.timestamp()


def helper_command(argv) -> list[str]:
    """The command of one more process of a --jobs study: one process (it starts no more of
    its own), the same runs, and no --rerun (the first process already removed the results)."""
    argv = sys.argv[1:] if argv is None else argv
    kept = [a for a in argv if not a.startswith("--jobs") and a != "--rerun"]
    return [sys.executable, "-m", "experiments.transfer_study", *kept, "--jobs=1"]


def _claim_path(result_path: str) -> str:
    return result_path[: -len(".json")] + ".claim"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_claims(out: str) -> bool:
    for path in glob.glob(os.path.join(out, "*.claim")):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                if _alive(int(f.read().strip() or 0)):
                    return True
    return False


def _claim(result_path: str) -> bool:
    """Takes the run for this process: True unless a live process has claimed it.

    The claim file holds the claiming pid; a claim by a process that no longer runs (a killed
    study) is taken over.
    """
    claim = _claim_path(result_path)
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(claim) as f:
                    pid = int(f.read().strip() or 0)
            except FileNotFoundError:
                continue
            except ValueError:
                pid = 0
            if pid and _alive(pid):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.remove(claim)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return "unknown"
