#!/usr/bin/env bash
# All 7 MD22 molecules x {DEQ1, DEQ2, EquiformerV2 4 layers} as ONE Slurm array job (21 tasks,
# 1 GPU each) with fairchem-deq's sweep launcher; each task runs fairchem's Runner on its
# config and is requeued after preemption/timeout via Runner.checkpoint. Data first:
#   for m in ac_ala3_nhme dha stachyose at_at at_at_cg_cg buckyball_catcher double_walled_nanotube; do
#     .venv/bin/fairchem-deq convert <md22_$m.npz> --out data/md22/$m; done
#   PARTITION=gpu bash slurm/sweep_md22.sh            # submit
#   PARTITION=gpu bash slurm/sweep_md22.sh --dry-run  # print the sbatch script only
set -euo pipefail
PARTITION=${PARTITION:?set PARTITION=<slurm partition>}
.venv/bin/fairchem-deq sweep configs/md22 --variants deq1 deq2 eqv2_4l \
  --partition "$PARTITION" ${ACCOUNT:+--account "$ACCOUNT"} --num-gpus 1 --timeout-h 48 \
  --mem-gb 64 --array-parallelism 21 --run-dir runs/md22 --logdir logs/sweeps/md22 \
  --setup "source $(pwd)/.venv/bin/activate" "$@"
