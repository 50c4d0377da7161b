"""DEQuiformer in torch-sim: many structures (replicas, conformers, slabs) integrated or
relaxed in one batched state, each system reusing its own fixed point.

    import torch_sim as ts
    from fairchem_deq.simulate.torchsim import DEQTorchSimModel

    model = DEQTorchSimModel("checkpoint.pt")                 # options as DEQCalculator's
    state = ts.integrate([atoms] * 8, model, integrator=ts.nvt_langevin,
                         n_steps=1000, temperature=300, timestep=0.0005)  # ps
    print(model.last_solver_stats["nstep"])                    # evaluations per system, last call

`DEQTorchSimModel` is a torch-sim `ModelInterface`. It loads a checkpoint exactly as
`DEQCalculator` does (`checkpoint_model.py`: same weights choice, EMA by default, same
normalisers and element references, float64 energies) and takes torch-sim's batched state:
one fairchem graph for all systems (`data.atoms_graphs.systems_to_batch`, the Batch
`atoms_to_batch` builds from the same structures), one model pass, energies [n_systems]
(float64) and forces [n_atoms, 3]. No stress (`compute_stress` False): the heads predict
none, and a virial through the fixed point would need energy-gradient forces.

Fixed-point reuse per system: the cache (`fairchem_deq.reuse.FixedPointCache`, configured by
the checkpoint's `task.deq` block) is keyed by the system's index in the state; a system's
stored fixed point (with its predictor history, solver state and contraction estimate) is
its next solve's start unless its atoms changed (count or species, in order) or an atom
moved beyond `reuse_max_displacement` (Å, minimum image) since it was solved: then that
system alone starts cold. Every call is taken as the next frame of every system (one frame
id per call, for the extrapolating predictors). Each row of the batched solve is judged by
its own phase's settings (eval_warm or eval_cold), a failed warm row alone is re-solved from
zero, and with `propagation` the warm rows take their fixed budget while cold or guarded
rows are solved (fairchem_deq.solve.solver): one replica's refusal or failure does not
change another's answer beyond the solver tolerance. A call whose state holds fewer systems
(torch-sim's optimize drops converged ones, re-indexing the rest) keeps only the keys
present; a moved index is then caught by the same checks, and a reused guess from another
system still converges to the same tolerance. `forget(i)` drops system i's entry (e.g. after
replacing its structure); `reset_fixed_points()` drops all.

After each call `last_solver_stats` holds per-system lists: `nstep` (evaluations of f),
`warm` (started from a stored fixed point), `refused` (had one, moved too far), `converged`,
`fallback` (failed warm start redone cold), `rel_residual`, with `propagation` also
`propagated`; and `nfe` (evaluations the batch ran). An explicit EquiformerV2 checkpoint
runs through the same class (`is_deq` False: no solve, no cache, empty statistics), so
baselines and DEQs are compared through one path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fairchem.core.common.relaxation.ase_utils import OCPCalculator
from torch_sim.models.interface import ModelInterface
from torch_sim.state import SimState

from fairchem_deq.data.atoms_graphs import systems_to_batch
from fairchem_deq.reuse import forward_with_reuse
from fairchem_deq.reuse.batch_rows import atom_ranges, cell_pbc

from .checkpoint_model import load_checkpoint_model, predictor_for


class DEQTorchSimModel(ModelInterface):
    def __init__(
        self,
        checkpoint_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        reuse: bool = True,
        tol: float | None = None,
        max_iter: int | None = None,
        warm_start: str | None = None,
        reuse_max_displacement: float | str | None = "checkpoint",
        solver: str | None = None,
        solver_kwargs: dict | None = None,
        weights: str = "auto",
        propagation: str | None = None,
        propagation_guard: float = 0.05,
        seed: int | None = 0,
    ):
        """Options as `DEQCalculator`'s: `tol`/`max_iter` override the checkpoint's
        evaluation solves (cold and warm), `warm_start` the predictor (default as the
        calculator's: `checkpoint_model.predictor_for`), `reuse_max_displacement` (Å, None: no bound; default the
        checkpoint's), `solver` (+ `solver_kwargs`), `weights` ("auto": EMA where the
        checkpoint has them), `propagation` ("one_step"/"two_step": warm rows take that many
        evaluations, guarded by `propagation_guard`). `device`: where the model runs;
        `dtype`: the state's (positions, energies and forces returned; the model itself runs
        in float32, energies are formed in float64)."""
        super().__init__()
        device = torch.device(device)

        def build_trainer(name: str):
            ocp = OCPCalculator(checkpoint_path=checkpoint_path, trainer=name, cpu=device.type == "cpu", seed=seed)
            return ocp.trainer

        self.loaded = load_checkpoint_model(
            checkpoint_path,
            build_trainer,
            weights=weights,
            warm_start=warm_start,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            solver_kwargs=solver_kwargs,
            propagation=propagation,
            propagation_guard=propagation_guard,
        )
        self.model = self.loaded.model  # a registered submodule: .parameters() are the model's
        self.is_deq, self.weights = self.loaded.is_deq, self.loaded.weights
        self.reuse = reuse and self.is_deq
        self.fixed_point_cache = self.loaded.make_cache(predictor_for(warm_start, propagation), reuse_max_displacement)
        self._device, self._dtype = self.loaded.trainer.device, dtype
        self._compute_forces, self._compute_stress = True, False
        self.calls = 0  # frame id of the next call: the cache extrapolates along it
        self.last_solver_stats: dict[str, list | int | str] = {}

    @classmethod
    def from_reference(cls, name: str, **kwargs) -> DEQTorchSimModel:
        """The model of a shipped reference model (`fairchem_deq.reference`), checksum verified."""
        from fairchem_deq.reference import reference_checkpoint

        return cls(reference_checkpoint(name), **kwargs)

    def forget(self, systems) -> None:
        """Drops the stored fixed points of these system indices: their next solve is cold."""
        for index in [systems] if isinstance(systems, int) else systems:
            if self.fixed_point_cache is not None:
                self.fixed_point_cache.evict(int(index))

    def reset_fixed_points(self) -> None:
        if self.fixed_point_cache is not None:
            self.fixed_point_cache.clear()

    def forward(self, state: SimState | dict, **_kwargs) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):
            state = SimState(**{"masses": torch.ones_like(state["positions"][:, 0]), **state})
        n = state.n_systems
        batch = self._batch(state)
        with torch.no_grad():
            if not self.is_deq:
                energy, forces = self._physical(self.model(batch), batch)
                self.last_solver_stats = {}
            else:
                groups = self._row_groups(batch)
                parts = [self._step(batch if len(groups) == 1 else self._batch(state, rows), rows) for rows in groups]
                energy, forces, self.last_solver_stats = _merge(parts, groups, state)
                if self.reuse:
                    self.fixed_point_cache.keep_only(range(n))  # systems beyond the state have ended
        self.calls += 1
        self.last_solver_stats["weights"] = self.weights
        return {"energy": energy.to(self._dtype), "forces": forces.to(self._dtype)}

    def _batch(self, state: SimState, systems: list[int] | None = None):
        """The fairchem Batch of the state's systems (`systems`: only these, in order)."""
        positions, cells, numbers, natoms = (
            state.positions,
            state.row_vector_cell,
            state.atomic_numbers,
            state.n_atoms_per_system,
        )
        if systems is not None:
            atoms = torch.isin(state.system_idx, torch.as_tensor(systems, device=state.system_idx.device))
            positions, numbers, cells, natoms = positions[atoms], numbers[atoms], cells[systems], natoms[systems]
        return systems_to_batch(positions, cells, state.pbc, numbers, natoms, fids=self.calls).to(self._device)

    def _row_groups(self, batch) -> list[list[int]]:
        """The systems solved together: all of them, except that with propagation the
        systems that will start warm and those that start cold are solved apart (the
        propagated budget applies to a batch whose rows all start warm)."""
        systems = list(range(len(batch.natoms)))
        if self.loaded.propagation is None or not self.reuse:
            return [systems]
        warm = [
            self.fixed_point_cache.reusable(
                i, batch.atomic_numbers[a : a + n].long(), batch.pos[a : a + n], *cell_pbc(batch, i)
            )
            for i, (a, n) in enumerate(atom_ranges(batch.natoms))
        ]
        groups = [[i for i in systems if warm[i]], [i for i in systems if not warm[i]]]
        return [g for g in groups if g] if all(groups) else [systems]

    def _step(self, batch, systems: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        step = forward_with_reuse(
            self.model,
            self.model.backbone,
            batch,
            self.fixed_point_cache,
            keys=systems,
            reuse=self.reuse,
            propagation=self.loaded.propagation,
        )
        return (*self._physical(step.outputs, batch), _per_system(step))

    def _physical(self, outputs: dict, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies [n_systems] float64, forces [n_atoms, 3]) in physical units."""
        energy = self.loaded.physical("energy", outputs, batch).reshape(-1)
        return energy, self.loaded.physical("forces", outputs, batch).detach().reshape(-1, 3)


def _per_system(step) -> dict:
    """The solve's per-structure statistics as lists, with where each system started."""
    stats = {k: v.tolist() for k, v in step.solution.stats.items() if v.dim() == 1}
    stats["warm"] = step.warm_start.warm.tolist()
    stats["refused"] = step.warm_start.refused.tolist()
    stats["nfe"] = int(step.solution.stats["nfe"])
    return stats


def _merge(parts: list, groups: list[list[int]], state: SimState) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One result from the groups' (energies, forces, statistics), in the state's system
    order; statistics a group lacks are None for its systems, `nfe` is the groups' sum."""
    if len(parts) == 1:
        return parts[0]
    energy = torch.cat([e for e, _, _ in parts])
    forces = torch.cat([f for _, f, _ in parts])
    order = torch.cat([torch.as_tensor(g) for g in groups]).to(energy.device)
    atoms = torch.cat(
        [
            torch.nonzero(torch.isin(state.system_idx, torch.as_tensor(g, device=state.device))).reshape(-1)
            for g in groups
        ]
    )
    energy = torch.empty_like(energy).index_copy_(0, order, energy)
    forces = torch.empty_like(forces).index_copy_(0, atoms.to(forces.device), forces)
    stats: dict = {"nfe": sum(p[2]["nfe"] for p in parts)}
    for key in {k for _, _, st in parts for k in st if k != "nfe"}:
        values = [None] * state.n_systems
        for group, (_, _, st) in zip(groups, parts):
            for i, value in zip(group, st.get(key, [None] * len(group))):
                values[i] = value
        stats[key] = values
    return energy, forces, stats
