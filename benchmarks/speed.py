"""What does an MD step cost: every DEQ setting of interest against EquiformerV2-1/4/8, all
through the same DEQCalculator path; and one solver evaluation against one explicit block?

Per system (the held-back MD17 ethanol frames 1800.., 0.5 fs apart, and consecutive
optimiser steps of a 100+ atom OC20 slab), every calculator takes one step per frame,
interleaved frame by frame in this one process (`fixtures.step_along`), one torch thread:
each DEQ setting (`fixtures.Setting`, its own warm chain), EquiformerV2-4 (and on ethanol -8)
reference models, the depths without one derived from EquiformerV2-4 (`fixtures.DERIVED`:
an explicit model's cost does not depend on its weights), and two DEQ1 calculators solving
from zero with exactly 4 and 12 evaluations (an unreachable tolerance). Reported: median
and mean ms per step, ratios of medians to EquiformerV2-4 and -8, evaluations per step, the
load average before and after (ratios taken under load drift); cost per evaluation =
(T(12 evaluations) - T(4)) / 8 against cost per block = (T(EquiformerV2-8) - T(-1)) / 7.
The plot: force error against the exact fixed point (from benchmarks.solving's JSON in the
same --out, same setting labels) against cost per MD step, EquiformerV2-1/4/8 as points on the
floor (an explicit model has no fixed point to miss).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed [--frames 40] [--oc20-frames 20] [--settings ...]

With --replicas (speed_replicas.json/.png): atom-steps per second of ethanol replicas (frame
1800) and --slabs OC20 slabs at each of --thread-counts, DEQ1 (warm, --replica-setting)
against EquiformerV2-4 and -8 through one torch-sim path (`DEQTorchSimModel`, Langevin 300 K,
0.5 fs) and against the same DEQ1 stepping one structure at a time through ASE (Langevin, a
DEQCalculator per replica); interleaved step by step; evaluations per replica-step.

    .venv/bin/python -m benchmarks.speed --replicas 1 8 32 128 [--slabs 4 16] [--steps 20] [--thread-counts 1 2]
"""

from __future__ import annotations

import copy
import logging
import os
import statistics

from benchmarks import fixtures as fx

SETTINGS = (  # labels as benchmarks.solving writes them
    "rel/0.01/cold/anderson",
    "rel/0.01/last/anderson",
    "rel/0.01/aspc/anderson",
    "rel/0.01/last/broyden_reuse",
    "rel/0.01/aspc/broyden_reuse",
    "rel/0.003/last/anderson",
    "rel/0.003/aspc/broyden_reuse",
    "error/0.01/last/anderson",
)
LO, HI = 4, 12  # evaluations of the capped DEQ1 solves


def calculators(system: str, settings: list[str], models) -> dict:
    deq, explicit = fx.SYSTEMS[system]
    calcs = {s.label: s.calculator(models, deq) for s in map(fx.Setting.parse, settings)}
    for n in (LO, HI):
        calcs[f"DEQ1 {n} evaluations"] = models.calculator(deq, reuse=False, tol=1e-12, max_iter=n)
    calcs.update({fx.LABELS[name]: models.calculator(name) for name in explicit})
    return calcs


def time_system(system: str, n: int, settings: list[str], models) -> dict:
    frames = fx.system_frames(system, n + 1)
    calcs = calculators(system, settings, models)
    evaluations = {fx.Setting.parse(spec).label: [] for spec in settings}

    def record(label, calc, _atoms):
        if label in evaluations:
            evaluations[label].append(calc.last_solver_stats["nstep"])

    load_before = os.getloadavg()
    with fx.quiet():
        times = fx.step_along(calcs, frames, record)
    med = {k: statistics.median(v) for k, v in times.items()}
    evaluation = (med[f"DEQ1 {HI} evaluations"] - med[f"DEQ1 {LO} evaluations"]) / (HI - LO)
    block = (med["EquiformerV2-8"] - med["EquiformerV2-1"]) / 7
    steps = {label: {"median_ms": 1e3 * t, "mean_ms": 1e3 * statistics.mean(times[label])} for label, t in med.items()}
    for label, row in steps.items():
        row |= {f"over_{ref}": med[label] / med[ref] for ref in ("EquiformerV2-4", "EquiformerV2-8")}
        row |= {"evaluations": statistics.mean(evaluations[label])} if label in evaluations else {}
    deq, explicit = fx.SYSTEMS[system]
    out = {"frames": f"{frames[0].info['system']} {frames[1].info['frame']}..{frames[-1].info['frame']} (timed)"}
    out |= {"held_out": frames[0].info.get("held_out", True), "atoms": len(frames[0])}
    out |= {"checkpoints": {name: str(models.path(name)) for name in (deq, *explicit)}}
    out |= {"load_before_after": [load_before, os.getloadavg()], "per_step": steps}
    out["per_evaluation"] = {"evaluation_ms": 1e3 * evaluation, "block_ms": 1e3 * block, "ratio": evaluation / block}
    return out


def plot(results: dict, errors: dict, out) -> None:
    plt = fx.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, (system, res) in zip(axes[0], results.items()):
        rows = errors.get(system, {}).get("settings", {})
        points = [
            (k, r["over_EquiformerV2-4"], 100 * rows[k]["force_error_mean"])
            for k, r in res["per_step"].items()
            if k in rows
        ]
        floor = min((y for *_, y in points), default=1.0) / 3
        for label, x, y in points:
            ax.plot(x, y, "o", color="tab:blue")
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        for label in ("EquiformerV2-1", "EquiformerV2-4", "EquiformerV2-8"):
            ax.plot(res["per_step"][label]["over_EquiformerV2-4"], floor, "s", color="tab:red")
            ax.annotate(label, (res["per_step"][label]["over_EquiformerV2-4"], floor), fontsize=7, rotation=45)
        ax.set_yscale("log")
        ax.set_xlabel("cost per MD step / EquiformerV2-4 (median)")
        ax.set_ylabel("force error vs exact fixed point, mean (%)")
        missing = "" if points else " (no solving.json errors)"
        ax.set_title(f"{system}, {res['atoms']} atoms: DEQ1 settings; squares: explicit{missing}", fontsize=9)
    fx.save_figure(fig, "speed", out)


ASE = "DEQ1 ASE one at a time"


def replica_frames(system: str, n: int) -> list:
    """n copies of ethanol frame 1800, or the first frames of n OC20 relaxations (cycling)."""
    if system == "ethanol":
        return [fx.held_out_frames(1)[0]] * n
    paths = fx.oc20_trajectories()
    return [fx.oc20_frames(paths[i % len(paths)], 1)[0] for i in range(n)]


class OneAtATime:
    """The same MD through ASE one structure at a time: an ASE Langevin run per replica, each
    with its own fixed-point cache (copies of one DEQCalculator)."""

    def __init__(self, calc, frames):
        import numpy as np
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        self.runs = [Langevin(a.copy(), 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs) for a in frames]
        for i, run in enumerate(self.runs):
            run.atoms.calc = copy.copy(calc)
            run.atoms.calc.fixed_point_cache, run.atoms.calc.results = copy.deepcopy(calc.fixed_point_cache), {}
            MaxwellBoltzmannDistribution(run.atoms, temperature_K=300, rng=np.random.default_rng(i))

    def calculate(self, _step):
        for run in self.runs:
            run.step()
        self.last_solver_stats = {"nstep": [run.atoms.calc.last_solver_stats["nstep"] for run in self.runs]}


def time_replicas(system: str, n: int, steps: int, setting: fx.Setting, models) -> dict:
    from fairchem_deq.simulate.replicas import LangevinReplicas
    from fairchem_deq.simulate.torchsim import DEQTorchSimModel

    class Chain(LangevinReplicas):  # a batched Langevin run that fx.step_along steps
        def calculate(self, _step):
            self.step()
            self.last_solver_stats = self.model.last_solver_stats

    deq, explicit = fx.SYSTEMS[system]
    frames, names = replica_frames(system, n), {"DEQ1": deq, **{fx.LABELS[e]: e for e in explicit[1:]}}
    with fx.quiet(logging.INFO):
        sims = {
            k: DEQTorchSimModel(models.path(e), **(setting.options() if k == "DEQ1" else {})) for k, e in names.items()
        }
    setting.stopping(sims["DEQ1"])
    chains = {label: Chain(model, frames) for label, model in sims.items()}
    chains[ASE] = OneAtATime(setting.calculator(models, deq), frames)
    evaluations = {"DEQ1": [], ASE: []}

    def record(label, chain, _step):
        evaluations.get(label, []).extend(chain.last_solver_stats.get("nstep") or [])

    with fx.quiet():
        times = fx.step_along(chains, range(steps + 1), record)
    atoms, med = sum(map(len, frames)), {label: statistics.median(t) for label, t in times.items()}
    rows = {label: {"median_step_ms": 1e3 * t, "atom_steps_per_s": atoms / t} for label, t in med.items()}
    for label, values in evaluations.items():
        rows[label]["evaluations_per_replica_step"] = statistics.mean(values)
    ratios = {"DEQ1_over_EquiformerV2-4": med["DEQ1"] / med["EquiformerV2-4"], "over_ase": med[ASE] / med["DEQ1"]}
    return {"atoms": atoms, "models": rows, **ratios}


def run_replicas(args, models, argv) -> dict:
    import torch

    results = {"ethanol": {}, "oc20": {}}
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        for system, counts in (("ethanol", args.replicas), ("oc20", args.slabs)):
            for n in counts:
                row = time_replicas(system, n, args.steps, fx.Setting.parse(args.replica_setting), models)
                results[system].setdefault(str(n), {})[str(threads)] = row
                rates = ", ".join(f"{k} {v['atom_steps_per_s']:.0f}" for k, v in row["models"].items())
                print(f"{system} x{n}, {threads} thread(s), atom-steps/s: {rates}", flush=True)
    payload = {"command": fx.command("speed", argv), "machine": fx.machine(), "setting": args.replica_setting}
    payload.update(steps=args.steps, thread_counts=args.thread_counts, systems=results)
    fx.write_json("speed_replicas", payload, args.out)
    fig, axes = fx.pyplot().subplots(1, 2, figsize=(12, 4.5))
    for ax, (system, by_n) in zip(axes, results.items()):
        curves = {}
        for n, by_threads in by_n.items():
            for threads, row in by_threads.items():
                for label, r in row["models"].items():
                    curves.setdefault(f"{label}, {threads} thr.", []).append((int(n), r["atom_steps_per_s"]))
        for label, points in curves.items():
            ax.plot(*zip(*points), "o-", label=label)
        ax.set(xscale="log", yscale="log", xlabel="structures in the batch", ylabel="atom-steps / s", title=system)
        ax.legend(fontsize=6)
    fx.save_figure(fig, "speed_replicas", args.out)
    return payload


def main(argv=None) -> dict:
    p = fx.parser(__doc__, systems=True)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="stop/tol/predictor/solver")
    p.add_argument("--replicas", nargs="*", type=int, help="ethanol replica counts: the torch-sim section instead")
    p.add_argument("--slabs", nargs="*", type=int, default=[4, 16], help="with --replicas: OC20 slab counts")
    p.add_argument("--steps", type=int, default=20, help="with --replicas: MD steps timed")
    p.add_argument("--replica-setting", default="rel/0.01/last/anderson", help="with --replicas: DEQ1's setting")
    p.add_argument("--thread-counts", nargs="+", type=int, default=[1, 2], help="with --replicas: torch threads")
    args = p.parse_args(argv)
    models = fx.start(args)
    if args.replicas is not None:
        return run_replicas(args, models, argv)
    results = {s: time_system(s, n, args.settings, models) for s, n in fx.frames_of(args).items()}
    for system, res in results.items():
        for label, row in res["per_step"].items():
            print(
                f"{system} {label:30s} {row['median_ms']:8.1f} ms  {row['over_EquiformerV2-4']:.3f}x EqV2-4", flush=True
            )
        print(f"{system} per evaluation / per block: {res['per_evaluation']['ratio']:.3f}", flush=True)
    payload = {"command": fx.command("speed", argv), "machine": fx.machine(), "settings": args.settings}
    payload["systems"] = results
    fx.write_json("speed", payload, args.out)
    plot(results, fx.read_json("solving", args.out).get("systems", {}), args.out)
    return payload


if __name__ == "__main__":
    main()
