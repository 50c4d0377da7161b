#!/usr/bin/env bash
# OC20 S2EF-200k: DEQ1, DEQ2 and the EquiformerV2 baselines, each on 1 node x 4 GPUs, through
# fairchem's own `--submit` (submitit; requeue on preemption via fairchem's Runner.checkpoint).
# Effective batch: optim.batch_size (4) x 4 GPUs = 16. Run from the repository root, with the
# official LMDBs in data/s2ef/200k/train and data/s2ef/all/val_id (docs/oc20.md).
#   PARTITION=gpu ACCOUNT=myproject bash slurm/submit_oc20_200k.sh
set -euo pipefail
PARTITION=${PARTITION:?set PARTITION=<slurm partition>}
EXTRA=()
[[ -n ${ACCOUNT:-} ]] && EXTRA+=(--slurm-account "$ACCOUNT")
[[ -n ${QOS:-} ]] && EXTRA+=(--slurm-qos "$QOS")
for variant in deq1 deq2 eqv2_4l eqv2_8l; do
  .venv/bin/fairchem --mode train --config-yml "configs/oc20/s2ef/200k/${variant}.yml" \
    --submit --num-gpus 4 --num-nodes 1 --slurm-partition "$PARTITION" --slurm-timeout 48 \
    --slurm-mem 200 --identifier "oc20-200k-${variant}" --run-dir runs/oc20 --logdir logs/slurm \
    "${EXTRA[@]}"
done
