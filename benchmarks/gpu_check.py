"""The GPU check: what a person with a CUDA machine runs first (`make gpu-check`).

The package was built and measured on CPUs; until this has run on a GPU, the CPU figures
of benchmarks/RESULTS.md are the only ones. On a machine without CUDA it says so and exits 0.

1. the tests marked `gpu` (tests/test_cuda.py: CUDA vs CPU solve, autocast keeps the solver
   in float32, the calculator with reuse on CUDA), and the 2-rank DDP validate/predict test
   with uneven batches per rank (2 CPU ranks, gloo: a 2-GPU NCCL run of it is not wired yet);
2. float32 vs mixed precision (float16 and bfloat16 autocast, as fairchem's --amp) on the
   shipped OC20 DEQ1 width at a bundled OC20 slab: evaluations, force deviation, time;
3. step cost at batch 1 and 32 (ethanol, the paper's MD "mini" width, fresh weights):
   EquiformerV2-1/4/8 forwards vs DEQ1 with exactly 1, 2 and 3 evaluations of f (plain
   fixed-point steps) and a cold Anderson solve to rel 1e-2. Ratios to EquiformerV2-4 in one
   process, interleaved; fresh weights give the cost of an evaluation, not a trained
   model's iteration counts (benchmarks.solving and benchmarks.speed: reference models).

    .venv/bin/python -m benchmarks.gpu_check [--repeats 20] [--skip-tests]

Writes benchmarks/results/gpu_check.json (`--out DIR`: DIR/gpu_check.json).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.fixtures import MD_MINI, OC20_200K, TEST_DATA, build_model, machine, write_json
from benchmarks.fixtures import parser as make_parser

REPO = Path(__file__).parents[1]
EXPLICIT = {"EquiformerV2-1": 1, "EquiformerV2-4": 4, "EquiformerV2-8": 8}
# DEQ1 settings timed: exactly k evaluations of f, and a cold solve to tolerance
DEQ_SETTINGS = {
    f"DEQ1 {k} evaluation{'s' * (k > 1)}": {"solver": "fixed_point_iter", "eval_cold": {"max_iter": k, "tol": 1e-12}}
    for k in (1, 2, 3)
} | {"DEQ1 cold rel 1e-2": {"eval_cold": {"max_iter": 40, "tol": 1e-2}}}


def run_tests() -> dict:
    """pytest on the `gpu` tests and the uneven-batches DDP test -> exit codes."""
    results, ddp = {}, "tests/test_trainer_reuse.py::test_two_rank_validate_and_predict_with_uneven_batches_per_rank"
    for name, args in {"gpu tests": ["-m", "gpu", "tests"], "ddp uneven (2 CPU ranks)": [ddp]}.items():
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        results[name] = {"returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}
        print(f"{name}: exit {proc.returncode} {results[name]['summary']}", flush=True)
    return results


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    """Median seconds of fn() with CUDA synchronised around each call (2 warm-up calls)."""
    times = []
    for i in range(repeats + 2):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mixed_precision(repeats: int, device: str = "cuda", solver_variants: bool = False) -> dict:
    """fp32 vs fp16/bf16 autocast on the OC20 DEQ1 width at a bundled slab (fresh weights).
    `solver_variants`: also with f's blocks under autocast (deq.solve_under_autocast) and the
    whole solve under autocast (the package before issue 22)."""
    import yaml
    from ase.io import read

    from fairchem_deq.data.atoms_graphs import atoms_to_batch
    from fairchem_deq.reuse import run_capturing_backbone

    deq = yaml.safe_load((REPO / "configs/includes/oc20/deq1.yml").read_text())["model"]["backbone"]["deq"]
    import contextlib

    import fairchem_deq.solve.solver as deq_solver

    model = build_model(OC20_200K, 1, deq=deq).eval().to(device)
    atoms = read(TEST_DATA / "random1000156.traj", index=0)
    batch = atoms_to_batch([atoms]).to(device)
    options = model.backbone.deq_options
    float32_solve = deq_solver.float32_solver
    variants = {"": (False, float32_solve)}
    if solver_variants:
        variants[" f under autocast"] = (True, float32_solve)
        variants[" solve under autocast (before issue 22)"] = (False, lambda f, *_: (f, contextlib.nullcontext()))
    runs = [("float32", None, "")] + [
        (f"{name}{variant}", dtype, variant)
        for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16))
        for variant in variants
    ]
    out, reference = {}, None
    for label, dtype, variant in runs:
        options.solve_under_autocast, deq_solver.float32_solver = variants[variant]

        def forward(dtype=dtype):
            autocast = torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
            with torch.no_grad(), autocast:
                outputs, backbone_output = run_capturing_backbone(model, model.backbone, batch)
            return outputs["forces"]["forces"].float(), backbone_output["deq"].stats

        try:
            forces, stats = forward()
        finally:
            deq_solver.float32_solver = float32_solve
        reference = forces if reference is None else reference
        deviation = float((forces - reference).norm() / reference.norm())
        row = {"evaluations": int(stats["nstep"][0]), "converged": bool(stats["converged"][0])}
        row |= {"rel_residual": float(stats["rel_residual"][0]), "force_deviation_vs_float32": deviation}
        out[label] = row | {"seconds": _timed(forward, repeats) if repeats else None}
        print(label, out[label], flush=True)
    out["structure"] = {"file": "tests/data/random1000156.traj", "atoms": len(atoms)}
    return out


def step_cost(repeats: int) -> dict:
    """Median time per batch of each model at batch 1 and 32 ethanol frames, interleaved."""
    import numpy as np
    from ase import Atoms

    from fairchem_deq.data.atoms_graphs import atoms_to_batch

    d = np.load(TEST_DATA / "md17_ethanol_300.npz")
    models = {label: build_model(MD_MINI, n).eval().cuda() for label, n in EXPLICIT.items()}
    models.update({label: build_model(MD_MINI, 1, deq=deq).eval().cuda() for label, deq in DEQ_SETTINGS.items()})
    out = {}
    for batch_size in (1, 32):
        frames = [Atoms(numbers=d["z"], positions=d["R"][i], pbc=False) for i in range(batch_size)]
        batch = atoms_to_batch(frames).to("cuda")
        times = {label: [] for label in models}
        for _ in range(repeats):
            for label, model in models.items():  # interleaved: load drifts hit every model alike
                with torch.no_grad():
                    times[label].append(_timed(lambda model=model, batch=batch: model(batch), 1))
        medians = {label: statistics.median(t) for label, t in times.items()}
        ref = medians["EquiformerV2-4"]
        out[f"batch {batch_size}"] = {
            label: {"seconds": t, "ratio_to_EquiformerV2-4": t / ref} for label, t in medians.items()
        }
        print(f"batch {batch_size}:", {k: round(v / ref, 3) for k, v in medians.items()}, flush=True)
    return out


def main(argv=None) -> int:
    parser = make_parser(__doc__)  # --out: the results folder (--checkpoints, --threads: unused here)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-tests", action="store_true")
    only = "only the mixed-precision comparison, on the CPU (CPU autocast; writes gpu_check_cpu_amp.json)"
    parser.add_argument("--cpu-mixed-precision", action="store_true", help=only)
    args = parser.parse_args(argv)
    if args.cpu_mixed_precision:
        import fairchem_deq

        result = mixed_precision(0, device="cpu", solver_variants=True)
        command = "python -m benchmarks.gpu_check --cpu-mixed-precision"
        write_json("gpu_check_cpu_amp", {"command": command, "machine": machine(), **result}, args.out)
        return 0
    if not torch.cuda.is_available():
        print(f"gpu-check skipped: CUDA is not available here (torch {torch.__version__}); run it on a GPU machine")
        return 0
    import fairchem_deq  # noqa: F401 - registers the models

    command = "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command, "machine": machine(), "gpus": torch.cuda.device_count()}
    payload["tests"] = {} if args.skip_tests else run_tests()
    payload |= {"mixed_precision": mixed_precision(args.repeats), "step_cost": step_cost(args.repeats)}
    path = write_json("gpu_check", payload, args.out)
    print(f"wrote {path}")
    failed = [name for name, r in payload["tests"].items() if r["returncode"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
