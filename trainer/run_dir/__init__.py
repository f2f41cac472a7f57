"""What lives in a run's model_dir.

Files written atomically, the lock, checkpoints, fault points.
"""
