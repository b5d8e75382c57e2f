"""Follow-up jobs (`then`, SPEC 5.7), end to end on the fake SLURM through the CLI: each is
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
        assert child["params"] == js["fu-s%d" % seed]["params"] == {"seed": seed}  # the root's parameters
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


def test_follow_up_of_a_follow_up_chains_convert_then_eval(project, fake):
    cfg = config([{"name": "{name}-conv", "command": "echo conv {name} of {parent}; echo TRAINING FINISHED",
                   "then": [{"name": "{name}-eval", "command": "echo eval {name} of {parent} seed {seed}; "
                                                              "echo TRAINING FINISHED"}]}], seeds=(1,))
    project.ok("run", project.config(cfg), "--plan-id", "chain")
    js = jobs(project, "chain")
    assert [(n, js[n]["parent"], js[n]["status"]) for n in ("fu-s1", "fu-s1-conv", "fu-s1-conv-eval")] == [
        ("fu-s1", None, "finalized"), ("fu-s1-conv", "fu-s1", "finalized"),
        ("fu-s1-conv-eval", "fu-s1-conv", "finalized")]
    with open(js["fu-s1-conv-eval"]["log_path"]) as f:
        assert "eval fu-s1-conv-eval of fu-s1-conv seed 1" in f.read()
    # one SLURM job each, in order: the eval was submitted after the conversion ended
    subs = [fake.submissions(n) for n in ("fu-s1", "fu-s1-conv", "fu-s1-conv-eval")]
    assert [len(s) for s in subs] == [1, 1, 1]
    assert int(subs[0][0]["job_id"]) < int(subs[1][0]["job_id"]) < int(subs[2][0]["job_id"])
    lines = project.ok("status", "--session", "chain").stdout.splitlines()
    assert [l.split()[0] for l in lines if l.lstrip().startswith("fu-")] == [
        "fu-s1", "fu-s1-conv", "fu-s1-conv-eval"]
    assert any(l.startswith("    fu-s1-conv-eval") for l in lines)


def test_when_stopped_runs_only_for_the_stopped_parent(project, fake):
    cmd = "if [ {seed} = 1 ]; then exit 3; fi; echo TRAINING FINISHED"
    cfg = config([{"name": "{name}-report", "when": "stopped", "command": "echo failed {parent}; echo TRAINING FINISHED"},
                  {"name": "{name}-eval", "command": "echo eval {parent}; echo TRAINING FINISHED"}], command=cmd)
    project.ok("run", project.config(cfg), "--plan-id", "st")
    js = jobs(project, "st")
    assert js["fu-s1"]["status"] == "stopped" and js["fu-s2"]["status"] == "finalized"
    assert set(js) == {"fu-s1", "fu-s2", "fu-s1-report", "fu-s2-eval"}
    assert js["fu-s1-report"]["status"] == "finalized" and js["fu-s1-report"]["parent"] == "fu-s1"
    assert len(fake.submissions("fu-s1")) == 2  # crash restarted once (max_attempts 2), then stopped
    assert not fake.submissions("fu-s1-eval") and not fake.submissions("fu-s2-report")


def test_parent_restarted_twice_then_finalized_gets_exactly_one_child(project, fake):
    fake.add_rule(name="fu-s1", action="TIMEOUT", nth=1, after=0.05)
    fake.add_rule(name="fu-s1", action="TIMEOUT", nth=2, after=0.05)
    cfg = config([{"name": "{name}-eval", "command": EVAL}], seeds=(1,))
    project.ok("run", project.config(cfg), "--plan-id", "rs")
    hist = project.history("rs", "fu-s1")["jobs"][0]
    assert [a["outcome"] for a in hist["attempts"]] == ["timeout", "timeout", "success"]
    assert len(fake.submissions("fu-s1-eval")) == 1
    child = project.history("rs", "fu-s1-eval")["jobs"][0]
    assert child["status"] == "finalized" and len(child["attempts"]) == 1
    # submitted after the last attempt of its parent, not after the first
    assert int(fake.submissions("fu-s1-eval")[0]["job_id"]) > int(hist["attempts"][-1]["job_id"])
    added = [e for e in read_events(project.state_dir, "rs") if e["event"] == "followup_added"]
    assert len(added) == 1 and added[0]["attempt"] == 3


def test_cron_reconcile_alone_carries_the_follow_up_to_its_end(project, fake):
    cfg = config([{"name": "{name}-eval", "command": EVAL}], seeds=(1,))
    project.ok("plan", project.config(cfg), "--plan-id", "cron")
    project.ok("submit", "cron")
    for _ in range(200):
        res = project.cli("reconcile")
        assert res.returncode == 0, res.stderr
        js = jobs(project, "cron")
        if len(js) == 2 and all(j["status"] == "finalized" for j in js.values()):
            break
        import time
        time.sleep(0.1)
    else:
        raise AssertionError("reconcile passes did not finish: %s" % jobs(project, "cron"))
    assert len(fake.submissions("fu-s1-eval")) == 1 and len(fake.submissions("fu-s1")) == 1


@pytest.mark.parametrize("point", ["after_followup_script", "before_intent_write", "after_intent_write",
                                   "before_sbatch", "after_sbatch"])
def test_crash_between_the_decision_and_the_childs_submission(project, fake, point):
    """Killed after the parent's decision (script written, state not yet), or around the
    child's intent and sbatch: the resumed monitor ends with exactly one child."""
    cfg = config([{"name": "{name}-eval", "command": EVAL}], seeds=(1,))
    project.ok("plan", project.config(cfg), "--plan-id", "cr")
    project.ok("submit", "cr")
    res = project.cli("monitor", "--session", "cr", env={"AUTOEXP_CRASH_AT": point})
    assert res.returncode == 86, (res.returncode, res.stdout, res.stderr)
    project.ok("monitor", "--session", "cr")
    js = jobs(project, "cr")
    assert js["fu-s1"]["status"] == js["fu-s1-eval"]["status"] == "finalized"
    assert len(fake.submissions("fu-s1")) == 1
    assert len(fake.submissions("fu-s1-eval")) == 1
    assert len([e for e in read_events(project.state_dir, "cr") if e["event"] == "followup_added"]) == 1


@pytest.mark.parametrize("then, message", [
    ([{"name": "{name}-e", "command": "x", "then": [{"name": "{name}-1", "command": "x", "then": [
        {"name": "{name}-2", "command": "x", "then": [{"name": "{name}-3", "command": "x", "then": [
            {"name": "{name}-4", "command": "x"}]}]}]}]}], "follow-ups nest at most 4 deep"),
    ([{"name": "eval", "command": "x"}], "'eval' for parent fu-s2, a name another job of the plan has"),
    ([{"name": "{name}-e", "command": "x"}, {"name": "{name}-e", "command": "y"}], "a name another job"),
    ([{"name": "fu-s2", "command": "x"}], "'fu-s2' for parent fu-s1, a name another job"),
    ([{"name": "{name}-e", "command": "run {nope}"}], "unknown placeholder {nope}"),
    ([{"name": "{name}-{ckpt}", "command": "x"}], "job.then[0].name: unknown placeholder {ckpt}"),
    ([{"name": "{name}-e", "command": "x", "when": "success"}], "job.then[0].when: must be one of"),
    ([{"name": "{name}-e"}], "needs 'command'"),
    ([{"name": "{name}-e", "command": "x", "sbatch": {"output": "o"}}], "job.then[0].sbatch.output: sets --output"),
    ([{"name": "{name}-e", "command": "echo '{seed}'"}], "inside single quotes"),
    ({"name": "x"}, "job.then: must be a list"),
])
def test_plan_refuses_bad_follow_ups(project, fake, then, message):
    cfg = config(then)
    cfg["monitoring"]["log_events"] = [{"name": "ck", "pattern": "saved (?P<ckpt>\\S+)"}]
    res = project.cli("plan", project.config(cfg))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.startswith("Error: ")
    assert not os.path.exists(os.path.join(project.state_dir, "plans"))  or not os.listdir(
        os.path.join(project.state_dir, "plans"))


def test_plan_accepts_a_captured_value_in_the_command(project, fake):
    cfg = config([{"name": "{name}-eval", "command": "python eval.py --ckpt {ckpt} --seed {seed}"}])
    cfg["monitoring"]["log_events"] = [{"name": "ck", "pattern": "saved (?P<ckpt>\\S+)"}]
    project.ok("plan", project.config(cfg), "--plan-id", "cap")
    manifest = json.load(open(os.path.join(project.state_dir, "plans", "cap", "manifest.json")))
    assert [(f["name"], f["parent"], f["when"], f["path"]) for f in manifest["followups"]] == [
        ("fu-s1-eval", "fu-s1", ["finalized"], [0]), ("fu-s2-eval", "fu-s2", ["finalized"], [0])]
    # not written at plan time: rendered when the parent is decided, with the value captured then
    assert not os.path.exists(manifest["followups"][0]["script_path"])
    res = project.cli("submit", "cap", "--only", "fu-s1-eval")
    assert res.returncode == 2 and "fu-s1-eval" in res.stderr


def test_captured_checkpoint_goes_to_the_eval_and_a_missing_one_stops_it(project, fake):
    train = ("if [ {seed} = 1 ]; then echo saved checkpoint to /ck/s{seed}-old; echo saved checkpoint to /ck/s{seed}; "
             "fi; echo TRAINING FINISHED")
    cfg = config([{"name": "{name}-eval", "command": "echo eval ckpt {ckpt} of {parent}; echo TRAINING FINISHED"}],
                 command=train)
    cfg["monitoring"]["log_events"] = [{"name": "ck", "pattern": "saved checkpoint to (?P<ckpt>\\S+)"}]
    project.ok("run", project.config(cfg), "--plan-id", "cap")
    js = jobs(project, "cap")
    assert js["fu-s1-eval"]["status"] == "finalized"
    with open(js["fu-s1-eval"]["log_path"]) as f:
        assert "eval ckpt /ck/s1 of fu-s1" in f.read()  # the last value captured
    # fu-s2's log never named a checkpoint: its eval is not submitted, and says why
    assert js["fu-s2"]["status"] == "finalized"
    assert js["fu-s2-eval"]["status"] == "stopped" and js["fu-s2-eval"]["attempts"] == 0
    assert "unknown placeholder {ckpt}" in js["fu-s2-eval"]["reason"]
    assert "job.then[0].command" in js["fu-s2-eval"]["reason"]
    assert not fake.submissions("fu-s2-eval")
    failed = [e for e in read_events(project.state_dir, "cap") if e["event"] == "followup_failed"]
    assert [e["job"] for e in failed] == ["fu-s2"]
    # retry renders it again: still no value, so still refused, and nothing changed
    before = jobs(project, "cap")["fu-s2-eval"]
    res = project.cli("retry", "--session", "cap", "fu-s2-eval")
    assert res.returncode == 2 and "unknown placeholder {ckpt}" in res.stderr, res.stderr
    assert jobs(project, "cap")["fu-s2-eval"] == before and not fake.submissions("fu-s2-eval")


def test_retry_of_a_stopped_follow_up_submits_it_again(project, fake):
    cmd = "if [ ! -e evaluated-once ]; then touch evaluated-once; exit 5; fi; echo TRAINING FINISHED"
    cfg = config([{"name": "{name}-eval", "command": cmd}], seeds=(1,))
    cfg["restart"]["crash"] = {"action": "stop"}
    project.ok("run", project.config(cfg), "--plan-id", "rt")
    assert jobs(project, "rt")["fu-s1-eval"]["status"] == "stopped"
    project.ok("retry", "--session", "rt", "fu-s1-eval")
    project.ok("monitor", "--session", "rt")
    child = project.history("rt", "fu-s1-eval")["jobs"][0]
    assert child["status"] == "finalized" and [a["outcome"] for a in child["attempts"]] == ["crash", "success"]
    assert len(fake.submissions("fu-s1-eval")) == 2 and len(fake.submissions("fu-s1")) == 1


def test_cancelled_parent_starts_its_when_cancelled_follow_up_under_max_running(project, fake):
    cmd = "if [ {seed} = 1 ]; then sleep 60; fi; echo TRAINING FINISHED"
    cfg = config([{"name": "{name}-cleanup", "when": ["cancelled", "stopped"],
                   "command": "echo cleanup {parent}; echo TRAINING FINISHED"}], command=cmd, max_running=1)
    project.ok("plan", project.config(cfg), "--plan-id", "cx")
    project.ok("submit", "cx")
    project.ok("cancel", "--session", "cx", "fu-s1")
    project.ok("monitor", "--session", "cx")
    js = jobs(project, "cx")
    assert js["fu-s1"]["status"] == "cancelled" and js["fu-s2"]["status"] == "finalized"
    assert set(js) == {"fu-s1", "fu-s2", "fu-s1-cleanup"}
    assert js["fu-s1-cleanup"]["status"] == "finalized" and len(fake.submissions("fu-s1-cleanup")) == 1
    # max_running 1 holds for the follow-up too: each job was submitted only after the one
    # before it had ended in SLURM
    subs = sorted(fake.submissions(), key=lambda j: j["submit_time"])
    assert len(subs) == 3
    for before, after in zip(subs, subs[1:]):
        assert before["end_time"] is not None and after["submit_time"] >= before["end_time"], (before, after)


def test_state_lost_then_monitor_all_adopts_the_follow_up_instead_of_submitting_it_again(project, fake):
    cfg = config([{"name": "{name}-eval", "command": EVAL}], seeds=(1,))
    project.ok("run", project.config(cfg), "--plan-id", "lost")
    assert len(fake.submissions("fu-s1-eval")) == 1
    for path in helpers.state_files(project.state_dir, "lost"):
        os.rename(path, path + ".moved")
    project.ok("monitor", "--session", "lost", "--monitor-all")
    js = jobs(project, "lost")
    assert js["fu-s1"]["status"] == js["fu-s1-eval"]["status"] == "finalized"
    assert js["fu-s1-eval"]["parent"] == "fu-s1"
    # found by its tag in SLURM: adopted, not submitted a second time
    assert len(fake.submissions("fu-s1")) == 1 and len(fake.submissions("fu-s1-eval")) == 1
    att = project.history("lost", "fu-s1-eval")["jobs"][0]["attempts"]
    assert [a["job_id"] for a in att] == [fake.submissions("fu-s1-eval")[0]["job_id"]]


def test_an_on_rule_of_a_follow_up_knows_its_parent_and_the_parents_capture(project, fake):
    """Actions (5.8) on a follow-up's events get the follow-up's own values, as its script
    has them: {parent}, the root's parameters, and the values captured up its chain."""
    train = "echo saved checkpoint to /ck/s{seed}; echo TRAINING FINISHED"
    cfg = config([{"name": "{name}-eval", "command": "echo eval {ckpt}; echo TRAINING FINISHED"}], seeds=(1,),
                 command=train)
    cfg["monitoring"]["log_events"] = [{"name": "ck", "pattern": "saved checkpoint to (?P<ckpt>\\S+)"}]
    cfg["on"] = [{"event": "finalized", "jobs": "*-eval", "run": "echo {name} {parent} {seed} {ckpt} >> done.txt"}]
    cfg["notify"] = {"targets": {"log": {"command": "cat >> notified.jsonl; echo >> notified.jsonl"}}}
    project.ok("run", project.config(cfg), "--plan-id", "onfu")
    with open(os.path.join(project.root, "done.txt")) as f:
        assert f.read() == "fu-s1-eval fu-s1 1 /ck/s1\n"
    with open(os.path.join(project.root, "notified.jsonl")) as f:
        told = [json.loads(line) for line in f if line.strip()]
    assert sorted(ev["job"] for msg in told for ev in msg["events"] if ev["event"] == "finalized") == [
        "fu-s1", "fu-s1-eval"]


def test_a_captured_value_bash_arithmetic_would_run_reaches_no_command(project, fake):
    """A log line's `x[$(touch ...)]` would run in bash arithmetic however it is quoted: the
    follow-up using it is not submitted and the action using it fails; neither runs it."""
    train = "echo 'ARITH=x[$(touch pwned)]'; echo TRAINING FINISHED"
    cfg = config([{"name": "{name}-eval", "command": "declare -i z={arith}; echo TRAINING FINISHED"}], seeds=(1,),
                 command=train)
    cfg["monitoring"]["log_events"] = [{"name": "ar", "pattern": "ARITH=(?P<arith>\\S+)"}]
    cfg["on"] = [{"event": "finalized", "jobs": "fu-s1", "run": "declare -i z={arith}; echo ran >> ran.txt",
                  "retries": 0}]
    project.ok("run", project.config(cfg), "--plan-id", "ar")
    assert not os.path.exists(os.path.join(project.root, "pwned"))
    assert not os.path.exists(os.path.join(project.root, "ran.txt"))
    js = jobs(project, "ar")
    assert js["fu-s1-eval"]["status"] == "stopped" and "bash arithmetic" in js["fu-s1-eval"]["reason"]
    assert not fake.submissions("fu-s1-eval")
    events = read_events(project.state_dir, "ar")
    failed = [e for e in events if e["event"] == "action_failed"]
    assert len(failed) == 1 and "{arith}" in failed[0]["detail"] and "bash arithmetic" in failed[0]["detail"]
