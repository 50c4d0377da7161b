"""DEQForcesTrainer: fairchem's EquiformerV2 forces trainer, aware of fixed points.

Overrides only the smallest methods: `_forward` (warm start from the cache, optional cold
comparison, fixed-point-correction outputs), `_compute_loss` (adds the correction loss),
`_compute_metrics` (adds solver statistics, so they reach fairchem's log line and its
tensorboard/wandb logger), `_aggregate_metrics` (the same metric keys on every DDP rank),
and `validate` / `predict` / `run_relaxations` (trajectory order, a fresh cache, a summary
of solver statistics; under DDP, padding batches that count nowhere, see
`trajectory_sampler.py`). Mixins shared with the explicit baselines' trainer: atomic
checkpoints and a checkpoint at the end of every run (`training_run.py`), readout constants
from the data (`readout_constants.py`), EMA warm-up (`ema_warmup.py`). Everything else, including
the checkpoint contents, resume, DDP and the LR schedule, is fairchem's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar

import torch
from fairchem.core.common import distutils
from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.trainers.forces_trainer import EquiformerV2ForcesTrainer

from fairchem_deq.config.check import check_config
from fairchem_deq.outputs import write_text_atomic
from fairchem_deq.reuse import ReuseOptions, ReuseStep, forward_with_reuse
from fairchem_deq.reuse.batch_rows import batch_keys

from . import float64_outputs
from .ddp_metrics import aggregate_over_ranks, all_gather_object, all_reduce_max, all_reduce_sum
from .ema_warmup import EMAWarmupMixin
from .readout_constants import ReadoutConstantsMixin
from .relax_trajectories import record_initial_frames
from .solver_stats import SolverStatsAccumulator
from .train_options import DEQTrainOptions
from .training_run import TrainingRunMixin
from .trajectory_sampler import PaddedDataset, TrajectoryBatchSampler, dataset_sids_fids, is_padding


@registry.register_trainer("deq_forces")
class DEQForcesTrainer(TrainingRunMixin, ReadoutConstantsMixin, EMAWarmupMixin, EquiformerV2ForcesTrainer):
    # the config blocks it reads (fairchem_deq.config.check parses each once, before a run)
    config_blocks: ClassVar[dict] = {"task.deq": ReuseOptions, "optim.deq": DEQTrainOptions}

    def __init__(self, *args, name: str = "s2ef", **kwargs):
        # fairchem creates the run folders before it builds the model: check every block of
        # the trainer and the backbone first, so a bad key is one clear error and leaves
        # nothing behind
        blocks = check_config(
            {"model": kwargs.get("model"), "task": kwargs.get("task"), "optim": kwargs.get("optimizer")},
            trainer=type(self),
        )
        # fairchem names the task "ocp" for any trainer it does not know (dotted paths
        # included), which drops the S2EF metrics and renames the prediction file.
        super().__init__(*args, name="s2ef" if name == "ocp" else name, **kwargs)
        self.reuse_options: ReuseOptions = blocks["task.deq"]
        self.deq_train: DEQTrainOptions = blocks["optim.deq"]
        self.fixed_point_cache = self.reuse_options.make_cache()
        self.last_step: ReuseStep | None = None  # the latest forward pass (outputs, solution, guess)
        self.solver_stats = SolverStatsAccumulator()
        self._in_relaxation = False
        self._segments: TrajectoryBatchSampler | None = None  # while a trajectory-ordered pass runs
        self._last_deq_metrics: dict = {}
        self._fpc_outputs: list[dict] = []
        # padding batches of a trajectory-ordered pass (trajectory_sampler): their loss values
        # [sum, count], left out of the validation loss, and which predicted rows are padding
        self._padding_loss = [0.0, 0]
        self._padding_rows: list[bool] = []
        self._jacobian_loss = None  # this training step's Jacobian regularisation term
        if self.deq_train.jac_reg_weight > 0:
            self._backbone.set_jacobian_regularisation(self.deq_train.jac_reg_vectors)

    # ---- model access -------------------------------------------------------------
    @property
    def _backbone(self):
        backbone = getattr(self._unwrapped_model, "backbone", None)
        if backbone is None or not hasattr(backbone, "deq_layer"):
            raise TypeError(
                "DEQForcesTrainer needs a hydra model whose backbone is fairchem_deq.models.DEQEquiformerV2Backbone"
            )
        return backbone

    # ---- normalisation and checkpoints -------------------------------------------
    def load_references_and_normalizers(self):
        super().load_references_and_normalizers()
        if _has_energy_gradient_forces(self.config["model"]) and "energy" in self.normalizers:
            self._tie_force_normalizer()

    def _tie_force_normalizer(self) -> None:
        """Forces = -dE/dpos: in fairchem's normalised units that holds only if forces are
        scaled by the energy's rmsd (and have no offset). Fitted separately (the MD configs'
        `forces: {mean: 0.0}`) the two rmsds differ several-fold, and the model would be
        asked for an energy whose gradient is not its forces."""
        from fairchem.core.modules.normalization.normalizer import Normalizer

        energy, forces = self.normalizers["energy"], self.normalizers.get("forces")
        if forces is not None and float(forces.mean) == 0.0 and torch.isclose(forces.rmsd, energy.rmsd):
            return
        logging.info(
            "energy-gradient forces: forces normalised by the energy's rmsd %.6g (was %s)",
            float(energy.rmsd),
            None if forces is None else f"mean {float(forces.mean):.6g}, rmsd {float(forces.rmsd):.6g}",
        )
        self.normalizers["forces"] = Normalizer(mean=0.0, rmsd=energy.rmsd.detach().clone()).to(self.device)

    def _aggregate_metrics(self, metrics):
        total, count = self._padding_loss
        if count and "loss" in metrics:  # fairchem's validate adds every batch's loss itself
            metrics["loss"]["total"] -= total
            metrics["loss"]["numel"] -= count
        self._padding_loss = [0.0, 0]
        return aggregate_over_ranks(metrics, self.device)

    def _reuse_now(self) -> bool:
        if self.model.training:
            return self.deq_train.reuse_in_training
        return self.reuse_options.reuse

    # ---- forward / loss / metrics -------------------------------------------------
    def _forward(self, batch):
        batch = batch.to(self.device)
        padding = is_padding(batch)  # run only so that every rank issues the same collectives
        if self._segments is not None:
            self._padding_rows += [padding] * len(batch.natoms)
        keys = self._cache_keys(batch)
        step = forward_with_reuse(
            super()._forward,
            self._backbone,
            batch,
            self.fixed_point_cache,
            keys,
            reuse=keys is not None and self._reuse_now() and not padding,  # padding: leave the cache alone
            compare_cold=not self.model.training and self.reuse_options.compare_cold and not self._in_relaxation,
            lockstep=self._segments is not None or self._in_relaxation,
        )
        self.last_step = step
        out, solution = step.outputs, step.solution
        self._last_deq_metrics = {}
        if not padding:
            self._last_deq_metrics = self.solver_stats.add(
                solution.stats,
                warm=step.warm_start.warm if step.warm_start.any_warm else None,
                cold_stats=None if step.cold_solution is None else step.cold_solution.stats,
                forces=out.get("forces"),
                cold_forces=None if step.cold_outputs is None else step.cold_outputs.get("forces"),
                natoms=batch.natoms,
                refused=step.warm_start.refused,
            )
        self._jacobian_loss = solution.jacobian_loss if self.model.training else None
        if self._jacobian_loss is not None and not padding:
            jacobian = {"total": float(self._jacobian_loss), "numel": 1}
            self._last_deq_metrics["deq_jac_reg"] = jacobian
        self._fpc_outputs = []
        if self.model.training and self.deq_train.fpc_weight > 0:
            graph = step.backbone_output["graph"]
            self._fpc_outputs = [self._decode_state(s, graph, batch) for s in solution.states]
        return out

    def _cache_keys(self, batch) -> list | None:
        """Fixed-point cache keys: (sid, segment) in a trajectory-ordered pass, else sids;
        None for a batch without sids (fairchem's OCPCalculator converts bare Atoms: every
        call is an independent structure, solved from zero and not cached)."""
        if getattr(batch, "sid", None) is None:
            return None
        sids = batch_keys(batch)
        if self._segments is None or "fid" not in batch:
            return sids
        return [self._segments.segment_key(sid, fid) for sid, fid in zip(sids, batch.fid.tolist())]

    def _decode_state(self, state, graph, batch) -> dict:
        """Head outputs for an intermediate solver state, mapped to targets like `_forward`.
        Heads that return a dict of several targets (`pass_through_head_outputs`, e.g. the
        energy-gradient head's energy and forces) are merged as fairchem's HydraModel does."""
        emb = {"node_embedding": state, "graph": graph}
        model = self._unwrapped_model
        raw = {}
        for name, head in model.output_heads.items():
            result = head(batch, emb)
            if getattr(model, "pass_through_head_outputs", False) and isinstance(result, dict):
                raw.update(result)
            else:
                raw[name] = result
        outputs = {}
        for target, spec in self.output_targets.items():
            if target not in raw:
                continue
            pred = raw[target][spec["property"]] if isinstance(raw[target], dict) else raw[target]
            shape = (int(batch.natoms.sum()), -1) if spec["level"] == "atom" else (batch.natoms.numel(), -1)
            outputs[target] = pred.view(*shape)
        return outputs

    def _compute_loss(self, out, batch):
        loss = super()._compute_loss(out, batch)
        if self._jacobian_loss is not None:
            loss = loss + self.deq_train.jac_reg_weight * self._jacobian_loss
        if self._fpc_outputs:
            correction = sum(super(DEQForcesTrainer, self)._compute_loss(o, batch) for o in self._fpc_outputs)
            loss = loss + self.deq_train.fpc_weight * correction / len(self._fpc_outputs)
        if is_padding(batch):
            self._padding_loss = [self._padding_loss[0] + float(loss), self._padding_loss[1] + 1]
        return loss

    def _compute_metrics(self, out, batch, evaluator, metrics=None):
        if is_padding(batch):
            return {} if metrics is None else metrics
        metrics = super()._compute_metrics(out, batch, evaluator, metrics)
        for key, stat in self._last_deq_metrics.items():
            metrics = evaluator.update(key, stat, metrics)
        return metrics

    # ---- evaluation paths ---------------------------------------------------------
    def _trajectory_loader(self, loader):
        if not (self.reuse_options.reuse and self.reuse_options.trajectory_order) or loader is None:
            return loader
        if not isinstance(loader, torch.utils.data.DataLoader):
            return loader
        rank, world_size = distutils.get_rank(), distutils.get_world_size()
        sids, fids = dataset_sids_fids(loader.dataset, rank, world_size, all_gather_object)  # kept on the dataset
        sampler = TrajectoryBatchSampler(
            sids,
            fids,
            batch_size=self.config["optim"].get("eval_batch_size", self.config["optim"]["batch_size"]),
            rank=rank,
            world_size=world_size,
        )
        self._segments = sampler
        return self.get_dataloader(PaddedDataset(loader.dataset), sampler)

    def _start_evaluation(self):
        self.fixed_point_cache.clear()
        self.fixed_point_cache.reset_counters()
        self.solver_stats.reset()
        self._segments = None
        self._padding_loss = [0.0, 0]
        self._padding_rows = []

    def validate(self, split: str = "val", disable_tqdm: bool = False):
        self._start_evaluation()
        attr = "val_loader" if split == "val" else "test_loader"
        original = getattr(self, attr)
        setattr(self, attr, self._trajectory_loader(original))
        try:
            metrics = super().validate(split=split, disable_tqdm=disable_tqdm)
        finally:
            setattr(self, attr, original)
            self._segments = None
            self.fixed_point_cache.clear()
        summary = self._summarise(f"validate:{split}", split)
        for key in ("deq_nstep_max", "deq_nstep_cold_max"):
            if key in summary:
                metrics[key] = {"metric": summary[key], "total": summary[key], "numel": 1}
        return metrics

    # ---- float64 energies (fairchem_deq/trainers/float64_outputs.py) ------------------
    def _denorm_preds(self, target_key, prediction, batch):
        if is_padding(batch):  # dropped from the predictions: kept out of the float64 stash
            return super()._denorm_preds(target_key, prediction, batch)
        return float64_outputs.denorm_preds(self, super()._denorm_preds, target_key, prediction, batch)

    def save_results(self, predictions, results_file, keys=None):
        _drop_padding_rows(predictions, self._padding_rows)
        self._padding_rows = []
        return super().save_results(float64_outputs.restore_float64(self, predictions), results_file, keys)

    def predict(self, data_loader, per_image: bool = True, results_file: str | None = None, disable_tqdm: bool = False):
        if not isinstance(data_loader, torch.utils.data.DataLoader):
            return super().predict(data_loader, per_image, results_file, disable_tqdm)
        self._start_evaluation()
        float64_outputs.collect(self)  # float64 energies in the prediction file (save_results)
        try:
            predictions = super().predict(self._trajectory_loader(data_loader), per_image, results_file, disable_tqdm)
        finally:
            self._segments = None
            self.fixed_point_cache.clear()
        self._summarise("predict", results_file)
        return predictions

    def run_relaxations(self):
        self._start_evaluation()
        self._in_relaxation = True
        try:
            super().run_relaxations()
            record_initial_frames(self)
        finally:
            self._in_relaxation = False
            self.fixed_point_cache.clear()
        self._summarise("relaxations", "relaxations")

    def _summarise(self, what: str, results_file: str | None = None) -> dict:
        summary = self.solver_stats.summary(reduce_max=all_reduce_max, reduce_sum=all_reduce_sum, device=self.device)
        cache = self.fixed_point_cache
        summary["cache_hits"] = all_reduce_sum(float(cache.hits), self.device)
        summary["cache_misses"] = all_reduce_sum(float(cache.misses), self.device)
        summary["cache_refused"] = all_reduce_sum(float(cache.refused), self.device)
        if distutils.is_master() and summary.get("deq_markov_dev_mean", 0.0) > MARKOV_WARNING:
            logging.warning(
                "DEQ warm-started forces differ from cold-started ones by %.1f %% on average "
                "(max %.1f %%): the warm start changes the answer. Tighten deq.eval_warm.tol, "
                "lower task.deq.reuse_max_displacement, or set task.deq.reuse: False.",
                100 * summary["deq_markov_dev_mean"],
                100 * summary["deq_markov_dev_max"],
            )
        if distutils.is_master() and summary:
            logging.info("DEQ solver statistics (%s): %s", what, ", ".join(f"{k}: {v:.4g}" for k, v in summary.items()))
            if self.logger is not None:
                self.logger.log(dict(summary), step=self.step, split=what.replace(":", "_"))
            if results_file is not None:
                results_dir = Path(self.config["cmd"]["results_dir"])
                results_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(
                    results_dir / f"{self.name}_{results_file}_deq_stats.json", json.dumps(summary, indent=2)
                )
        return summary


# warm-vs-cold force deviation (mean) above which an evaluation warns
MARKOV_WARNING = 0.05


def _drop_padding_rows(predictions: dict, rows: list[bool]) -> None:
    """Removes the padding batches' structures from fairchem's per-structure prediction lists
    (in place: fairchem's `predict` returns the same dict); `rows`: padding flag per structure."""
    if not any(rows) or len(predictions.get("ids", ())) != len(rows):
        return
    for key, values in predictions.items():
        if len(values) == len(rows):
            predictions[key] = [v for v, pad in zip(values, rows) if not pad]


def _has_energy_gradient_forces(model_config: dict) -> bool:
    from fairchem_deq.models.gradient_forces_head import EnergyGradientForcesHead

    heads = model_config.get("heads") or {}
    classes = [registry.get_model_class(h["module"]) for h in heads.values() if isinstance(h, dict) and "module" in h]
    return any(isinstance(c, type) and issubclass(c, EnergyGradientForcesHead) for c in classes)
