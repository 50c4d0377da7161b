"""Data conversion: MD17/MD22 npz, extxyz and ASE .traj -> split fairchem LMDBs (see convert)."""

from fairchem_deq.data.atoms_graphs import atoms_to_data
from fairchem_deq.data.convert import (
    PAPER_SPLITS,
    SplitError,
    Trajectory,
    UnseenElementsWarning,
    assign_system_ids,
    convert,
    expand_inputs,
    paper_split,
    plan_splits,
)
from fairchem_deq.data.lmdb_writer import write_lmdb, write_metadata
from fairchem_deq.data.oc20_tags import fixed_mask, oc20_tags
from fairchem_deq.data.readers import (
    ENERGY_UNITS_IN_EV,
    MAX_NUM_ELEMENTS,
    MOLECULE_CELL,
    DatasetFormatError,
    detect_format,
    read_extxyz,
    read_frames,
    read_npz,
    read_traj,
    system_id_from_name,
)
from fairchem_deq.outputs import atomic_directory  # the writers' all-or-nothing output folder

__all__ = [
    "ENERGY_UNITS_IN_EV",
    "MAX_NUM_ELEMENTS",
    "MOLECULE_CELL",
    "PAPER_SPLITS",
    "DatasetFormatError",
    "SplitError",
    "Trajectory",
    "UnseenElementsWarning",
    "assign_system_ids",
    "atomic_directory",
    "atoms_to_data",
    "convert",
    "detect_format",
    "expand_inputs",
    "fixed_mask",
    "oc20_tags",
    "paper_split",
    "plan_splits",
    "read_extxyz",
    "read_frames",
    "read_npz",
    "read_traj",
    "system_id_from_name",
    "write_lmdb",
    "write_metadata",
]
