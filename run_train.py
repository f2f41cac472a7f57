"""Fine-tune a model with differential learning rates and SGDR.

    python run_train.py --flagfile=configs/quickstart.flags [--flag=value ...]

Later flags override the flagfile; `--flagfile=quickstart` finds a shipped flagfile by name.
`--helpfull` documents every flag; `--list_layers` prints the layers and segments so split
points can be chosen; `--lr_find` runs the LR range test alone. The run's directory is
--model_dir, by default runs/<flagfile name> under the current directory. Running the same
command again resumes from the newest readable checkpoint there (a complete run only writes
what it lacks); a command that changes a flag a run may not change exits 2 naming it;
`--restart` moves the old run aside and starts over.

Exit codes: 0 done; 1 training failed (non-finite loss; the last good checkpoint is kept);
2 bad input (one line on stderr naming the flag, file or value); 3 interrupted by
SIGTERM/SIGINT (after saving a checkpoint when training had started; run the same command to
resume).
"""

from __future__ import annotations

# First of all: SIGTERM/SIGINT are recorded, never a traceback, even during the imports.
from trainer.loop.interrupts import Interrupts

INTERRUPTS = Interrupts().install()

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from trainer import flags as flags_lib  # noqa: E402
from trainer.errors import Preempted  # noqa: E402
from trainer.run_dir import files as run_dir  # noqa: E402
from trainer.tools import cli  # noqa: E402

PROGRAM = "run_train.py"
FLAGS = flags.FLAGS
_ABSL_FLAGS = set(FLAGS)
flags_lib.define_flags(FLAGS)
for _name in set(FLAGS) - _ABSL_FLAGS:  # --help lists them (absl's shows key flags only)
    flags.declare_key_flag(_name)
_ARGV: list[str] = []  # the command line after shipped flagfile names were resolved


def parse_flags(argv):
    """absl parsing, but a bad flag is one line and exit code 2 (absl's default is 1)."""
    _ARGV[:] = flags_lib.resolve_flagfiles(argv)
    return cli.flags_parser(PROGRAM, flags_lib.cross_check)(_ARGV)


def _check_interrupted(phase: str, written: str = "nothing") -> None:
    if INTERRUPTS.pending is not None:
        raise Preempted(
            f"signal {INTERRUPTS.pending} during {phase}: stopped before training; {written} "
            "was written in --model_dir (run the same command to start or resume)"
        )


def _take_model_dir(config):
    """Checks, locks and (with --restart) clears model_dir, before TensorFlow is imported."""
    run_dir.check(config.model_dir)
    if not run_dir.is_chief_task(config.strategy):
        return None
    lock = run_dir.Lock(config.model_dir).acquire()
    if FLAGS.restart:
        moved = run_dir.move_aside(config.model_dir)
        if moved:
            logging.info("--restart: moved the previous run to %s", moved)
    return lock


def train(config) -> int:
    """model_dir -> strategy -> build under scope -> restore -> train -> export."""
    lock = None if FLAGS.list_layers else _take_model_dir(config)
    try:
        return _train(config)
    finally:  # also on a user error, a signal or a non-finite loss: the run has ended
        if lock is not None:
            lock.release()


def _start() -> None:
    from trainer import runtime

    runtime.configure(quiet=True)
    if not FLAGS["verbosity"].present:
        runtime.quiet_logging()
    cli.import_tensorflow()  # without Keras' optional scikit-learn and matplotlib imports


def _train(config) -> int:
    _start()
    from trainer import experiment as experiment_lib
    from trainer.loop import strategy as strategy_lib
    from trainer.reporting import console

    _check_interrupted("start-up")
    strategy = strategy_lib.make_strategy(config.strategy)
    auto = config.max_lr == "auto"
    if FLAGS.list_layers and auto:
        config = config.replace(max_lr=1.0)  # no range test just to list the layers
    if not FLAGS.list_layers:
        print(console.run_dir_line(config), flush=True)
    experiment = experiment_lib.Experiment(config, strategy, interrupts=INTERRUPTS)
    experiment.build()  # --max_lr=auto runs (or reuses) the range test here
    if FLAGS.list_layers:
        print(experiment.layer_report())
        if auto:
            print("(--max_lr=auto: peak learning rates shown for max_lr=1)")
        return 0
    if config.lr_find:  # its own step: the test, and nothing else
        return _lr_find(experiment)
    _check_interrupted("start-up", console.written(config.model_dir))
    experiment.restore()
    if experiment.lr_find_result is not None:
        print(experiment.lr_find_result.format_line(), flush=True)
    if auto:
        print(f"--max_lr=auto: training at --max_lr={experiment.config.max_lr:.4g}", flush=True)
    for warning in console.plan_warnings(experiment.config, experiment.plan, experiment.info):
        print(f"{PROGRAM}: warning: {warning}", file=sys.stderr, flush=True)
    _check_interrupted("start-up", console.written(config.model_dir))
    metrics = experiment.train()
    path = experiment.export_dir if experiment.export_complete() else experiment.export()
    print(f"Done: {config.model_dir}", flush=True)
    print(console.closing_summary(metrics, config.model_dir, path), flush=True)
    return 0


def _lr_find(experiment) -> int:
    experiment.restore(record=False)  # the test starts from the run's weights, if any
    result = experiment.lr_find()
    print(result.format_line(), flush=True)
    print(
        f"Done: {experiment.config.model_dir} (LR range test only: no training, checkpoint "
        "or export)",
        flush=True,
    )
    return 0


def main(argv):
    config = flags_lib.to_config(FLAGS, flags_lib.default_model_dir(_ARGV))
    return cli.guarded(PROGRAM, lambda _: train(config), argv)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
