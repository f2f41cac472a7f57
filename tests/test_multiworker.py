"""Two-process MultiWorkerMirroredStrategy on localhost equals one process on one device."""

import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import helpers

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from trainer.tools import cli
    cli.import_tensorflow()  # as run_train.py: without Keras' optional imports (seconds)
    from tests import helpers
    from tests.test_multiworker import run_config, tiny_model
    from trainer.loop.strategy import make_strategy, is_chief

    config = run_config(sys.argv[1], sys.argv[2])
    strategy = make_strategy(config.strategy)
    experiment, metrics = helpers.trained(config, tiny_model, strategy)
    out = sys.argv[3]
    np.savez(out, *[v.numpy() for v in experiment.model.weights])
    with open(out + ".json", "w") as f:
        json.dump({{"metrics": metrics, "chief": is_chief(strategy),
                   "replicas": strategy.num_replicas_in_sync}}, f)
    """
)


def tiny_model(num_classes):
    """conv -> head (no hidden layer): what the workers and the one-device reference train."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


def run_config(model_dir, strategy):
    """The run of the workers and of the one-device reference."""
    return helpers.tiny_config(
        model_dir,
        synthetic_test_size=20,
        train_steps=6,
        first_cycle_steps=2,
        split_at=("head",),
        lr_mults=(0.1, 1.0),
        checkpoint_every_steps=3,
        strategy=strategy,
    )


def _one_device(model_dir):
    """The reference: the same run on one device, in this process (its device is /cpu:0)."""
    experiment, metrics = helpers.trained(run_config(str(model_dir), "one_device"), tiny_model)
    return [v.numpy() for v in experiment.model.weights], {"metrics": metrics}


def _load(path):
    with np.load(path) as z:
        weights = [z[f"arr_{i}"] for i in range(len(z.files))]
    return weights, json.loads(Path(str(path) + ".json").read_text())


# Generous subprocess timeouts (240 s each) bound it; it takes ~15 s on 2 cores. The two
# workers are processes (one cluster of two tasks); the one-device reference runs in-process.
def test_two_workers_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT.format(root=str(helpers.ROOT)))
    procs = helpers.start_workers(
        script, lambda i: [str(tmp_path / "mw"), "multi_worker", str(tmp_path / f"w{i}.npz")]
    )
    ref, r_ref = _one_device(tmp_path / "one")  # while the workers start
    helpers.wait_for(procs)
    (w0, r0), (w1, r1) = (_load(tmp_path / f"{n}.npz") for n in ("w0", "w1"))
    assert len(w0) == len(w1) == len(ref)
    assert r0["replicas"] == 2 and r0["chief"] and not r1["chief"]
    for a, b, c in zip(w0, w1, ref):
        np.testing.assert_array_equal(a, b)  # workers agree exactly
        np.testing.assert_allclose(a, c, atol=1e-5, rtol=0)  # and match one process
    assert r0["metrics"]["final"]["examples"] == 20
    assert r0["metrics"]["final"]["accuracy"] == pytest.approx(
        r_ref["metrics"]["final"]["accuracy"]
    )
    # Only the chief writes the run directory; the other worker's temporary save is gone.
    assert (tmp_path / "mw" / "ckpt" / "ckpt-6.index").exists()
    assert (tmp_path / "mw" / "metrics.json").exists()
    assert not (tmp_path / "mw" / ".ckpt_w1").exists()
