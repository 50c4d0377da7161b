"""Moved to benchmarks.fixtures. Kept only for `reference_models train` processes started
before the move (they import this lazily for the OC20 runs); delete once none is running."""

from benchmarks.fixtures import MINI_WIDTH, prepare_oc20

__all__ = ["MINI_WIDTH", "prepare_oc20"]
