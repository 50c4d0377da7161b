"""DEQCalculator: an ASE calculator that keeps DEQuiformer's fixed point between calls.

    from fairchem_deq import DEQCalculator
    atoms.calc = DEQCalculator("checkpoint.pt")
    forces = atoms.get_forces()

Built on fairchem's OCPCalculator (checkpoint loading, normalisers, device), with
fairchem_deq's trainer doing the prediction: each call starts the solver from the previous
call's fixed point (`warm_start="last"`) or from an extrapolation of the last few
(`"linear"`, `"quadratic"`, `"aspc"`: see `fairchem_deq.warm_start`). The stored fixed points
are dropped when the atom count, the species or the periodicity change.

Energies are float64: the model works in float32, but the large offsets added to its output
(normaliser mean, element references: thousands of eV) are added in float64 by the trainer,
so energies are not rounded to float32's steps (2 meV at -17,618 eV).
With `compare_cold=True` every warm-started call is also solved from zero, and
`last_solver_stats` gains `nstep_cold` and `markov_dev` (||F_warm - F_cold|| / ||F_cold||).
"""

from __future__ import annotations

from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes
from fairchem.core.common.registry import registry
from fairchem.core.common.relaxation.ase_utils import OCPCalculator

from fairchem_deq.atoms_batch import atoms_to_batch
from fairchem_deq.command import CheckpointError
from fairchem_deq.models import DEQEquiformerV2Backbone
from fairchem_deq.warm_start import get_predictor

TRAINER = "fairchem_deq.trainers.DEQForcesTrainer"


def check_deq_checkpoint(checkpoint_path: str | Path) -> dict:
    """Loads a checkpoint's config and fails clearly unless it holds a DEQuiformer."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} is not a fairchem checkpoint (no 'config' with a model)")
    backbone = (config["model"].get("backbone") or {}).get("model") if isinstance(config["model"], dict) else None
    cls = registry.get_model_class(backbone) if backbone else None
    if cls is None or not issubclass(cls, DEQEquiformerV2Backbone):
        raise CheckpointError(
            f"{path} is not a DEQuiformer checkpoint: its model backbone is "
            f"{backbone or config['model'].get('name')!r}, expected "
            "fairchem_deq.models.DEQEquiformerV2Backbone. Use fairchem's OCPCalculator for it."
        )
    return checkpoint


class DEQCalculator(OCPCalculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, checkpoint_path: str | Path, *, cpu: bool = True, reuse: bool = True,
                 tol: float | None = None, max_iter: int | None = None, seed: int | None = 0,
                 warm_start: str = "last", compare_cold: bool = False,
                 reuse_max_displacement: float | None | str = "checkpoint"):
        """`tol`/`max_iter` override the checkpoint's evaluation solver settings (cold and
        warm): the accuracy knob of a DEQ, a tighter tol costs iterations. `warm_start` picks
        the predictor of the next fixed point from the previous calls' (each call is taken as
        the next frame of one trajectory). `reuse_max_displacement` (Å, None: no bound): a
        structure whose atoms moved further since the stored fixed point was solved starts
        from zero; default: the checkpoint's `task.deq.reuse_max_displacement`."""
        get_predictor(warm_start)  # an unknown name fails before the checkpoint is loaded
        check_deq_checkpoint(checkpoint_path)
        super().__init__(checkpoint_path=checkpoint_path, trainer=TRAINER, cpu=cpu, seed=seed)
        self.trainer.deq_eval.reuse = reuse
        self.compare_cold = compare_cold
        self.trainer.deq_eval.compare_cold = compare_cold
        self.trainer.fixed_point_cache.use_predictor(warm_start)
        if reuse_max_displacement != "checkpoint":  # else the checkpoint's task.deq value
            self.trainer.fixed_point_cache.max_displacement = reuse_max_displacement
        self.trainer.deq_eval.warm_start = warm_start
        changes = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
        if changes:
            for phase in ("eval_cold", "eval_warm"):
                self.trainer._backbone.set_solver_settings(phase, **changes)
        self._signature = None
        self._calls = 0  # frame id of the next call: the cache extrapolates along it
        self.last_solver_stats: dict[str, float] = {}

    def reset_fixed_point(self) -> None:
        """Forget the stored fixed point: the next call solves from zero."""
        self.trainer.fixed_point_cache.clear()

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        signature = (tuple(self.atoms.numbers), tuple(bool(p) for p in self.atoms.pbc))
        if signature != self._signature:
            self.reset_fixed_point()
            self._signature = signature
        batch = atoms_to_batch([self.atoms], fids=[self._calls])
        self._calls += 1
        predictions = self.trainer.predict(batch, per_image=False, disable_tqdm=True)
        self.results["energy"] = float(predictions["energy"].reshape(-1)[0].double())
        self.results["forces"] = predictions["forces"].detach().cpu().numpy().reshape(-1, 3)
        stats = self.trainer._backbone.last_output["deq_stats"]
        self.last_solver_stats = {
            k: (bool(v[0]) if v.dtype == torch.bool else v[0].item())
            for k, v in stats.items() if v.dim() == 1
        }
        if self.compare_cold:
            self.last_solver_stats.update(_cold_comparison(self.trainer, self.last_solver_stats))


def _cold_comparison(trainer, stats: dict) -> dict:
    """nstep_cold / markov_dev of the last call from the trainer's solver metrics; a call
    that was solved from zero anyway is its own cold solve."""
    metrics = getattr(trainer, "_last_deq_metrics", None) or {}
    out = {}
    for key, name in (("deq_nstep_cold", "nstep_cold"), ("deq_markov_dev", "markov_dev")):
        entry = metrics.get(key)
        if entry and entry.get("numel"):
            out[name] = entry["total"] / entry["numel"]
    if "nstep_cold" not in out and "nstep" in stats:
        out = {"nstep_cold": stats["nstep"], "markov_dev": 0.0}
    return out
