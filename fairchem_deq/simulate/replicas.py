"""N replicas of one structure at temperature T, integrated together by torch-sim: Langevin
NVT (torch-sim's `nvt_langevin`, BAOAB) in one batched state, each replica reusing its own
fixed point (`DEQTorchSimModel`), trajectories through torch-sim's `TrajectoryReporter`
(one HDF5 file per replica) and the solver evaluations of every replica at every step.

Replica i starts from the same positions with Maxwell-Boltzmann velocities drawn with seed
`seed + i` (centre-of-mass motion removed); the thermostat's noise comes from torch's
global generator, seeded with `seed`. The `fairchem-deq replicas` command runs this.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from ase import Atoms

from .torchsim import DEQTorchSimModel


@dataclass
class ReplicaReport:
    replicas: int
    natoms: int  # per replica
    steps_run: int
    timestep_fs: float
    temperature_K: float
    friction_per_fs: float
    seed: int
    is_deq: bool
    weights: str
    # [step][replica]: solver evaluations of each replica's forces; step 0 = the initial
    # forces (solved cold); None for an explicit model
    evaluations_per_step: list[list[int]] | None
    mean_evaluations_per_replica_step: float | None  # over steps 1.. (the warm steps)
    warm_starts_per_replica: list[int] | None  # steps each replica started from its stored fixed point
    final_temperature_K: list[float]  # per replica, from its kinetic energy
    wall_s: float  # the integration, model loading excluded (a loaded machine is not a benchmark)
    atom_steps_per_s: float
    trajectories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def replica_momenta(state, kT: torch.Tensor, seed: int) -> torch.Tensor:
    """Maxwell-Boltzmann momenta for every system of `state`, system i drawn with seed + i
    (torch-sim's `calculate_momenta`, centre-of-mass motion removed)."""
    from torch_sim.integrators import calculate_momenta

    parts = []
    for i, n in enumerate(state.n_atoms_per_system.tolist()):
        atoms = state.system_idx == i
        single = torch.zeros(n, dtype=torch.long, device=state.device)
        parts.append(calculate_momenta(state.positions[atoms], state.masses[atoms], single, kT, seed + i))
    return torch.cat(parts)


class LangevinReplicas:
    """torch-sim Langevin NVT (`nvt_langevin`, BAOAB) of `frames` in one batched state with
    `model`; system i starts with Maxwell-Boltzmann velocities of seed `seed + i`, and the
    thermostat's noise comes from torch's global generator, seeded here with `seed`.
    `state` holds the forces and energies of the current step; `step()` advances every
    system one step."""

    def __init__(
        self,
        model: DEQTorchSimModel,
        frames: list[Atoms],
        *,
        temperature_K: float = 300.0,
        timestep_fs: float = 0.5,
        friction_per_fs: float = 0.01,
        seed: int = 0,
    ):
        import torch_sim as ts
        from torch_sim.integrators import nvt_langevin
        from torch_sim.units import MetalUnits

        per_fs = 1e-3 * MetalUnits.time  # torch-sim's time unit per fs
        kT = torch.tensor(temperature_K * MetalUnits.temperature, dtype=model.dtype, device=model.device)
        init, self.update = nvt_langevin(model, dt=timestep_fs * per_fs, kT=kT, gamma=friction_per_fs / per_fs)
        torch.manual_seed(seed)
        self.model, self.state = model, init(ts.initialize_state(frames, model.device, model.dtype))
        self.state.momenta = replica_momenta(self.state, kT, seed)

    def step(self):
        self.state = self.update(self.state)
        return self.state


def run_replicas(
    atoms: Atoms,
    model: DEQTorchSimModel,
    *,
    replicas: int = 8,
    temperature_K: float = 300.0,
    steps: int = 100,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
    seed: int = 0,
    trajectories: list[str | Path] | None = None,
    state_frequency: int = 1,
) -> ReplicaReport:
    """`replicas` copies of `atoms` integrated `steps` Langevin steps together at
    `temperature_K` (`LangevinReplicas`); `trajectories`: one file per replica for
    torch-sim's reporter (positions every `state_frequency` steps; potential and kinetic
    energy, temperature every step), None: none written."""
    import torch_sim as ts
    from torch_sim.quantities import calc_kinetic_energy, calc_temperature

    if replicas < 1 or steps < 0:
        raise ValueError(f"replicas must be >= 1 and steps >= 0, got {replicas} and {steps}")
    if trajectories is not None and len(trajectories) != replicas:
        raise ValueError(f"{len(trajectories)} trajectory files for {replicas} replicas")
    reporter = None
    if trajectories is not None:
        properties = {
            "potential_energy": lambda s: s.energy,
            "kinetic_energy": lambda s: calc_kinetic_energy(momenta=s.momenta, masses=s.masses),
            "temperature": lambda s: calc_temperature(momenta=s.momenta, masses=s.masses),
        }
        reporter = ts.TrajectoryReporter(
            [str(p) for p in trajectories], state_frequency=state_frequency, prop_calculators={1: properties}
        )
    evaluations, warm = [], []
    try:
        start = time.perf_counter()
        run = LangevinReplicas(
            model,
            [atoms] * replicas,
            temperature_K=temperature_K,
            timestep_fs=timestep_fs,
            friction_per_fs=friction_per_fs,
            seed=seed,
        )
        for step in range(steps + 1):
            md = run.step() if step else run.state
            evaluations.append(model.last_solver_stats.get("nstep"))
            warm.append(model.last_solver_stats.get("warm"))
            if reporter is not None:
                reporter.report(md, step, model=model)
        wall = time.perf_counter() - start
    finally:
        if reporter is not None:
            reporter.finish()
    temperature = calc_temperature(momenta=md.momenta, masses=md.masses, system_idx=md.system_idx)
    deq = model.is_deq
    return ReplicaReport(
        replicas=replicas,
        natoms=len(atoms),
        steps_run=steps,
        timestep_fs=timestep_fs,
        temperature_K=temperature_K,
        friction_per_fs=friction_per_fs,
        seed=seed,
        is_deq=deq,
        weights=model.weights,
        evaluations_per_step=evaluations if deq else None,
        mean_evaluations_per_replica_step=sum(map(sum, evaluations[1:])) / (steps * replicas)
        if deq and steps
        else None,
        warm_starts_per_replica=[sum(column) for column in zip(*warm)] if deq else None,
        final_temperature_K=temperature.reshape(-1).tolist(),
        wall_s=wall,
        atom_steps_per_s=replicas * len(atoms) * steps / wall if steps else 0.0,
        trajectories=[str(p) for p in trajectories or []],
    )
