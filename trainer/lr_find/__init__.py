"""The LR range test.

The algorithm and its result (finder), the run's range test, the model.fit callback.
"""
