"""Do MD runs stay physical, do they reproduce the DFT distance histogram, what does a step
cost in solver evaluations, and how far does the NVE energy drift?

Stability as Fu et al. 2023 measure it ("Forces are not enough"): a run has collapsed at the
first step where any covalent bond deviates by more than 0.5 Å from its mean length over the
reference DFT data (`BondReference` of all 2,000 MD17 ethanol frames; `run_md(bond_reference=,
max_bond_deviation=0.5)` stops there, as at non-finite or huge forces). Protocol: the
reference DEQ1 (warm starts, DEQCalculator's default) and EquiformerV2-4, Langevin NVT
(friction 0.01/fs) at 300 K and 500 K, 0.5 fs, up to `--steps` (10,000) steps, `--seeds` (5)
runs each: run k starts from held-back frame 1800 + 40 k (mod 200) with Maxwell-Boltzmann
velocities of seed k. Reported per model and temperature: steps survived (median, min, max;
a run that never collapsed counts all its steps), the h(r) error of each run's trajectory
against the DFT frames (`distance_histogram_error`: mean over 0.1 Å bins to 10 Å of |h - h_ref|,
in %), solver evaluations per step; a survival plot. NVE: velocity Verlet from held-back frame
1800 at 300 K for `--nve-steps`: the energy drift (slope of E_tot, meV/atom/ps) and the largest
|E_tot - E_tot(0)| per model. No shipped model has energy-gradient forces, so these are the
drifts of direct forces. Runs go `--workers` at a time, one torch thread each.

    .venv/bin/python -m benchmarks.md [--steps 10000] [--seeds 5] [--temperatures 300 500] [--workers 2]
"""

from __future__ import annotations

import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks import fixtures as fx

TIMESTEP_FS = 0.5


def run(job: tuple) -> dict:
    """One MD run: (model name, checkpoint, ensemble, temperature, seed, steps, start frame)."""
    from ase.io import read

    from fairchem_deq import run_md
    from fairchem_deq.simulate.stability import BondReference, distance_histogram_error

    name, path, ensemble, temperature, seed, steps, frame = job
    torch.set_num_threads(1)
    dft = fx.ethanol_frames()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_md(
            dft[frame],
            fx.load_calculator(Path(path)),
            ensemble=ensemble,
            temperature_K=temperature,
            timestep_fs=TIMESTEP_FS,
            steps=steps,
            seed=seed,
            bond_reference=BondReference.from_frames(dft, source="MD17 ethanol (2,000 DFT frames)"),
            max_bond_deviation=0.5,
            trajectory=Path(tmp) / "md.traj",
            progress=False,
        )
        trajectory = read(report.trajectory, ":")
    etot = np.array([r["etot_eV"] for r in report.rows])
    survived = report.steps_run if report.unphysical_step is None else report.unphysical_step
    row = {"model": fx.LABELS.get(name, name), "name": name, "ensemble": ensemble, "temperature_K": temperature}
    row |= {"seed": seed, "start_frame": frame, "steps_requested": steps, "steps_survived": survived}
    row |= {"collapsed": report.unphysical_step is not None, "reason": report.unphysical_reason}
    row |= {"evaluations_per_step": report.mean_solver_iterations, "max_bond_deviation_A": report.max_bond_deviation_A}
    row |= {"h_r_error_percent": distance_histogram_error(trajectory, dft)}
    row |= {"drift_meV_per_atom_per_ps": report.energy_drift_meV_per_atom_per_ps}
    row["max_abs_etot_change_meV_per_atom"] = float(np.abs(etot - etot[0]).max() / report.natoms * 1e3)
    return row


def nvt_groups(runs: list[dict]) -> dict[str, list[dict]]:
    """ "<model> <T> K" -> its Langevin runs."""
    groups = {}
    for r in runs:
        if r["ensemble"] == "nvt":
            groups.setdefault(f"{r['model']} {r['temperature_K']:g} K", []).append(r)
    return groups


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key, rows in nvt_groups(runs).items():
        steps = [r["steps_survived"] for r in rows]
        evaluations = [r["evaluations_per_step"] for r in rows if r["evaluations_per_step"] is not None]
        out[key] = {"runs": len(rows), "collapsed": sum(r["collapsed"] for r in rows)}
        out[key] |= {"steps_survived_median": statistics.median(steps), "steps_survived_min": min(steps)}
        out[key] |= {"steps_survived_max": max(steps)}
        out[key]["h_r_error_percent_median"] = statistics.median(r["h_r_error_percent"] for r in rows)
        out[key]["evaluations_per_step_mean"] = statistics.mean(evaluations) if evaluations else None
    return out


def plot(runs: list[dict], out) -> None:
    plt = fx.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, rows in nvt_groups(runs).items():
        rows = sorted(rows, key=lambda r: r["steps_survived"])
        t = np.array([0] + [r["steps_survived"] for r in rows]) * TIMESTEP_FS / 1000
        alive = 1 - np.cumsum([0] + [r["collapsed"] for r in rows]) / len(rows)
        ax.step(t, alive, where="post", label=key)
    ax.set(xlabel="time (ps)", ylabel="fraction of runs not collapsed", ylim=(-0.05, 1.05))
    ax.set_title("MD17 ethanol, Langevin 0.5 fs; collapse: a bond > 0.5 Å from its DFT mean", fontsize=9)
    ax.legend(fontsize=8)
    fx.save_figure(fig, "md", out)


def main(argv=None) -> dict:
    p = fx.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["ethanol_deq1", "ethanol_eqv2_4l"])
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 500.0])
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--nve-steps", type=int, default=2000, help="0: no NVE runs")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (1: in this process)")
    args = p.parse_args(argv)
    models = fx.start(args)
    paths = {name: str(models.path(name)) for name in args.models}
    jobs = [
        (name, paths[name], "nvt", temperature, seed, args.steps, fx.N_TRAINVAL_FRAMES + (40 * seed) % 200)
        for name in args.models
        for temperature in args.temperatures
        for seed in range(args.seeds)
    ]
    if args.nve_steps:
        jobs += [(name, paths[name], "nve", 300.0, 0, args.nve_steps, fx.N_TRAINVAL_FRAMES) for name in args.models]
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            runs = list(pool.map(run, jobs))
    else:
        runs = [run(job) for job in jobs]
    summary = summarise(runs)
    for key, s in summary.items():
        print(key, s, flush=True)
    payload = {"command": fx.command("md", argv), "machine": fx.machine(), "checkpoints": paths}
    payload["protocol"] = __doc__.split("Protocol: ")[1].split(" Reported")[0].replace("\n", " ")
    payload["summary"], payload["nve"] = summary, {r["model"]: r for r in runs if r["ensemble"] == "nve"}
    payload["runs"] = [r for r in runs if r["ensemble"] == "nvt"]
    fx.write_json("md", payload, args.out)
    plot(runs, args.out)
    return payload


if __name__ == "__main__":
    main()
