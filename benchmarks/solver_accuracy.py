"""Force error of a solve against a tight reference, per stopping rule and tolerance (issue 13).

Why: the relative residual ||f(z)-z|| / ||f(z)|| a solve stops on does not bound the error of
z (nor of the forces) when f contracts weakly: the distance to the fixed point can be
q/(1-q) times the residual. This benchmark measures what each stopping setting actually
delivers: for every checkpoint and setting (stop_mode rel / error at several tolerances) each
of N consecutive held-back ethanol frames is solved
  * cold (from zero),
  * warm (warm chain: from the previous frame's fixed point at the same setting),
  * warm+q (stop_mode error only: the warm chain that also hands the previous solve's
    contraction estimate to the solver, `StructureDEQSolver.forward(contraction=...)`, so a
    one-evaluation warm stop does not rely on the default error_q0),
and compared with a reference solve of the frame (cold, rel 1e-6, max_iter 200). Reported per
setting and start: mean evaluations (nstep: evaluation at which the rule was met; nfe:
evaluations spent), the relative force error ||F - F*|| / ||F*|| (mean, max) and the relative
fixed-point error ||z - z*|| / ||z*|| beside the solver's own error estimate, and the
warm-vs-cold force deviation. A setting/start is "safe" when the mean force error is < 1 %
and the max < 3 %, "tight" when the mean is < 0.3 %. Evaluations are the cost measure (one
evaluation ~ one block); no timing (the machine may be loaded).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.solver_accuracy [--frames 40] \\
        [--checkpoints LABEL=PATH ...] [--tols 1e-2 3e-3 1e-3] [--max-iter 40]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import Trained, held_out_frames

OLD20 = Path("benchmarks") / "work" / "old20"  # relative to the repository root (run with -m there)
# a barely trained DEQ1 (snapshot after 5 CPU-minutes), the 20-CPU-minute DEQ1 and its
# 1-step-phantom-gradient variant
DEFAULT_CHECKPOINTS = (
    f"deq1@5min={OLD20 / 'snapshots' / 'deq1' / 'cpu000300.pt'}",
    f"deq1@20min={OLD20 / 'checkpoints' / 'deq1' / 'checkpoint.pt'}",
    f"deq1_phantom_1@20min={OLD20 / 'checkpoints' / 'deq1_phantom_1' / 'checkpoint.pt'}",
)
TOLS = (1e-2, 3e-3, 1e-3)
MODES = ("rel", "error")
REFERENCE = {"stop_mode": "rel", "tol": 1e-6, "max_iter": 200}
SAFE_MEAN, SAFE_MAX, TIGHT_MEAN = 0.01, 0.03, 0.003


def parse_checkpoint(spec: str) -> tuple[str, Path]:
    """'LABEL=PATH' or 'PATH' (label: the checkpoint's folder, or the snapshot's stem)."""
    label, sep, path = spec.partition("=")
    if not sep:
        path = label
        p = Path(path)
        label = p.parent.name if p.name == "checkpoint.pt" else f"{p.parent.name}@{p.stem}"
    return label, Path(path)


def set_solver(model: Trained, **settings) -> None:
    for phase in ("eval_cold", "eval_warm"):
        model.model.backbone.set_solver_settings(phase, **settings)


class ContractionPrior:
    """Hands `contraction=` to the backbone's solver on each call while `value` is set
    (the benchmark's stand-in for a caller that caches q beside the fixed point)."""

    def __init__(self, model: Trained):
        self.solver = model.model.backbone.deq_layer.solver
        self.value = None
        forward = self.solver.forward

        def with_prior(*args, **kwargs):
            if self.value is not None:
                kwargs.setdefault("contraction", self.value)
            return forward(*args, **kwargs)

        self.solver.forward = with_prior


def rel_norm(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def references(model: Trained, frames: list) -> list[dict]:
    set_solver(model, **REFERENCE)
    out = []
    for atoms in frames:
        _, forces, fp, stats = model.predict(atoms)
        if not stats.get("converged"):
            print(
                f"  warning: reference solve of frame {atoms.info['frame']} did not converge "
                f"(rel residual {stats.get('rel_residual'):.2e})",
                flush=True,
            )
        out.append({"forces": forces, "fixed_point": fp.detach().double().numpy(), "stats": stats})
    return out


def run_setting(
    model: Trained, prior: ContractionPrior, frames: list, refs: list[dict], mode: str, tol: float, max_iter: int
) -> dict:
    """Per-frame records of the cold, warm and (error rule) warm+q solves of frames[1:];
    frame 0 (cold at this setting) seeds the warm chains."""
    set_solver(model, stop_mode=mode, tol=tol, max_iter=max_iter)
    starts = ("cold", "warm", "warm+q") if mode == "error" else ("cold", "warm")
    rec = {
        s: {
            k: []
            for k in (
                "nstep",
                "nfe",
                "force_err",
                "z_err",
                "error_estimate",
                "contraction",
                "rel_residual",
                "converged",
                "fallback",
            )
        }
        for s in starts
    }
    dev = {s: [] for s in starts if s != "cold"}
    prior.value = None
    _, _, fp0, s0 = model.predict(frames[0])
    chain = {s: (fp0, s0) for s in starts if s != "cold"}
    for atoms, ref in zip(frames[1:], refs[1:]):
        results = {}
        for start in starts:
            if start == "cold":
                prior.value = None
                out = model.predict(atoms)
            else:
                fp_prev, stats_prev = chain[start]
                prior.value = stats_prev.get("contraction") if start == "warm+q" else None
                out = model.predict(atoms, initial_guess=fp_prev)
                chain[start] = (out[2], out[3])
            prior.value = None
            results[start] = out
            _, forces, fp, stats = out
            r = rec[start]
            r["force_err"].append(rel_norm(forces, ref["forces"]))
            r["z_err"].append(rel_norm(fp.detach().double().numpy(), ref["fixed_point"]))
            for key in ("nstep", "nfe", "error_estimate", "contraction", "rel_residual", "converged", "fallback"):
                r[key].append(float(stats.get(key, float("nan"))))
        for start, deviations in dev.items():
            deviations.append(rel_norm(results[start][1], results["cold"][1]))
    for start, deviations in dev.items():
        rec[start]["warm_vs_cold"] = deviations
    return rec


def summarise(r: dict) -> dict:
    mean = statistics.mean
    fe = r["force_err"]
    s = {
        "nstep_mean": mean(r["nstep"]),
        "nfe_mean": mean(r["nfe"]),
        "force_err_mean": mean(fe),
        "force_err_max": max(fe),
        "z_err_mean": mean(r["z_err"]),
        "z_err_max": max(r["z_err"]),
        "error_estimate_mean": mean(r["error_estimate"]),
        # the solver's estimate should bound ||z - z*|| / ||z||: how often it does not
        "estimate_below_z_err": mean(float(e < z) for e, z in zip(r["error_estimate"], r["z_err"])),
        "contraction_mean": mean(r["contraction"]),
        "contraction_max": max(r["contraction"]),
        "nonconverged": sum(1 for c in r["converged"] if c < 0.5),
        "fallbacks": sum(r["fallback"]),
        "n": len(fe),
    }
    if "warm_vs_cold" in r:
        s["warm_vs_cold_mean"], s["warm_vs_cold_max"] = mean(r["warm_vs_cold"]), max(r["warm_vs_cold"])
    s["safe"] = s["force_err_mean"] < SAFE_MEAN and s["force_err_max"] < SAFE_MAX
    s["tight"] = s["force_err_mean"] < TIGHT_MEAN
    return s


def row_text(label: str, key: str, start: str, s: dict) -> str:
    dev = (
        f"{100 * s['warm_vs_cold_mean']:6.3f}/{100 * s['warm_vs_cold_max']:6.3f}"
        if "warm_vs_cold_mean" in s
        else f"{'-':>6}/{'-':>6}"
    )
    flags = ",".join(f for f, ok in (("safe", s["safe"]), ("tight", s["tight"])) if ok) or "-"
    return (
        f"| {label} | {key} | {start} | {s['nstep_mean']:.2f} | {s['nfe_mean']:.2f} | "
        f"{100 * s['force_err_mean']:.3f} | {100 * s['force_err_max']:.3f} | {dev} | "
        f"{100 * s['z_err_mean']:.3f} | {100 * s['error_estimate_mean']:.3f} | "
        f"{s['contraction_mean']:.2f} | {s['nonconverged']} | {flags} |"
    )


HEADER = (
    "| checkpoint | setting | start | nstep | nfe | F err mean % | F err max % | "
    "warm-vs-cold mean/max % | z err mean % | est. mean % | q mean | unconv. | flags |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def plot(summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    fig, axes = plt.subplots(1, len(labels), figsize=(5.2 * len(labels), 4.2), squeeze=False)
    markers = {"cold": "o", "warm": "s", "warm+q": "^"}
    colors = {"rel": "tab:blue", "error": "tab:red"}
    for ax, label in zip(axes[0], labels):
        rows = summary[label]
        for mode in MODES:
            for start, marker in markers.items():
                pts = [(key, rows[key][start]) for key in rows if key.startswith(mode + " ") and start in rows[key]]
                if not pts:
                    continue
                x = [s["nfe_mean"] for _, s in pts]
                y = [100 * s["force_err_mean"] for _, s in pts]
                ax.plot(
                    x,
                    y,
                    marker=marker,
                    ls="-" if start == "cold" else "--",
                    color=colors[mode],
                    mfc="none" if start != "cold" else colors[mode],
                    label=f"{mode} {start}",
                )
                for (key, _), xi, yi in zip(pts, x, y):
                    ax.annotate(key.split()[1], (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(100 * SAFE_MEAN, color="k", lw=0.8, ls=":")
        ax.axhline(100 * TIGHT_MEAN, color="k", lw=0.6, ls="-.")
        ax.set_yscale("log")
        ax.set_xlabel("function evaluations per frame (mean nfe)")
        ax.set_ylabel("force error vs tight solve, mean (%)")
        ax.set_title(label)
        ax.legend(fontsize=7)
    return save_figure(fig, "solver_accuracy")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40, help="consecutive held-back ethanol frames measured")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=list(DEFAULT_CHECKPOINTS),
        help="DEQ checkpoints as LABEL=PATH or PATH (e.g. benchmarks/work/runs/checkpoints/deq1/checkpoint.pt)",
    )
    parser.add_argument("--tols", type=float, nargs="+", default=list(TOLS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--max-iter", type=int, default=40, help="iteration cap of the measured settings")
    args = parser.parse_args(argv)

    frames = held_out_frames(args.frames + 1)  # frame 0 seeds the warm chains
    raw, summary, table = {}, {}, [HEADER]
    for spec in args.checkpoints:
        label, path = parse_checkpoint(spec)
        model = Trained("deq1", path)  # any "deq*" name: loaded through DEQCalculator
        prior = ContractionPrior(model)
        refs = references(model, frames)
        print(
            f"{label}: reference nfe mean {statistics.mean(r['stats']['nfe'] for r in refs):.1f}, "
            f"contraction mean {statistics.mean(r['stats']['contraction'] for r in refs):.3f}",
            flush=True,
        )
        summary[label] = {
            "path": str(path),
            "reference_nfe_mean": statistics.mean(r["stats"]["nfe"] for r in refs),
            "reference_contraction_mean": statistics.mean(r["stats"]["contraction"] for r in refs),
        }
        for mode in args.modes:
            for tol in args.tols:
                key = f"{mode} {tol:g}"
                rec = run_setting(model, prior, frames, refs, mode, tol, args.max_iter)
                raw[f"{label}/{key}"] = rec
                summary[label][key] = {start: summarise(r) for start, r in rec.items()}
                for start, s in summary[label][key].items():
                    line = row_text(label, key, start, s)
                    table.append(line)
                    print(line, flush=True)
    command = (
        "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.solver_accuracy --frames %d --checkpoints %s "
        "--tols %s --modes %s --max-iter %d"
        % (
            args.frames,
            " ".join(args.checkpoints),
            " ".join(f"{t:g}" for t in args.tols),
            " ".join(args.modes),
            args.max_iter,
        )
    )
    write_json(
        "solver_accuracy",
        {
            "command": command,
            "machine": machine(),
            "ethanol_frames": f"{frames[0].info['frame']}..{frames[-1].info['frame']} (first = warm-chain seed)",
            "reference": REFERENCE,
            "flags": {
                "safe": f"mean force error < {100 * SAFE_MEAN:g} % and max < {100 * SAFE_MAX:g} %",
                "tight": f"mean force error < {100 * TIGHT_MEAN:g} %",
            },
            "columns": {
                "nstep": "evaluation at which the rule was met (mean)",
                "nfe": "evaluations spent (mean)",
                "force_err": "||F - F_ref|| / ||F_ref||",
                "z_err": "||z - z_ref|| / ||z_ref||",
                "error_estimate": "solver's q/(1-q) x rel residual",
                "warm_vs_cold": "||F_warm - F_cold|| / ||F_cold||",
            },
            "summary": summary,
            "table": "\n".join(table),
            "per_frame": raw,
        },
    )
    plot({label: {k: v for k, v in rows.items() if isinstance(v, dict)} for label, rows in summary.items()})
    print("\n".join(table))


if __name__ == "__main__":
    main()
