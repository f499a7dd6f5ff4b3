#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of fastloss._C, and the tests that reach C++ under it.
#
#   tools/sanitize.sh            the CI subset: the C++-centred test files and the fuzz harness at its CI
#                                budget (about a minute on 2 cores, after a one-minute build)
#   tools/sanitize.sh --full     every test file of tests/ (the fuzz harness at its CI budget)
#   tools/sanitize.sh --fuzz     the fuzz harness alone, long budget (random, FASTLOSS_FUZZ_EXAMPLES per test,
#                                default 1000)
#   tools/sanitize.sh [mode] -- ARGS   extra pytest arguments (e.g. -k edt, or test files instead of the set)
#
# The extension is built in its own directory (FASTLOSS_SANITIZE_BUILD, default build/sanitize) with
# -fsanitize=address,undefined, CUDA off and the per-file instruction-set flags of CMakeLists.txt kept (the
# AVX2/AVX-512 statistics kernels are checked too); the installed fastloss._C is not touched: the tests
# import the sanitized build through a meta-path hook (a sitecustomize.py in the build directory, on
# PYTHONPATH, so that the tests' own subprocesses use it too). Python and torch are not instrumented: the
# ASan runtime comes first by LD_PRELOAD, so overruns past torch tensors are seen as well.
#
# Environment of the run: FASTLOSS_CPU_CACHE_MB=0 (no output-buffer cache, so that a use of a released
# gradient buffer is a use after free), ASAN_OPTIONS=detect_leaks=0 (the interpreter's own allocations are
# not ours), FASTLOSS_SANITIZE=1 (tests that limit the address space or read peak memory skip themselves:
# ASan reserves terabytes of address space). Reports go to $BUILD/reports; the script fails when pytest
# fails or when any report was written (a subprocess's included). Needs cmake, a C++ compiler with the
# sanitizer runtimes (GCC: libasan, libubsan) and pybind11 (installed into the environment if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FASTLOSS_SANITIZE_BUILD:-$ROOT/build/sanitize}"
PYTHON="${PYTHON:-python}"
MODE=ci
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) MODE=ci ;;
    --full) MODE=full ;;
    --fuzz) MODE=fuzz ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "sanitize.sh: unknown argument $1 (--ci, --full, --fuzz, -- pytest args)" >&2; exit 2 ;;
  esac
  shift
done

# The test files of the CI subset: the compiled kernels' own tests (statistics per ISA, TopK, Lovász,
# buffer cache, EDT and edt_at, the metrics' mask helpers, the memory-safety reproducers) and a short fuzz
# run; --full runs every file of tests/.
CI_FILES=(tests/test_cpu_stats.py tests/test_cpu_lovasz.py tests/test_cpu_buffers.py tests/test_edt.py
          tests/test_edt_at.py tests/test_memory_safety.py tests/test_metrics.py tests/test_regions.py tests/fuzz)

CXX_BIN="${CXX:-c++}"
SAN="-fsanitize=address,undefined"
cd "$ROOT"
"$PYTHON" -c "import pybind11" 2>/dev/null || "$PYTHON" -m pip install -q "pybind11>=2.12"
PYBIND11_DIR="$("$PYTHON" -m pybind11 --cmakedir)"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DFASTLOSS_CUDA=OFF -DCMAKE_BUILD_TYPE=Sanitize \
    -DCMAKE_CXX_COMPILER="$CXX_BIN" \
    -DCMAKE_CXX_FLAGS_SANITIZE="$SAN -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g -O1 -D_GLIBCXX_ASSERTIONS" \
    -DCMAKE_MODULE_LINKER_FLAGS_SANITIZE="$SAN" -DCMAKE_SHARED_LINKER_FLAGS_SANITIZE="$SAN" \
    -Dpybind11_DIR="$PYBIND11_DIR" -DPython_EXECUTABLE="$(command -v "$PYTHON")" >"$BUILD/configure.log" 2>&1 \
    || { cat "$BUILD/configure.log"; rm -f "$BUILD/CMakeCache.txt"; exit 1; }
fi
echo "sanitize.sh: building $BUILD"
cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" >"$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log"; exit 1; }
SO="$(ls "$BUILD"/_C*.so | head -1)"

# fastloss._C from this build, for every interpreter started with this PYTHONPATH
mkdir -p "$BUILD/site"
cat >"$BUILD/site/sitecustomize.py" <<'EOF'
# written by tools/sanitize.sh: `import fastloss._C` loads the sanitized build named by FASTLOSS_SANITIZED_EXT
import importlib.machinery
import importlib.util
import os
import sys

_SO = os.environ.get("FASTLOSS_SANITIZED_EXT")


class _SanitizedExtension:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "fastloss._C" and _SO:
            return importlib.util.spec_from_file_location(
                name, _SO, loader=importlib.machinery.ExtensionFileLoader(name, _SO))
        return None


if _SO:
    sys.meta_path.insert(0, _SanitizedExtension)
EOF

REPORTS="$BUILD/reports"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
LIBASAN="$("$CXX_BIN" -print-file-name=libasan.so)"
LIBUBSAN="$("$CXX_BIN" -print-file-name=libubsan.so)"
export LD_PRELOAD="$LIBASAN $LIBUBSAN${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$REPORTS/asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan:${UBSAN_OPTIONS:-}"
export PYTHONPATH="$BUILD/site${PYTHONPATH:+:$PYTHONPATH}"
export FASTLOSS_SANITIZED_EXT="$SO"
export FASTLOSS_CPU_CACHE_MB=0
export FASTLOSS_SANITIZE=1

"$PYTHON" - <<EOF
import fastloss._C as C, os
assert os.path.samefile(C.__file__, "$SO"), C.__file__
print("sanitize.sh: fastloss._C =", C.__file__, "| ISA", C.cpu_isa())
EOF

case "$MODE" in
  ci) export FASTLOSS_FUZZ="${FASTLOSS_FUZZ:-ci}"; TARGETS=("${CI_FILES[@]}") ;;
  full) export FASTLOSS_FUZZ="${FASTLOSS_FUZZ:-ci}"; TARGETS=(tests) ;;
  fuzz) export FASTLOSS_FUZZ="${FASTLOSS_FUZZ:-long}"; TARGETS=(tests/fuzz) ;;
esac
[ ${#EXTRA[@]} -gt 0 ] && [ -e "${EXTRA[0]}" ] && TARGETS=()

STATUS=0
START=$(date +%s)
"$PYTHON" -m pytest -q -p no:cacheprovider "${TARGETS[@]}" "${EXTRA[@]}" || STATUS=$?
ELAPSED=$(( $(date +%s) - START ))

shopt -s nullglob
FOUND=("$REPORTS"/*)
if [ ${#FOUND[@]} -gt 0 ]; then
  echo "sanitize.sh: ${#FOUND[@]} sanitizer report(s):"
  for f in "${FOUND[@]}"; do echo "==> $f"; head -60 "$f"; done
  STATUS=1
fi
echo "sanitize.sh: mode $MODE, pytest ${ELAPSED}s, $([ $STATUS -eq 0 ] && echo 'no sanitizer report, tests passed' || echo FAILED)"
exit $STATUS
