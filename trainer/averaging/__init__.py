"""Weight averaging.

Snapshot ensembles, SWA and EMA, BatchNorm recomputation.
"""
