"""What every fairchem-deq trainer adds to fairchem's training run, as one mixin:

- `save` writes to the package's one temporary name (fairchem_deq.outputs.partial_name) and
  renames: fairchem 1.10 saves in place, and a run killed while saving (preemption, a time
  limit) kept a corrupt `checkpoint.pt`. An interrupted save leaves only the hidden partial
  file, which the next save replaces;
- `train` always ends with `checkpoint.pt` of its last step: fairchem saves only every
  `checkpoint_every` (default: `eval_every`) steps, and a shorter run left none;
- `load_extras` refuses a warm-up shorter than one step with a message: fairchem's
  EquiformerV2 scheduler turns `warmup_epochs` into int(warmup_epochs * steps per epoch)
  and divides by it (ZeroDivisionError deep inside the scheduler);
- `optim.schedule_epochs` (optional, may be fractional) is the length of the learning-rate
  schedule in epochs when it should differ from `max_epochs`: fairchem's loop needs whole
  epochs, so a run stopped by a CPU or wall budget of, say, 0.9 epoch could not otherwise
  end its cosine at the budget;
- the config it saves in checkpoints names the trainer class (`config["trainer"]`, a dotted
  path): fairchem 1.10 stores there the *task* name its CLI passes as `name` ("s2ef"), and its
  OCPCalculator builds the trainer from that entry, so `OCPCalculator(checkpoint_path=...)`
  failed with "Failed to find the trainer 's2ef'" (as it does on checkpoints of fairchem's
  own trainers).
"""

from __future__ import annotations

import importlib
import logging
import os

from fairchem_deq.outputs import partial_name


class TrainingRunMixin:
    _last_saved_step: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config["trainer"] = trainer_path(type(self))

    def save(self, metrics=None, checkpoint_file: str = "checkpoint.pt", training_state: bool = True):
        # fairchem writes into its checkpoint_dir by file name (and only on the master rank),
        # so the temporary name is passed to it and renamed here, not an atomic_file block
        path = super().save(metrics, checkpoint_file=partial_name(checkpoint_file), training_state=training_state)
        if path is None:
            return None
        final = os.path.join(os.path.dirname(path), checkpoint_file)
        os.replace(path, final)
        if checkpoint_file == "checkpoint.pt":
            self._last_saved_step = self.step
        return final

    def train(self, disable_eval_tqdm: bool = False) -> None:
        super().train(disable_eval_tqdm=disable_eval_tqdm)
        if self._last_saved_step != self.step:
            path = self.save(checkpoint_file="checkpoint.pt", training_state=True)
            if path is not None:
                logging.info("Final checkpoint (step %d): %s", self.step, path)

    def load_extras(self) -> None:
        optim = self.config["optim"]
        check_warmup(optim, self.train_loader)
        schedule_epochs = optim.get("schedule_epochs")
        if schedule_epochs is None:
            super().load_extras()
            return
        if not isinstance(schedule_epochs, (int, float)) or schedule_epochs <= 0:
            raise ValueError(f"optim.schedule_epochs must be a positive number of epochs, got {schedule_epochs!r}")
        # fairchem's EquiformerV2 trainers size the schedule from max_epochs while building it
        max_epochs = optim["max_epochs"]
        optim["max_epochs"] = schedule_epochs
        try:
            super().load_extras()
        finally:
            optim["max_epochs"] = max_epochs


def trainer_path(cls: type) -> str:
    """The dotted path fairchem's registry resolves to `cls` (the package's export if it has
    one, e.g. fairchem_deq.trainers.DEQForcesTrainer), usable without importing anything."""
    package = cls.__module__.rpartition(".")[0]
    if package and getattr(importlib.import_module(package), cls.__name__, None) is cls:
        return f"{package}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def check_warmup(optim: dict, train_loader) -> None:
    """A warm-up that fairchem's scheduler would turn into 0 steps is an error that says which
    values work."""
    warmup = (optim.get("scheduler_params") or {}).get("warmup_epochs")
    if train_loader is None or not isinstance(warmup, (int, float)) or warmup <= 0:
        return
    steps = len(train_loader)
    if int(warmup * steps) == 0:
        raise ValueError(
            f"optim.scheduler_params.warmup_epochs={warmup} is less than one of the {steps} training "
            f"steps per epoch; set it to 0 (no warm-up) or to at least {1 / steps:.4g}."
        )
