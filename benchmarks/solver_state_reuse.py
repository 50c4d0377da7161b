"""Solver-state reuse along an MD trajectory (issue 13, item 3): evaluations and force error.

Why: a quasi-Newton solver learns about the Jacobian of g(z) = f(z) - z while it solves;
between consecutive MD frames that Jacobian changes little, so the next frame's solve can
start from that knowledge as well as from the previous fixed point ("broyden_reuse": the
newest secant pairs of g are cached beside the fixed point, see
fairchem_deq/models/broyden_reuse.py). This benchmark measures whether that saves function
evaluations on a trained DEQ1, without losing accuracy.

Along N consecutive held-back ethanol frames (benchmarks.train_models.held_out_frames), each
start is a fresh DEQCalculator chain (frame 0 solved from zero seeds it; frames 1..N are
warm-started from the previous frame, warm_start "last"):
  * anderson:           Anderson, fixed point reused (the checkpoint's solver),
  * broyden_reuse fp:   broyden_reuse, fixed point reused, solver state not kept,
  * broyden_reuse fp+state: broyden_reuse, fixed point and solver state reused,
at each tolerance (stop_mode rel), and compared with a reference solve of every frame
(cold, Anderson, rel 1e-6, max_iter 200). Reported per start and tolerance over the warm
frames: mean evaluations (nfe: evaluations spent; nstep: evaluation at which the rule was
met), the relative force error ||F - F_ref|| / ||F_ref|| (mean, max), how often the state
was reused and dropped by the safeguard, and cold fallbacks. Evaluations are the cost
measure (one evaluation ~ one block; the quasi-Newton algebra is small next to a block);
no timing (the machine may be loaded).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.solver_state_reuse [--frames 40] \\
        [--checkpoint benchmarks/work/old20/checkpoints/deq1/checkpoint.pt] [--tols 1e-2 3e-3] \\
        [--max-iter 40] [--memory 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import held_out_frames

DEFAULT_CHECKPOINT = Path("benchmarks") / "work" / "old20" / "checkpoints" / "deq1" / "checkpoint.pt"
TOLS = (1e-2, 3e-3)
REFERENCE = {"tol": 1e-6, "max_iter": 200}
# label -> (solver, keep the solver state in the cache)
STARTS = {
    "anderson": ("anderson", False),
    "broyden_reuse fp": ("broyden_reuse", False),
    "broyden_reuse fp+state": ("broyden_reuse", True),
}


def calculator(path: Path, solver: str | None, keep_state: bool, memory: int, **settings):
    from fairchem_deq.simulate import DEQCalculator

    level = logging.getLogger().level
    calc = DEQCalculator(
        path,
        cpu=True,
        seed=0,
        solver=solver,
        solver_kwargs={"memory": memory} if solver == "broyden_reuse" else None,
        **settings,
    )
    logging.getLogger().setLevel(max(level, logging.WARNING))
    calc.fixed_point_cache.keep_solver_state = keep_state
    return calc


def solve(calc, atoms) -> tuple[np.ndarray, dict]:
    """Forces (eV/Å) of one frame and the solve's statistics (first structure)."""
    from fairchem_deq.reuse.forward import captured_output

    atoms = atoms.copy()
    atoms.calc = calc
    with captured_output(calc.model.backbone) as captured:
        forces = atoms.get_forces()
    stats = {k: float(v.reshape(-1)[0]) for k, v in captured["output"]["deq_stats"].items() if v.dim() <= 1}
    return np.asarray(forces, dtype=np.float64), stats


def rel_norm(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_chain(calc, frames: list, refs: list[np.ndarray]) -> dict:
    """Per-frame records of the warm-started frames 1..N (frame 0, solved cold, seeds)."""
    solve(calc, frames[0])
    rec = {k: [] for k in ("nfe", "nstep", "force_err", "state_reused", "state_dropped", "fallback", "converged")}
    for atoms, ref in zip(frames[1:], refs[1:]):
        forces, stats = solve(calc, atoms)
        rec["force_err"].append(rel_norm(forces, ref))
        for key in ("nfe", "nstep", "state_reused", "state_dropped", "fallback", "converged"):
            rec[key].append(stats.get(key, 0.0))
    return rec


def summarise(r: dict) -> dict:
    mean = statistics.mean
    return {
        "nfe_mean": mean(r["nfe"]),
        "nstep_mean": mean(r["nstep"]),
        "force_err_mean": mean(r["force_err"]),
        "force_err_max": max(r["force_err"]),
        "state_reused": int(sum(r["state_reused"])),
        "state_dropped": int(sum(r["state_dropped"])),
        "fallbacks": int(sum(r["fallback"])),
        "nonconverged": sum(1 for c in r["converged"] if c < 0.5),
        "n": len(r["nfe"]),
    }


HEADER = (
    "| tol (rel) | start | nfe | nstep | F err mean % | F err max % | state reused | dropped | fallbacks | unconv. |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def row_text(tol: float, start: str, s: dict) -> str:
    return (
        f"| {tol:g} | {start} | {s['nfe_mean']:.2f} | {s['nstep_mean']:.2f} | "
        f"{100 * s['force_err_mean']:.3f} | {100 * s['force_err_max']:.3f} | "
        f"{s['state_reused']}/{s['n']} | {s['state_dropped']} | {s['fallbacks']} | {s['nonconverged']} |"
    )


def plot(summary: dict, per_frame: dict, tols: list[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"anderson": "tab:blue", "broyden_reuse fp": "tab:orange", "broyden_reuse fp+state": "tab:green"}
    markers = dict(zip(tols, ("o", "s", "^", "D")))
    for start, color in colors.items():
        for tol in tols:
            s = summary[f"{tol:g}"][start]
            axes[0].plot(
                s["nfe_mean"],
                100 * s["force_err_mean"],
                marker=markers[tol],
                color=color,
                ls="none",
                label=f"{start}, tol {tol:g}",
            )
            frames = per_frame[f"{tol:g}/{start}"]["nfe"]
            axes[1].plot(
                range(1, len(frames) + 1),
                np.cumsum(frames),
                color=color,
                ls="-" if tol == tols[0] else "--",
                label=f"{start}, tol {tol:g}",
            )
    axes[0].set_xlabel("function evaluations per warm frame (mean nfe)")
    axes[0].set_ylabel("force error vs tight solve, mean (%)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("frame")
    axes[1].set_ylabel("function evaluations, cumulative (nfe)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Solver-state reuse along held-back ethanol frames")
    return save_figure(fig, "solver_state_reuse")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40, help="consecutive warm-started held-back ethanol frames")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="a trained DEQ checkpoint")
    parser.add_argument("--tols", type=float, nargs="+", default=list(TOLS), help="relative tolerances measured")
    parser.add_argument("--max-iter", type=int, default=40, help="iteration cap of the measured solves")
    parser.add_argument("--memory", type=int, default=20, help="broyden_reuse: secant pairs kept per structure")
    args = parser.parse_args(argv)

    frames = held_out_frames(args.frames + 1)  # frame 0 seeds the warm chains
    reference = calculator(args.checkpoint, None, False, args.memory, reuse=False, **REFERENCE)
    refs, ref_nfe = [], []
    for atoms in frames:
        forces, stats = solve(reference, atoms)
        if not stats.get("converged"):
            print(f"  warning: reference solve of frame {atoms.info['frame']} did not converge", flush=True)
        refs.append(forces)
        ref_nfe.append(stats["nfe"])
    print(f"reference (cold anderson rel 1e-6): nfe mean {statistics.mean(ref_nfe):.1f}", flush=True)

    summary, per_frame, table = {}, {}, [HEADER]
    for tol in args.tols:
        summary[f"{tol:g}"] = {}
        for start, (solver, keep_state) in STARTS.items():
            calc = calculator(
                args.checkpoint,
                None if solver == "anderson" else solver,  # the checkpoint's own Anderson settings
                keep_state,
                args.memory,
                tol=tol,
                max_iter=args.max_iter,
            )
            if calc.model.backbone.deq_options.solver != solver:
                raise SystemExit(
                    f"{args.checkpoint} solves with {calc.model.backbone.deq_options.solver}, not {solver}"
                )
            rec = run_chain(calc, frames, refs)
            per_frame[f"{tol:g}/{start}"] = rec
            summary[f"{tol:g}"][start] = s = summarise(rec)
            table.append(row_text(tol, start, s))
            print(table[-1], flush=True)

    command = (
        "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.solver_state_reuse --frames %d --checkpoint %s --tols %s --max-iter %d --memory %d"
        % (
            args.frames,
            args.checkpoint,
            " ".join(f"{t:g}" for t in args.tols),
            args.max_iter,
            args.memory,
        )
    )
    write_json(
        "solver_state_reuse",
        {
            "command": command,
            "machine": machine(),
            "checkpoint": str(args.checkpoint),
            "ethanol_frames": f"{frames[0].info['frame']}..{frames[-1].info['frame']} (first = warm-chain seed)",
            "reference": {**REFERENCE, "stop_mode": "rel", "solver": "anderson (checkpoint)", "start": "cold"},
            "reference_nfe_mean": statistics.mean(ref_nfe),
            "starts": {k: {"solver": v[0], "solver_state_reused": v[1]} for k, v in STARTS.items()},
            "columns": {
                "nfe": "evaluations spent per warm frame (mean)",
                "nstep": "evaluation at which the tolerance was met (mean)",
                "force_err": "||F - F_ref|| / ||F_ref||",
                "state_reused": "warm frames whose solve started from cached secant pairs",
                "state_dropped": "... of which the safeguard dropped the pairs",
            },
            "summary": summary,
            "table": "\n".join(table),
            "per_frame": per_frame,
        },
    )
    plot(summary, per_frame, args.tols)
    print("\n".join(table))


if __name__ == "__main__":
    main()
