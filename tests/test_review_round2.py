"""Outside review, round 2: failures found by attacking the features of this round (per-attempt
sbatch options, node exclusion, pending reasons, throttle, hand resubmits and retry, watched
files). Each test fails now and is a strict expected failure until the bug is fixed."""

import json
import os
import re
import time

import pytest

import helpers
from helpers import read_events, wait_for

pytestmark = pytest.mark.timeout(150)

NODES = ["gpu%02d" % i for i in range(1, 9)]


def argv_of(fake, name):
    """The sbatch command lines that submitted job `name`, in order."""
    return [c["argv"] for c in fake.calls("sbatch") if any(a == "--job-name=" + name for a in c["argv"])]


def excludes_in(argv):
    return [a for a in argv if a.startswith("--exclud") or a.startswith("--exclu=")]


# --- bounded input: a pattern with exponential matching is accepted --------------------------

@pytest.mark.parametrize("pattern", [r"(x{1,1000}){1,1000}y", r"(?:\d{1,3}){1,99}y", r"(?:x{1,3}){2,}y"])
def test_nested_counted_repetition_is_refused(pattern):
    cfg = helpers.sweep_config("rv", "echo hi", (1,), {})
    cfg["monitoring"]["log_events"] = [{"name": "a", "pattern": pattern, "mode": "crash"}]
    # (x{1,1000}){1,1000}y takes ~3 s on 25 characters and doubles per character: a job line of
    # 4096 x's hangs the monitor for ever (Python's re has no timeout)
    helpers.refused(cfg, "repetition")


# --- per-attempt options: --error is autoexp's own (SPEC 3 and 5.4) ---------------------------

def test_per_attempt_error_option_is_refused():
    for key in ("error", "err"):
        cfg = helpers.sweep_config("rv", "echo hi", (1,), {})
        cfg["restart"]["crash"] = {"action": "restart", "sbatch": {key: "/tmp/elsewhere-%j.err"}}
        helpers.refused(cfg, key)


@pytest.mark.slow
def test_per_attempt_error_option_hides_stderr_from_log_events(project, fake):
    cfg = helpers.sweep_config("pe", "echo NCCL boom >&2; exit 3", (1,), {"lost_after_seconds": 15})
    cfg["monitoring"]["log_events"] = [{"name": "nccl", "pattern": "NCCL boom", "mode": "hw", "match": "substring"}]
    cfg["restart"]["hw"] = {"action": "restart", "max_attempts": 2,
                            "sbatch": {"error": os.path.join(project.root, "elsewhere-%j.err")}}
    res = project.cli("run", project.config(cfg), "--plan-id", "pe")
    # the option is refused at plan time: stderr can never go where autoexp does not look
    assert res.returncode == 2 and "restart.hw.sbatch.error" in res.stderr, res.stderr
    assert fake.calls("sbatch") == []


# --- node exclusion drops the user's own exclude when it is spelled as an abbreviation --------

@pytest.mark.slow
@pytest.mark.parametrize("how", ["template", "job_sbatch"])
def test_abbreviated_user_exclude_survives_node_exclusion(project, fake, how):
    fake.configure(node_names=NODES)
    fake.add_rule(name="nt-s1", action="NODE_FAIL", nth=1, after=0.1)
    cfg = helpers.sweep_config("nt", "sleep 0.3; echo TRAINING FINISHED", (1,), {"lost_after_seconds": 15})
    if how == "template":
        with open(os.path.join(project.root, "t.sh"), "w") as f:
            f.write("#!/bin/bash\n#SBATCH --exclud=gpu05\nsleep 0.3; echo TRAINING FINISHED\n")
        del cfg["job"]["command"]
        cfg["job"]["template"] = "t.sh"
    else:
        cfg["job"]["sbatch"] = {"exclud": "gpu05"}
    cfg["restart"]["node_fail"] = {"action": "restart", "max_attempts": 3, "backoff_seconds": 0}
    project.ok("run", project.config(cfg), "--plan-id", "nt")
    subs = argv_of(fake, "nt-s1")
    assert len(subs) == 2
    # sbatch takes the last exclude option: the restart's must still keep gpu05 out
    last = excludes_in(subs[1])[-1].split("=", 1)[1]
    assert "gpu05" in last.split(","), subs[1]


# --- hand resubmits: one SLURM job taken by two sessions ---------------------------------------

def _hand_sbatch(project, fake, name, text):
    import subprocess
    out = subprocess.check_output(
        [os.path.join(fake.shim_dir, "sbatch"), "--parsable", "--job-name=" + name,
         "--output=" + os.path.join(project.root, "logs", name + "-%j.log"), "--wrap", text],
        cwd=project.root, env=project.env)
    return out.decode().strip()


@pytest.mark.slow
def test_one_hand_resubmission_is_not_adopted_by_two_sessions(project, fake):
    cfg = helpers.sweep_config("rr", "exit 3", (1,), {"lost_after_seconds": 2})
    cfg["restart"] = {}
    path = project.config(cfg)
    for p in ("p1", "p2"):                      # the sweep planned twice (a second try), both stopped
        project.ok("plan", path, "--plan-id", p)
        project.ok("submit", p)
        project.ok("monitor", "--session", p)
    time.sleep(1.1)
    hand = _hand_sbatch(project, fake, "rr-s1", "sleep 3; echo TRAINING FINISHED")
    for p in ("p1", "p2"):                      # the user follows up, session by session, as SPEC 8 says
        project.cli("reconcile", "--session", p)
    takers = [p for p in ("p1", "p2")
              if hand in [a["job_id"] for a in project.state(p)["jobs"][0]["attempts"]]]
    # one SLURM job is one attempt of one logical job: if it fails, each taker would restart it
    assert len(takers) <= 1, takers


# --- per-attempt options of a retry ------------------------------------------------------------

@pytest.mark.slow
def test_a_retry_keeps_the_options_of_the_restarts_before_it(project, fake):
    fake.add_rule(name="ao-s1", action="OUT_OF_MEMORY", nth=1, after=0.2)
    fake.add_rule(name="ao-s1", action="OUT_OF_MEMORY", nth=2, after=0.2)
    cfg = helpers.sweep_config("ao", "sleep 0.5; echo TRAINING FINISHED", (1,), {"lost_after_seconds": 15})
    cfg["restart"]["oom"] = {"action": "restart", "max_attempts": 2, "sbatch": {"mem": "{attempt*64}G"}}
    project.ok("run", project.config(cfg), "--plan-id", "ao")       # oom, oom (128G): stopped
    assert project.history("ao")["jobs"][0]["status"] == "stopped"
    project.ok("retry", "--session", "ao", "ao-s1")                 # the user's retry: no oom restart
    project.ok("monitor", "--session", "ao")
    atts = project.history("ao")["jobs"][0]["attempts"]
    assert [a["sbatch_options"] for a in atts[:2]] == [[], ["--mem=128G"]]
    # the restart that led to attempt 2 rendered 128G; nothing led the retry to 192G
    assert atts[2]["sbatch_options"] == ["--mem=128G"], atts[2]["sbatch_options"]


# --- retry beside a rerun that is already in SLURM --------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("tagged", [True, False])
def test_retry_does_not_run_beside_a_hand_rerun(project, fake, tagged):
    import subprocess
    import test_retry as tr
    tr.setup(project, command="if [ -e {workdir}/ok-1 ]; then sleep 4; echo TRAINING FINISHED; "
                              "else echo no; exit 3; fi")
    tr.run_until_stopped(project)                       # crash: stopped
    open(os.path.join(project.root, "ok-1"), "w").close()
    if tagged:   # SPEC 3: `sbatch jobs/<name>.sbatch` by hand gives the same job, findable by autoexp
        script = os.path.join(project.state_dir, "plans", tr.PLAN, "jobs", tr.NAME + ".sbatch")
        hand = subprocess.check_output([os.path.join(fake.shim_dir, "sbatch"), "--parsable", script],
                                       cwd=project.root, env=project.env).decode().strip()
    else:        # SPEC 8: resubmitted by hand without the tag, from the plan's directory, after the end
        hand = tr.hand_sbatch(project, fake, text="sleep 4; echo TRAINING FINISHED")
    wait_for(lambda: [j for j in fake.jobs() if j["job_id"] == hand and j["state"] == "RUNNING"], what="rerun")
    res = project.cli("retry", "--session", tr.PLAN, tr.NAME)  # the user, not knowing a colleague reran it
    assert res.returncode == 2 and "SLURM job %s runs it already" % hand in res.stderr, res.stderr
    live = [j["job_id"] for j in fake.jobs() if j["name"] == tr.NAME and j["state"] in ("PENDING", "RUNNING")]
    for j in live:
        if j != hand:
            fake.cancel(j)
    assert live == [hand], live
