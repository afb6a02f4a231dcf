#!/usr/bin/env bash
# The library's GPU check (issue 27), run once on the GPU machine from the repository root:
#
#     bash benchmarks/gpu_check.sh               # ~8 minutes on one H200: CUDA tests, then the benchmarks
#     bash benchmarks/gpu_check.sh --cpu-smoke   # dry run anywhere: DEVICE=cpu, tiny sizes, nothing kept in-tree
#
# Steps, each under its own time limit and fail-soft (a failing or timed-out step is reported, the next runs):
#   env          the GPU, torch, CUDA, transformers
#   tests        the device-aware tests on CUDA (pytest -m device --device cuda: the batched ≡ sequential
#                matrices, noise and its update, resume, bf16 master weights, device placement)
#   forward      benchmarks/population_forward.py --device cuda --dtype bfloat16 (the paper's Linear(8192, 8192),
#                N = 1024, rank 1; the MLP rows)
#   architectures benchmarks/architectures.py --device cuda --dtype bfloat16 (transformer LM, CNN, GPT-2, Llama)
#   llm-135m, llm-1b  benchmarks/llm_generation_device.py: random-init SmolLM2-135M- and Llama-1B-shaped models,
#                bf16, K·P = 1024 rows, 32 new tokens
#   compile      the 135M model again with torch.compile (may well run out of time: reported either way)
#
# Results: benchmarks/results/*_<GPU>_bfloat16.{md,csv} (the smoke run writes them under a temporary folder).
# With $OUT set (the device runner), $OUT/summary.txt (every step's status and the result tables) and
# $OUT/gpu_check.tar.gz (results and full logs) — two files, within what comes back from such a machine.
# Needs only what the GPU machine has: torch, transformers, pytest, hypothesis (nothing is downloaded).
set -u
cd "$(dirname "$0")/.."

SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_ROOT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$WORK/logs"
SUMMARY=$OUT_ROOT/summary.txt
: >"$SUMMARY"
SCALE=1
SIZE=()
RESULTS_DIR=benchmarks/results
if [[ $SMOKE == 1 ]]; then
  DEVICE=cpu SCALE=2 SIZE=(--smoke) RESULTS_DIR=$WORK/results
fi
OUT_DIR=(--out-dir "$RESULTS_DIR")
mkdir -p "$RESULTS_DIR"
# the files holding device-aware tests (not tests/: the RL and CLI tests need packages the GPU machine lacks)
TESTS=(tests/test_batched.py tests/test_architectures.py tests/test_noise.py tests/test_estimate.py
  tests/test_resume.py tests/test_master_weights.py)
MARK=$WORK/start
touch "$MARK"
START=$SECONDS

step() { # step NAME LIMIT_S COMMAND... : run it under `timeout`, log it, never stop the script
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s): $*" | tee -a "$SUMMARY"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  local rc=$?
  tail -n 4 "$WORK/logs/$name.log"
  local what=ok
  ((rc == 124 || rc == 137)) && what="TIMED OUT"
  ((rc != 0 && rc != 124 && rc != 137)) && what=FAILED
  echo "-- $name: $what (rc $rc) in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
}

step env 30 bash -c "nvidia-smi -L 2>/dev/null; $PY -c 'import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), \"transformers\", transformers.__version__)'"
step tests 150 "$PY" -m pytest -q -m device --device "$DEVICE" -p no:cacheprovider "${TESTS[@]}"
step forward 80 "$PY" benchmarks/population_forward.py --device "$DEVICE" --dtype bfloat16 "${SIZE[@]}" "${OUT_DIR[@]}"
step architectures 50 "$PY" benchmarks/architectures.py --device "$DEVICE" --dtype bfloat16 "${SIZE[@]}" "${OUT_DIR[@]}"
step llm-135m 55 "$PY" benchmarks/llm_generation_device.py --device "$DEVICE" --config smollm2-135m "${SIZE[@]}" "${OUT_DIR[@]}"
step llm-1b 85 "$PY" benchmarks/llm_generation_device.py --device "$DEVICE" --config llama-1b "${SIZE[@]}" "${OUT_DIR[@]}"
# compile: its own result file (another --out-dir), so the eager 135M table above is kept as it is
mkdir -p "$WORK/compile"
SCALE=1 step compile 35 "$PY" benchmarks/llm_generation_device.py --device "$DEVICE" --config smollm2-135m \
  --compile --reps 1 "${SIZE[@]}" --out-dir "$WORK/compile"

echo "== total $((SECONDS - START)) s" | tee -a "$SUMMARY"
for f in $(find "$RESULTS_DIR" "$WORK/compile" -newer "$MARK" -name '*.md' | sort); do
  printf '\n### %s\n\n' "${f#"$WORK"/}" >>"$SUMMARY"
  cat "$f" >>"$SUMMARY"
done
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$WORK/bundle/results"
  find "$RESULTS_DIR" "$WORK/compile" -newer "$MARK" -type f -exec cp {} "$WORK/bundle/results/" \;
  cp -r "$WORK/logs" "$WORK/bundle/"
  tar -C "$WORK/bundle" -czf "$OUT/gpu_check.tar.gz" .
fi
echo "summary: $SUMMARY"
