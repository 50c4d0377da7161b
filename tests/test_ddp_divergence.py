"""A training solve that diverges on one DDP rank raises on every rank (2 CPU ranks, gloo):
a rank that raised alone would leave the others waiting in the gradient all-reduce."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairchem_deq.models.deq_options import DEQBackboneOptions
from fairchem_deq.solve import DEQDivergenceError, SolveScope, StructureDEQSolver


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        weight = torch.nn.Parameter(0.3 * torch.eye(6))
        bias = torch.randn(6)
        poisoned = rank == 0  # only rank 0's batch produces NaN

        def f(z):
            out = torch.tanh(z @ weight.T) + bias
            return out * float("nan") if poisoned else out

        solver = StructureDEQSolver(DEQBackboneOptions.from_dict({"train": {"max_iter": 6}}))
        solver.train()
        outcome = "no error"
        try:
            result = solver(f, torch.zeros(2, 3, 6), warm_started=False, scope=SolveScope([]))
            result.fixed_point.sum().backward()
        except DEQDivergenceError as exc:
            outcome = str(exc)
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump({"outcome": outcome}, fh)
    finally:
        dist.destroy_process_group()


def test_divergence_on_one_rank_raises_on_every_rank(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text())["outcome"] for r in (0, 1)]
    assert "structure(s) [0, 1] of the batch" in outcomes[0], outcomes
    assert "another DDP rank" in outcomes[1], outcomes
