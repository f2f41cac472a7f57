"""Fine-tune a model with differential learning rates and SGDR.

    python run_train.py --flagfile=configs/quickstart.flags [--flag=value ...]

Later flags override the flagfile. `--helpfull` documents every flag; `--list_layers` prints
the layers and segments so split points can be chosen. Exit codes: 0 done, 1 training failed
(e.g. non-finite loss; the last good checkpoint is kept), 2 bad input (one line on stderr),
3 interrupted by SIGTERM/SIGINT after saving a checkpoint (run the same command to resume).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from trainer import flags as flags_lib
from trainer.errors import NonFiniteError, Preempted, UserError

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


def main(argv):
    if len(argv) > 1:
        _user_error(f"unexpected positional arguments: {' '.join(argv[1:])}")
    config = flags_lib.to_config(FLAGS)
    # Heavy imports only after the flags are known to be good.
    import trainer

    trainer.import_tensorflow()
    from trainer import experiment as experiment_lib
    from trainer import strategy as strategy_lib

    try:
        strategy = strategy_lib.make_strategy(config.strategy)
        experiment = experiment_lib.Experiment(config, strategy)
        experiment.build()
        if FLAGS.list_layers:
            print(experiment.layer_report())
            return 0
        experiment.restore()
        metrics = experiment.train()
        path = experiment.export()
    except UserError as e:
        _user_error(e)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(Preempted.EXIT_CODE)
    except NonFiniteError as e:
        sys.stderr.write(f"run_train.py: training stopped: {e}\n")
        sys.exit(1)
    logging.info("Done: %s; model exported to %s", metrics, path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, flags_parser=parse_flags)
