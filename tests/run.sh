#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need into
# .venv-test (pytest, pytest-timeout), builds autoexp.pyz, then runs the suite on the fake
# SLURM and, after it, the real-SLURM tier (tests/real_slurm), which runs only with
# AUTOEXP_REAL_SLURM=1 (root on Debian/Ubuntu: it installs and starts a real SLURM) and is
# otherwise skipped with its reason.
#
# AUTOEXP_CI=1 (what .ci/run sets, with AUTOEXP_REAL_SLURM=1) adds the other stages, so
# that every change is checked against two SLURM generations and the newest Python:
#  2. tests/real_slurm against the other SLURM generation, in a Debian chroot beside the
#     first cluster, on other ports (tests/real_slurm/chroot.sh test);
#  3. the fast suite again with every fake cluster playing SLURM 24.11
#     (FAKE_SLURM_VERSION=24.11; tests/test_fake_slurm.py, byte for byte against 22.05's
#     captures, is left out: tests/test_fake_slurm_generations.py covers 24.11's);
#  4. the suite under CPython 3.14, in a Debian sid chroot (tests/pythons/sid.sh suite),
#     without tests/test_scale_e2e.py (10,000 jobs through the CLI, 6 minutes: it measures
#     the sweep's size, not the interpreter, and runs in stage 1).
# Every stage runs even when one before it failed (exit 1 at the end then); each is timed.
# Arguments go to one pytest run over everything instead: `bash tests/run.sh -k resume -x`.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if [ ! -x .venv-test/bin/python ]; then
    "$py" -m venv .venv-test || exit 1
fi
.venv-test/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt || exit 1
bash build_pyz.sh >/dev/null || exit 1
pytest=(.venv-test/bin/python -m pytest -p no:cacheprovider -ra --timeout=600)
if [ $# -gt 0 ]; then
    exec "${pytest[@]}" tests "$@"
fi
T0=$SECONDS
if [ "${AUTOEXP_CI:-}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
  # the report's test draws it in a real headless browser where one is present (it is
  # skipped otherwise): Debian's chromium, on the CI machine only; a failure here only skips it
  echo "=== tests/run.sh: installing chromium for the report's browser test" >&2
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "tests/run.sh: chromium could not be installed; the browser test is skipped" >&2
fi
results=()
failed=0
stage() { # name command...
  local name=$1 t rc
  shift
  echo "=== tests/run.sh: $name" >&2
  t=$SECONDS
  "$@"
  rc=$?
  results+=("$(printf '%-62s %s %4ds' "$name" "$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")" $((SECONDS - t)))")
  [ "$rc" = 0 ] || failed=1
}
stage "fake-SLURM suite" "${pytest[@]}" tests --ignore=tests/real_slurm
stage "real tier on this machine's SLURM" "${pytest[@]}" tests/real_slurm
if [ "${AUTOEXP_CI:-}" = 1 ]; then
  stage "real tier on the other SLURM generation (Debian chroot)" bash tests/real_slurm/chroot.sh test
  stage "fake-SLURM suite, the fake playing SLURM 24.11" env FAKE_SLURM_VERSION=24.11 \
    "${pytest[@]}" tests --ignore=tests/real_slurm --ignore=tests/test_fake_slurm.py -m "not slow"
  stage "fake-SLURM suite under CPython 3.14 (Debian sid chroot)" bash tests/pythons/sid.sh suite \
    --ignore=tests/test_scale_e2e.py
fi
echo "=== tests/run.sh: summary" >&2
printf '%s\n' "${results[@]}" >&2
echo "total $((SECONDS - T0))s" >&2
exit $failed
