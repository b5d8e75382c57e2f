"""Follow-up jobs (`then`, SPEC 5.6), end to end on the fake SLURM through the CLI: each is
submitted once when its parent is decided, monitored like any job, and shown as a tree."""

import json
import os

import pytest

import helpers
from helpers import Project, read_events

pytestmark = pytest.mark.timeout(180)

TRAIN = "echo seed {seed}; sleep 0.2; echo TRAINING FINISHED"
EVAL = "echo eval of {parent} seed {seed} as {name}; sleep 0.2; echo TRAINING FINISHED"


def config(then, seeds=(1, 2), command=TRAIN, **monitoring):
    cfg = helpers.sweep_config("fu", command, seeds, {"lost_after_seconds": 15}, **monitoring)
    cfg["job"]["then"] = then
    return cfg


def jobs(project, session):
    return dict((j["name"], j) for j in project.status(session)["sessions"][0]["jobs"])


def test_finalized_parent_gets_its_eval_once_and_it_is_monitored_to_its_end(project, fake):
    cfg = config([{"name": "{name}-eval", "command": EVAL, "sbatch": {"time": "00:05:00"}}])
    res = project.ok("run", project.config(cfg), "--plan-id", "fu")
    assert "session fu done: 4 finalized" in res.stdout, res.stdout
    js = jobs(project, "fu")
    assert set(js) == {"fu-s1", "fu-s2", "fu-s1-eval", "fu-s2-eval"}
    for seed in (1, 2):
        child = js["fu-s%d-eval" % seed]
        assert child["parent"] == "fu-s%d" % seed and child["status"] == "finalized" and child["attempts"] == 1
        assert len(fake.submissions("fu-s%d-eval" % seed)) == 1
        with open(child["log_path"]) as f:
            assert "eval of fu-s%d seed %d as fu-s%d-eval" % (seed, seed, seed) in f.read()
        # the parent finished before its follow-up was submitted: no SLURM dependency
        parent_sub = fake.submissions("fu-s%d" % seed)[0]
        assert "--dependency" not in " ".join(fake.submissions("fu-s%d-eval" % seed)[0].get("argv") or [])
        assert parent_sub["state"] == "COMPLETED"
    assert js["fu-s1"]["parent"] is None
    events = read_events(project.state_dir, "fu")
    added = [e for e in events if e["event"] == "followup_added"]
    assert sorted((e["job"], e["detail"]) for e in added) == [
        ("fu-s1", "fu-s1-eval (when finalized)"), ("fu-s2", "fu-s2-eval (when finalized)")]
    # the child's script sits with the plan's, with its own sbatch options and tag
    script = os.path.join(project.state_dir, "plans", "fu", "jobs", "fu-s1-eval.sbatch")
    text = open(script).read()
    assert "#SBATCH --time=00:05:00" in text and "#SBATCH --comment=autoexp:fu:fu-s1-eval" in text
    assert "echo eval of fu-s1 seed 1 as fu-s1-eval" in text
    hist = project.history("fu", "fu-s2-eval")["jobs"][0]
    assert hist["parent"] == "fu-s2" and len(hist["attempts"]) == 1
    # status shows the tree: each follow-up right under its parent, indented
    lines = project.ok("status", "--session", "fu").stdout.splitlines()
    names = [l.split()[0] for l in lines if l.strip().startswith("fu-")]
    assert names == ["fu-s1", "fu-s1-eval", "fu-s2", "fu-s2-eval"]
    assert [l for l in lines if "fu-s1-eval" in l][0].startswith("  fu-s1-eval")
