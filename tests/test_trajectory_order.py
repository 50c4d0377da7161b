"""Fixed-point cache and trajectory-ordered batching (units; the CLI paths are in test_trainer_reuse)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms, to_batch


def test_trajectory_batches_step_systems_in_lockstep_and_split_across_ranks():
    from fairchem_deq.trainers import TrajectoryBatchSampler

    # two systems interleaved and shuffled in the dataset
    sids = [7, 3, 7, 3, 7, 3, 3]
    fids = [2, 0, 0, 2, 1, 1, 3]
    batches = list(TrajectoryBatchSampler(sids, fids, batch_size=2))
    frames = [[(sids[i], fids[i]) for i in b] for b in batches]
    assert frames == [[(3, 0), (7, 0)], [(3, 1), (7, 1)], [(3, 2), (7, 2)], [(3, 3)]]
    rank0 = [i for b in TrajectoryBatchSampler(sids, fids, 2, rank=0, world_size=2) for i in b]
    rank1 = [i for b in TrajectoryBatchSampler(sids, fids, 2, rank=1, world_size=2) for i in b]
    assert {sids[i] for i in rank0} == {3} and {sids[i] for i in rank1} == {7}


def test_sid_fid_come_from_metadata_through_fairchems_shuffled_subset(ethanol_trajectory_lmdb):
    from fairchem.core.datasets.base_dataset import create_dataset

    from fairchem_deq.trainers.trajectory_sampler import dataset_sids_fids

    dataset = create_dataset({"format": "lmdb", "src": str(ethanol_trajectory_lmdb)}, "test")
    assert list(dataset.indices) != sorted(dataset.indices)  # fairchem shuffles test subsets
    sids, fids = dataset_sids_fids(dataset)
    for pos in range(len(dataset)):  # metadata mapped through Subset.indices == the items
        assert (sids[pos], fids[pos]) == (int(dataset[pos].sid), int(dataset[pos].fid))


def test_fixed_point_cache_is_bounded_checks_species_and_accepts_any_sid():
    from fairchem_deq.trainers import FixedPointCache

    cache = FixedPointCache(max_systems=2)
    z = torch.ones(9, 4, 2)
    numbers = torch.arange(9)
    cache.put("a", 0, z, numbers)
    cache.put("b", 0, 2 * z, numbers)
    assert cache.get("a", numbers) is not None  # "a" is now the most recent
    cache.put("c", 0, 3 * z, numbers)  # evicts "b", the least recently used
    assert cache.get("b", numbers) is None and len(cache) == 2
    assert cache.get("a", torch.flip(numbers, [0])) is None  # other species order: no reuse
    with pytest.raises(ValueError):
        FixedPointCache(0)


def test_cache_warm_start_fills_misses_with_cold_rows():
    from fairchem_deq.trainers import FixedPointCache

    batch = to_batch(ethanol_atoms([0, 1]), sids=[5, 6])
    cache = FixedPointCache()
    assert cache.warm_start(batch) is None
    cache.put(6, 0, torch.full((9, 4, 2), 2.0), batch.atomic_numbers[9:].long())
    warm = cache.warm_start(batch)
    assert warm.shape == (18, 4, 2)
    assert np.all(warm[:9].numpy() == 0) and np.all(warm[9:].numpy() == 2)
