#!/usr/bin/env bash
# OC20 S2EF-2M DEQ1 on 4 nodes x 8 GPUs (32 ranks, one per GPU; effective batch 4 x 32 = 128)
# through fairchem's `--submit`. fairchem's distutils reads the Slurm node list and starts
# NCCL on the first node; submitit requeues the job on preemption or at the time limit
# (up to 3 times) after fairchem's Runner.checkpoint saved checkpoint.pt, and the requeued
# job resumes from it. Extra sbatch options: a `slurm:` block in the config, e.g.
#   slurm: {constraint: a100, exclusive: true}
#   PARTITION=gpu bash slurm/submit_oc20_2M_multinode.sh [deq2|eqv2_n12_l6_m2|...]
set -euo pipefail
PARTITION=${PARTITION:?set PARTITION=<slurm partition>}
VARIANT=${1:-deq1}
NODES=${NODES:-4}
GPUS=${GPUS:-8}
EXTRA=()
[[ -n ${ACCOUNT:-} ]] && EXTRA+=(--slurm-account "$ACCOUNT")
.venv/bin/fairchem --mode train --config-yml "configs/oc20/s2ef/2M/${VARIANT}.yml" \
  --submit --num-gpus "$GPUS" --num-nodes "$NODES" --slurm-partition "$PARTITION" \
  --slurm-timeout 72 --slurm-mem 400 --identifier "oc20-2M-${VARIANT}" --run-dir runs/oc20 \
  --logdir logs/slurm "${EXTRA[@]}"
