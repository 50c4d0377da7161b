"""How far atoms move between frames where reuse is right, and where it is wrong.

The fixed-point cache reuses a stored fixed point only when no atom moved more than
`task.deq.reuse_max_displacement` (Å) since it was solved (minimum image for periodic
cells; `fairchem_deq.reuse.cache.max_displacement`, the same function).
This measures that quantity on the bundled real data:

- MD steps: consecutive MD17 ethanol frames (0.5 fs), and every 2nd / 4th frame (1 / 2 fs);
- optimiser steps: consecutive frames of the 20 OC20 DFT relaxation trajectories;
- random frames: random pairs of ethanol frames (what a random-split test set looks like).

    .venv/bin/python -m benchmarks.reuse_displacement [--pairs 2000]

Writes benchmarks/results/reuse_displacement.json and .png.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from benchmarks.common import SHARED_DATA, machine, save_figure, write_json
from fairchem_deq.reuse.cache import DEFAULT_MAX_DISPLACEMENT, max_displacement


def _md_steps(positions: np.ndarray, stride: int) -> list[float]:
    pos = torch.as_tensor(positions)
    return [max_displacement(pos[i + stride], pos[i]) for i in range(len(pos) - stride)]


def _optimiser_steps(paths) -> list[float]:
    from ase.io import read

    out = []
    for path in paths:
        frames = read(path, index=":")
        for a, b in itertools.pairwise(frames):
            out.append(
                max_displacement(
                    torch.as_tensor(b.positions),
                    torch.as_tensor(a.positions),
                    torch.as_tensor(np.asarray(a.cell)),
                    torch.as_tensor(a.pbc),
                )
            )
    return out


def _random_pairs(positions: np.ndarray, pairs: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    pos = torch.as_tensor(positions)
    i, j = rng.integers(0, len(pos), size=(2, pairs))
    keep = np.abs(i - j) > 20  # frames more than 10 fs apart: unrelated samples
    return [max_displacement(pos[a], pos[b]) for a, b in zip(i[keep], j[keep])]


def _summary(values: list[float], bound: float) -> dict:
    v = np.asarray(values)
    return {
        "n": len(v),
        "median": float(np.median(v)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "min": float(v.min()),
        "fraction_reused": float(np.mean(v <= bound)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="random ethanol frame pairs")
    parser.add_argument("--bound", type=float, default=DEFAULT_MAX_DISPLACEMENT)
    args = parser.parse_args(argv)

    ethanol = np.load(SHARED_DATA / "md17_ethanol_2000.npz")["R"]
    groups = {
        "MD step 0.5 fs": _md_steps(ethanol, 1),
        "MD step 1 fs": _md_steps(ethanol, 2),
        "MD step 2 fs": _md_steps(ethanol, 4),
        "OC20 DFT optimiser step": _optimiser_steps(sorted((SHARED_DATA / "oc20_relax_trajs").glob("*.traj"))),
        "random ethanol frames": _random_pairs(ethanol, args.pairs),
    }
    result = {
        "bound": args.bound,
        "machine": machine(),
        "groups": {name: _summary(v, args.bound) for name, v in groups.items()},
    }
    write_json("reuse_displacement", result)
    _plot(groups, args.bound)
    for name, s in result["groups"].items():
        print(
            f"{name:26s} n={s['n']:5d} median {s['median']:.4f} p99 {s['p99']:.4f} "
            f"max {s['max']:.4f} Å  reused at {args.bound} Å: {100 * s['fraction_reused']:.1f} %"
        )
    return result


def _plot(groups: dict, bound: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(-4, 1, 60)
    for name, values in groups.items():
        ax.hist(values, bins=bins, histtype="step", weights=np.full(len(values), 1 / len(values)), label=name)
    ax.axvline(bound, color="k", ls="--", label=f"default bound {bound} Å")
    ax.set_xscale("log")
    ax.set_xlabel("largest per-atom displacement between the two frames (Å)")
    ax.set_ylabel("fraction of frame pairs per bin")
    ax.set_title("Where a cached fixed point is reused")
    ax.legend(fontsize=8)
    save_figure(fig, "reuse_displacement")
    plt.close(fig)


if __name__ == "__main__":
    main()
