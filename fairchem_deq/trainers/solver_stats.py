"""Running solver statistics of a training phase or an evaluation pass.

`add` turns one batch's per-structure DEQ statistics into fairchem metric entries
({"total", "numel"} dicts that fairchem's Evaluator averages and its logger records) and
keeps the totals and maxima for an end-of-pass summary, which `summary` reduces over
DDP ranks. Every rank holds every statistic in `STATISTICS` (empty ones count 0), so all
ranks issue the same collectives in the same order whatever frames they saw.
"""

from __future__ import annotations

import torch

from fairchem_deq.reuse import force_deviation

# nstep: solver evaluations per structure; *_warm / fallback: warm-started structures only;
# nstep_cold / markov_dev: the optional cold comparison; reuse_refused: cached fixed points
# not reused because the structure moved beyond the displacement bound; contraction: the
# solver's estimate of f's contraction factor q per structure
STATISTICS = (
    "contraction",
    "fallback",
    "markov_dev",
    "nonconverged",
    "nstep",
    "nstep_cold",
    "nstep_warm",
    "rel_residual",
    "reuse_refused",
)


class SolverStatsAccumulator:
    def __init__(self):
        self.reset()

    def reset(self):
        self.sums = dict.fromkeys(STATISTICS, 0.0)
        self.counts = dict.fromkeys(STATISTICS, 0)
        self.maxima = dict.fromkeys(STATISTICS, 0.0)

    def _acc(self, key: str, values: torch.Tensor) -> dict:
        values = values.detach().double().flatten()
        total, numel = float(values.sum()), int(values.numel())
        self.sums[key] += total
        self.counts[key] += numel
        if numel:
            self.maxima[key] = max(self.maxima[key], float(values.max()))
        return {"total": total, "numel": numel}

    def add(
        self,
        stats: dict,
        warm,
        cold_stats: dict | None = None,
        forces=None,
        cold_forces=None,
        natoms=None,
        refused: torch.Tensor | None = None,
    ) -> dict:
        """`warm`: which structures were warm-started (bool tensor [n]; True/False for all;
        None: none). The warm-only statistics (nstep_warm, fallback) and the cold comparison
        (nstep_cold, markov_dev) cover those structures only. `refused` (bool tensor [n]):
        structures whose cached fixed point was not reused (the structure moved too far)."""
        n = len(stats["nstep"])
        if warm is None or isinstance(warm, bool):
            warm = torch.full((n,), bool(warm), dtype=torch.bool)
        warm = warm.to(stats["nstep"].device)
        metrics = {
            "deq_nstep": self._acc("nstep", stats["nstep"]),
            "deq_rel_residual": self._acc("rel_residual", stats["rel_residual"]),
            "deq_nonconverged": self._acc("nonconverged", (~stats["converged"]).double()),
        }
        if "contraction" in stats:
            metrics["deq_contraction"] = self._acc("contraction", stats["contraction"])
        if refused is not None:
            metrics["deq_reuse_refused"] = self._acc("reuse_refused", refused.double())
        if bool(warm.any()):
            metrics["deq_nstep_warm"] = self._acc("nstep_warm", stats["nstep"][warm])
            metrics["deq_fallback"] = self._acc("fallback", stats["fallback"][warm].double())
            if cold_stats is not None:
                metrics["deq_nstep_cold"] = self._acc("nstep_cold", cold_stats["nstep"][warm])
            if forces is not None and cold_forces is not None:
                dev = force_deviation(forces, cold_forces, natoms)
                metrics["deq_markov_dev"] = self._acc("markov_dev", dev[warm.to(dev.device)])
        return metrics

    def summary(self, reduce_max=None, reduce_sum=None, device=None) -> dict:
        reduce_max = reduce_max or (lambda v, d: v)
        reduce_sum = reduce_sum or (lambda v, d: v)
        out = {}
        for key in STATISTICS:  # the same keys, in the same order, on every rank
            n = reduce_sum(float(self.counts[key]), device)
            total = reduce_sum(self.sums[key], device)
            largest = reduce_max(self.maxima[key], device)
            if n == 0:
                continue
            out[f"deq_{key}_mean"] = total / n
            out[f"deq_{key}_max"] = largest
            out[f"deq_{key}_count"] = n
            if key == "nstep":
                out["deq_nstep_total"] = total
        return out
