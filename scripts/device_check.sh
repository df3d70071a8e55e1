#!/usr/bin/env bash
# The accelerator check: every check that needs the accelerator, in one call of under 8 minutes, on a host with
# no internet (today's image: an NVIDIA H100/H200 with CuPy for CUDA 13 and PyTorch, no JAX; a ROCm host with
# CuPy's ROCm build; a TPU or GPU host with JAX), each step timed in the output and in $OUT/steps.txt:
#   1. `pytest -m gpu` (the engine on CuPy and on JAX's GPU, and a GPU worker running a job end to end, its
#      compare answer kept in $OUT/compare_gpu.json), under a hard timeout,
#      the engine tests' GPU named as the stack found (BPBENCH_TEST_GPU: `gpu:0`, or `rocm:0` on ROCm);
#   2. the `parity` job kind on the GPU CuPy has, float32 and float64 (`gpu:0` on CUDA, `rocm:0` on ROCm):
#      every preset's gradients against the NumPy float64 reference, one summary line per dtype;
#   3. where JAX has a GPU or TPU platform: the parity kind on `xla:<platform>:0` and a short training run
#      there, the engine's jitted step (benchmarks/bench_xla.py measures `xla:cpu:0` only); where it has
#      none, one line says so (not a failure);
#   4. benchmarks/bench_gpu.py (with a GPU): the large MLP on the engine beside PyTorch on the same card, and
#      DeZero's figure, GPU over CPU for MLP(1000, 10) at batch 100 (5.1x on Colab, to beat).
# Figures and logs go into $OUT (default ./device-check-out). Exit status 0 only if every step that ran passed
# and there was an accelerator to check: a check that found none fails.
#
# The packages the image lacks travel as wheels in .whl/ (scripts/device_wheels.sh, run where PyPI is reachable);
# they are installed with --no-deps into a folder of their own, never into the host's Python.
# Settings: PYTHON (python3), PYTEST_TIMEOUT_S (240), PARITY_TIMEOUT_S (45, each run), XLA_TIMEOUT_S (60,
# each run), BENCH_TIMEOUT_S (130), BUDGET_S (470: a step that would start with less than 10 s of it left is
# not run, and fails the check), XLA_PLATFORMS ("tpu gpu": JAX's platforms the XLA step looks for, first
# found first; "cpu" runs that step on the host's CPU, which is no accelerator: the check still fails).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./device-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-240}
PARITY_TIMEOUT_S=${PARITY_TIMEOUT_S:-45}
XLA_TIMEOUT_S=${XLA_TIMEOUT_S:-60}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-130}
BUDGET_S=${BUDGET_S:-470}
XLA_PLATFORMS=${XLA_PLATFORMS:-tpu gpu}
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
    tr '\0' '\n' 2>/dev/null <"$proc/environ" | grep -qxF "DEVICE_CHECK_RUN=$1" && echo "${proc#/proc/}"
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

# Steps, timed: `begin NAME` prints its header; `finish RESULT` prints and records how long it took.
: >"$OUT/steps.txt"
begin() { step=$1; step_started=$SECONDS; step_failed=0; echo "== $1"; }
finish() {
  local took=$((SECONDS - step_started))
  echo "-- $step: $1 in ${took} s (${SECONDS} s of the ${BUDGET_S} s budget used)"
  printf '%s\t%s\t%s\n' "$step" "$1" "$took" >>"$OUT/steps.txt"
}
# A step's time limit: its own, or what is left of the budget; 0 when under 10 s are left.
limit() {
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
status=0
failed_step() { status=1; step_failed=1; }  # this step failed, and so does the check
# A step of several runs: passed, or failed if one of them failed.
finish_runs() { if [ "$step_failed" -eq 0 ]; then finish passed; else finish failed; fi; }
# The result of a step that ran one command, from its exit status (a failure fails the check).
judge() { if [ "$1" -eq 0 ]; then result=passed; else failed_step; result="failed (exit status $1)"; fi; }
out_of_time() { failed_step; echo "not run: under 10 s of the ${BUDGET_S} s budget left" | tee -a "$1"; finish "not run"; }

# What this host can run: a GPU through CuPy (`cuda`, `rocm`), and JAX's GPU or TPU platform.
read -r gpu_stack gpu_device gpu_what < <("$PY" scripts/device_probe.py gpu 2>&1)
read -r xla_platform xla_device xla_what < <("$PY" scripts/device_probe.py xla $XLA_PLATFORMS 2>&1)
# A probe that itself broke (no answer of its words) counts as finding nothing, and says what it printed.
case "$gpu_stack" in cuda | rocm | none) ;; *) gpu_what="the GPU probe broke: $gpu_stack $gpu_device $gpu_what"; gpu_stack=none ;; esac
case "$xla_platform" in gpu | tpu | cpu | none) ;; *) xla_what="the JAX probe broke: $xla_platform $xla_device $xla_what"; xla_platform=none ;; esac
{
  date -u +%FT%TZ
  "$PY" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'
  case "$gpu_stack" in
    cuda)
      echo "gpu: CUDA, $gpu_device: $gpu_what"
      nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1
      "$PY" scripts/device_probe.py environment cuda 2>&1 ;;
    rocm)
      echo "gpu: ROCm, $gpu_device: $gpu_what"
      "$PY" scripts/device_probe.py environment rocm 2>&1 ;;
    *) echo "gpu: none: $gpu_what" ;;
  esac
  "$PY" -c 'import torch; v = torch.version; print("torch", torch.__version__, "hip", v.hip) if getattr(v, "hip", None) else print("torch", torch.__version__, "cuda", v.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU)")' 2>&1 | tail -1
  if [ "$xla_platform" = none ]; then echo "xla: none: $xla_what"; else echo "xla: $xla_platform, $xla_device: $xla_what"; fi
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

begin "pytest -m gpu"
run_id="$$-$RANDOM$RANDOM"
pytest_limit=$(limit "$PYTEST_TIMEOUT_S")
if [ "$pytest_limit" -eq 0 ]; then
  : >"$OUT/pytest_gpu.txt"
  out_of_time "$OUT/pytest_gpu.txt"
else
  per_test_s=$((pytest_limit > 60 ? pytest_limit - 30 : 0))  # one hung test ends, not all (0: off)
  echo "at most ${pytest_limit} s"
  # Into a file, not a pipe: a process the tests leave behind would hold a pipe open and the check would wait.
  # BPBENCH_TEST_GPU: the engine tests' GPU in the spelling of the stack found (`rocm:0` on ROCm).
  test_gpu=gpu
  [ "$gpu_stack" = none ] || test_gpu=$gpu_device
  # DEVICE_CHECK_OUT: where the end-to-end worker test keeps its compare answer (compare_gpu.json).
  # XLA_PYTHON_CLIENT_PREALLOCATE=false: JAX's GPU tests share the process with CuPy's, and JAX would
  # otherwise take 75% of the GPU's memory at its first array.
  BPBENCH_TEST_GPU=$test_gpu DEVICE_CHECK_RUN=$run_id DEVICE_CHECK_OUT=$OUT XLA_PYTHON_CLIENT_PREALLOCATE=false \
    timeout --kill-after=10 "$pytest_limit" \
    "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs -o addopts="" --timeout="$per_test_s" \
    --junitxml="$OUT/pytest_gpu.xml" tests >"$OUT/pytest_gpu.txt" 2>&1
  pytest_status=$?
  tail -40 "$OUT/pytest_gpu.txt"
  [ "$pytest_status" -eq 124 ] && echo "pytest -m gpu ran past ${pytest_limit} s and was stopped" | tee -a "$OUT/pytest_gpu.txt"
  end_leftovers "$run_id" | tee -a "$OUT/pytest_gpu.txt"
  judge "$pytest_status"
  finish "$result"
fi

# The parity kind on one device in one dtype: its JSON into $OUT, its summary line on stdout and into $2.
parity() {
  local device=$1 log=$2 name=$3 dtype=$4 run_limit
  run_limit=$(limit "$PARITY_TIMEOUT_S")
  if [ "$run_limit" -eq 0 ]; then failed_step; echo "parity $dtype on $device: not run, no time left" | tee -a "$log"; return; fi
  timeout --kill-after=10 "$run_limit" "$PY" -m cli run --kind parity --device "$device" --dtype "$dtype" \
    --quiet --json >"$OUT/${name}_$dtype.json" 2>>"$log"
  local run_status=$?
  [ "$run_status" -eq 124 ] && echo "parity $dtype on $device ran past ${run_limit} s and was stopped" >>"$log"
  "$PY" scripts/device_probe.py parity "$OUT/${name}_$dtype.json" "$device" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] && [ "$run_status" -eq 0 ] || failed_step
}

begin "parity on the GPU"
: >"$OUT/parity_gpu.txt"
if [ "$gpu_stack" = none ]; then
  echo "skipped: $gpu_what" | tee -a "$OUT/parity_gpu.txt"
  finish skipped
else
  for dtype in float32 float64; do parity "$gpu_device" "$OUT/parity_gpu.txt" parity_gpu "$dtype"; done
  finish_runs
fi

begin "XLA (JAX) on its accelerator"
: >"$OUT/xla.txt"
if [ "$xla_platform" = none ]; then
  echo "skipped, not a failure: $xla_what" | tee -a "$OUT/xla.txt"
  finish skipped
else
  parity "$xla_device" "$OUT/xla.txt" "parity_xla_$xla_platform" float32
  if [ "$xla_platform" = tpu ]; then
    echo "parity float64 on $xla_device: not run, TPUs have no float64" | tee -a "$OUT/xla.txt"
  else
    parity "$xla_device" "$OUT/xla.txt" "parity_xla_$xla_platform" float64
  fi
  # The engine's training step compiled by jax.jit, on the accelerator (bench_xla.py measures xla:cpu:0).
  train_limit=$(limit "$XLA_TIMEOUT_S")
  if [ "$train_limit" -eq 0 ]; then
    failed_step; echo "training on $xla_device: not run, no time left" | tee -a "$OUT/xla.txt"
  else
    timeout --kill-after=10 "$train_limit" "$PY" -m cli run --device "$xla_device" --model two_layer_net \
      --dataset mnist5k --steps 500 --quiet --json >"$OUT/train_xla_$xla_platform.json" 2>>"$OUT/xla.txt"
    train_status=$?
    "$PY" scripts/device_probe.py train "$OUT/train_xla_$xla_platform.json" "$xla_device" 2>&1 \
      | tee -a "$OUT/xla.txt"
    [ "$train_status" -eq 0 ] || { failed_step; echo "training on $xla_device failed (exit status $train_status)" | tee -a "$OUT/xla.txt"; }
  fi
  finish_runs
fi

begin "training benchmark: engine on GPU vs engine on CPU vs PyTorch on GPU"
bench_limit=$(limit "$BENCH_TIMEOUT_S")
if [ "$gpu_stack" = none ]; then
  echo "skipped: $gpu_what" | tee "$OUT/bench_gpu.txt"
  finish skipped
elif [ "$bench_limit" -eq 0 ]; then
  : >"$OUT/bench_gpu.txt"
  out_of_time "$OUT/bench_gpu.txt"
else
  echo "at most ${bench_limit} s"
  timeout --kill-after=10 "$bench_limit" "$PY" benchmarks/bench_gpu.py --json "$OUT/bench_gpu.json" 2>&1 \
    | tee "$OUT/bench_gpu.txt"
  judge "${PIPESTATUS[0]}"
  finish "$result"
fi

if [ "$gpu_stack" = none ] && { [ "$xla_platform" = none ] || [ "$xla_platform" = cpu ]; }; then
  [ "$xla_platform" = cpu ] && xla_what="JAX's CPU platform is no accelerator"
  echo "no accelerator to check: $gpu_what; $xla_what" | tee -a "$OUT/environment.txt"
  status=1
fi
echo "steps (name, result, seconds):"
cat "$OUT/steps.txt"
echo "device_check exit status: $status (${SECONDS} s)" | tee -a "$OUT/environment.txt"
exit $status
