"""Metric aggregation over DDP ranks that cannot deadlock.

fairchem's `_aggregate_metrics` all-reduces each key of the rank's own metrics dict, in that
dict's order. Ranks whose metric keys differ (a rank with an empty validation loader, or one
that never saw a warm start and so has no `deq_nstep_warm`) then issue different collectives:
one dies with a KeyError, the others wait forever. Here the ranks first agree on the sorted
union of their keys; a key a rank lacks contributes total 0 over 0 items.
"""

from __future__ import annotations

import math

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
