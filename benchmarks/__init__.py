"""Benchmarks: side-by-side measurements written to benchmarks/results/ (JSON + PNG)."""
