"""The command-line tools.

Predict, evaluate and ensemble, with their one shared main (cli).
"""
