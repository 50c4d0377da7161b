"""Wall-clock per MD step: warm-started DEQ1/DEQ2 vs fairchem EquiformerV2 with 1, 4, 8 layers.

Why: the paper's speed claim counted solver steps; its own logged forward times were slower
than the explicit models. This times the real thing: energy+forces for one structure (batch 1,
inference, graph built on the fly, atoms_to_batch included), all models interleaved frame by
frame in this process over the same consecutive held-back ethanol frames; DEQs warm-start
from the previous frame (their cold solve is timed too, for reference). Reported as ratios of
medians. EquiformerV2-4/8 and the DEQs are the trained checkpoints (benchmarks.train_models);
EquiformerV2-1 is untrained (same width; its cost does not depend on its weights).
A torch.profiler table of DEQ1-warm and EquiformerV2-8 says where the time goes.
One torch thread by default: on this shared 2-core machine, 2 OpenMP threads competing with
other jobs spin-wait and inflated every step 10-30x (and the ratios' noise with it).

    .venv/bin/python -m benchmarks.wallclock [--frames 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import MD_MINI, build_model, machine, save_figure, write_json
from benchmarks.train_models import Trained, held_out_frames


def untrained(num_layers: int) -> Trained:
    t = Trained.__new__(Trained)
    t.name, t.label, t.is_deq = f"eqv2_{num_layers}l", f"EquiformerV2-{num_layers}", False
    t.model, t.normalizers = build_model(MD_MINI, num_layers).eval(), {}
    return t


def step_fns(models: dict) -> dict:
    """name -> fn(atoms) doing one MD step's prediction; DEQ 'warm' keeps its own chain."""
    fns = {}
    for label, m in models.items():
        if m.is_deq:
            state = {"fp": None}

            def warm(atoms, m=m, state=state):
                _, _, state["fp"], s = m.predict(atoms, initial_guess=state["fp"])
                return s

            fns[f"{label} warm"] = warm
            fns[f"{label} cold"] = lambda atoms, m=m: m.predict(atoms)[3]
        else:
            fns[label] = lambda atoms, m=m: m.predict(atoms)[3]
    return fns


def profile(fn, frames, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for atoms in frames:
            fn(atoms)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--profile-frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = held_out_frames(args.frames + 2)
    models = {
        m.label: m for m in (Trained("deq1"), Trained("deq2"), untrained(1), Trained("eqv2_4l"), Trained("eqv2_8l"))
    }
    fns = step_fns(models)
    times = {k: [] for k in fns}
    nstep = {k: [] for k in fns if " " in k}
    for i, atoms in enumerate(frames):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            stats = fn(atoms)
            dt = time.perf_counter() - t0
            if i >= 2:  # frames 0-1: warm-up and the DEQ chains' cold seed
                times[k].append(dt)
                if k in nstep:
                    nstep[k].append((stats["nstep"], stats["nfe"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {}
    for deq in ("DEQ1 warm", "DEQ2 warm", "DEQ1 cold", "DEQ2 cold"):
        for ref in ("EquiformerV2-1", "EquiformerV2-4", "EquiformerV2-8"):
            ratios[f"{deq} / {ref}"] = med[deq] / med[ref]
    for k, m in med.items():
        print(
            f"{k:16s} {1e3 * m:8.1f} ms"
            + (
                f"  nstep/nfe {statistics.mean(n for n, _ in nstep[k]):.2f}/{statistics.mean(e for _, e in nstep[k]):.2f}"
                if k in nstep
                else ""
            )
        )
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    pf = frames[2 : 2 + args.profile_frames]
    deq1 = models["DEQ1"]
    state = {"fp": deq1.predict(frames[1])[2]}

    def deq1_warm(atoms):
        _, _, state["fp"], _ = deq1.predict(atoms, initial_guess=state["fp"])

    profiles = {"DEQ1 warm": profile(deq1_warm, pf), "EquiformerV2-8": profile(fns["EquiformerV2-8"], pf)}
    for k, v in profiles.items():
        print(f"--- profile {k}\n{v}")
    write_json(
        "wallclock",
        {
            "command": f"python -m benchmarks.wallclock --frames {args.frames} --profile-frames {args.profile_frames} --threads {args.threads}",
            "machine": machine(),
            "frames": f"{frames[2].info['frame']}..{frames[-1].info['frame']}",
            "median_ms": {k: 1e3 * v for k, v in med.items()},
            "deq_nstep_mean": {k: statistics.mean(n for n, _ in v) for k, v in nstep.items()},
            "deq_nfe_mean": {k: statistics.mean(e for _, e in v) for k, v in nstep.items()},
            "ratios": ratios,
            "targets": {"DEQ1 warm / EquiformerV2-8": 0.6, "DEQ1 warm / EquiformerV2-4": 1.0},
            "profiles": profiles,
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(list(med), [1e3 * v for v in med.values()])
    ax.set_ylabel("ms per MD step (median, CPU, batch 1)")
    ax.set_title("Energy+forces per MD step, ethanol (interleaved)")
    ax.tick_params(axis="x", rotation=30)
    save_figure(fig, "wallclock")


if __name__ == "__main__":
    main()
