"""The trainer's reductions over DDP ranks, in one place, each safe against a deadlock.

Metric aggregation (`aggregate_over_ranks`):

fairchem's `_aggregate_metrics` all-reduces each key of the rank's own metrics dict, in that
dict's order. Ranks whose metric keys differ (a rank with an empty validation loader, or one
that never saw a warm start and so has no `deq_nstep_warm`) then issue different collectives:
one dies with a KeyError, the others wait forever. Here the ranks first agree on the sorted
union of their keys; a key a rank lacks contributes total 0 over 0 items.

Scalar reductions of evaluation summaries (`all_reduce_max`, `all_reduce_sum`) and the
gather of trajectory ids (`all_gather_object`) are no-ops without DDP. (The solver's one
collective, a training divergence on any rank, lives with the solver:
`fairchem_deq.solve.solver`.)
"""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.distributed as dist
from fairchem.core.common import distutils


def metric_keys_over_ranks(metrics: dict) -> list[str]:
    """Sorted union of the metric keys of every rank (this rank's alone without DDP)."""
    keys = set(metrics)
    if distutils.get_world_size() > 1 and dist.is_initialized():
        gathered: list = [None] * distutils.get_world_size()
        dist.all_gather_object(gathered, sorted(keys))
        keys = set().union(*map(set, gathered))
    return sorted(keys)


def aggregate_over_ranks(metrics: dict, device) -> dict:
    """{key: {"total", "numel", "metric"}} summed over ranks; metric NaN where numel is 0."""
    aggregated = {}
    for key in metric_keys_over_ranks(metrics):
        entry = metrics.get(key, {"total": 0.0, "numel": 0})
        total = distutils.all_reduce(entry["total"], average=False, device=device)
        numel = distutils.all_reduce(entry["numel"], average=False, device=device)
        aggregated[key] = {"total": total, "numel": numel, "metric": total / numel if numel else math.nan}
    return aggregated


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] without DDP."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_max(value: float, device) -> float:
    return _all_reduce(value, device, dist.ReduceOp.MAX)


def all_reduce_sum(value: float, device) -> float:
    return _all_reduce(value, device, dist.ReduceOp.SUM)


# The latest reductions' Work objects, kept referenced. torch 2.13 frees a tensor's Python object,
# under the GIL, when the tensor's last C++ reference goes. If gloo's (CPU) worker thread held the
# last reference to a finished reduction, it could still be waiting for the GIL to free it when the
# process group is destroyed at exit, and that destructor joins the thread while holding the GIL:
# about half of the 2-rank CPU predict runs hung after writing their results. These reductions
# are the last collectives of every evaluation pass (`_summarise`).
_RECENT_WORKS: deque = deque(maxlen=64)


def _all_reduce(value: float, device, op) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    work = dist.all_reduce(t, op=op, async_op=True)
    work.wait()
    _RECENT_WORKS.append(work)
    return float(t.item())
