"""The controller: one predicate for when actions are due, loops cut at every boundary."""

import pytest

from trainer.loop.controller import Action, Controller, When, itstime, next_due


class FakeTrainer:
    """A trainer whose global step is a plain int; records the loops it was asked to run."""

    def __init__(self, step=0):
        self.step = step
        self.loops = []

    def train(self, num_steps):
        self.loops.append((self.step, num_steps))
        self.step += num_steps
        return {"start": self.step - num_steps, "end": self.step}


class Recorder(Action):
    def __init__(self, name, when, log):
        self.name, self.when, self.log = name, when, log

    def start(self, step):
        self.log.append(("start", self.name, step))

    def __call__(self, step, logs):
        assert logs["end"] == step
        self.log.append((self.name, step))

    def close(self):
        self.log.append(("close", self.name))


def test_itstime_and_next_due():
    when = When(every=4, steps=(3, 10), at_end=True)
    due = [s for s in range(0, 12) if itstime(s, when, total_steps=11)]
    assert due == [3, 4, 8, 10, 11]  # never at step 0; at the end (11) though not a multiple
    assert [next_due(s, when, 11) for s in (0, 3, 4, 10, 11)] == [3, 4, 8, 11, None]
    assert itstime(5, When(each_loop=True), 11) and next_due(5, When(each_loop=True), 11) is None
    with pytest.raises(ValueError, match="every"):
        When(every=0)


def test_controller_runs_actions_in_order_at_their_steps():
    log = []
    actions = [
        Recorder("ckpt", When(every=5, at_end=True), log),
        Recorder("eval", When(steps=(7,)), log),
        Recorder("loop", When(each_loop=True), log),
    ]
    trainer = FakeTrainer(step=2)  # a resumed run
    controller = Controller(trainer, actions, total_steps=12, steps_per_loop=4)
    assert controller.run() == 12
    assert trainer.loops == [(2, 3), (5, 2), (7, 3), (10, 2)]
    assert log[:3] == [("start", "ckpt", 2), ("start", "eval", 2), ("start", "loop", 2)]
    assert log[3:-3] == [
        ("ckpt", 5),
        ("loop", 5),
        ("eval", 7),
        ("loop", 7),
        ("ckpt", 10),
        ("loop", 10),
        ("ckpt", 12),
        ("loop", 12),
    ]
    assert log[-3:] == [("close", "loop"), ("close", "eval"), ("close", "ckpt")]


def test_actions_are_closed_when_an_action_raises():
    log = []

    class Stop(Action):
        when = When(steps=(3,))

        def __call__(self, step, logs):
            raise KeyError("stop")

    actions = [Recorder("a", When(each_loop=True), log), Stop()]
    with pytest.raises(KeyError):
        Controller(FakeTrainer(), actions, total_steps=10, steps_per_loop=10).run()
    assert log == [("start", "a", 0), ("a", 3), ("close", "a")]


def test_a_finished_run_trains_nothing():
    trainer = FakeTrainer(step=12)
    assert Controller(trainer, [], total_steps=12, steps_per_loop=4).run() == 12
    assert trainer.loops == []
