"""TensorBoard output, read back with TensorBoard's own readers: per-step learning rates, images,
the HParams experiment and session, and what the HParams dashboard's backend makes of them."""

import io
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
    metadata,
)

import schedules
from tests.tiny import tiny_model
from trainer import layout
from trainer.config import Config
from trainer.experiment import Experiment
from trainer.loop.actions import Report
from trainer.loop.strategy import make_strategy
from trainer.reporting import interpret, summaries
from trainer.reporting.progress import ProgressBar


class Board:
    """A logdir as TensorBoard serves it: its multiplexer, data provider and HParams backend."""

    def __init__(self, logdir):
        self.logdir = str(logdir)
        # 0: keep every point (the default samples scalars and keeps few images).
        self.multiplexer = plugin_event_multiplexer.EventMultiplexer(
            size_guidance={"tensors": 0},
            tensor_size_guidance={"scalars": 0, "images": 0, "hparams": 0},
        )
        self.multiplexer.AddRunsFromDirectory(self.logdir)
        self.multiplexer.Reload()
        self.provider = data_provider.MultiplexerDataProvider(self.multiplexer, self.logdir)
        self.ctx = context.RequestContext()

    def scalars(self, run, tag):
        """[(step, value)] of one scalar time series, as the Scalars dashboard gets it."""
        found = self.provider.read_scalars(
            self.ctx, experiment_id="", plugin_name="scalars", downsample=10**6
        )
        return [(d.step, d.value) for d in found[run][tag]]

    def images(self, run, tag):
        """[(step, width, height, png)] of one image series, as the Images dashboard gets it."""
        found = self.provider.read_blob_sequences(
            self.ctx, experiment_id="", plugin_name="images", downsample=10**6
        )
        out = []
        for datum in found[run][tag]:
            width, height, png = (
                self.provider.read_blob(self.ctx, blob_key=ref.blob_key) for ref in datum.values
            )
            out.append((datum.step, int(width), int(height), png))
        return out

    def hparams_content(self, run):
        """{hparams tag: the plugin content} of one run (first-written metadata wins)."""
        found = self.provider.list_tensors(self.ctx, experiment_id="", plugin_name="hparams")
        return {tag: series.plugin_content for tag, series in found[run].items()}

    def dashboard(self):
        """The HParams dashboard's two requests: the experiment and the session groups."""
        backend = backend_context.Context(
            base_plugin.TBContext(
                logdir=self.logdir, data_provider=self.provider, multiplexer=self.multiplexer
            )
        )
        experiment = get_experiment.Handler(
            self.ctx, backend, "", api_pb2.GetExperimentRequest()
        ).run()
        request = api_pb2.ListSessionGroupsRequest(
            start_index=0,
            slice_size=100,
            allowed_statuses=[
                api_pb2.STATUS_UNKNOWN,
                api_pb2.STATUS_SUCCESS,
                api_pb2.STATUS_FAILURE,
                api_pb2.STATUS_RUNNING,
            ],
        )
        groups = list_session_groups.Handler(self.ctx, backend, "", request).run()
        return experiment, groups


def _steps_and_values(points):
    return [s for s, _ in points], [v for _, v in points]


# Report: the learning-rate curve and the bar's rate -------------------------------------------


def _logs(start, end, batch=8):
    n = end - start
    return {
        "start": start,
        "end": end,
        "seconds": 0.01 * n,
        "loss": np.full(n, 0.5, np.float32),
        "correct": np.full(n, batch // 2),
        "applied": np.ones(n, bool),
    }


def test_report_writes_each_steps_rates_and_momentum_and_the_bar_shows_the_last_trained(
    tmp_path,
):
    sgdr = schedules.SGDR(0.01, first_cycle_steps=4)  # restarts at 4 and 8
    mults = (0.01, 0.1, 1.0)

    def learning_rates(steps):  # Report takes the vector of steps trained
        return np.array([[m * float(sgdr(int(s))) for m in mults] for s in steps])

    one_cycle = schedules.OneCycle(0.01, total_steps=7)

    def momentum(steps):
        return np.array([float(one_cycle.momentum(int(s))) for s in steps])

    writer = summaries.Summaries(str(tmp_path))
    stream = io.StringIO()
    bar = ProgressBar(steps_per_epoch=4, total_steps=7, stream=stream, tty=False)
    report = Report(writer, bar, learning_rates, 8, 4, restarts=(4,), momentum=momentum)
    report.start(0)
    for start, end in ((0, 3), (3, 4), (4, 7)):  # loops cut at the restart (= epoch end) 4
        report(end, _logs(start, end))
    report.close()
    # 4 tags x 3 loops of 3, 1 and 3 steps: one trace, one more when the length first
    # changes (reduce_retracing); a trace per tag gave TensorFlow's retracing warning.
    assert writer._series[summaries.TRAIN].experimental_get_tracing_count() == 2
    writer.close()

    board = Board(tmp_path / layout.TENSORBOARD_DIR)
    for k, mult in enumerate(mults):
        steps, values = _steps_and_values(board.scalars("train", f"lr/segment_{k}"))
        # One point per step trained; the point at s is the rate of the update s -> s + 1.
        assert steps == list(range(7))
        np.testing.assert_allclose(values, [mult * float(sgdr(s)) for s in range(7)], rtol=1e-6)
    steps, values = _steps_and_values(board.scalars("train", "momentum"))
    assert steps == list(range(7))
    np.testing.assert_allclose(values, momentum(range(7)), rtol=1e-6)
    assert values[0] == pytest.approx(0.95) and min(values) < 0.9  # it cycles
    # Loss and accuracy stay one point per loop, at its last step.
    assert _steps_and_values(board.scalars("train", "loss"))[0] == [3, 4, 7]

    # The epoch that ends at the restart shows its last step's rate (step 3, the cycle's
    # low), not step 4's (the restart's max_lr); the partial last epoch shows step 6's.
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    head = [f"lr {float(sgdr(s)):.2e}" for s in (3, 4, 6)]
    assert head[0] != head[1]
    assert head[0] in lines[0] and head[1] not in lines[0]
    assert head[2] in lines[1] and f"lr {float(sgdr(7)):.2e}" not in lines[1]


# HParams -----------------------------------------------------------------------------------


HPARAMS = {
    "max_lr": 0.01,
    "first_cycle_steps": 4,
    "split_at": ("2", "head"),
    "lr_mults": None,
    "cycle_momentum": False,
    "optimizer": "adam",
}


def test_hparams_experiment_session_and_end_read_by_the_plugin(tmp_path):
    writer = summaries.Summaries(str(tmp_path))
    started = time.time() - 30.0
    writer.write_hparams(HPARAMS, True, ["swa", "ensemble"], started)
    writer.end_session()
    writer.close()
    content = Board(tmp_path / layout.TENSORBOARD_DIR).hparams_content("eval")

    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    names = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
    assert names == [
        ("", tag)
        for prefix in ("", "swa/", "ensemble/")
        for tag in (f"{prefix}loss", f"{prefix}accuracy", f"{prefix}top5")
    ]
    assert {m.dataset_type for m in experiment.metric_infos} == {api_pb2.DATASET_VALIDATION}
    assert [h.name for h in experiment.hparam_infos] == sorted(HPARAMS)
    assert experiment.time_created_secs == pytest.approx(started)

    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.start_time_secs == pytest.approx(started) and start.start_time_secs > 0
    values = {k: start.hparams[k].WhichOneof("kind") for k in start.hparams}
    assert values == {
        "max_lr": "number_value",
        "first_cycle_steps": "number_value",
        "split_at": "string_value",
        "lr_mults": "string_value",
        "cycle_momentum": "bool_value",
        "optimizer": "string_value",
    }
    assert start.hparams["split_at"].string_value == "2,head"
    assert start.hparams["lr_mults"].string_value == "none"
    assert start.hparams["max_lr"].number_value == 0.01

    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS and end.end_time_secs >= time.time() - 60


def test_hparams_metrics_without_top5_or_averaging():
    tags = [m.as_proto().name.tag for m in summaries.hparams_metrics(False)]
    assert tags == ["loss", "accuracy"]


def test_no_hparams_and_no_files_off_the_chief(tmp_path):
    writer = summaries.Summaries(str(tmp_path), enabled=False)
    writer.write_hparams(HPARAMS, True)
    writer.write("train", 1, {"loss": 1.0})
    writer.end_session()
    writer.close()
    assert not (tmp_path / layout.TENSORBOARD_DIR).exists()


# Images ------------------------------------------------------------------------------------


def test_write_images_with_tf_summary_image(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 50, 4), dtype=np.uint8)
    png = tf.io.encode_png(pixels).numpy()
    interpret.write_images(str(tmp_path), 5, {"top_losses": png})
    ((step, width, height, written),) = Board(tmp_path).images(".", "top_losses")
    assert (step, width, height) == (5, 50, 30)
    np.testing.assert_array_equal(tf.io.decode_png(written), pixels)


# A real run --------------------------------------------------------------------------------


def _config(tmp_path, **kw):
    base = dict(
        model_dir=str(tmp_path),
        image_size=8,
        synthetic_train_size=64,  # 4 steps per epoch
        synthetic_test_size=20,
        global_batch_size=16,
        train_steps=6,
        max_lr=0.01,
        first_cycle_steps=2,  # restarts at 2 and 4
        split_at=("2", "head"),
        lr_mults=(0.01, 0.1, 1.0),
        steps_per_loop=4,
        eval_every_epochs=1.0,
        progress=False,
    )
    base.update(kw)
    return Config(**base)


def test_a_run_on_the_dashboards(tmp_path):
    model_dir = tmp_path / "run"
    before = time.time()
    exp = Experiment(_config(model_dir), make_strategy("one_device"), model_fn=tiny_model)
    exp.build().restore()
    metrics = exp.train()
    logdir = model_dir / layout.TENSORBOARD_DIR  # the README's `tensorboard --logdir`
    board = Board(logdir)

    # Scalars: the three segments' rates at every step 0..5, the schedule's values.
    for k in range(3):
        steps, values = _steps_and_values(board.scalars("train", f"lr/segment_{k}"))
        assert steps == list(range(6))
        np.testing.assert_allclose(values, [exp.learning_rates(s)[k] for s in range(6)], rtol=1e-6)
    assert values[2] == pytest.approx(0.01)  # step 2 is a restart: the head's max_lr

    # HParams: the dashboard lists the eval metrics and shows this run's values of them.
    experiment, groups = board.dashboard()
    tags = [m.name.tag for m in experiment.metric_infos]
    assert tags == ["loss", "accuracy", "top5"]  # 10 classes: top-5 too
    (group,) = groups.session_groups
    (session,) = group.sessions
    assert session.status == api_pb2.STATUS_SUCCESS
    assert before <= session.start_time_secs <= session.end_time_secs <= time.time()
    shown = {v.name.tag: (v.training_step, v.value) for v in session.metric_values}
    final = metrics["final"]
    assert shown == {
        tag: (6, pytest.approx(final[tag], rel=1e-6)) for tag in ("loss", "accuracy", "top5")
    }
    assert group.hparams["max_lr"].number_value == 0.01
    assert group.hparams["split_at"].string_value == "2,head"

    # The same from a parent of model_dirs, where sessions are named by their path.
    experiment, groups = Board(tmp_path).dashboard()
    (session,) = [s for g in groups.session_groups for s in g.sessions]
    assert session.name == os.path.join("run", layout.TENSORBOARD_DIR, "eval")
    assert {v.name.tag for v in session.metric_values} == {"loss", "accuracy", "top5"}
