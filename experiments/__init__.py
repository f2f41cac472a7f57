"""The transfer study: does lrtech's fine-tuning help, where, and by how much (EXPERIMENTS.md)."""
