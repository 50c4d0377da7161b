"""Convert MD17/MD22 npz, extxyz or ASE .traj files into fairchem LMDBs with train/val/test splits.

Writes <out>/<split>/data.lmdb and <out>/<split>/metadata.npz (plus <out>/conversion.json);
each <out>/<split> directory can be used as a fairchem dataset `src` (format: lmdb). Exit codes:
0 success, 2 bad input or impossible split (nothing written), 130 interrupted, 143 terminated
(SIGTERM) (nothing written).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from fairchem_deq.data.convert import SPLIT_BY, SPLIT_MODES, UnseenElementsWarning, convert
from fairchem_deq.data.readers import MAX_NUM_ELEMENTS, MOLECULE_CELL, READERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="trajectory files, or directories of them (.npz, .extxyz/.xyz, .traj); one system id "
        "(sid) per file: N for random<N>.traj, else the file's position in the list",
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *READERS],
        help="input format (default: from the file suffix)",
    )
    parser.add_argument(
        "--units",
        default="ev",
        type=str.lower,
        choices=["ev", "kcal/mol"],
        help="energy unit stored in the LMDB (forces: unit/Å). Default ev: sGDML npz files "
        "(kcal/mol) are converted with 1 kcal/mol = 0.0433641 eV; traj/extxyz are read as eV",
    )
    parser.add_argument(
        "--split",
        default="paper",
        choices=list(SPLIT_MODES),
        help="paper: n-train/n-val frames drawn at random, the rest is test in time order; "
        "none: everything in one split named 'all'; test: everything in 'test', for data "
        "that is only evaluated (default: paper)",
    )
    parser.add_argument(
        "--test-only",
        dest="split",
        action="store_const",
        const="test",
        help="the same as --split test: all frames go to the test split, in time order",
    )
    parser.add_argument("--n-train", type=int, default=950, help="training frames (or systems) (default: 950)")
    parser.add_argument("--n-val", type=int, default=50, help="validation frames (or systems) (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")
    parser.add_argument(
        "--split-by",
        default="frame",
        choices=list(SPLIT_BY),
        help="frame: draw frames from all inputs pooled; system: draw whole input files "
        "(n-train/n-val then count files) (default: frame)",
    )
    parser.add_argument(
        "--oc20-tags",
        action="store_true",
        help="rebuild OC20 tags from FixAtoms: fixed 0, free C/H/O/N 2 (adsorbate), other free 1. "
        "Energies stay total energies (not OC20 S2EF referenced energies)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--molecule-cell",
        type=float,
        default=MOLECULE_CELL,
        help=f"edge (Å) of the cubic box given to molecules without a cell (pbc stays False) "
        f"(default: {MOLECULE_CELL:g})",
    )
    parser.add_argument(
        "--max-num-elements",
        type=int,
        default=MAX_NUM_ELEMENTS,
        help=f"reject atomic numbers >= this (EquiformerV2's max_num_elements) (default: {MAX_NUM_ELEMENTS})",
    )


def run(args: argparse.Namespace) -> int:
    """Raises on bad input; `fairchem-deq` (fairchem_deq.command) turns that into rc 2."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
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
    for w in caught:
        if issubclass(w.category, UnseenElementsWarning):
            print(f"fairchem-deq convert: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {args.out}")
    graphs = _graph_statistics(args.out)
    for name, count in counts.items():
        print(f"  {name}: {count} frames -> {args.out}/{name}/data.lmdb")
        if name in graphs:
            g = graphs[name]
            print(
                f"    mean atoms per structure {g['avg_num_nodes']:.4g}, mean neighbours per atom "
                f"{g['avg_degree']:.4g} (cutoff {g['cutoff']:g} Å, at most {g['max_neighbors']})"
            )
    return 0


def _graph_statistics(out) -> dict:
    import json
    from pathlib import Path

    info = Path(out) / "conversion.json"
    return json.loads(info.read_text()).get("graph_statistics", {}) if info.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq convert ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("convert", argv)


if __name__ == "__main__":
    sys.exit(main())
