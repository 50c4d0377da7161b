"""DEQCalculator: an ASE calculator that keeps DEQuiformer's fixed point between calls.

    from fairchem_deq import DEQCalculator
    atoms.calc = DEQCalculator("checkpoint.pt")
    forces = atoms.get_forces()

Built on fairchem's OCPCalculator (checkpoint loading, normalisers, device), with
fairchem_deq's trainer doing the prediction: each call starts the solver from the previous
call's fixed point. The stored fixed point is dropped when the atom count, the species or
the periodicity change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes
from fairchem.core.common.registry import registry
from fairchem.core.common.relaxation.ase_utils import OCPCalculator

from fairchem_deq.atoms_batch import atoms_to_batch
from fairchem_deq.models import DEQEquiformerV2Backbone

TRAINER = "fairchem_deq.trainers.DEQForcesTrainer"


def check_deq_checkpoint(checkpoint_path: str | Path) -> dict:
    """Loads a checkpoint's config and fails clearly unless it holds a DEQuiformer."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{path} is not a fairchem checkpoint (no 'config' with a model)")
    backbone = (config["model"].get("backbone") or {}).get("model") if isinstance(config["model"], dict) else None
    cls = registry.get_model_class(backbone) if backbone else None
    if cls is None or not issubclass(cls, DEQEquiformerV2Backbone):
        raise ValueError(
            f"{path} is not a DEQuiformer checkpoint: its model backbone is "
            f"{backbone or config['model'].get('name')!r}, expected "
            "fairchem_deq.models.DEQEquiformerV2Backbone. Use fairchem's OCPCalculator for it."
        )
    return checkpoint


class DEQCalculator(OCPCalculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, checkpoint_path: str | Path, *, cpu: bool = True, reuse: bool = True,
                 tol: float | None = None, max_iter: int | None = None, seed: int | None = 0):
        """`tol`/`max_iter` override the checkpoint's evaluation solver settings (cold and
        warm): the accuracy knob of a DEQ, a tighter tol costs iterations."""
        check_deq_checkpoint(checkpoint_path)
        super().__init__(checkpoint_path=checkpoint_path, trainer=TRAINER, cpu=cpu, seed=seed)
        self.trainer.deq_eval.reuse = reuse
        self.trainer.deq_eval.compare_cold = False
        changes = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
        if changes:
            for phase in ("eval_cold", "eval_warm"):
                self.trainer._backbone.set_solver_settings(phase, **changes)
        self._signature = None
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
        batch = atoms_to_batch([self.atoms])
        predictions = self.trainer.predict(batch, per_image=False, disable_tqdm=True)
        self.results["energy"] = float(predictions["energy"].reshape(-1)[0])
        self.results["forces"] = predictions["forces"].detach().cpu().numpy().reshape(-1, 3)
        stats = self.trainer._backbone.last_output["deq_stats"]
        self.last_solver_stats = {
            k: (bool(v[0]) if v.dtype == torch.bool else v[0].item())
            for k, v in stats.items() if v.dim() == 1
        }
