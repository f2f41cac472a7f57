"""Tests for trainer/progress.py: a fake clock, StringIO streams, exact output."""

import io
import sys

import pytest

from trainer.reporting.progress import ProgressBar, format_duration, format_step_time, format_values

VALUES = {"loss": 0.693147, "accuracy": 0.5, "lr": 1.14159e-4, "img/s": 832.6}
SHOWN = "loss 0.6931  accuracy 0.5000  lr 1.14e-04  833 img/s"


class FakeClock:
    """Seconds that move only when a test advances them."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TtyStringIO(io.StringIO):
    def isatty(self):
        return True


def make_bar(steps_per_epoch=32, total_steps=128, tty=True, start=0, now=0.0):
    clock = FakeClock(now)
    stream = io.StringIO()
    bar = ProgressBar(steps_per_epoch, total_steps, stream=stream, tty=tty, clock=clock)
    bar.start(start)
    return bar, stream, clock


def test_tty_line_is_rewritten_in_place_with_eta_and_step_time():
    bar, stream, clock = make_bar()
    clock.advance(5)
    bar.update(10, VALUES)
    first = (
        "\rEpoch 1/4  10/32 [=========>....................]  elapsed 5s  ETA 11s  500ms/step  "
        + SHOWN
    )
    assert stream.getvalue() == first

    # Time per step is the latest loop's: 10 steps in 2 s; ETA 12 steps * 0.2 s.
    clock.advance(2)
    bar.update(20, {"loss": 0.5})
    second = "\rEpoch 1/4  20/32 [==================>...........]  elapsed 7s  ETA 2s  200ms/step  "
    second += "loss 0.5000"
    # The shorter line blanks the rest of the longer one.
    second_padding = " " * (len(first) - len(second))
    assert stream.getvalue() == first + second + second_padding

    # The epoch's last update: its total time and average time per step, then a newline.
    clock.advance(2.6)
    bar.update(32, {"loss": 0.25})
    third = (
        "\rEpoch 1/4  32/32 [==============================]  total 10s  300ms/step  loss 0.2500"
    )
    third += " " * (len(second) - len(third)) + "\n"
    assert stream.getvalue() == first + second + second_padding + third


def test_tty_next_epoch_starts_a_new_line():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=8)
    clock.advance(4)
    bar.update(4, VALUES)
    clock.advance(1)
    bar.update(5, {})
    lines = stream.getvalue().split("\n")
    assert lines[0] == (
        "\rEpoch 1/2  4/4 [==============================]  total 4s  1.0s/step  " + SHOWN
    )
    # A fresh line: nothing of the previous, longer one to blank.
    assert lines[1] == (
        "\rEpoch 2/2  1/4 [=======>......................]  elapsed 1s  ETA 3s  1.0s/step"
    )


def test_tty_none_asks_the_stream():
    clock = FakeClock()
    tty_stream = TtyStringIO()
    bar = ProgressBar(4, 8, stream=tty_stream, clock=clock)
    bar.start(0)
    clock.advance(1)
    bar.update(1, {})
    assert tty_stream.getvalue().startswith("\rEpoch 1/2  1/4 [")

    plain = io.StringIO()
    bar = ProgressBar(4, 8, stream=plain, clock=clock)
    bar.start(0)
    clock.advance(1)
    bar.update(1, {})
    assert plain.getvalue() == ""


def test_default_stream_is_sys_stdout_at_call_time(monkeypatch):
    clock = FakeClock()
    bar = ProgressBar(2, 2, tty=False, clock=clock)
    bar.start(0)
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    clock.advance(1)
    bar.update(2, {})
    assert captured.getvalue() == "Epoch 1/1  2/2  total 1s  500ms/step\n"


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (0.0, "0us"),
        (850e-6, "850us"),
        (0.0009996, "1ms"),
        (0.012, "12ms"),
        (0.5, "500ms"),
        (0.9996, "1.0s"),
        (1.3, "1.3s"),
        (42.0, "42.0s"),
    ],
)
def test_step_time_units(seconds, shown):
    assert format_step_time(seconds) == shown


def test_step_time_is_measured_per_step_not_per_update():
    # One update for a 100-step loop: Keras' Progbar showed the loop's time as one step's.
    bar, stream, clock = make_bar(steps_per_epoch=1000, total_steps=1000, tty=False)
    clock.advance(0.085)
    bar.update(100, {})
    clock.advance(0.765)
    bar.update(1000, {})
    assert stream.getvalue() == "Epoch 1/1  1000/1000  total 1s  850us/step\n"


@pytest.mark.parametrize(
    "seconds, shown", [(0, "0s"), (0.4, "0s"), (59.4, "59s"), (65, "1:05"), (3665, "1:01:05")]
)
def test_duration_format(seconds, shown):
    assert format_duration(seconds) == shown


def test_values_format():
    values = {"loss": 1.23456789, "accuracy": 0.98765, "lr": 0.001, "img/s": 1815.0663, "x": 2}
    assert format_values(values) == "loss 1.2346  accuracy 0.9877  lr 1.00e-03  1815 img/s  x 2"


def test_not_a_tty_prints_one_plain_line_per_finished_epoch():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=12, tty=False)
    clock.advance(1)
    bar.update(2, VALUES)
    assert stream.getvalue() == ""  # Nothing mid-epoch.
    clock.advance(1)
    bar.update(4, VALUES)
    assert stream.getvalue() == f"Epoch 1/3  4/4  total 2s  500ms/step  {SHOWN}\n"
    clock.advance(3)
    bar.update(6, {"loss": 0.1})
    clock.advance(5)
    bar.update(8, {"loss": 0.2})
    assert stream.getvalue().splitlines()[1] == "Epoch 2/3  4/4  total 8s  2.0s/step  loss 0.2000"
    assert "\r" not in stream.getvalue()
    assert "[" not in stream.getvalue()


def test_not_a_tty_partial_last_epoch_prints_on_close():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=12, tty=False)
    clock.advance(2)
    bar.update(4, {})
    clock.advance(3)
    bar.update(7, {"loss": 0.3})
    assert stream.getvalue() == "Epoch 1/3  4/4  total 2s  500ms/step\n"
    bar.close()
    bar.close()  # Once only.
    assert stream.getvalue().splitlines() == [
        "Epoch 1/3  4/4  total 2s  500ms/step",
        "Epoch 2/3  3/4  total 3s  1.0s/step  loss 0.3000",
    ]


def test_close_after_an_epoch_end_prints_nothing_more():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=8, tty=True)
    clock.advance(2)
    bar.update(4, {})
    before = stream.getvalue()
    bar.close()
    assert stream.getvalue() == before
    assert before.endswith("\n")


def test_tty_close_mid_epoch_ends_the_line_without_eta():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=8, tty=True)
    clock.advance(3)
    bar.update(3, {})
    bar.close()
    assert stream.getvalue().split("\r")[-1] == (
        "Epoch 1/2  3/4 [======================>.......]  total 3s  1.0s/step" + " " * 10 + "\n"
    )


def test_last_epoch_ends_at_total_steps():
    # 10 steps of 4 per epoch: the third epoch has 2 steps; its ETA counts to the run's end.
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=10, tty=True, start=8)
    clock.advance(1)
    bar.update(9, {})
    assert stream.getvalue() == (
        "\rEpoch 3/3  1/2 [===============>..............]  elapsed 1s  ETA 1s  1.0s/step"
    )
    clock.advance(1)
    bar.update(10, {})
    assert stream.getvalue().endswith(
        "\rEpoch 3/3  2/2 [==============================]  total 2s  1.0s/step" + " " * 10 + "\n"
    )


def test_resumed_mid_epoch_times_the_epoch_from_the_start_step():
    bar, stream, clock = make_bar(start=40, now=1000.0)
    clock.advance(6)
    bar.update(52, VALUES)
    assert stream.getvalue() == (
        "\rEpoch 2/4  20/32 [==================>...........]  elapsed 6s  ETA 6s  500ms/step  "
        + SHOWN
    )
    clock.advance(6)
    bar.update(64, {})
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith(
        "Epoch 2/4  32/32 [==============================]  total 12s  500ms/step"
    )
    assert last.endswith("\n")


def test_resumed_at_an_epoch_end():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=12, tty=False, start=4)
    clock.advance(4)
    bar.update(8, {})
    assert stream.getvalue() == "Epoch 2/3  4/4  total 4s  1.0s/step\n"


def test_update_at_an_epoch_end_starts_the_next_epoch_timing_there():
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=12, tty=False)
    clock.advance(8)
    bar.update(4, {})
    clock.advance(1)
    bar.update(6, {})
    clock.advance(1)
    bar.update(8, {})
    clock.advance(12)
    bar.update(12, {})
    assert stream.getvalue().splitlines() == [
        "Epoch 1/3  4/4  total 8s  2.0s/step",
        "Epoch 2/3  4/4  total 2s  500ms/step",
        "Epoch 3/3  4/4  total 12s  3.0s/step",
    ]


def test_a_loop_crossing_an_epoch_end_closes_the_old_epoch():
    # The driver ends loops at epoch ends; should one cross, the old epoch still gets its line.
    bar, stream, clock = make_bar(steps_per_epoch=4, total_steps=12, tty=False)
    clock.advance(3)
    bar.update(3, {"loss": 1.0})
    clock.advance(6)
    bar.update(6, {"loss": 2.0})
    assert stream.getvalue() == "Epoch 1/3  3/4  total 3s  1.0s/step  loss 1.0000\n"
    clock.advance(2)
    bar.update(8, {})
    assert stream.getvalue().splitlines()[1] == "Epoch 2/3  4/4  total 8s  1.6s/step"


def test_max_loop_steps_targets_an_update_interval():
    bar, _, clock = make_bar(tty=True)
    assert bar.max_loop_steps() is None  # Nothing measured yet.
    clock.advance(0.5)
    bar.update(10, {})  # 50 ms/step.
    assert bar.max_loop_steps(2.0) == 40
    assert bar.max_loop_steps(1.0) == 20
    assert bar.max_loop_steps(0.01) == 1  # Never below 1.
    clock.advance(5)
    bar.update(20, {})  # The latest loop counts: 500 ms/step (e.g. the first loop compiled).
    assert bar.max_loop_steps() == 4
    with pytest.raises(ValueError, match="target_seconds=0"):
        bar.max_loop_steps(0)


def test_max_loop_steps_is_none_when_not_a_tty():
    bar, _, clock = make_bar(tty=False)
    clock.advance(0.5)
    bar.update(10, {})
    assert bar.max_loop_steps(2.0) is None


def test_max_loop_steps_is_none_when_steps_took_no_time():
    bar, _, _ = make_bar(tty=True)
    bar.update(10, {})
    assert bar.max_loop_steps() is None


def test_invalid_arguments_fail_loudly():
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        ProgressBar(0, 10)
    with pytest.raises(ValueError, match="total_steps=0"):
        ProgressBar(1, 0)
    with pytest.raises(ValueError, match="width=0"):
        ProgressBar(1, 1, width=0)
    bar = ProgressBar(4, 8, stream=io.StringIO(), clock=FakeClock())
    with pytest.raises(RuntimeError, match="start"):
        bar.update(1, {})
    with pytest.raises(ValueError, match="step=9"):
        bar.start(9)
    bar.start(2)
    with pytest.raises(ValueError, match="step=2"):
        bar.update(2, {})
    with pytest.raises(ValueError, match="step=9"):
        bar.update(9, {})
