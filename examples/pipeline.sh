#!/usr/bin/env bash
# The pipeline example on the fake SLURM (no cluster needed): two trainings, each followed
# by a conversion of its last checkpoint and an evaluation of the converted model, with the
# scores collected by an `on` rule and the team told in one message per pass. About 20 s.
#   bash examples/pipeline.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/autoexp-pipeline.XXXXXX")
export FAKE_SLURM_DIR="$work/fake-slurm"
export PATH="$repo/fixtures/fake_slurm:$PATH"
trap 'python3 "$repo/fixtures/fake_slurm/fake_slurm.py" shutdown >/dev/null 2>&1 || true' EXIT
python3 "$repo/fixtures/fake_slurm/fake_slurm.py" configure min_job_age=3 >/dev/null
bash "$repo/build_pyz.sh" "$work/autoexp.pyz" >/dev/null
cp "$repo/examples/pipeline.json" "$repo/examples/pipeline_step.sh" "$work/"
cd "$work"
echo "== python3 autoexp.pyz run pipeline.json --plan-id pipe   (in $work)"
python3 autoexp.pyz run pipeline.json --plan-id pipe
echo
echo "== python3 autoexp.pyz status --session pipe"
python3 autoexp.pyz status --session pipe
echo
echo "== cat results.tsv"
cat results.tsv
echo
echo "== python3 autoexp.pyz history --session pipe pipe-lr0.001-convert-eval"
python3 autoexp.pyz history --session pipe pipe-lr0.001-convert-eval
echo
echo "== the team's messages (notifications.jsonl: one JSON object per message)"
python3 -c 'import json,sys
for line in open("notifications.jsonl"):
    if line.strip():
        print(json.loads(line)["text"]); print()'
