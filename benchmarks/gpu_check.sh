#!/usr/bin/env bash
# Every check that needs a GPU, in one script, under 8 minutes on one GPU: the step time
# limits add up to 340 s, and to 450 s with QWEN_PATH (below), so a stuck step cannot
# push the whole past 7.5 minutes:
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   PYTHON=/path/to/venv/bin/python QWEN_PATH=/models/Qwen2.5-0.5B-Instruct bash benchmarks/gpu_check.sh
#
# PYTHON (default python3) is the interpreter holding torch, transformers, vLLM and verirl.
# On a GPU machine without vLLM (e.g. a bare CUDA + PyTorch image with no package index
# to install it from) the script stops at step 1, in seconds, saying so.
# 1. env (40 s): GPU, torch, transformers, vLLM; then vLLM must import and verirl must
#    accept it (a supported version, a CUDA device): otherwise the script stops at once,
#    saying why, with exit status 100, since every later step needs vLLM;
# 2. gpu_tests (150 s): tests/test_vllm.py and every other test marked `gpu`: vLLM's greedy
#    samples equal the HF engine's on the tiny model and its sampled log-probs the
#    trainer's within 1e-2; after one optimizer step with a large learning rate, vLLM's
#    next greedy samples are the HF engine's from the updated weights, for both weight-sync
#    paths (weight_transfer, load_weights), with a level-2 sleep between;
# 3. train_vllm (90 s): three GRPO steps on the tiny model with rollout.engine=vllm and the
#    mismatch correction on (algo.rollout_is=token_truncate): the rollout_is metrics (mean
#    and max |log π_old − log π_engine|, fraction truncated) of a real engine;
# 4. throughput_tiny (60 s): benchmarks/rollout_throughput.py on the tiny model: tokens/s
#    of hf-loop, hf-generate, vllm and vLLM's own offline throughput (vLLM without CUDA
#    graphs, --enforce-eager, so that it starts within the limit: its tokens/s are a
#    lower bound);
# 5. throughput_qwen (110 s), only when QWEN_PATH names a local copy of
#    Qwen2.5-0.5B-Instruct (or any causal LM): the same table, shortened to 16 prompts × 8,
#    ≤ 128 new tokens, one timed round. Without QWEN_PATH it is skipped (the device
#    machine reaches no model hub).
#
# Results go to $OUT (the device tool's output folder, which returns at most 8 files) or
# runs/gpu_check/: one log per step, the throughput JSONs and the training metrics.
# A step that fails is reported and the script goes on; the exit status is the number of
# failed steps (100 when vLLM is missing or refused).
set -u
PY="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
failed=0
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    return "$rc"
}

if ! step env 40 "$PY" - <<'EOF'
import shutil, subprocess, sys
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], check=False)
else:
    print("nvidia-smi: not found")
import torch, transformers
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("transformers", transformers.__version__)
try:
    import vllm
except Exception as exc:  # ImportError, or a vLLM built for another torch/CUDA
    sys.exit(f"gpu_check: vLLM is not importable by {sys.executable} ({type(exc).__name__}: {exc}); "
             "every GPU check needs it: pip install 'verirl[vllm]' into that environment, or point PYTHON "
             "at one that has it")
print("vllm", vllm.__version__)
from verirl.rollout.vllm_engine import check_vllm
from verirl.verifier import ConfigError
try:
    print("weight sync (auto):", check_vllm())
except ConfigError as exc:
    sys.exit(f"gpu_check: verirl refuses this vLLM setup: {exc}")
EOF
then
    echo "gpu_check: stopped at the environment check (vLLM missing or refused; see $OUT/env.log): nothing else was run"
    exit 100
fi

step gpu_tests 150 "$PY" -m pytest -m gpu tests/ -q -rs -p no:cacheprovider

TRAIN_DIR="$(mktemp -d)"  # checkpoints and config stay out of $OUT (8 files come back)
step train_vllm 90 "$PY" -m verirl.cli train configs/tiny.yaml rollout.engine=vllm train.steps=3 \
    train.eval_every=0 train.save_every=0 train.progress=false train.output_dir="$TRAIN_DIR/run" \
    train.device=cuda rollout.vllm_enforce_eager=true rollout.gpu_memory_utilization=0.3 \
    algo.rollout_is=token_truncate algo.rollout_is_cap=2.0
if [ -f "$TRAIN_DIR/run/metrics.jsonl" ]; then
    cp "$TRAIN_DIR/run/metrics.jsonl" "$OUT/train_vllm_metrics.jsonl"
    "$PY" - "$OUT/train_vllm_metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    keys = [k for k in r if "rollout_is" in k] + ["reward/mean", "perf/rollout_s", "perf/step_s"]
    print({k: r.get(k) for k in ["step", *keys]})
EOF
fi
rm -rf "$TRAIN_DIR"

step throughput_tiny 60 "$PY" benchmarks/rollout_throughput.py --device cuda --prompts 64 --group-size 8 \
    --max-new-tokens 56 --repeats 3 --enforce-eager --out "$OUT/throughput_tiny.json"

if [ -n "${QWEN_PATH:-}" ] && [ -d "$QWEN_PATH" ]; then
    step throughput_qwen 110 "$PY" benchmarks/rollout_throughput.py --model "$QWEN_PATH" --device cuda \
        --dtype bfloat16 --data builtin:tiny-arith/test.jsonl --prompts 16 --group-size 8 --max-new-tokens 128 \
        --repeats 1 --enforce-eager --out "$OUT/throughput_qwen.json"
else
    echo "=== throughput_qwen: skipped (set QWEN_PATH to a local model folder to run it)"
fi

echo "gpu_check: $failed step(s) failed; logs in $OUT"
exit "$failed"
