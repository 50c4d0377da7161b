"""fairchem's DeNS trainer with the DeNS paper's force loss on noisy batches.

Why: fairchem 1.10's `DenoisingForcesTrainer._compute_loss` builds the denoising force term
of a noisy batch correctly, then falls through to its generic line and appends a SECOND
forces term, `forces coefficient * fn(pred, forces_normalizer.norm(target))`, on the
already-normalised noise target (noise / std, normalised again by the force std). The
reference DeNS trainer (github.com/atomicarchitects/DeNS, trainers/
denoising_forces_trainer.py) has no such term. With MD17's 80:5 force:denoising weights
it would dominate the denoising objective with a wrongly scaled target.

Here a noisy batch's loss is fairchem's own loss for every target except forces, plus the
denoising force term built from fairchem's pieces (its noise normaliser and
`compute_atomwise_denoising_pos_and_force_hybrid_loss`). Clean batches use fairchem's code
unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from fairchem.core.models.equiformer_v2.trainers.dens_trainer import (
    DenoisingForcesTrainer,
    compute_atomwise_denoising_pos_and_force_hybrid_loss,
)


class DeNSPaperLoss(DenoisingForcesTrainer):
    def _compute_loss(self, out, batch):
        if not batch.get("denoising_pos_forward", False):
            return super()._compute_loss(out, batch)
        forces_info = dict(self.loss_functions).get("forces")
        if forces_info is None:
            raise ValueError("DeNS needs a `forces` entry in loss_functions")
        with self._loss_functions_without("forces") as remaining:
            loss = super()._compute_loss(out, batch) if remaining else 0.0
        return loss + self._denoising_forces_loss(out["forces"], batch, forces_info)

    @contextmanager
    def _loss_functions_without(self, target: str):
        full = self.loss_functions
        self.loss_functions = [(name, info) for name, info in full if name != target]
        try:
            yield self.loss_functions
        finally:
            self.loss_functions = full

    def _denoising_forces_loss(self, pred, batch, info) -> torch.Tensor:
        """Noised atoms: predict noise / std (weight denoising_pos_coefficient); with
        corrupt_ratio the other atoms keep their normalised force target (forces weight)."""
        params = self.denoising_pos_params
        target = self.normalizers["denoising_pos_target"].norm(batch.noise_vec)
        noise_mask = batch.get("noise_mask")
        if noise_mask is not None:
            forces = batch.forces
            if "forces" in self.normalizers:
                forces = self.normalizers["forces"].norm(forces)
            target = torch.where(noise_mask.view(-1, 1), target, forces)
        spec = self.output_targets["forces"]
        mask = None
        if spec["level"] == "atom" and spec["train_on_free_atoms"]:
            mask = batch.fixed == 0
            if params.all_atoms:  # noised fixed atoms are denoised too
                mask = mask | noise_mask if noise_mask is not None else torch.ones_like(mask)
        if noise_mask is not None:
            return compute_atomwise_denoising_pos_and_force_hybrid_loss(
                pred=pred,
                target=target,
                noise_mask=noise_mask.view(-1, 1),
                force_mult=info["coefficient"],
                denoising_pos_mult=params.denoising_pos_coefficient,
                mask=mask,
            )
        natoms = torch.repeat_interleave(batch.natoms, batch.natoms)
        if mask is not None:
            pred, target, natoms = pred[mask], target[mask], natoms[mask]
        return params.denoising_pos_coefficient * info["fn"](pred, target, natoms=natoms)
