"""How much memory and time does a training step take: DEQ1 against EquiformerV2-4 and -8?

Method (CPU: tracemalloc does not see torch's allocator). Every model runs in a FRESH
subprocess, one thread: the reference checkpoint's model as DEQCalculator loads it (memory
and step time do not depend on the weights), switched to training mode, with an AdamW
optimiser and a batch (4 held-back ethanol frames; 1 OC20 slab frame for the OC20 models);
the resident set size (RSS, /proc/self/statm) is read as the baseline, then `--steps`
optimiser steps run (energy + 80 x L2 force loss, the shipped weighting) and the peak RSS is
read (getrusage ru_maxrss). Reported: peak - baseline, the memory a training step adds
(activations kept for backward, gradients, optimiser state, allocator slack), and the median
step time after the first. The subprocesses run one after another, so step-time ratios are
noisier than benchmarks.speed's interleaved ones. The DEQ trains with its checkpoint's
gradient (the shipped 1-step phantom gradient).

    .venv/bin/python -m benchmarks.memory [--steps 4] [--models ethanol_deq1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import fixtures as fx

MODELS = ("ethanol_deq1", "ethanol_eqv2_4l", "ethanol_eqv2_8l", "oc20_deq1", "oc20_eqv2_4l")


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(path: str, system: str, steps: int) -> dict:
    from fairchem_deq.data.atoms_graphs import atoms_to_batch

    torch.set_num_threads(1)
    model = fx.load_calculator(Path(path)).model.train()
    frames = fx.held_out_frames(4) if system == "ethanol" else fx.oc20_slab_frames(1)
    batch = atoms_to_batch(frames)
    energy = torch.tensor([a.info["energy_ev"] for a in frames], dtype=torch.float32)
    forces = torch.tensor(np.concatenate([a.info["forces_ev"] for a in frames]), dtype=torch.float32)
    energy -= energy.mean()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    base = rss_mb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(batch)
        e, f = out["energy"]["energy"].reshape(-1), out["forces"]["forces"].reshape(-1, 3)
        loss = (e - energy).abs().mean() + 80 * (f - forces).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"baseline_rss_mb": base, "peak_rss_mb": peak, "step_mb": peak - base}
    return row | {"step_s_median": statistics.median(times[1:] or times), "atoms": int(batch.natoms.sum())}


def main(argv=None) -> dict:
    p = fx.parser(__doc__)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--child", nargs=2, metavar=("PATH", "SYSTEM"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args.steps)))
        return {}
    models = fx.start(args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    for name in args.models:
        system = name.split("_")[0]
        child_args = ["--child", str(models.path(name)), system, "--steps", str(args.steps)]
        command = [sys.executable, "-m", "benchmarks.memory", *child_args]
        proc = subprocess.run(command, cwd=fx.REPO, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory child {name} failed:\n{proc.stderr[-3000:]}")
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        results.setdefault(system, {})[fx.LABELS.get(name, name)] = r = {"model": name, **json.loads(line[7:])}
        print(system, name, r, flush=True)
    ratios = {
        system: {
            f"DEQ1 / {label}": {key: rows["DEQ1"][key] / row[key] for key in ("step_mb", "step_s_median")}
            for label, row in rows.items()
            if label != "DEQ1" and "DEQ1" in rows
        }
        for system, rows in results.items()
    }
    payload = {"command": fx.command("memory", argv), "machine": fx.machine()}
    payload["method"] = __doc__.split("Method")[1].split("    .venv")[0].strip()
    payload |= {"results": results, "ratios": ratios}
    fx.write_json("memory", payload, args.out)
    plt = fx.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (system, rows) in zip(axes[0], results.items()):
        ax.bar(list(rows), [r["step_mb"] for r in rows.values()])
        ax.set_title(f"{system}: peak RSS - baseline (MB), {next(iter(rows.values()))['atoms']} atoms")
        ax.tick_params(axis="x", rotation=20)
    fx.save_figure(fig, "memory", args.out)
    return payload


if __name__ == "__main__":
    main()
