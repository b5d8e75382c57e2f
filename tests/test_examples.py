"""The README's runnable examples do what it says: `examples/demo.sh` (a 4-job sweep with
restarts on the fake SLURM) and `examples/pipeline.sh` (train -> convert -> eval with an
action and digest notifications)."""

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def run_example(name, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.Popen(["bash", os.path.join(EXAMPLES, name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, universal_newlines=True)
    out = proc.communicate(timeout=150)[0]
    assert proc.returncode == 0, out
    return out


def test_demo(tmp_path):
    out = run_example("demo.sh", tmp_path)
    assert "session demo done: 4 finalized" in out, out
    assert out.count("restart_scheduled") >= 2, out  # the 24-step runs time out once and resume


def test_pipeline(tmp_path):
    out = run_example("pipeline.sh", tmp_path)
    assert "session pipe done: 6 finalized" in out, out
    results = out.split("== cat results.tsv\n")[1].split("\n\n")[0].splitlines()
    assert sorted(r.split("\t")[:2] for r in results) == [
        ["0.0003", "demo-work/pipe-lr0.0003-convert-hf"], ["0.001", "demo-work/pipe-lr0.001-convert-hf"]]
    messages = out.split("notifications.jsonl: one JSON object per message)\n")[1]
    told = [line.split()[0] for line in messages.splitlines() if line.startswith("pipe-")]
    assert sorted(told) == sorted(["pipe-lr0.001", "pipe-lr0.0003", "pipe-lr0.001-convert", "pipe-lr0.0003-convert",
                                   "pipe-lr0.001-convert-eval", "pipe-lr0.0003-convert-eval"]), messages
    assert "follow-up of pipe-lr0.001-convert" in out and "captured score = " in out
