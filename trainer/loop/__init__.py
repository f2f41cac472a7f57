"""The compiled loops and the driver around them.

Runner (the trainer object), controller and actions, strategy, precision, interrupts, steps.
"""
