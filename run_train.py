"""Fine-tune a model with differential learning rates and SGDR.

    python run_train.py --flagfile=configs/quickstart.flags [--flag=value ...]

Later flags override the flagfile. `--helpfull` documents every flag; `--list_layers` prints
the layers and segments so split points can be chosen. Running the same command again resumes
from the newest readable checkpoint in --model_dir (a complete run only writes a missing
export); `--restart` moves the old run aside and starts over.

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
from trainer.errors import NonFiniteError, Preempted, UserError  # noqa: E402
from trainer.run_dir import files as run_dir  # noqa: E402

FLAGS = flags.FLAGS
flags_lib.define_flags(FLAGS)


def _user_error(message) -> None:
    sys.stderr.write(f"run_train.py: error: {message}\n")
    sys.exit(2)


def parse_flags(argv):
    """absl parsing, but a bad flag is one line and exit code 2 (absl's default is 1)."""
    try:
        argv = FLAGS(argv)
        flags_lib.cross_check(FLAGS)
        return argv
    except flags.Error as e:
        _user_error(str(e).replace("\n", " "))


def _check_interrupted(phase: str) -> None:
    if INTERRUPTS.pending is not None:
        raise Preempted(
            f"signal {INTERRUPTS.pending} during {phase}: stopped before training; nothing "
            "was changed in --model_dir (run the same command to start or resume)"
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
    """parse -> model_dir -> strategy -> build under scope -> restore -> train -> export."""
    lock = None if FLAGS.list_layers else _take_model_dir(config)
    try:
        return _train(config)
    finally:  # also on a user error, a signal or a non-finite loss: the run has ended
        if lock is not None:
            lock.release()


def _train(config) -> int:
    from trainer import runtime
    from trainer.tools import cli

    runtime.configure(quiet=True)
    if not FLAGS["verbosity"].present:
        runtime.quiet_logging()
    cli.import_tensorflow()  # without Keras' optional scikit-learn and matplotlib imports
    from trainer import experiment as experiment_lib
    from trainer.loop import strategy as strategy_lib

    _check_interrupted("start-up")
    strategy = strategy_lib.make_strategy(config.strategy)
    auto = config.max_lr == "auto"
    if FLAGS.list_layers and auto:
        config = config.replace(max_lr=1.0)  # no range test just to list the layers
    experiment = experiment_lib.Experiment(config, strategy, interrupts=INTERRUPTS)
    experiment.build()
    if FLAGS.list_layers:
        print(experiment.layer_report())
        if auto:
            print("(--max_lr=auto: peak learning rates shown for max_lr=1)")
        return 0
    _check_interrupted("start-up")
    experiment.restore()
    if config.lr_find:
        experiment.lr_find()
        _check_interrupted("the LR range test")
    if experiment.lr_find_result is not None:
        print(experiment.lr_find_result.format_line(), flush=True)
    if auto:
        print(f"--max_lr=auto: training at --max_lr={experiment.config.max_lr:.4g}", flush=True)
    if config.epochs is None and config.train_steps is None:  # --lr_find alone
        print(f"Done: {config.model_dir} (LR range test only)", flush=True)
        return 0
    complete = experiment.step >= experiment.plan.total_steps
    _check_interrupted("start-up")
    metrics = experiment.train()
    if complete and experiment.export_complete():
        path = experiment.export_dir
    else:
        path = experiment.export()
    from trainer.reporting import summaries

    print(f"Done: {config.model_dir}", flush=True)
    print(summaries.closing_summary(metrics, config.model_dir, path), flush=True)
    return 0


def main(argv):
    if len(argv) > 1:
        _user_error(f"unexpected positional arguments: {' '.join(argv[1:])}")
    config = flags_lib.to_config(FLAGS)
    try:
        return train(config)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(Preempted.EXIT_CODE)
    except NonFiniteError as e:
        sys.stderr.write(f"run_train.py: training stopped: {e}\n")
        sys.exit(1)
    except (UserError, ValueError, TypeError) as e:
        # Library code raises ValueError/TypeError for bad input, the Keras way; this is the
        # one place that turns them into one line and exit code 2.
        _user_error(str(e).replace("\n", " "))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
