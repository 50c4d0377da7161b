"""Fixed-point cache and trajectory-ordered batching (units; the CLI paths are in test_trainer_reuse)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms, oc20_atoms, to_batch

from fairchem_deq.solve import DEQSolution


def test_trajectory_batches_step_systems_in_lockstep_and_split_across_ranks():
    from fairchem_deq.trainers import TrajectoryBatchSampler

    # two systems interleaved and shuffled in the dataset
    sids = [7, 3, 7, 3, 7, 3, 3]
    fids = [2, 0, 0, 2, 1, 1, 3]
    batches = list(TrajectoryBatchSampler(sids, fids, batch_size=2))
    frames = [[(sids[i], fids[i]) for i in b] for b in batches]
    assert frames == [[(3, 0), (7, 0)], [(3, 1), (7, 1)], [(3, 2), (7, 2)], [(3, 3)]]
    # 2 ranks x batch 2: four segments, each rank steps two of them in lockstep
    per_rank = [list(TrajectoryBatchSampler(sids, fids, 2, rank=r, world_size=2)) for r in range(2)]
    assert all(len(b) == 2 for batches in per_rank for b in batches[:1])
    assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(7))


def test_one_long_trajectory_is_split_so_every_rank_and_batch_slot_gets_work():
    """An MD17/MD22 dataset is one sid: dealt whole, rank 1 got nothing (and fairchem's
    validation died there) and rank 0 ran at batch size 1."""
    from fairchem_deq.trainers import TrajectoryBatchSampler

    fids = list(range(40))[::-1]  # one system, frames stored out of order
    sids = [0] * 40
    seen, keys = [], set()
    for rank in range(2):
        sampler = TrajectoryBatchSampler(sids, fids, batch_size=4, rank=rank, world_size=2)
        assert len(sampler) == 5 and all(len(b) == 4 for b in sampler)  # 8 segments of 5 frames
        slots = list(zip(*sampler))  # frames of each batch slot, in order
        for slot in slots:
            frames = [fids[i] for i in slot]
            assert frames == list(range(frames[0], frames[0] + 5))  # contiguous, in time order
            key = {sampler.segment_key(0, f) for f in frames}
            assert len(key) == 1  # one cache key per segment
            keys |= key
        seen += [i for b in sampler for i in b]
    assert sorted(seen) == list(range(40)) and len(keys) == 8


def test_every_rank_gets_the_same_number_of_batches_the_extra_ones_marked_as_padding():
    """25 frames, 2 ranks x batch 4: 7 segments, rank 0 ran 4 batches and rank 1 3, and
    fairchem's validation (an all-reduce in every batch's loss) hung on rank 0."""
    from fairchem_deq.trainers.trajectory_sampler import TrajectoryBatchSampler

    sids, fids = [0] * 25, list(range(25))
    samplers = [TrajectoryBatchSampler(sids, fids, batch_size=4, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in samplers] == [4, 4]
    assert [s.num_real for s in samplers] == [4, 3]
    real = [i for s in samplers for b in s.batches[: s.num_real] for i in b]
    assert sorted(real) == list(range(25))  # every frame once, none of them padding
    padding = [b for s in samplers for b in s.batches[s.num_real :]]
    assert len(padding) == 1 and all(i >= 25 for i in padding[0])  # shifted indices: padding copies
    # a rank with no segment at all (2 frames, 4 ranks) runs rank 0's batch as padding
    empty = TrajectoryBatchSampler([0, 0], [0, 1], batch_size=1, rank=3, world_size=4)
    assert empty.num_real == 0 and empty.batches == [[2]]

    from fairchem.core.datasets import data_list_collater
    from torch_geometric.data import Data

    from fairchem_deq.trainers.trajectory_sampler import PaddedDataset, is_padding

    dataset = PaddedDataset([Data(natoms=torch.tensor([1]), sid=0, fid=f) for f in fids])
    assert "deq_padding" not in dataset[3] and dataset[25 + 3].deq_padding and dataset[28].fid == 3
    assert "deq_padding" not in dataset.dataset[3]  # the dataset's own item is left unflagged
    assert not is_padding(data_list_collater([dataset[i] for i in samplers[1].batches[0]]))
    assert is_padding(data_list_collater([dataset[i] for i in padding[0]]))


def test_sid_fid_come_from_metadata_through_fairchems_shuffled_subset(ethanol_trajectory_lmdb):
    from fairchem.core.datasets.base_dataset import create_dataset

    from fairchem_deq.trainers.trajectory_sampler import dataset_sids_fids

    dataset = create_dataset({"format": "lmdb", "src": str(ethanol_trajectory_lmdb)}, "test")
    assert list(dataset.indices) != sorted(dataset.indices)  # fairchem shuffles test subsets
    sids, fids = dataset_sids_fids(dataset)
    for pos in range(len(dataset)):  # metadata mapped through Subset.indices == the items
        assert (sids[pos], fids[pos]) == (int(dataset[pos].sid), int(dataset[pos].fid))


def test_sid_fid_missing_from_metadata_are_read_from_the_lmdb_once(tmp_path, ethanol_trajectory_lmdb, monkeypatch):
    """fairchem's make_lmdb_sizes writes natoms only: every validation read every item in
    full on every rank (1 ms an OC20 item, 17 minutes for val_id before each validation)."""
    from fairchem.core.datasets.base_dataset import create_dataset
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    from fairchem_deq.trainers.trajectory_sampler import dataset_sids_fids

    reads = []
    getitem = LmdbDataset.__getitem__
    monkeypatch.setattr(LmdbDataset, "__getitem__", lambda self, i: reads.append(i) or getitem(self, i))
    for name in ("folder", "file"):  # src: a folder of LMDB files (fairchem's OC20 layout), one file
        folder = tmp_path / name  # a copy each: fairchem opens an LMDB file once per process
        shutil.copytree(ethanol_trajectory_lmdb, folder)
        np.savez(folder / "metadata.npz", natoms=np.load(folder / "metadata.npz")["natoms"])
        src = folder / "data.lmdb" if name == "file" else folder
        dataset = create_dataset({"format": "lmdb", "src": str(src)}, "test")  # a shuffled Subset
        reads.clear()
        sids, fids = dataset_sids_fids(dataset)
        assert len(reads) == 1  # one whole item, to check that the stored values are the items
        items = [getitem(dataset.dataset, i) for i in dataset.indices]
        assert list(zip(sids, fids.tolist())) == [(int(item.sid), int(item.fid)) for item in items]
        assert dataset_sids_fids(dataset)[0] is sids and len(reads) == 1  # a second validation reads nothing


def test_fixed_point_cache_is_bounded_checks_species_and_accepts_any_sid():
    from fairchem_deq.reuse import FixedPointCache

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


def test_cache_holds_copies_bounded_by_bytes_and_drops_finished_systems():
    """Entries were views pinning their whole batch tensor, bounded only by count."""
    from fairchem_deq.reuse import FixedPointCache

    batch_state = torch.zeros(100, 16, 8)  # a batch of 10 systems x 10 atoms: 51,200 bytes
    per_system = 10 * 16 * 8 * 4
    numbers = torch.arange(10)
    entry = per_system + numbers.untyped_storage().nbytes()
    cache = FixedPointCache(max_mb=4.5 * entry / 2**20)
    for sid in range(10):
        cache.put(sid, 0, batch_state[10 * sid : 10 * sid + 10], numbers)
    assert len(cache) == 4 and list(cache._entries) == [6, 7, 8, 9]  # least recently used went
    held = sum(e.history.latest.untyped_storage().nbytes() for e in cache._entries.values())
    assert held == 4 * per_system  # copies, not views of the 51,200-byte batch tensor
    assert cache.nbytes == 4 * entry
    cache.keep_only([8, 9])
    assert list(cache._entries) == [8, 9]
    assert cache.nbytes == 2 * entry


def test_cache_reuses_only_for_a_nearby_structure_under_the_minimum_image():
    from fairchem_deq.reuse import FixedPointCache

    slab = oc20_atoms()
    batch = to_batch([slab], sids=[3])
    cache = FixedPointCache(max_displacement=0.25)
    z = torch.ones(len(slab), 4, 2)
    cache.store(batch, DEQSolution(z, {}))
    moved = slab.copy()
    moved.positions[0] += moved.cell[0]  # wrapped across the cell: the same structure
    moved.positions[1] += [0.1, 0.1, 0.0]
    assert cache.warm_start(to_batch([moved], sids=[3])).fixed_point is not None and cache.refused == 0
    far = slab.copy()
    far.positions[5] += [0.0, 0.0, 0.3]
    assert cache.warm_start(to_batch([far], sids=[3])).fixed_point is None
    assert cache.refused == 1 and 3 not in cache  # refused: the history restarts


def test_cache_warm_start_fills_misses_with_cold_rows():
    from fairchem_deq.reuse import FixedPointCache

    batch = to_batch(ethanol_atoms([0, 1]), sids=[5, 6])
    cache = FixedPointCache()
    assert cache.warm_start(batch).fixed_point is None
    cache.put(6, 0, torch.full((9, 4, 2), 2.0), batch.atomic_numbers[9:].long())
    warm = cache.warm_start(batch).fixed_point
    assert warm.shape == (18, 4, 2)
    assert np.all(warm[:9].numpy() == 0) and np.all(warm[9:].numpy() == 2)
