#!/usr/bin/env bash
# The checks that need a GPU, in one run on a machine whose python3 holds a CUDA-enabled torch and
# the project's other dependencies (no .venv: its torch is the CPU build): the tests marked gpu,
# then bench_gpu.py. Writes gpu-tests.log, bench_gpu.log and bench_gpu.json to $OUT (default
# benchmarks/results). Exit status: 2 without a GPU, else nonzero if either step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 2
import sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check: python3 has no torch; run this where python3 holds a CUDA-enabled torch")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
PY
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}
python3 benchmarks/bench_gpu.py --out "$out" "$@" 2>&1 | tee "$out/bench_gpu.log"
bench=${PIPESTATUS[0]}
exit $(( tests != 0 || bench != 0 ))
