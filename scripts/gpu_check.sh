#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with CUDA, run the GPU-labelled tests (and the
# CPU ones), then the kernel and model benchmarks. Logs go to LOGDIR.
# usage: scripts/gpu_check.sh LOGDIR [build] [tests] [sanitize] [bench] [bench7b]
#   with no steps given: build tests bench
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:?usage: scripts/gpu_check.sh LOGDIR [steps]}
shift
mkdir -p "$log"
steps=${*:-build tests bench}
has() { [[ " $steps " == *" $1 "* ]]; }
jobs=$(nproc)
status=0

if has build; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSQZ_CUDA=ON >"$log/configure.log" 2>&1 &&
    cmake --build build -j"$jobs" >"$log/build.log" 2>&1 || { echo "build failed"; tail -40 "$log/build.log"; exit 1; }
  echo "build ok"
fi
if has tests; then
  ctest --test-dir build -L gpu --output-on-failure -j1 >"$log/ctest_gpu.log" 2>&1 || status=1
  tail -25 "$log/ctest_gpu.log"
  ctest --test-dir build -LE gpu --output-on-failure -j"$jobs" >"$log/ctest_cpu.log" 2>&1 || status=1
  tail -4 "$log/ctest_cpu.log"
fi
if has sanitize; then
  small='*Small*:*Odd*:*TwoGroups*:*Outlier*:*Dequant*:*ItemsOfTwo*:*Fusion*:*Interleaved*:*FusedRope*:*TopK*:*PrefillSeveral*'
  for t in build/tests/test_lut_gemv build/tests/test_cuda_kernels build/tests/test_quantize_cuda; do
    [[ -x $t ]] || continue
    compute-sanitizer --tool memcheck --error-exitcode 3 "$t" --gtest_filter="$small" \
      >"$log/memcheck_$(basename "$t").log" 2>&1 || status=1
    tail -3 "$log/memcheck_$(basename "$t").log"
  done
  # the whole decode step (graphs and programmatic dependent launch) on stories260K
  compute-sanitizer --tool memcheck --error-exitcode 3 build/tests/test_cuda_backend \
    --gtest_filter='*Stories*' >"$log/memcheck_test_cuda_backend.log" 2>&1 || status=1
  tail -3 "$log/memcheck_test_cuda_backend.log"
fi
if has bench; then
  [[ -x build/tests/bench_lut_gemv ]] && build/tests/bench_lut_gemv 2>&1 | tee "$log/bench_lut_gemv.log" | tail -40
  m=${SQZ_SHARED:-../shared}/models/doc-llama-26m
  build/sqz bench -m "$m" -r 5 2>&1 | tee "$log/bench_doc_llama.log"
fi
if has bench7b; then
  tok=${SQZ_SHARED:-../shared}/tokenizers/llama2/tokenizer.model
  tmp=${TMPDIR:-/tmp}/sqz_synth
  mkdir -p "$tmp"
  build/sqz synth --shape llama-7b --bits 3 --outliers 0.45 --tokenizer "$tok" -o "$tmp/7b-q3.sqz" \
    --fp16 "$tmp/7b-fp16" 2>&1 | tee "$log/synth.log"
  build/sqz synth --shape llama-7b --bits 4 --outliers 0.45 --tokenizer "$tok" -o "$tmp/7b-q4.sqz" 2>&1 | tee -a "$log/synth.log"
  build/sqz synth --shape llama-7b --bits 3 --outliers 0 --tokenizer "$tok" -o "$tmp/7b-q3-dense.sqz" 2>&1 | tee -a "$log/synth.log"
  build/sqz bench -m "$tmp/7b-fp16,$tmp/7b-q3.sqz,$tmp/7b-q3-dense.sqz,$tmp/7b-q4.sqz" -r 3 2>&1 | tee "$log/bench_7b.log"
fi
exit $status
