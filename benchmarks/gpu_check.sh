#!/usr/bin/env bash
# Every check that needs a GPU, in one script (about 5 minutes on one H100/H200; each step
# has its own time limit, the whole stays under 8 minutes):
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in the venv holding vLLM
#
# 1. the environment: GPU, torch, transformers, vLLM;
# 2. tests/test_vllm.py and every other test marked `gpu`: vLLM's greedy samples equal the
#    HF engine's on the tiny model and its sampled log-probs the trainer's within 1e-2;
#    after one optimizer step with a large learning rate, vLLM's next greedy samples are
#    the HF engine's from the updated weights, for both weight-sync paths
#    (weight_transfer, load_weights), with a level-2 sleep between;
# 3. three GRPO steps on the tiny model with rollout.engine=vllm and the mismatch
#    correction on (algo.rollout_is=token_truncate): the rollout_is metrics (mean and
#    max |log π_old − log π_engine|, fraction truncated) of a real engine;
# 4. benchmarks/rollout_throughput.py on the tiny model, then on Qwen2.5-0.5B-Instruct when
#    QWEN_PATH names a local copy (or the hub is reachable): tokens/s of hf-loop,
#    hf-generate, vllm and vLLM's own offline throughput.
#
# Results go to $OUT (the device tool's output folder) or runs/gpu_check/. A step that
# fails is reported and the script goes on; the exit status is the number of failed steps.
set -u
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
}

step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python -c "import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda,
  torch.cuda.is_available()); print(\"transformers\", transformers.__version__)";
  python -c "import vllm; print(\"vllm\", vllm.__version__)" || echo "vllm: not installed"'

step gpu_tests 240 python -m pytest -m gpu tests/ -q -rs -p no:cacheprovider

step train_vllm 150 python -m verirl.cli train configs/tiny.yaml rollout.engine=vllm train.steps=3 \
    train.eval_every=0 train.save_every=0 train.progress=false train.output_dir="$OUT/train_vllm" \
    train.device=cuda rollout.vllm_enforce_eager=true rollout.gpu_memory_utilization=0.3 \
    algo.rollout_is=token_truncate algo.rollout_is_cap=2.0
if [ -f "$OUT/train_vllm/metrics.jsonl" ]; then
    python - "$OUT/train_vllm/metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    keys = [k for k in r if "rollout_is" in k] + ["reward/mean", "perf/rollout_s", "perf/step_s"]
    print({k: r.get(k) for k in ["step", *keys]})
EOF
fi

step throughput_tiny 120 python benchmarks/rollout_throughput.py --device cuda --prompts 64 --group-size 8 \
    --max-new-tokens 56 --repeats 3 --out "$OUT/throughput_tiny.json"

QWEN="${QWEN_PATH:-Qwen/Qwen2.5-0.5B-Instruct}"
step throughput_qwen 180 python benchmarks/rollout_throughput.py --model "$QWEN" --device cuda --dtype bfloat16 \
    --data builtin:tiny-arith/test.jsonl --prompts 32 --group-size 8 --max-new-tokens 256 --repeats 2 \
    --out "$OUT/throughput_qwen.json"

echo "gpu_check: $failed step(s) failed; logs in $OUT"
exit "$failed"
