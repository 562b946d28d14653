#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and cupy: the GPU tests, the toy demo on the GPU at the
# lecture's defaults, and the benchmark's GPU rows. Under 8 minutes on a modern GPU.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/numpy-ddpm-gpu-check}"
mkdir -p "$out"
status=0
python -c "
import cupy
name = cupy.cuda.runtime.getDeviceProperties(0)['name']
print('cupy', cupy.__version__, name.decode() if isinstance(name, bytes) else name)" || exit 1
echo "== GPU tests"
python -m pytest -q tests/test_gpu.py tests/test_backend.py tests/test_optim.py 2>&1 | tee "$out/tests.log" || status=1
echo "== demos/toy2d.py --backend cupy, the lecture's defaults (25000 points, 100 epochs, batch 25, 1000 samples)"
start=$(date +%s.%N)
python demos/toy2d.py --backend cupy --no-window --out "$out/toy2d" 2>&1 | tail -3 | tee "$out/toy2d.log" || status=1
end=$(date +%s.%N)
echo "wall time: $(python -c "print(f'{$end - $start:.1f}')") s" | tee -a "$out/toy2d.log"
echo "== two GPUs: NCCL data-parallel training follows the 1-GPU run (skips with fewer than 2 GPUs or no mpi4py)"
python -m pytest -q -rs tests/test_distributed.py -k gpus 2>&1 | tee "$out/nccl.log" || status=1
echo "== benchmark rows (cupy, and PyTorch on CUDA when it is installed)"
python benchmarks/bench.py --backends cupy --json "$out/bench.json" --markdown "$out/bench.md" 2>&1 | tee "$out/bench.log" || status=1
exit $status
