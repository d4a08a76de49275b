# Sourced by scripts/test-gpu.sh and scripts/test-multi-gpu.sh: their shared
# start and end.
#
#   gpu_tests_start LABEL TIMEOUT "$@"   without --bin: install, build and
#       exec `ctest -L LABEL`; with --bin DIR: sets bin=DIR (absolute) and
#       returns, for the caller's steps.
#   step NAME COMMAND...                 runs one step, records a failure
#   gpu_tests_finish NAME                prints the summary, exit 1 on a failure
gpu_tests_start() {
  local label="$1" timeout="$2"
  shift 2
  . "$root/scripts/cudnn-path.sh" # the cuDNN attention's tests run where it loads
  if [ "${1:-}" != "--bin" ]; then
    "$root/scripts/install-deps.sh"
    "$root/scripts/build.sh"
    cd "${LLMIR_BUILD_DIR:-$root/build}"
    exec ctest --output-on-failure -L "$label" --timeout "$timeout"
  fi
  bin="$(cd "${2:?--bin needs a folder}" && pwd)"
  failed=()
}
step() {
  local name="$1"; shift
  echo "== $name"
  if "$@"; then echo "-- $name: passed"; else echo "-- $name: FAILED"; failed+=("$name"); fi
}
gpu_tests_finish() {
  if [ ${#failed[@]} -gt 0 ]; then
    echo "$1: ${#failed[@]} failed: ${failed[*]}"
    exit 1
  fi
  echo "$1: all passed"
}
