#!/usr/bin/env bash
# One prepared GPU check (its timeouts add up to under 10 min, leaving the start inside 15 min of device time), for a session that is lent a GPU machine (device tool): build offline, run
# the CUDA tests (and compute-sanitizer over the CUDA EDT tests), then the main benchmark with the
# baselines in the same run. Everything it measured lands under $OUT (8 files at most come back).
#
# Before the call, here:   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl monai==1.6.1 edt==3.1.2 tqdm
# and call the device tool with carry [".whl"] and the command `bash benchmarks/gpu_session.sh`.
set -uo pipefail
OUT="${OUT:-/tmp/fastloss-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  time python3 -m pip install --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -5
  python3 -m fastloss info
} 2>&1 | tee "$OUT/build.log"

timeout 120 python3 -m pytest -q -m cuda --continue-on-collection-errors tests/test_cuda_kernels.py tests/test_edt_cuda.py tests/test_metrics.py tests/test_regions.py tests/test_skeleton.py tests/test_skeleton_parallel.py tests/test_aux_stats.py 2>&1 | tee "$OUT/cuda_tests.log"
# issue 21: the Triton soft skeleton on CUDA (every test of the file runs on the GPU without TRITON_INTERPRET)
timeout 75 python3 -m pytest -q tests/test_triton_soft_skeleton.py 2>&1 | tail -15 >> "$OUT/cuda_tests.log"
# every named loss on the compiled CPU path (no triton on the CPU path), as CI's main-job venv checks
python3 tools/check_cpu_path.py 2>&1 | tail -3 >> "$OUT/cuda_tests.log"
# the compiled CPU kernels on the GPU machine's CPU (16 cores, another ISA mix): the same tests as CI
timeout 45 python3 -m pytest -q -x tests/test_cpu_stats.py tests/test_cpu_lovasz.py tests/test_cpu_buffers.py 2>&1 | tail -3 >> "$OUT/cuda_tests.log"
if command -v compute-sanitizer >/dev/null; then
  timeout 45 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x tests/test_edt_cuda.py -k "not large" \
    2>&1 | tail -40 > "$OUT/sanitizer.log"
fi
# the losses of issue 3/4 targets first; everything else in a later call if time is left
timeout 150 python3 benchmarks/run.py --compile --only losses,edt --losses DiceCE,DiceFocal,DiceTopK,Dice,Tversky,GDice,Focal,CE,TopK,DiceHD,HD 2>&1 | tee "$OUT/bench.log"
# issue 5: NSD + HD95 of (2, 9, 128^3) maps on the GPU and the CPU against MONAI on the CPU
timeout 45 python3 benchmarks/bench_metrics.py --layouts contiguous 2>&1 | tee "$OUT/bench_metrics.log"
# issues 21/22: the Triton soft skeleton and clDice against MONAI on the GPU, the CUDA thinning (parallel rows)
timeout 75 python3 benchmarks/bench_soft_skeleton.py --device cuda --sizes 48,96 --reps 10 2>&1 | tee "$OUT/bench_gpu_skeleton.log"
timeout 40 python3 benchmarks/bench_skeleton.py --parts skeletonize --reps 5 2>&1 | tee -a "$OUT/bench_gpu_skeleton.log"
# a user's run writes to benchmarks/results/local/ (untracked) unless --record; bring back whichever exists
cp benchmarks/results/local/*.csv "$OUT/" 2>/dev/null || cp benchmarks/results/*.csv "$OUT/" 2>/dev/null
ls -la "$OUT"
