"""Simulation: the DEQCalculator (ASE), MD and relaxations that reuse fixed points."""

from .calculator import DEQCalculator, check_deq_checkpoint
from .md import MDReport, run_md
from .relax import RelaxReport, run_relaxation

__all__ = ["DEQCalculator", "MDReport", "RelaxReport", "check_deq_checkpoint", "run_md", "run_relaxation"]
