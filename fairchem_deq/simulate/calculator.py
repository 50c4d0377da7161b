"""DEQCalculator: an ASE calculator that keeps DEQuiformer's fixed point between calls.

    from fairchem_deq import DEQCalculator
    atoms.calc = DEQCalculator("checkpoint.pt")
    forces = atoms.get_forces()

Built on fairchem's OCPCalculator (checkpoint loading, normalisers, device); each call runs
the model through `fairchem_deq.reuse.forward_with_reuse`, which starts the solver from the previous
call's fixed point (`warm_start="last"`) or from an extrapolation of the last few
(`"linear"`, `"quadratic"`, `"aspc"`: see `fairchem_deq.reuse.predictors`). The stored fixed points
are dropped when the atom count, the species or the periodicity change.

Energies are float64: the model works in float32, but the large offsets added to its output
(normaliser mean, element references: thousands of eV) are added in float64 here,
so energies are not rounded to float32's steps (2 meV at -17,618 eV).
The calculator owns its fixed-point cache (`fixed_point_cache`), configured from the
checkpoint's `task.deq` block.
With `compare_cold=True` every warm-started call is also solved from zero, and
`last_solver_stats` gains `nstep_cold` and `markov_dev` (||F_warm - F_cold|| / ||F_cold||).

Weights: the ones fairchem's validation reports, i.e. the checkpoint's EMA weights where it
holds them (`weights="auto"`, the default; `calc.weights` and `last_solver_stats["weights"]`
say "ema" or "raw"). fairchem's OCPCalculator evaluates the raw weights of `checkpoint.pt`;
`weights="raw"` does the same here (see fairchem_deq/checkpoint_weights.py).

Explicit baselines: a fairchem EquiformerV2 checkpoint (e.g. configs/md17/ethanol/eqv2_4l.yml)
runs through the same calculator (same graph building, weights choice and float64 energies,
no fixed point: `calc.is_deq` is False), so a DEQ and its baselines are compared through one
code path. Loading, weights and physical units: `checkpoint_model.py`, shared with the
torch-sim model (`fairchem_deq.simulate.torchsim`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from ase.calculators.calculator import Calculator, all_changes
from fairchem.core.common.relaxation.ase_utils import OCPCalculator

from fairchem_deq.data.atoms_graphs import atoms_to_batch
from fairchem_deq.reuse import force_deviation, forward_with_reuse

from .checkpoint_model import (
    TRAINER,
    check_calculator_checkpoint,
    check_deq_checkpoint,
    load_checkpoint_model,
    predictor_for,
)

__all__ = ["TRAINER", "DEQCalculator", "check_calculator_checkpoint", "check_deq_checkpoint"]


class DEQCalculator(OCPCalculator):
    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

    def __init__(
        self,
        checkpoint_path: str | Path,
        *,
        cpu: bool = True,
        reuse: bool = True,
        tol: float | None = None,
        max_iter: int | None = None,
        seed: int | None = 0,
        warm_start: str | None = None,
        compare_cold: bool = False,
        reuse_max_displacement: float | str | None = "checkpoint",
        solver: str | None = None,
        solver_kwargs: dict | None = None,
        b_tol: float | None = None,
        b_max_iter: int | None = None,
        reuse_adjoint: bool = True,
        weights: str = "auto",
        propagation: str | None = None,
        propagation_guard: float = 0.05,
    ):
        """`tol`/`max_iter` override the checkpoint's evaluation solver settings (cold and
        warm): the accuracy knob of a DEQ, a tighter tol costs iterations. `warm_start` picks
        the predictor of the next fixed point from the previous calls' (each call is taken as
        the next frame of one trajectory). `reuse_max_displacement` (Å, None: no bound): a
        structure whose atoms moved further since the stored fixed point was solved starts
        from zero; default: the checkpoint's `task.deq.reuse_max_displacement`. `solver`
        (with `solver_kwargs`) replaces the checkpoint's deq.solver, e.g. "broyden_reuse",
        whose inverse-Jacobian model is then reused beside the fixed point. With
        energy-gradient forces, `b_tol`/`b_max_iter` override the checkpoint's adjoint solve
        (relative or absolute as its deq.b_stop_mode) and `reuse_adjoint` starts each adjoint
        solve from the previous call's adjoint (False: from zero). `weights`: "auto" (the
        checkpoint's EMA weights where it holds them, as fairchem's validation reports, else
        the raw ones), "ema" (an error without them) or "raw" (`state_dict` as trained, what
        fairchem's OCPCalculator evaluates); `self.weights` says which are used.
        `propagation` ("one_step", "two_step"; None: a converged solve every call): warm calls
        take exactly that many evaluations of f, no convergence loop, with the predictor
        `warm_start` (default then "last" for one_step, "linear" for two_step: a linear
        one-step history can diverge); a call whose error estimate exceeds
        `propagation_guard` falls back to a converged solve (`last_solver_stats["propagated"]`
        False). See fairchem_deq.solve.propagation."""

        def build_trainer(name: str):
            # fairchem's OCPCalculator loads the checkpoint into a trainer: model,
            # normalisers, element references (the loader then puts in the EMA weights)
            super(DEQCalculator, self).__init__(checkpoint_path=checkpoint_path, trainer=name, cpu=cpu, seed=seed)
            return self.trainer

        self.loaded = load_checkpoint_model(
            checkpoint_path,
            build_trainer,
            weights=weights,
            warm_start=warm_start,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            solver_kwargs=solver_kwargs,
            b_tol=b_tol,
            b_max_iter=b_max_iter,
            propagation=propagation,
            propagation_guard=propagation_guard,
        )
        self.model, self.is_deq, self.weights = self.loaded.model, self.loaded.is_deq, self.loaded.weights
        self.propagation = self.loaded.propagation
        self.reuse, self.compare_cold = reuse and self.is_deq, compare_cold and self.is_deq
        warm_start = predictor_for(warm_start, propagation)
        self.fixed_point_cache = self.loaded.make_cache(warm_start, reuse_max_displacement, reuse_adjoint)
        self._signature = None
        self._calls = 0  # frame id of the next call: the cache extrapolates along it
        self.propagation_fallbacks = 0  # propagated calls whose guard sent them to a converged solve
        self.last_solver_stats: dict[str, float | str] = {}

    @classmethod
    def from_reference(cls, name: str, **kwargs) -> DEQCalculator:
        """The calculator of a shipped reference model (`fairchem_deq.reference`), e.g.
        "ethanol_deq1"; its checksum is verified first. `kwargs` as the constructor's."""
        from fairchem_deq.reference import reference_checkpoint

        return cls(reference_checkpoint(name), **kwargs)

    def reset_fixed_point(self) -> None:
        """Forget the stored fixed point: the next call solves from zero."""
        if self.fixed_point_cache is not None:
            self.fixed_point_cache.clear()

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        signature = (tuple(self.atoms.numbers), tuple(bool(p) for p in self.atoms.pbc))
        if signature != self._signature:
            self.reset_fixed_point()
            self._signature = signature
        batch = atoms_to_batch([self.atoms], fids=[self._calls]).to(self.trainer.device)
        self._calls += 1
        if not self.is_deq:
            with torch.no_grad():
                outputs = self.model(batch)
            self._store_results(outputs, batch)
            self.last_solver_stats = {"weights": self.weights}
            return
        with torch.no_grad():
            step = forward_with_reuse(
                self.model,
                self.model.backbone,
                batch,
                self.fixed_point_cache,
                reuse=self.reuse,
                compare_cold=self.compare_cold,
                propagation=self.propagation,
            )
        self._store_results(step.outputs, batch)
        self.last_solver_stats = _first_structure(step.solution.stats)
        if self.last_solver_stats.get("propagated") is False:
            self.propagation_fallbacks += 1
        self.last_solver_stats["weights"] = self.weights
        if self.compare_cold:
            self.last_solver_stats.update(self._cold_comparison(step, batch))

    def _store_results(self, outputs: dict, batch) -> None:
        energy = self._physical("energy", outputs, batch)
        forces = self._physical("forces", outputs, batch)
        self.results["energy"] = float(energy.reshape(-1)[0])
        self.results["forces"] = forces.detach().cpu().numpy().reshape(-1, 3)

    def _physical(self, target: str, outputs: dict, batch) -> torch.Tensor:
        return self.loaded.physical(target, outputs, batch)

    def _cold_comparison(self, step, batch) -> dict:
        """nstep_cold / markov_dev of the call; a call that was solved from zero anyway is
        its own cold solve."""
        if step.cold_solution is None:
            return {"nstep_cold": self.last_solver_stats["nstep"], "markov_dev": 0.0}
        forces, cold = (self._target("forces", o) for o in (step.outputs, step.cold_outputs))
        return {
            "nstep_cold": step.cold_solution.stats["nstep"][0].item(),
            "markov_dev": force_deviation(forces, cold, batch.natoms)[0].item(),
        }

    def _target(self, target: str, outputs: dict) -> torch.Tensor:
        return self.loaded.target(target, outputs)


def _first_structure(stats: dict) -> dict:
    return {k: (bool(v[0]) if v.dtype == torch.bool else v[0].item()) for k, v in stats.items() if v.dim() == 1}
