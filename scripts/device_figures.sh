#!/usr/bin/env bash
# Figures that want a quiet, dedicated or many-core host, taken on the borrowed accelerator host after
# scripts/device_check.sh (same call, same wheels): nothing else runs there, and it has 16 CPUs where this
# project's own guests have 2.
#   1. the engine against PyTorch on the host's CPU at all its threads and at 1 (issue 16: textbook, large
#      MLP, convnet; `benchmarks/bench_engine_vs_torch.py`), and the textbook job's reported figure against
#      PyTorch at all threads (`benchmarks/bench_loop_overhead.py`);
#   2. what costs the engine at all threads (4 Dec 2026 on the H200 host: the convnet at 0.20 of PyTorch, the
#      textbook step at 0.67 of its own 1-thread speed): the per-layer times at all threads, and the same
#      run with every product on one BLAS thread (`--work-per-thread` 2^40) against the product-size rule;
#   3. the change-point benchmark's real runs (issue 13): 40 textbook jobs on the host's CPU (one BLAS
#      thread), each job's reported median samples/s saved to $OUT/runs_cpu.json, then 20 on its GPU
#      ($OUT/runs_gpu.json); resampled anywhere afterwards (`benchmarks/bench_changepoints.py --runs-from`).
# Steps run in that order while the budget lasts; each is bounded, and one that would start with under 20 s
# left is not run. Settings: PYTHON (python3), BUDGET_S (300), RUNS (40). Exit status 0 when every step that
# ran passed; steps not run for lack of time are listed, not failed.
# The device tool brings back at most 8 files, and the two scripts write about 25: point OUT at a scratch
# folder and pack it into the tool's $OUT at the end, as in the call benchmarks/README.md quotes
# ("The first accelerator run").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./device-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-300}
RUNS=${RUNS:-40}
SITE=${TMPDIR:-/tmp}/bpbench-device-site
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The wheels device_check.sh installed in this call; installed here when it did not run first.
if compgen -G ".whl/*.whl" >/dev/null; then
  if [ ! -d "$SITE" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
      || { echo "installing the wheels of .whl/ failed" >&2; exit 1; }
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
threads=$(nproc)
status=0
: >"$OUT/figures_steps.txt"
# step NAME SECONDS FILE COMMAND...: runs COMMAND under min(SECONDS, what is left), its output into FILE.
step() {
  local name=$1 most=$2 file=$3 left took rc
  shift 3
  left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "-- $name: not run, ${left} s of the ${BUDGET_S} s budget left" | tee -a "$OUT/figures_steps.txt"
    return
  fi
  [ "$most" -lt "$left" ] || most=$left
  echo "== $name (at most ${most} s)"
  local started=$SECONDS
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONUNBUFFERED=1 timeout --kill-after=5 "$most" "$@" >"$file" 2>&1
  rc=$?
  took=$((SECONDS - started))
  tail -25 "$file"
  [ "$rc" -eq 0 ] || status=1
  printf '%s\texit %s\t%s s\n' "$name" "$rc" "$took" | tee -a "$OUT/figures_steps.txt"
}

{
  date -u +%FT%TZ
  echo "cpus: $threads; $(grep -m1 'model name' /proc/cpuinfo)"
  uptime
} | tee "$OUT/figures_host.txt"
step "engine vs torch, $threads threads" 60 "$OUT/vs_torch_all.txt" "$PY" benchmarks/bench_engine_vs_torch.py \
  --configs textbook,large,convnet --threads "$threads" --repeats 5 --seconds 0.5 --gap 0.05
step "job vs torch, $threads threads" 45 "$OUT/loop_all.txt" "$PY" benchmarks/bench_loop_overhead.py \
  --threads "$threads" --rounds 5 --seconds 0.5
step "engine vs torch, 1 thread" 60 "$OUT/vs_torch_1.txt" "$PY" benchmarks/bench_engine_vs_torch.py \
  --configs textbook,large,convnet --threads 1 --repeats 5 --seconds 0.5 --gap 0.05
step "per layer, $threads threads" 60 "$OUT/layers_all.txt" "$PY" benchmarks/bench_engine_vs_torch.py \
  --configs textbook,convnet --threads "$threads" --repeats 3 --seconds 0.5 --gap 0.05 --layers 20
step "one BLAS thread a product, $threads threads" 45 "$OUT/one_thread_products.txt" "$PY" \
  benchmarks/bench_engine_vs_torch.py --configs textbook,large,convnet --threads "$threads" --repeats 5 \
  --seconds 0.5 --gap 0.05 --work-per-thread 1099511627776
step "change-point runs, cpu" 40 "$OUT/changepoints_cpu.txt" "$PY" benchmarks/bench_changepoints.py \
  --runs "$RUNS" --device cpu --series 0 --save-runs "$OUT/runs_cpu.json"
step "change-point runs, gpu:0" 60 "$OUT/changepoints_gpu.txt" "$PY" benchmarks/bench_changepoints.py \
  --runs 20 --device gpu:0 --series 0 --save-runs "$OUT/runs_gpu.json"
uptime | tee -a "$OUT/figures_host.txt"
echo "device_figures exit status: $status (${SECONDS} s)"
exit $status
