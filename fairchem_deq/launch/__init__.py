"""Launching many fairchem runs at once (Slurm array jobs through submitit).

`plan` turns a list of configs into ONE Slurm array job whose tasks each run fairchem's own
`Runner` (so training, checkpoints, resume and requeue on preemption are fairchem's), and
`submit` hands it to submitit; see docs/slurm.md. CLI: `fairchem-deq sweep`
(fairchem_deq.cli.sweep).
"""

from fairchem_deq.launch.plan import (
    EXECUTORS,
    MODES,
    SweepPlan,
    build_run_configs,
    expand_configs,
    identifier_for,
    plan_sweep,
    slurm_parameters,
)

# `submit` here is the function (it hides the submodule of the same name as an attribute;
# `from fairchem_deq.launch.submit import ...` still reads the module)
from fairchem_deq.launch.submit import sbatch_script, submit

__all__ = [
    "EXECUTORS",
    "MODES",
    "SweepPlan",
    "build_run_configs",
    "expand_configs",
    "identifier_for",
    "plan_sweep",
    "sbatch_script",
    "slurm_parameters",
    "submit",
]
