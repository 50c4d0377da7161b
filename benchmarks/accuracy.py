"""How accurate is each reference model on data it never saw, and how did it get there?

Errors: the ethanol reference models (DEQ1, EquiformerV2-4, EquiformerV2-8) on the held-back
MD17 ethanol frames 1800..1999, the OC20 ones on the frames of the held-out OC20 test systems
(free atoms), through DEQCalculator with the EMA weights fairchem's validation reports, every
frame solved from zero at the checkpoint's tolerance (`reuse=False`, as on the models'
cards): force MAE (kcal/mol/Å on ethanol, eV/Å on OC20), energy MAE (kcal/mol, eV), the mean
cosine between predicted and DFT force vectors of each atom, parameter count; beside them the
constant-prediction energy MAE. Learning curves: the force MAE of every training snapshot that
benchmarks.reference_models kept (every 10 CPU-minutes, untracked, on the machine that
trained) against CPU-minutes, on the first `--curve-frames` test frames. Variants (another
training recipe, DeNS): train them with fairchem's CLI and add `--checkpoints NAME=PATH`
(a NAME starting with "oc20" is scored on OC20, any other on ethanol).

    .venv/bin/python -m benchmarks.accuracy [--frames 200] [--oc20-frames N] [--curve-frames 50]
"""

from __future__ import annotations

import numpy as np

from benchmarks import fixtures as fx
from benchmarks import reference_models

MODELS = {"ethanol": ("ethanol_deq1", "ethanol_eqv2_4l", "ethanol_eqv2_8l"), "oc20": ("oc20_deq1", "oc20_eqv2_4l")}
UNITS = {"ethanol": (fx.KCAL_PER_EV, "kcal/mol"), "oc20": (1.0, "eV")}
SNAPSHOTS_NOTE = "(benchmarks.reference_models keeps them untracked in benchmarks/work/reference_snapshots/)"
PAPER_FORCES_MAE = {"EquiformerV2-4": 0.222, "EquiformerV2-8": 0.218, "DEQ1": 0.224, "DEQ2": 0.207}  # kcal/mol/Å


def errors(calc, frames: list, scale: float) -> dict:
    force_err, energy_err, cosine = [], [], []
    for atoms in frames:
        calc.calculate(atoms)
        free = fx.free_atoms(atoms)
        f, ref = calc.results["forces"][free], atoms.info["forces_ev"][free]
        force_err.append(np.abs(f - ref).ravel())
        energy_err.append(abs(calc.results["energy"] - atoms.info["energy_ev"]))
        norms = np.linalg.norm(f, axis=1) * np.linalg.norm(ref, axis=1)
        cosine.append(np.sum(f * ref, axis=1) / np.maximum(norms, 1e-12))
    forces_mae, energy_mae = (scale * float(np.mean(e)) for e in (np.concatenate(force_err), energy_err))
    row = {"forces_mae": forces_mae, "energy_mae": energy_mae, "force_cosine": float(np.mean(np.concatenate(cosine)))}
    return row | {"frames": len(frames)}


def learning_curve(name: str, frames: list, scale: float) -> list[dict]:
    return [
        {"cpu_minutes": minutes, **errors(fx.load_calculator(path, reuse=False), frames, scale)}
        for minutes, path in sorted(reference_models.snapshots(name).items())
    ]


def main(argv=None) -> dict:
    p = fx.parser(__doc__)
    p.add_argument("--frames", type=int, default=None, help="held-back ethanol frames (default all 200)")
    p.add_argument("--oc20-frames", type=int, default=None, help="frames per OC20 test system (default all)")
    p.add_argument("--curve-frames", type=int, default=50, help="test frames per learning-curve snapshot")
    args = p.parse_args(argv)
    models = fx.start(args)
    paths, held_out = fx.oc20_systems(("test",))
    frames = {
        "ethanol": fx.held_out_frames(args.frames),
        "oc20": [atoms for path in paths for atoms in fx.oc20_frames(path, args.oc20_frames)],
    }
    extra = [name for name in models.overrides if not any(name in names for names in MODELS.values())]
    names = {s: [*MODELS[s], *(n for n in extra if n.startswith("oc20") == (s == "oc20"))] for s in MODELS}
    results, curves = {}, {}
    for system, scale_unit in UNITS.items():
        scale, unit = scale_unit
        energies = np.array([a.info["energy_ev"] for a in frames[system]]) * scale
        results[system] = {
            "frames": f"{frames[system][0].info['system']} {frames[system][0].info['frame']}.. ({len(frames[system])})",
            "held_out_systems": held_out if system == "oc20" else True,
            "units": {"forces_mae": f"{unit}/Å", "energy_mae": unit},
            "constant_prediction_energy_mae": float(np.abs(energies - energies.mean()).mean()),
            "models": {},
        }
        for name in names[system]:
            calc = models.calculator(name, reuse=False)
            row = {"model": fx.LABELS.get(name, name), "checkpoint": str(models.path(name)), "weights": calc.weights}
            row.update(parameters=fx.num_params(calc.model), **errors(calc, frames[system], scale))
            results[system]["models"][name] = row
            print(system, name, row, flush=True)
            curve = learning_curve(name, frames[system][: args.curve_frames], scale)
            if curve:
                curves[name] = curve
    payload = {"command": fx.command("accuracy", argv), "machine": fx.machine(), "systems": results}
    payload |= {"paper_forces_mae_kcal_mol_A": PAPER_FORCES_MAE, "learning_curves": curves}
    payload["learning_curves_note"] = None if curves else "no training snapshots on this machine " + SNAPSHOTS_NOTE
    fx.write_json("accuracy", payload, args.out)
    plot(results, curves, args.out)
    return payload


def plot(results: dict, curves: dict, out) -> None:
    plt = fx.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = results["ethanol"]["models"]
    ax1.bar([r["model"] for r in rows.values()], [r["forces_mae"] for r in rows.values()])
    ax1.set_ylabel("force MAE (kcal/mol/Å)")
    ax1.set_title("MD17 ethanol, held-back frames 1800..1999")
    for name, points in curves.items():
        unit = "kcal/mol/Å" if not name.startswith("oc20") else "eV/Å"
        ax2.plot([q["cpu_minutes"] for q in points], [q["forces_mae"] for q in points], "o-", label=f"{name} ({unit})")
    if curves:
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no training snapshots on this machine", ha="center", transform=ax2.transAxes)
    ax2.set_xlabel("training CPU-minutes (1 thread)")
    ax2.set_ylabel("test force MAE")
    fx.save_figure(fig, "accuracy", out)


if __name__ == "__main__":
    main()
