"""Two-process MultiWorkerMirroredStrategy on localhost equals one process on one device."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from trainer.tools import cli
    cli.import_tensorflow()  # as run_train.py: without Keras' optional imports (seconds)
    from tests.test_multiworker import run_config, tiny_model
    from trainer.experiment import Experiment
    from trainer.loop.strategy import make_strategy, is_chief

    config = run_config(sys.argv[1], sys.argv[2])
    strategy = make_strategy(config.strategy)
    experiment = Experiment(config, strategy, model_fn=tiny_model).build()
    experiment.interpret = lambda: {{}}  # plots are tested in test_experiment
    experiment.restore()
    metrics = experiment.train()
    out = sys.argv[3]
    np.savez(out, *[v.numpy() for v in experiment.model.weights])
    with open(out + ".json", "w") as f:
        json.dump({{"metrics": metrics, "chief": is_chief(strategy),
                   "replicas": strategy.num_replicas_in_sync}}, f)
    """
)


def tiny_model(num_classes):
    import keras

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
    """The run of the workers and of the one-device reference (module: no TensorFlow import)."""
    from trainer.config import Config

    return Config(
        model_dir=model_dir,
        image_size=8,
        synthetic_train_size=64,
        synthetic_test_size=20,
        global_batch_size=16,
        train_steps=6,
        optimizer="adam",
        max_lr=0.01,
        first_cycle_steps=2,
        split_at=("head",),
        lr_mults=(0.1, 1.0),
        steps_per_loop=4,
        checkpoint_every_steps=3,
        progress=False,
        strategy=strategy,
    )


def _one_device(model_dir):
    """The reference: the same run on one device, in this process (its device is /cpu:0)."""
    from trainer.experiment import Experiment
    from trainer.loop.strategy import make_strategy

    experiment = Experiment(
        run_config(str(model_dir), "one_device"), make_strategy("one_device"), model_fn=tiny_model
    ).build()
    experiment.interpret = lambda: {}
    experiment.restore()
    metrics = experiment.train()
    return [v.numpy() for v in experiment.model.weights], {"metrics": metrics}


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _load(path):
    with np.load(path) as z:
        weights = [z[f"arr_{i}"] for i in range(len(z.files))]
    return weights, json.loads(Path(str(path) + ".json").read_text())


# Generous subprocess timeouts (240 s each) bound it; it takes ~15 s on 2 cores. The two
# workers are processes (one cluster of two tasks); the one-device reference runs in-process.
def test_two_workers_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    workers = [f"localhost:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [
            sys.executable,
            str(script),
            str(tmp_path / "mw"),
            "multi_worker",
            str(tmp_path / f"w{index}.npz"),
        ]
        procs.append(
            subprocess.Popen(
                args,
                env=_env(tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    ref, r_ref = _one_device(tmp_path / "one")  # while the workers start
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
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
