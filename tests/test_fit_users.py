"""model.fit users: a model compiled with a segmented optimizer and SGDR saves and loads in a
fresh process that imports only Keras and trainer.optimizers (or Keras, then schedules)."""

import subprocess
import sys

import keras
import numpy as np

from schedules import SGDR
from tests.helpers import ROOT
from trainer import optimizers, segments


def _save(path, segmented):
    """Saves a model.fit model (SGD with SGDR, segmented or not); returns its step count. In
    this process: only the loading side must be a fresh one."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="body"), keras.layers.Dense(2, name="head")]
    )
    segment_of = segments.assign(model, ["head"])
    sgd = keras.optimizers.SGD(SGDR(0.1, 10, cycle_mult=2.0))
    model.compile(
        optimizer=optimizers.segmented(sgd, segment_of, (0.1, 1.0)) if segmented else sgd,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(np.ones((8, 4)), np.zeros(8), epochs=2, verbose=0)
    model.save(path)
    return str(int(model.optimizer.iterations.numpy()))


LOAD = """
import keras
{imports}
model = keras.saving.load_model({path!r})
opt = model.optimizer
sched = opt.get_config()["learning_rate"]
print(type(opt).__name__, int(opt.iterations.numpy()), sched["class_name"],
      opt.get_config().get("lr_mults"))
"""


def _python(code):
    env_code = "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n" + code
    result = subprocess.run(
        [sys.executable, "-c", env_code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_a_segmented_model_loads_in_a_fresh_process_with_trainer_optimizers(tmp_path):
    path = str(tmp_path / "fit.keras")
    steps = _save(path, segmented=True)
    loaded = _python(LOAD.format(path=path, imports="import trainer.optimizers"))
    assert loaded.split()[:3] == ["SegmentedSGD", steps, "SGDR"]
    assert loaded.endswith("[0.1, 1.0]")


def test_an_sgdr_model_loads_in_a_fresh_process_after_import_schedules(tmp_path):
    path = str(tmp_path / "fit.keras")
    steps = _save(path, segmented=False)
    loaded = _python(LOAD.format(path=path, imports="import schedules"))
    assert loaded.split()[:3] == ["SGD", steps, "SGDR"]


def test_without_the_registration_keras_cannot_find_sgdr(tmp_path):
    # The check above can fail: with neither import, Keras does not know the classes.
    path = str(tmp_path / "fit.keras")
    _save(path, segmented=True)
    code = "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n" + LOAD.format(
        path=path, imports=""
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "Could not locate class" in result.stderr
