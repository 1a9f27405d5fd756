#!/usr/bin/env bash
# The device tool's calls for benchmarks/throughput (results land in $OUT). Usage: device.sh PHASE
#   headline  torchtitan 0.3.0 import check; Llama-3.2-1B shape: torchtitan bf16/float8 vs lmrepro variants
#   seeds     pytest -m gpu; the seeds' shapes (neuro-250M, mlm-1B); checkpoint cost on the 1B shape
#   loss      checkpoint cost (unless SKIP_CKPT=1), then the loss over many steps (LOSS_ORDER), bf16 vs float8
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
B=benchmarks/throughput/bench.py
case "$1" in
headline)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site030 .whl/tt030/*.whl
  PYTHONPATH=/tmp/site030:$PYTHONPATH timeout 120 python3 -c "import torchtitan, torchtitan.train; print('torchtitan', torchtitan.__version__, 'imports')" >"$OUT/torchtitan-0.3.0-import.txt" 2>&1
  tail -3 "$OUT/torchtitan-0.3.0-import.txt"
  LMREPRO_BENCH_ORDER=tt:off,lm:fp32res,lm:base,tt:tensorwise,lm:f8tw,lm:f8row \
    python3 $B --out "$OUT/results-headline.json" --steps 30 2>&1 | tail -12
  ;;
seeds)
  python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu 2>&1 | tail -15 | tee "$OUT/pytest-gpu.txt"
  LMREPRO_BENCH_ORDER=tt:off,lm:fp32res python3 $B --shape neuro-250M --out "$OUT/results-neuro-250M.json" --steps 20 2>&1 | tail -3
  LMREPRO_BENCH_ORDER=tt:off,lm:fp32res python3 $B --shape mlm-1B --out "$OUT/results-mlm-1B.json" --steps 20 2>&1 | tail -3
  ;;
loss)
  [[ -n ${SKIP_CKPT:-} ]] || LMREPRO_BENCH_ORDER=${CKPT_ORDER:-lm:ckpt_sync,lm:ckpt_async} python3 $B --out "$OUT/results-checkpoint.json" --steps 30 2>&1 | tail -3
  LMREPRO_BENCH_ORDER=${LOSS_ORDER:-lm:loss_bf16,lm:loss_f8tw,lm:loss_f8row} python3 $B --out "$OUT/results-loss.json" --steps "${2:-200}" 2>&1 | tail -4
  ;;
esac
ls -la "$OUT"
