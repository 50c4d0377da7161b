"""One DEQ solver iteration vs one explicit EquiformerV2 block of the same width.

Per-unit costs come from differences, so the shared parts (graph, embeddings, heads) cancel:
  iteration = (T(DEQ1 forward, 12 iterations) - T(DEQ1 forward, 4 iterations)) / 8
  block     = (T(EquiformerV2, 10 layers) - T(EquiformerV2, 2 layers)) / 8
all timed interleaved in this process (inference, batch 1, no autograd). Also counts the
parameters of DEQ1/DEQ2 and EquiformerV2 with 4 and 8 layers at both widths.

    .venv/bin/python -m benchmarks.iteration_cost [--repeats 15]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from benchmarks.common import (
    MD_MINI,
    OC20_200K,
    SHARED_DATA,
    TEST_DATA,
    build_model,
    machine,
    num_params,
    save_figure,
    write_json,
)

LO, HI = 4, 12  # iterations (DEQ) / 2, 10 layers (explicit)


def _structures():
    import numpy as np
    from ase import Atoms
    from ase.io import read

    md17 = SHARED_DATA / "md17_ethanol_2000.npz"
    md17 = md17 if md17.exists() else TEST_DATA / "md17_ethanol_300.npz"
    d = np.load(md17)
    ethanol = Atoms(numbers=d["z"], positions=d["R"][0], pbc=False)
    traj = SHARED_DATA / "oc20_relax_trajs" / "random1000156.traj"
    traj = traj if traj.exists() else TEST_DATA / "random1000156.traj"
    return {"ethanol": (ethanol, MD_MINI), "oc20": (read(traj, index=0), OC20_200K)}


def _deq(iters: int) -> dict:
    s = {"max_iter": iters, "tol": 1e-12, "stop_mode": "rel"}  # never met: exactly `iters` NFE
    return {"solver": "anderson", "eval_cold": s, "on_diverge": "warn"}


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn(), fn()  # warm-up
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(repeats: int) -> dict:
    from fairchem_deq.data.atoms_graphs import atoms_to_batch

    logging.getLogger().setLevel(logging.ERROR)  # the capped solves warn by design
    results = {}
    for name, (atoms, width) in _structures().items():
        batch = atoms_to_batch([atoms])
        models = {
            "deq_lo": build_model(width, 1, _deq(LO)).eval(),
            "deq_hi": build_model(width, 1, _deq(HI)).eval(),
            "exp_lo": build_model(width, 2).eval(),
            "exp_hi": build_model(width, 10).eval(),
        }
        # identical weights inside the fixed-point function for both DEQ iteration caps
        models["deq_hi"].load_state_dict(models["deq_lo"].state_dict())

        def run(model, batch=batch):
            def fn():
                with torch.no_grad():
                    model(batch)

            return fn

        med = _interleaved_medians({k: run(m) for k, m in models.items()}, repeats)
        iteration = (med["deq_hi"] - med["deq_lo"]) / (HI - LO)
        block = (med["exp_hi"] - med["exp_lo"]) / (HI - LO)
        results[name] = {
            "natoms": len(atoms),
            "deq_iteration_ms": 1e3 * iteration,
            "explicit_block_ms": 1e3 * block,
            "iteration_over_block": iteration / block,
            "medians_ms": {k: 1e3 * v for k, v in med.items()},
        }
        print(
            f"{name}: DEQ iteration {1e3 * iteration:.2f} ms, explicit block {1e3 * block:.2f} ms, "
            f"ratio {iteration / block:.3f}"
        )
    return results


def parameter_counts() -> dict:
    counts = {}
    for wname, width in (("md_mini", MD_MINI), ("oc20_200k", OC20_200K)):
        counts[wname] = {
            "DEQ1": num_params(build_model(width, 1, {})),
            "DEQ2": num_params(build_model(width, 2, {})),
            "EquiformerV2-4": num_params(build_model(width, 4)),
            "EquiformerV2-8": num_params(build_model(width, 8)),
        }
    return counts


def plot(results: dict, counts: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(results)
    x = range(len(names))
    ax1.bar([i - 0.2 for i in x], [results[n]["deq_iteration_ms"] for n in names], 0.4, label="DEQ solver iteration")
    ax1.bar([i + 0.2 for i in x], [results[n]["explicit_block_ms"] for n in names], 0.4, label="EquiformerV2 block")
    ax1.set_xticks(list(x), [f"{n} ({results[n]['natoms']} atoms)" for n in names])
    ax1.set_ylabel("ms (median, CPU)")
    ax1.set_title("Cost of one iteration vs one block")
    ax1.legend()
    models = list(next(iter(counts.values())))
    for i, (wname, c) in enumerate(counts.items()):
        ax2.bar([j + 0.4 * i - 0.2 for j in range(len(models))], [c[m] / 1e6 for m in models], 0.4, label=wname)
    ax2.set_xticks(range(len(models)), models)
    ax2.set_ylabel("parameters (millions)")
    ax2.set_title("Model size")
    ax2.legend()
    return save_figure(fig, "iteration_cost")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = measure(args.repeats)
    counts = parameter_counts()
    print("parameters:", counts)
    path = write_json(
        "iteration_cost",
        {
            "command": "python -m benchmarks.iteration_cost --repeats %d" % args.repeats,
            "machine": machine(),
            "iteration_vs_block": results,
            "parameters": counts,
        },
    )
    png = plot(results, counts)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
