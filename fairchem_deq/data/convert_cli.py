"""Convert MD17/MD22 npz, extxyz or ASE .traj files into fairchem LMDBs with train/val/test splits.

Writes <out>/<split>/data.lmdb and <out>/<split>/metadata.npz (plus <out>/conversion.json);
each <out>/<split> directory can be used as a fairchem dataset `src` (format: lmdb). Exit codes:
0 success, 2 bad input or impossible split (nothing written), 130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from fairchem_deq.data.convert import SPLIT_BY, SplitError, convert
from fairchem_deq.data.readers import MAX_NUM_ELEMENTS, MOLECULE_CELL, DatasetFormatError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="trajectory files, or directories of them (.npz, .extxyz/.xyz, .traj); one system id "
        "(sid) per file: N for random<N>.traj, else the file's position in the list",
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "npz", "extxyz", "traj"],
        help="input format (default: from the file suffix)",
    )
    parser.add_argument(
        "--units", default="ev", type=str.lower, choices=["ev", "kcal/mol"],
        help="energy unit stored in the LMDB (forces: unit/Å). Default ev: sGDML npz files "
        "(kcal/mol) are converted with 1 kcal/mol = 0.0433641 eV; traj/extxyz are read as eV",
    )
    parser.add_argument(
        "--split", default="paper", choices=["paper", "none"],
        help="paper: n-train/n-val frames drawn at random, the rest is test in time order; "
        "none: everything in one split named 'all' (default: paper)",
    )
    parser.add_argument("--n-train", type=int, default=950, help="training frames (or systems) (default: 950)")
    parser.add_argument("--n-val", type=int, default=50, help="validation frames (or systems) (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")
    parser.add_argument(
        "--split-by", default="frame", choices=list(SPLIT_BY),
        help="frame: draw frames from all inputs pooled; system: draw whole input files "
        "(n-train/n-val then count files) (default: frame)",
    )
    parser.add_argument(
        "--oc20-tags", action="store_true",
        help="rebuild OC20 tags from FixAtoms: fixed 0, free C/H/O/N 2 (adsorbate), other free 1. "
        "Energies stay total energies (not OC20 S2EF referenced energies)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--molecule-cell", type=float, default=MOLECULE_CELL,
        help=f"edge (Å) of the cubic box given to molecules without a cell (pbc stays False) "
        f"(default: {MOLECULE_CELL:g})",
    )
    parser.add_argument(
        "--max-num-elements", type=int, default=MAX_NUM_ELEMENTS,
        help=f"reject atomic numbers >= this (EquiformerV2's max_num_elements) (default: {MAX_NUM_ELEMENTS})",
    )


def run(args: argparse.Namespace) -> int:
    try:
        counts = convert(
            args.inputs,
            args.out,
            fmt=args.format,
            units=args.units,
            split=args.split,
            n_train=args.n_train,
            n_val=args.n_val,
            seed=args.seed,
            split_by=args.split_by,
            oc20_tags=args.oc20_tags,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            molecule_cell=args.molecule_cell,
            max_num_elements=args.max_num_elements,
        )
    except (DatasetFormatError, SplitError, FileExistsError) as exc:
        print(f"fairchem-deq convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fairchem-deq convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {args.out}")
    for name, count in counts.items():
        print(f"  {name}: {count} frames -> {args.out}/{name}/data.lmdb")
    return 0
