#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need into
# .venv-test (pytest, pytest-timeout), builds autoexp.pyz, and runs the whole suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k resume -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if [ ! -x .venv-test/bin/python ]; then
    "$py" -m venv .venv-test
fi
.venv-test/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
bash build_pyz.sh >/dev/null
exec .venv-test/bin/python -m pytest -p no:cacheprovider -ra --timeout=300 tests "$@"
