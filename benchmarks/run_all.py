"""Every benchmark of the suite, one command (the reference models trained and exported first:
`python -m benchmarks.reference_models train`, then `export`):

    .venv/bin/python -m benchmarks.run_all [--profile full|quick|smoke] [--out DIR] [--checkpoints NAME=PATH ...]

    accuracy    force/energy errors of the reference models, learning curves
    solving     evaluations per step and force error vs the exact fixed point, per way of solving
    speed       cost per MD step of the DEQ settings and EquiformerV2-1/4/8 (reads solving.json)
    memory      training step memory and time, DEQ vs explicit
    md          MD stability (Fu et al.), h(r) error, NVE drift
    oc20_relax  OC20 relaxations, reuse vs cold
    gpu_check   the CUDA checks (says CUDA is absent and does nothing elsewhere)

Each writes <out>/<name>.json and .png. Profiles: "full" (each script's defaults, hours on
a CPU), "quick" (fewer frames, steps and seeds), "smoke" (two frames, a few steps: does the
suite run here? tests/test_benchmark_suite.py runs it on the tiny test checkpoints).
"""

from __future__ import annotations

import argparse
import importlib
import time

SCRIPTS = ("accuracy", "solving", "speed", "memory", "md", "oc20_relax", "gpu_check")
PROFILES = {
    "full": {},
    "quick": {
        "accuracy": ["--frames", "50", "--oc20-frames", "20", "--curve-frames", "20"],
        "solving": ["--frames", "20", "--oc20-frames", "8", "--tols", "1e-2", "3e-3"],
        "speed": ["--frames", "20", "--oc20-frames", "8"],
        "memory": ["--steps", "3"],
        "md": ["--steps", "2000", "--seeds", "2", "--nve-steps", "400"],
        "oc20_relax": ["--steps", "30"],
        "gpu_check": ["--repeats", "5", "--skip-tests"],
    },
    "smoke": {
        "accuracy": ["--frames", "2", "--oc20-frames", "2", "--curve-frames", "2"],
        "solving": [
            *("--frames", "2", "--oc20-frames", "2", "--tols", "1e-2", "--predictors", "cold", "last"),
            *("--stop-modes", "rel", "error", "--solvers", "anderson", "--propagations", "solve", "one_step"),
        ],
        "speed": [
            *("--frames", "2", "--systems", "ethanol"),
            *("--settings", "rel/0.01/last/broyden_reuse", "rel/0.01/cold/anderson"),
        ],
        "memory": ["--steps", "2", "--models", "ethanol_deq1"],
        "md": ["--steps", "4", "--seeds", "1", "--temperatures", "300", "--nve-steps", "4", "--workers", "1"],
        "oc20_relax": ["--steps", "2", "--max-systems", "1"],
        "gpu_check": ["--repeats", "1", "--skip-tests"],
    },
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=list(PROFILES), default="full")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME=PATH")
    args = p.parse_args(argv)
    common = [
        *(["--out", args.out] if args.out else []),
        *(["--checkpoints", *args.checkpoints] if args.checkpoints else []),
    ]
    for name in args.only:
        t0 = time.perf_counter()
        script = importlib.import_module(f"benchmarks.{name}")
        script.main([*PROFILES[args.profile].get(name, []), *common])
        print(f"== {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    main()
