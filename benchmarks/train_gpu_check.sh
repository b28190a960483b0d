#!/usr/bin/env bash
# Issue 11's GPU checks, on one CUDA GPU, within ~6 minutes: the throughput table (bf16 with
# float32 master weights vs float32, a token budget, MFU against --peak-flops), torchrun with
# nccl (DDP and FSDP2 at world size 1), mem/peak_gpu_mb in the metrics. Writes under $OUT
# (default: ./gpu_check_out). Peak: H100/H200 SXM dense bf16, 989 TFLOP/s; override PEAK_FLOPS.
set -uo pipefail
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
PEAK=${PEAK_FLOPS:-989e12}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, sys; print(torch.__version__, torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA: nothing to check"; exit 1; }
python3 -c "import importlib.metadata as m; m.version('verirl')" 2>/dev/null \
  || pip install -q --no-deps --no-build-isolation -e . || echo "verirl not installed: the verifiers' entry points may be missing"
B="benchmarks/train_throughput.py --random-init 1024:12 --prompts 16 --group-size 8 --prompt-tokens 128 --completion-tokens 512 --repeats 3 --peak-flops $PEAK"
{
  python3 $B --dtype bfloat16 --fp32-master --micro-batch-tokens 32768
  python3 $B --dtype bfloat16 --fp32-master --micro-batch-tokens 0 --micro-batch-size 32 | tail -1
  python3 $B --dtype float32 --micro-batch-tokens 32768 | tail -1
  torchrun --nproc_per_node 1 --master_addr 127.0.0.1 --master_port 29611 $B --parallel fsdp2 --dtype bfloat16 --fp32-master --micro-batch-tokens 32768 | tail -1
} 2>"$OUT/bench.err" | tee "$OUT/gpu_table.md"
torchrun --nproc_per_node 1 --master_addr 127.0.0.1 --master_port 29612 -m verirl train configs/tiny.yaml \
  train.parallel=ddp train.steps=2 train.eval_every=0 train.output_dir="$OUT/ddp_run" train.progress=false \
  model.dtype=bfloat16 model.fp32_master_weights=true 2>"$OUT/ddp.err"; echo "ddp rc=$?"
python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print({k: r[-1].get(k) for k in ('policy/loss','policy/grad_norm','mem/peak_gpu_mb','perf/step_s')})" "$OUT/ddp_run/metrics.jsonl"
python3 -m pytest -q tests/test_precision.py 2>&1 | tail -2
