#!/usr/bin/env bash
# Issue 22's table: ES (examples/llm_finetune.py, the example's defaults) on 3 seeds, side by side with TRL's
# GRPO (LoRA) at 3 settings, each run 30 minutes of wall time (loading and 512-pair evaluations included).
#
#     bash benchmarks/llm_vs_grpo.sh [BUDGET_S]            # 3 slots of BUDGET_S (default 1800): ~95 minutes
#     bash benchmarks/llm_vs_grpo.sh [BUDGET_S] distance   # 1 slot: both methods on the distance reward
#     bash benchmarks/llm_vs_grpo.sh [BUDGET_S] digits soft-prompt   # 3 slots: both methods tune a soft
#         prompt of 8 tokens (ES with the example's soft-prompt recipe; GRPO with PEFT prompt tuning)
#     SLOTS="1 2" bash benchmarks/llm_vs_grpo.sh ...       # only these slots (the others' folders must exist)
#
# Each slot runs one ES seed and one GRPO setting at the same time, each with ONE torch thread, so the two
# methods always share the same 2-core machine under the same load (a fair side-by-side; each run has half
# the machine, so a single run with 2 threads would go further in the same time). Nothing else should run.
# Outputs: runs/llm_table/{es_*,grpo_*}/, then benchmarks/results/llm_vs_grpo[_distance].{md,csv} and
# docs/assets/llm_vs_grpo[_distance].png (held-out curves of the slots' runs on one plot).
# Needs trl and peft: pip install -e ".[llm,bench]"
set -eu
cd "$(dirname "$0")/.."
BUDGET=${1:-1800}
CREDIT=${2:-digits}
ADAPTER=${3:-weights}  # weights (ES: all linear layers; GRPO: LoRA) or soft-prompt (both: 8 virtual tokens)
SLOTS=${SLOTS:-0 1 2}
PY=${PYTHON:-.venv/bin/python}
DIR=runs/llm_table
mkdir -p "$DIR"
ES=()
GR=()

# run_slot SEED "LR GROUP PROMPTS": one ES seed and one GRPO setting side by side, one thread each
run_slot() {
  local seed=$1 lr group prompts suffix es_name grpo_name es_flags grpo_flags
  read -r lr group prompts <<<"$2"
  suffix=$([[ $CREDIT == digits ]] && echo "" || echo "_$CREDIT")
  es_flags="--soft-prompt 0" grpo_flags=""
  if [[ $ADAPTER == soft-prompt ]]; then
    suffix=${suffix}_sp8 es_flags="--soft-prompt 8" grpo_flags="--soft-prompt 8"
  fi
  es_name=es${suffix}_seed$seed
  grpo_name=grpo${suffix}_lr${lr}_g${group}_p${prompts}
  ES+=("$DIR/$es_name")
  GR+=("$DIR/$grpo_name")
  [[ " $SLOTS " == *" $seed "* ]] || return 0
  echo "$(date -u +%H:%M) UTC: ES seed $seed | GRPO lr $lr group $group prompts $prompts | $CREDIT reward;" \
    "load $(cut -d' ' -f1-3 /proc/loadavg)"
  # shellcheck disable=SC2086
  $PY examples/llm_finetune.py $es_flags --threads 1 --seed "$seed" --partial-credit "$CREDIT" --time-budget "$BUDGET" \
    --eval-every 20 --eval-subset 128 --output-dir "$DIR/$es_name" >"$DIR/$es_name.log" 2>&1 &
  local es_pid=$!
  # shellcheck disable=SC2086
  $PY benchmarks/llm_vs_grpo.py grpo $grpo_flags --threads 1 --seed 0 --budget "$BUDGET" --lr "$lr" --group "$group" \
    --prompts "$prompts" --partial-credit "$CREDIT" --eval-every 25 --eval-subset 128 \
    --name "llm_table/$grpo_name" >"$DIR/$grpo_name.log" 2>&1 &
  local grpo_pid=$!
  wait $es_pid || echo "ES failed: see $DIR/$es_name.log"
  wait $grpo_pid || echo "GRPO failed: see $DIR/$grpo_name.log"
}

if [[ $ADAPTER == soft-prompt ]]; then
  # PEFT's prompt-tuning learning rates for AdamW (3e-2 in its causal-LM example; 1e-2, 1e-1 around it)
  run_slot 0 "1e-1 8 4"
  run_slot 1 "3e-2 8 4"
  run_slot 2 "1e-2 8 4"
  OUTNAME=llm_vs_grpo_soft_prompt
elif [[ $CREDIT == digits ]]; then
  # GRPO settings, one per slot: learning rate, completions per prompt (group), prompts per step
  run_slot 0 "1e-4 8 4"
  run_slot 1 "5e-4 8 4"
  run_slot 2 "2e-4 16 2"
  OUTNAME=llm_vs_grpo
else
  run_slot 0 "1e-4 8 4"  # GRPO's best setting on the digits reward
  OUTNAME=llm_vs_grpo_$CREDIT
fi
# a slot not run now counts when its folders exist (from an earlier run of this script)
mapfile -t ES < <(for d in "${ES[@]}"; do [[ -f $d/summary.json ]] && echo "$d"; done)
mapfile -t GR < <(for d in "${GR[@]}"; do [[ -f $d/summary.json ]] && echo "$d"; done)
$PY benchmarks/llm_vs_grpo.py compare --es "${ES[@]}" --grpo "${GR[@]}" --out "$OUTNAME" \
  --note "Each slot ran one ES seed and one GRPO setting side by side, one torch thread each, ${BUDGET} s each (bash benchmarks/llm_vs_grpo.sh $BUDGET $CREDIT $ADAPTER). The caption's load average is at the time of compare."
