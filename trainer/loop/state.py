"""Take variables' values and put them back: the one snapshot/restore of the trainer.

The LR range test (of a run, in a custom loop, as a `model.fit` callback) and the snapshot
ensemble change a model's (and an optimizer's) variables for a while and must leave them bit
for bit as they were, also after an exception:

    with state.restored(model.variables, layers=segments.flatten_layers(model)):
        ...  # train, load other weights

`VariableState` is the same as an object, for code whose "after" is another method (a Keras
callback's `on_train_end`).
"""

from __future__ import annotations

import contextlib


class VariableState:
    """The values of `variables` (and the `trainable` flags of `layers`) at construction.

    Args:
        variables: Variables (model weights and statistics, optimizer slots and iterations);
            a variable listed twice is taken once.
        layers: Layers whose `trainable` flag is put back too (freezing changes them).
    """

    def __init__(self, variables, layers=()):
        unique = {id(v): v for v in variables}
        self._variables = list(unique.values())
        self._values = [v.numpy() for v in self._variables]
        self._layers = list(layers)
        self._flags = [layer.trainable for layer in self._layers]
        self.restored = False

    def restore(self) -> None:
        """Assigns every value back and sets the flags back; does nothing a second time."""
        if self.restored:
            return
        for v, value in zip(self._variables, self._values):
            v.assign(value)
        for layer, flag in zip(self._layers, self._flags):
            layer.trainable = flag
        self.restored = True


@contextlib.contextmanager
def restored(variables, *, layers=()):
    """Runs the block, then puts `variables` (and `layers`' trainable flags) back as they were,
    also when the block raises."""
    state = VariableState(variables, layers)
    try:
        yield state
    finally:
        state.restore()
