#!/usr/bin/env bash
# Issue 22's table: ES (examples/llm_finetune.py, the example's defaults) on 3 seeds, side by side with TRL's
# GRPO (LoRA) at 3 settings, each run 30 minutes of wall time (loading and 512-pair evaluations included).
#
#     bash benchmarks/llm_vs_grpo.sh [BUDGET_S]     # 3 slots of BUDGET_S (default 1800): ~95 minutes
#
# Each slot runs one ES seed and one GRPO setting at the same time, each with ONE torch thread, so the two
# methods always share the same 2-core machine under the same load (a fair side-by-side; each run has half
# the machine, so a single run with 2 threads would go further in the same time). Nothing else should run.
# Outputs: runs/llm_table/{es_seed*,grpo_*}/, then benchmarks/results/llm_vs_grpo.{md,csv} and
# docs/assets/llm_vs_grpo.png (held-out curves of all six runs on one plot).
# Needs trl and peft: pip install -e ".[llm,bench]"
set -eu
cd "$(dirname "$0")/.."
BUDGET=${1:-1800}
PY=${PYTHON:-.venv/bin/python}
DIR=runs/llm_table
mkdir -p "$DIR"
# GRPO settings, one per slot: learning rate, completions per prompt (group), prompts per step
GRPO=("1e-4 8 4" "5e-4 8 4" "2e-4 16 2")
ES=()
GR=()
for slot in 0 1 2; do
  read -r lr group prompts <<<"${GRPO[$slot]}"
  name=grpo_lr${lr}_g${group}_p${prompts}
  echo "slot $slot ($(date -u +%H:%M) UTC): ES seed $slot | GRPO lr $lr group $group prompts $prompts; load $(cut -d' ' -f1-3 /proc/loadavg)"
  $PY examples/llm_finetune.py --threads 1 --seed "$slot" --time-budget "$BUDGET" --eval-every 20 \
    --eval-subset 128 --output-dir "$DIR/es_seed$slot" >"$DIR/es_seed$slot.log" 2>&1 &
  es_pid=$!
  $PY benchmarks/llm_vs_grpo.py grpo --threads 1 --seed 0 --budget "$BUDGET" --lr "$lr" --group "$group" \
    --prompts "$prompts" --eval-every 25 --eval-subset 128 --name "llm_table/$name" >"$DIR/$name.log" 2>&1 &
  grpo_pid=$!
  wait $es_pid || echo "ES seed $slot failed: see $DIR/es_seed$slot.log"
  wait $grpo_pid || echo "GRPO $name failed: see $DIR/$name.log"
  ES+=("$DIR/es_seed$slot")
  GR+=("runs/llm_table/$name")
done
$PY benchmarks/llm_vs_grpo.py compare --es "${ES[@]}" --grpo "${GR[@]}" --out llm_vs_grpo \
  --note "Each slot ran one ES seed and one GRPO setting side by side, one torch thread each, ${BUDGET} s each (bash benchmarks/llm_vs_grpo.sh)."
