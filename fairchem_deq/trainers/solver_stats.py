"""Running solver statistics of a training phase or an evaluation pass.

`add` turns one batch's per-structure DEQ statistics into fairchem metric entries
({"total", "numel"} dicts that fairchem's Evaluator averages and its logger records) and
keeps the totals and maxima for an end-of-pass summary, which `summary` reduces over
DDP ranks.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def _per_structure_force_deviation(forces, cold_forces, natoms) -> torch.Tensor:
    """||F_warm - F_cold|| / ||F_cold|| for each structure (the paper's Markov check)."""
    sizes = natoms.tolist()
    devs = [
        (fw - fc).norm() / fc.norm().clamp_min(1e-12)
        for fw, fc in zip(torch.split(forces.detach(), sizes), torch.split(cold_forces.detach(), sizes))
    ]
    return torch.stack(devs)


class SolverStatsAccumulator:
    def __init__(self):
        self.reset()

    def reset(self):
        self.sums = defaultdict(float)
        self.counts = defaultdict(int)
        self.maxima = defaultdict(float)

    def _acc(self, key: str, values: torch.Tensor) -> dict:
        values = values.detach().double().flatten()
        total, numel = float(values.sum()), int(values.numel())
        self.sums[key] += total
        self.counts[key] += numel
        if numel:
            self.maxima[key] = max(self.maxima[key], float(values.max()))
        return {"total": total, "numel": numel}

    def add(self, stats: dict, warm: bool, cold_stats: dict | None = None, forces=None,
            cold_forces=None, natoms=None) -> dict:
        metrics = {
            "deq_nstep": self._acc("nstep", stats["nstep"]),
            "deq_rel_residual": self._acc("rel_residual", stats["rel_residual"]),
            "deq_nonconverged": self._acc("nonconverged", (~stats["converged"]).double()),
        }
        if warm:
            metrics["deq_nstep_warm"] = self._acc("nstep_warm", stats["nstep"])
            metrics["deq_fallback"] = self._acc("fallback", stats["fallback"].double())
        if cold_stats is not None:
            metrics["deq_nstep_cold"] = self._acc("nstep_cold", cold_stats["nstep"])
        if forces is not None and cold_forces is not None:
            dev = _per_structure_force_deviation(forces, cold_forces, natoms)
            metrics["deq_markov_dev"] = self._acc("markov_dev", dev)
        return metrics

    def summary(self, reduce_max=None, reduce_sum=None, device=None) -> dict:
        reduce_max = reduce_max or (lambda v, d: v)
        reduce_sum = reduce_sum or (lambda v, d: v)
        out = {}
        for key in sorted(self.sums):
            n = reduce_sum(float(self.counts[key]), device)
            if n == 0:
                continue
            out[f"deq_{key}_mean"] = reduce_sum(self.sums[key], device) / n
            out[f"deq_{key}_max"] = reduce_max(self.maxima[key], device)
            out[f"deq_{key}_count"] = n
        if "nstep" in self.sums:
            out["deq_nstep_total"] = reduce_sum(self.sums["nstep"], device)
        return out
