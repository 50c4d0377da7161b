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
code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from ase.calculators.calculator import Calculator, all_changes
from fairchem.core.common.registry import registry
from fairchem.core.common.relaxation.ase_utils import OCPCalculator
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
from fairchem.core.models.equiformer_v2.trainers.forces_trainer import EquiformerV2ForcesTrainer

from fairchem_deq.checkpoint_weights import apply_weights, check_weights_choice, resolve_weights
from fairchem_deq.command import CheckpointError
from fairchem_deq.data.atoms_graphs import atoms_to_batch
from fairchem_deq.models import DEQEquiformerV2Backbone
from fairchem_deq.reuse import FixedPointCache, force_deviation, forward_with_reuse, get_predictor
from fairchem_deq.solve import Propagation

TRAINER = "fairchem_deq.trainers.DEQForcesTrainer"


def check_deq_checkpoint(checkpoint_path: str | Path) -> dict:
    """Loads a checkpoint's config and fails clearly unless it holds a DEQuiformer."""
    checkpoint, backbone, cls = _load_checkpoint(checkpoint_path)
    if cls is None or not issubclass(cls, DEQEquiformerV2Backbone):
        raise CheckpointError(
            f"{checkpoint_path} is not a DEQuiformer checkpoint: its model backbone is "
            f"{backbone!r}, expected fairchem_deq.models.DEQEquiformerV2Backbone. "
            "Use fairchem's OCPCalculator for it."
        )
    return checkpoint


def check_calculator_checkpoint(checkpoint_path: str | Path) -> tuple[dict, bool]:
    """(checkpoint, is_deq) of a DEQuiformer or an explicit EquiformerV2 checkpoint; a clear
    error for anything else."""
    checkpoint, backbone, cls = _load_checkpoint(checkpoint_path)
    if cls is not None and issubclass(cls, DEQEquiformerV2Backbone):
        return checkpoint, True
    if cls is not None and issubclass(cls, EquiformerV2Backbone):
        return checkpoint, False
    raise CheckpointError(
        f"{checkpoint_path} is neither a DEQuiformer nor an EquiformerV2 checkpoint: its model backbone "
        f"is {backbone!r}. Use fairchem's OCPCalculator for it."
    )


def _load_checkpoint(checkpoint_path: str | Path) -> tuple[dict, str | None, type | None]:
    """The checkpoint, the name of its backbone and the class fairchem's registry gives it."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} is not a fairchem checkpoint (no 'config' with a model)")
    backbone = (config["model"].get("backbone") or {}).get("model") if isinstance(config["model"], dict) else None
    try:
        cls = registry.get_model_class(backbone) if backbone else None
    except RuntimeError:  # a name fairchem's registry does not know
        cls = None
    return checkpoint, backbone or config["model"].get("name"), cls


def _explicit_trainer(config: dict) -> str:
    """The trainer that trained an explicit checkpoint when it is an EquiformerV2 forces
    trainer (ours records its dotted path), else fairchem's."""
    name = config.get("trainer")
    cls = registry.get_trainer_class(name) if isinstance(name, str) and "." in name else None
    return name if isinstance(cls, type) and issubclass(cls, EquiformerV2ForcesTrainer) else "equiformerv2_forces"


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
        `warm_start` (default then "linear"); a call whose error estimate exceeds
        `propagation_guard` falls back to a converged solve (`last_solver_stats["propagated"]`
        False). See fairchem_deq.solve.propagation."""
        self.propagation = None if propagation is None else Propagation.named(propagation, guard=propagation_guard)
        warm_start = warm_start or ("linear" if propagation else "last")
        get_predictor(warm_start)  # an unknown name fails before the checkpoint is loaded
        check_weights_choice(weights)
        checkpoint, self.is_deq = check_calculator_checkpoint(checkpoint_path)
        resolve_weights(checkpoint, weights, checkpoint_path)  # no EMA to use: fail before loading
        solve_options = {"tol": tol, "max_iter": max_iter, "solver": solver, "b_tol": b_tol, "b_max_iter": b_max_iter}
        solve_options["propagation"] = propagation
        if not self.is_deq and any(v is not None for v in solve_options.values()):
            given = ", ".join(k for k, v in solve_options.items() if v is not None)
            raise ValueError(
                f"{checkpoint_path} is an explicit EquiformerV2: it has no fixed-point solve to set ({given})"
            )
        # fairchem's OCPCalculator loads the checkpoint into a trainer: model, normalisers,
        # element references; in its inference-only mode it drops the EMA weights (the
        # trainer's `ema` is None), so they are put in here.
        trainer = TRAINER if self.is_deq else _explicit_trainer(checkpoint["config"])
        super().__init__(checkpoint_path=checkpoint_path, trainer=trainer, cpu=cpu, seed=seed)
        self.weights = apply_weights(self.trainer._unwrapped_model, checkpoint, weights)
        del checkpoint
        self.model = self.trainer.model.eval()
        if self.propagation is not None and not self.model.backbone.direct_forces:
            raise ValueError(
                "propagation needs direct forces: energy-gradient forces differentiate a converged fixed point"
            )
        self.reuse, self.compare_cold = reuse and self.is_deq, compare_cold and self.is_deq
        self.fixed_point_cache = self._make_cache(warm_start, reuse_max_displacement, reuse_adjoint)
        changes = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
        for phase in ("eval_cold", "eval_warm") if changes else ():
            self.model.backbone.set_solver_settings(phase, **changes)
        if solver is not None:
            self.model.backbone.set_solver(solver, solver_kwargs)
        backward = {k: v for k, v in (("b_tol", b_tol), ("b_max_iter", b_max_iter)) if v is not None}
        if backward:
            self.model.backbone.set_backward_settings(**backward)
        self._signature = None
        self._calls = 0  # frame id of the next call: the cache extrapolates along it
        self.propagation_fallbacks = 0  # propagated calls whose guard sent them to a converged solve
        self.last_solver_stats: dict[str, float | str] = {}

    def _make_cache(self, warm_start, reuse_max_displacement, reuse_adjoint) -> FixedPointCache | None:
        """The checkpoint's task.deq block configures the cache; an explicit model has none."""
        if not self.is_deq:
            return None
        options = self.trainer.reuse_options
        return FixedPointCache(
            options.cache_size,
            warm_start,
            options.cache_mb,
            options.reuse_max_displacement if reuse_max_displacement == "checkpoint" else reuse_max_displacement,
            keep_adjoint=reuse_adjoint,
        )

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
        """A model output in physical units: fairchem's normaliser and element references,
        applied in float64 to the energy (offsets of thousands of eV)."""
        value = self._target(target, outputs)
        value = value.double() if target == "energy" else value
        if target in self.trainer.normalizers:
            value = self.trainer.normalizers[target](value)
        if target in self.trainer.elementrefs:
            # fairchem's LinearReferences add [n_atoms, 1] per-atom references by structure:
            # the per-structure values go in as [n_structures, 1] (as fairchem's trainer has them)
            refs = self.trainer.elementrefs[target]
            value = refs(value.reshape(len(batch.natoms), -1), batch).reshape(value.shape)
        return value

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
        """The tensor of `target` in hydra's outputs (a head may return a dict of properties)."""
        value = outputs[target]
        return value if torch.is_tensor(value) else value[self.trainer.output_targets[target]["property"]]


def _first_structure(stats: dict) -> dict:
    return {k: (bool(v[0]) if v.dtype == torch.bool else v[0].item()) for k, v in stats.items() if v.dim() == 1}
