#!/usr/bin/env bash
# The main job on the bundled data (tests/data, real MD17 ethanol frames), a few minutes on CPU:
#   1. convert the sGDML file into fairchem LMDBs (train/val/test, eV),
#   2. train DEQuiformer (DEQ1) briefly with fairchem's own CLI and the shipped config,
#   3. validate with fixed-point reuse (solver iterations with and without reuse),
#   4. run a short warm-started NVE MD through ASE with the shipped reference DEQ1
#      (fairchem_deq/reference_models/ethanol_deq1.pt: trained once, 120 CPU-minutes), printing
#      solver iterations per step; the demo's own tiny model where no reference model ships.
# The model is shrunk (16 channels, lmax 2; the paper's MD model has 64 channels, lmax 3) so
# that this finishes in a few minutes on 2 CPU cores; DEMO_EPOCHS=N trains longer.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo_out}
EPOCHS=${DEMO_EPOCHS:-3}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== 1. convert tests/data/md17_ethanol_300.npz -> $OUT/data/ethanol"
"$BIN/fairchem-deq" convert tests/data/md17_ethanol_300.npz --out "$OUT/data/ethanol" \
  --n-train 96 --n-val 16 --seed 0 --overwrite

SMALL=(
  --model.backbone.sphere_channels=16 --model.backbone.attn_hidden_channels=8
  --model.backbone.num_heads=2 --model.backbone.attn_alpha_channels=8
  --model.backbone.attn_value_channels=4 --model.backbone.ffn_hidden_channels=16
  --model.backbone.lmax_list=[2] --model.backbone.mmax_list=[2]
  --model.backbone.grid_resolution=8 --model.backbone.num_sphere_samples=32
  --model.backbone.edge_channels=16
  --optim.num_workers=0 --optim.scheduler_params.warmup_epochs=0.1 --optim.ema_decay=0.95
  --dataset.train.src="$OUT/data/ethanol/train" --dataset.val.src="$OUT/data/ethanol/val"
  --dataset.test.src="$OUT/data/ethanol/test"
)

echo "== 2. train DEQ1 for $EPOCHS epochs: fairchem --mode train --config-yml configs/md17/ethanol/deq1.yml --cpu"
rm -rf "$OUT/checkpoints/demo" "$OUT/logs/tensorboard/demo" "$OUT/results/demo" "$OUT/md"
"$BIN/fairchem" --mode train --config-yml configs/md17/ethanol/deq1.yml --cpu \
  --run-dir "$OUT" --identifier demo --timestamp-id demo --print-every 8 "${SMALL[@]}" \
  --optim.max_epochs="$EPOCHS" --optim.eval_every=1000000 --optim.checkpoint_every=-1 \
  --optim.lr_initial=0.002 > "$OUT/train.log" 2>&1 || { tail -40 "$OUT/train.log" >&2; exit 1; }
grep -oE "forces_mae: [^,]+|deq_nstep: [^,]+|loss: [^,]+|step: [^,]+$" "$OUT/train.log" | paste -sd' ' \
  | sed 's/ forces_mae/\nforces_mae/g'
CKPT="$OUT/checkpoints/demo/checkpoint.pt"
test -f "$CKPT" || { echo "training did not write $CKPT" >&2; exit 1; }

echo "== 3. validate on the 16 validation frames (tensorboard logs: $OUT/logs/tensorboard/demo)"
"$BIN/fairchem" --mode validate --config-yml configs/md17/ethanol/deq1.yml --cpu \
  --checkpoint "$CKPT" --run-dir "$OUT" --identifier demo-val "${SMALL[@]}" > "$OUT/validate.log" 2>&1 \
  || { tail -40 "$OUT/validate.log" >&2; exit 1; }
grep -oE "(energy_mae|forces_mae|deq_nstep|deq_nstep_max): [^,]+" "$OUT/validate.log" | tail -4 | paste -sd' '

REFERENCE=fairchem_deq/reference_models/ethanol_deq1.pt
MD_CKPT=$([[ -f $REFERENCE ]] && echo "$REFERENCE" || echo "$CKPT")
echo "== 4. 30 steps of NVE MD from frame 280 with $MD_CKPT, warm-started (solver iterations per step)"
"$BIN/fairchem-deq" md --checkpoint "$MD_CKPT" --structure tests/data/md17_ethanol_300.npz \
  --frame 280 --steps 30 --timestep 0.5 --temperature 300 --out "$OUT/md" --print-every 1 --no-progress \
  | grep -E "^step|mean_solver_iterations|energy_drift|unphysical_step"
echo "== done: checkpoint $CKPT, MD trajectory $OUT/md/md.traj, log $OUT/md/md_log.csv"
