"""Launching many fairchem runs at once (Slurm array jobs through submitit).

`fairchem_deq.launch.sweep` turns a list of configs into ONE Slurm array job whose tasks
each run fairchem's own `Runner` (so training, checkpoints, resume and requeue on
preemption are fairchem's); see slurm/README.md. CLI: `python -m fairchem_deq.launch.sweep`.
"""
