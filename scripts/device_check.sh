#!/usr/bin/env bash
# The accelerator check: every check that needs the GPU, in one call of under 8 minutes, on a CUDA host with
# no internet whose Python has CuPy and PyTorch (the image of scripts/device-image-packages.txt):
#   1. `pytest -m gpu` (the engine on CuPy, and a GPU worker running a job end to end), under a hard timeout;
#   2. benchmarks/bench_gpu.py: the large MLP on the engine beside PyTorch on the same card, and DeZero's
#      figure, GPU over CPU for MLP(1000, 10) at batch 100 (5.1x on Colab, to beat).
# Figures and logs go into $OUT (default ./device-check-out). Exit status 0 only if every step passed.
#
# The packages the image lacks travel as wheels in .whl/ (scripts/device_wheels.sh, run where PyPI is reachable);
# they are installed with --no-deps into a folder of their own, never into the host's Python.
# Settings: PYTHON (python3), PYTEST_TIMEOUT_S (270), BENCH_TIMEOUT_S (150).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./device-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-270}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-150}
SITE=${TMPDIR:-/tmp}/bpbench-device-site
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" >/dev/null; then
  pins=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/device-wheels.txt | wc -l)
  wheels=$(compgen -G ".whl/*.whl" | wc -l)
  if [ "$wheels" -ne "$pins" ]; then
    echo ".whl/ holds $wheels wheels for $pins pins of scripts/device-wheels.txt: run scripts/device_wheels.sh" >&2
    exit 1
  fi
  rm -rf "$SITE"  # a fresh folder each run: nothing of an earlier run's wheels stays beside this one's
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    || { echo "installing the wheels of .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$SITE"
  export PATH="$SITE/bin:$PATH"
fi

# What the GPU tests leave running, whatever its process group or session (a test's `bpbench worker` runs in a
# session of its own and holds the GPU): the processes that carry this run's DEVICE_CHECK_RUN.
leftovers() {
  local proc
  for proc in /proc/[0-9]*; do
    tr '\0' '\n' <"$proc/environ" 2>/dev/null | grep -qxF "DEVICE_CHECK_RUN=$1" && echo "${proc#/proc/}"
  done
}
end_leftovers() {
  local pids pid group own signal
  own=$(sed 's/.*) //' "/proc/$$/stat" | cut -d' ' -f3)
  for signal in TERM KILL; do
    pids=$(leftovers "$1")
    [ -n "$pids" ] || return 0
    echo "ending what the GPU tests left running (SIG$signal): $(echo $pids)"
    for pid in $pids; do
      group=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f3)
      if [ -n "$group" ] && [ "$group" != "$own" ]; then kill "-$signal" -- "-$group" 2>/dev/null; fi
      kill "-$signal" "$pid" 2>/dev/null
    done
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -z "$(leftovers "$1")" ] && return 0; sleep 0.5; done
  done
}

status=0
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1
  "$PY" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
  "$PY" -c 'import cupy, numpy; print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "numpy", numpy.__version__)'
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  "$PY" -c 'from engine.backend import driver_release, cuda_driver_version; print("driver", driver_release(), "cuda driver", cuda_driver_version())'
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

echo "== pytest -m gpu (at most ${PYTEST_TIMEOUT_S} s)"
run_id="$$-$RANDOM$RANDOM"
per_test_s=$((PYTEST_TIMEOUT_S > 60 ? PYTEST_TIMEOUT_S - 30 : 0))  # one hung test ends, not all (0: off)
# Into a file, not a pipe: a process the tests leave behind would hold a pipe open and the check would wait.
DEVICE_CHECK_RUN=$run_id timeout --kill-after=10 "$PYTEST_TIMEOUT_S" \
  "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs -o addopts="" --timeout="$per_test_s" \
  --junitxml="$OUT/pytest_gpu.xml" tests >"$OUT/pytest_gpu.txt" 2>&1
pytest_status=$?
tail -40 "$OUT/pytest_gpu.txt"
[ "$pytest_status" -eq 124 ] && echo "pytest -m gpu ran past ${PYTEST_TIMEOUT_S} s and was stopped" | tee -a "$OUT/pytest_gpu.txt"
end_leftovers "$run_id" | tee -a "$OUT/pytest_gpu.txt"
[ "$pytest_status" -eq 0 ] || status=1

echo "== training benchmark: engine on GPU vs engine on CPU vs PyTorch on GPU (at most ${BENCH_TIMEOUT_S} s)"
timeout --kill-after=10 "$BENCH_TIMEOUT_S" "$PY" benchmarks/bench_gpu.py --json "$OUT/bench_gpu.json" 2>&1 \
  | tee "$OUT/bench_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "device_check exit status: $status" | tee -a "$OUT/environment.txt"
exit $status
