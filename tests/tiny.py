"""Moved to tests/helpers.py; re-exported for tests/test_summaries.py until it imports helpers."""

from tests.helpers import tiny_model

__all__ = ["tiny_model"]
