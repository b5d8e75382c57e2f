#!/usr/bin/env bash
# The demo: a 4-job sweep on the fake SLURM (no cluster needed), taken from its config to
# finished runs. Two of the jobs hit their time limit, are restarted and resume from their
# checkpoint; all four finish. Takes about 10 seconds.
#   bash examples/demo.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/autoexp-demo.XXXXXX")
export FAKE_SLURM_DIR="$work/fake-slurm"
export PATH="$repo/fixtures/fake_slurm:$PATH"
trap 'python3 "$repo/fixtures/fake_slurm/fake_slurm.py" shutdown >/dev/null 2>&1 || true' EXIT
# The fake SLURM runs a 1-minute time limit in 3 seconds.
python3 "$repo/fixtures/fake_slurm/fake_slurm.py" configure time_scale=0.05 min_job_age=3 >/dev/null
bash "$repo/build_pyz.sh" "$work/autoexp.pyz" >/dev/null
cp "$repo/examples/demo.json" "$repo/examples/demo_train.sh" "$work/"
cd "$work"
echo "== python3 autoexp.pyz run demo.json --plan-id demo   (in $work)"
python3 autoexp.pyz run demo.json --plan-id demo
echo
echo "== python3 autoexp.pyz status"
python3 autoexp.pyz status
echo
echo "== python3 autoexp.pyz history --session demo demo-steps24-s1"
python3 autoexp.pyz history --session demo demo-steps24-s1
