"""Accuracy at equal training budget on MD17 ethanol: DEQ1, DEQ2, EquiformerV2 4 and 8 layers.

Why: the paper claims DEQs match or beat deeper explicit models; with equal training compute on
this machine (benchmarks.train_models) that is tested on frames no model saw in training:
the held-back consecutive frames 1800.. of the 2,000-frame trajectory. Batch 1; DEQs solve
cold (no reuse) at their checkpoint's evaluation tolerance. Force MAE per component
(kcal/mol/Å) and energy MAE (kcal/mol), converted from the models' eV.

    .venv/bin/python -m benchmarks.accuracy [--frames 100]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import KCAL_PER_EV, MODELS, Trained, held_out_frames


def evaluate(model: Trained, frames) -> dict:
    e_err, f_err = [], []
    for atoms in frames:
        energy, forces, _, _ = model.predict(atoms)
        e_err.append(abs(energy - atoms.info["energy_ev"]))
        f_err.append(np.abs(forces - atoms.info["forces_ev"]).ravel())
    return {
        "energy_mae_kcal_mol": KCAL_PER_EV * float(np.mean(e_err)),
        "forces_mae_kcal_mol_A": KCAL_PER_EV * float(np.mean(np.concatenate(f_err))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args(argv)
    frames = held_out_frames(args.frames)
    results = {}
    for name in MODELS:
        model = Trained(name)
        results[model.label] = r = evaluate(model, frames)
        print(model.label, r, flush=True)
    write_json(
        "accuracy",
        {
            "command": f"python -m benchmarks.accuracy --frames {args.frames}",
            "machine": machine(),
            "test_frames": f"{frames[0].info['frame']}..{frames[-1].info['frame']} (held back, consecutive)",
            "results": results,
            "paper_forces_mae_kcal_mol_A": {
                "EquiformerV2-4": 0.222,
                "EquiformerV2-8": 0.218,
                "DEQ1": 0.224,
                "DEQ2": 0.207,
            },
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(list(results), [r["forces_mae_kcal_mol_A"] for r in results.values()])
    ax1.set_ylabel("force MAE (kcal/mol/Å)")
    ax2.bar(list(results), [r["energy_mae_kcal_mol"] for r in results.values()])
    ax2.set_ylabel("energy MAE (kcal/mol)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("MD17 ethanol, equal training budget, held-back frames")
    save_figure(fig, "accuracy")


if __name__ == "__main__":
    main()
