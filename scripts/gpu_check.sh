#!/usr/bin/env bash
# The GPU check, one prepared script for a GPU host with no internet where CuPy (CUDA 12 or 13) and PyTorch are
# installed (under 5 minutes): `pytest -m gpu`, then the training benchmark on the GPU beside the CPU and beside
# PyTorch on the same GPU. Figures go as JSON/text into $OUT (default ./gpu-check-out).
#
# Packages the host lacks (Celery, FastAPI, SQLAlchemy...) travel as wheels in .whl/ (made by
# scripts/gpu_wheels.sh on a machine with PyPI); they are installed into /tmp/site, not into the host's Python.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
  export PATH="/tmp/site/bin:$PATH"
fi
status=0
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1
  "$PY" -c 'import cupy, numpy; print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "numpy", numpy.__version__)'
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

echo "== pytest -m gpu"
timeout 170 "$PY" -m pytest -m gpu -p no:cacheprovider -q -o addopts="" --junitxml="$OUT/pytest_gpu.xml" tests \
  2>&1 | tee "$OUT/pytest_gpu.txt" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== training benchmark: engine on GPU vs engine on CPU vs PyTorch on GPU"
timeout 100 "$PY" benchmarks/bench_gpu.py --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check exit status: $status" | tee -a "$OUT/environment.txt"
exit $status
