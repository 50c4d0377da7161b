#!/usr/bin/env bash
# S2EF leaderboard predictions: one `--mode predict` job per OC20 test split (data/s2ef/all/
# test_{id,ood_ads,ood_cat,ood_both}, fairchem's download_data.py --task s2ef --split test),
# then the submission file (docs/oc20.md):
#   PARTITION=gpu bash slurm/predict_oc20_test_splits.sh configs/oc20/s2ef/2M/deq1.yml CKPT
#   .venv/bin/fairchem-deq submission --task s2ef \
#     --id runs/oc20/results/predict-id/s2ef_predictions.npz \
#     --ood-ads runs/oc20/results/predict-ood_ads/s2ef_predictions.npz \
#     --ood-cat runs/oc20/results/predict-ood_cat/s2ef_predictions.npz \
#     --ood-both runs/oc20/results/predict-ood_both/s2ef_predictions.npz --out-path submission.npz
set -euo pipefail
PARTITION=${PARTITION:?set PARTITION=<slurm partition>}
CONFIG=${1:?config}
CHECKPOINT=${2:?checkpoint}
for split in id ood_ads ood_cat ood_both; do
  .venv/bin/fairchem --mode predict --config-yml "$CONFIG" --checkpoint "$CHECKPOINT" \
    --submit --num-gpus 1 --slurm-partition "$PARTITION" --slurm-timeout 12 \
    --identifier "predict-${split}" --timestamp-id "predict-${split}" --run-dir runs/oc20 \
    --logdir logs/slurm "--dataset.test.src=data/s2ef/all/test_${split}"
done
