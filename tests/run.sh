#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need into
# .venv-test (pytest, pytest-timeout), builds autoexp.pyz, then runs the suite on the fake
# SLURM and, after it, the real-SLURM tier (tests/real_slurm), which runs only with
# AUTOEXP_REAL_SLURM=1 (root on Debian/Ubuntu: it installs and starts a real SLURM) and is
# otherwise skipped with its reason. CI sets AUTOEXP_REAL_SLURM=1. Both parts run even when
# the first fails (exit 1 then); each one's time goes to stderr.
# Arguments go to one pytest run over everything instead: `bash tests/run.sh -k resume -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if [ ! -x .venv-test/bin/python ]; then
    "$py" -m venv .venv-test
fi
.venv-test/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
bash build_pyz.sh >/dev/null
pytest=(.venv-test/bin/python -m pytest -p no:cacheprovider -ra --timeout=600)
if [ $# -gt 0 ]; then
    exec "${pytest[@]}" tests "$@"
fi
rc=0
t0=$SECONDS
"${pytest[@]}" tests --ignore=tests/real_slurm || rc=1
echo "tests/run.sh: fake-SLURM suite: $((SECONDS - t0))s" >&2
t0=$SECONDS
"${pytest[@]}" tests/real_slurm || rc=1
echo "tests/run.sh: real-SLURM tier: $((SECONDS - t0))s" >&2
exit $rc
