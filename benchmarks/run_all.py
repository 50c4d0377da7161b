"""Run every MD/DEQ benchmark in order, one command:

    .venv/bin/python -m benchmarks.run_all [--budget-minutes 1] [--skip-training] [--quick]

1. benchmarks.train_models   DEQ1, DEQ2, EquiformerV2-4/8 at an equal training budget (sequential)
2. benchmarks.accuracy       force/energy MAE on held-back consecutive ethanol frames
3. benchmarks.iterations     solver iterations cold vs warm, tolerance sweep, Markov deviation
4. benchmarks.wallclock      time per MD step, DEQ warm vs EquiformerV2 1/4/8 (interleaved)
5. benchmarks.training_memory  training peak memory and step time (fresh subprocesses)
6. benchmarks.iteration_cost   one solver iteration vs one explicit block, parameter counts
7. benchmarks.extrapolation    extrapolated warm starts vs plain reuse
8. benchmarks.train_models --models deq1_conservative, then benchmarks.energy_conservation:
                               NVE drift and cost, direct vs energy-gradient forces
9. benchmarks.dens_accuracy    DEQ1 with vs without DeNS at an equal budget
10. benchmarks.reuse_displacement  per-atom displacements of MD steps, optimiser steps and
                               random frames against the fixed-point reuse bound
11. benchmarks.train_oc20 (DEQ1, then EquiformerV2-4/8 for timing), benchmarks.step_speed,
    benchmarks.oc20_relax_reuse    speed at safe/tight tolerances (ethanol, OC20 slab) and OC20
                               relaxations with reuse vs cold
Each writes benchmarks/results/<name>.json and .png. --quick shrinks the frame counts.
"""

from __future__ import annotations

import argparse

from benchmarks import (
    accuracy,
    dens_accuracy,
    energy_conservation,
    extrapolation,
    iteration_cost,
    iterations,
    oc20_relax_reuse,
    reuse_displacement,
    step_speed,
    train_models,
    train_oc20,
    training_memory,
    wallclock,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=1.0)
    parser.add_argument("--skip-training", action="store_true", help="reuse benchmarks/work checkpoints")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 10 if args.quick else 20
    if not args.skip_training:
        train_models.main(["--budget-minutes", str(args.budget_minutes)])
    accuracy.main(["--frames", str(50 if args.quick else 100)])
    iterations.main(["--frames", str(n), "--oc20-steps", str(5 if args.quick else 8)])
    wallclock.main(["--frames", str(n + 10)])
    training_memory.main(["--steps", "3", "--oc20-steps", "2"])
    iteration_cost.main(["--repeats", "7" if args.quick else "15"])
    extrapolation.main(["--frames", str(n + 20), "--models", "deq1", "deq2", "--tols", "1e-2", "1e-3"])
    if not args.skip_training:
        train_models.main(["--budget-minutes", str(args.budget_minutes), "--models", "deq1_conservative"])
    energy_conservation.main(["--steps", "200" if args.quick else "400"])
    if not args.skip_training:
        dens_accuracy.main(["--budget-minutes", str(args.budget_minutes), "--frames", str(50 if args.quick else 100)])
    reuse_displacement.main([])
    if not args.skip_training:
        train_oc20.main(["--budget-minutes", str(args.budget_minutes)])
        baselines = ["--models", "oc20_eqv2_4l", "oc20_eqv2_8l"]
        train_oc20.main(["--budget-minutes", "1", "--checkpoint-every", "1", "--parallel", "2", *baselines])
    step_speed.main(["--frames", str(n + 20), "--oc20-frames", str(n)])
    oc20_relax_reuse.main(["--steps", "30" if args.quick else "60", "--fmax", "0.01"])


if __name__ == "__main__":
    main()
