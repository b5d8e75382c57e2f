"""Per-attempt sbatch options and the attempt number in the job's environment (SPEC 5.4),
end to end: the CLI against the fake SLURM, which really runs the jobs."""

import json
import os

import pytest

import helpers

pytestmark = pytest.mark.timeout(120)

CMD = "echo attempt=$AUTOEXP_ATTEMPT session=$AUTOEXP_SESSION job=$AUTOEXP_JOB; sleep 1; echo TRAINING FINISHED"


def config(**restart):
    cfg = helpers.sweep_config("ao", CMD, (1, 2), {"lost_after_seconds": 15})
    cfg["restart"].update(restart)
    return cfg


def argv_of(fake, name):
    """The sbatch command lines that submitted job `name`, in order."""
    out = []
    for call in fake.calls("sbatch"):
        if any(a == "--job-name=" + name for a in call["argv"]):
            out.append(call["argv"])
    return out


def options(argv, key):
    return [a for a in argv if a.startswith("--%s=" % key) or a == "--" + key]


@pytest.mark.slow
def test_oom_restarts_with_more_memory_and_the_job_knows_its_attempt(project, fake):
    fake.add_rule(name="ao-s1", action="OUT_OF_MEMORY", nth=1, after=0.3)
    fake.add_rule(name="ao-s1", action="TIMEOUT", nth=2, after=0.3)
    cfg = config(oom={"action": "restart", "max_attempts": 3, "sbatch": {"mem": "{attempt*64}G"}},
                 timeout={"action": "restart", "sbatch": {"time": ["1:00:00", "2:00:00", "48:00:00"]}})
    project.ok("run", project.config(cfg), "--plan-id", "ao")
    subs = argv_of(fake, "ao-s1")
    assert len(subs) == 3
    assert [options(a, "mem") for a in subs] == [[], ["--mem=128G"], ["--mem=128G"]]  # raised stays raised
    assert [options(a, "time") for a in subs] == [[], [], ["--time=48:00:00"]]
    # the options go before the script, after autoexp's own
    assert subs[1][-1].endswith("/jobs/ao-s1.sbatch") and subs[1].index("--mem=128G") > subs[1].index("--chdir=" + project.root)
    assert [options(a, "mem") for a in argv_of(fake, "ao-s2")] == [[]]  # the other job keeps the plan's
    hist = project.history("ao", "ao-s1")["jobs"][0]
    assert [a["outcome"] for a in hist["attempts"]] == ["oom", "timeout", "success"]
    assert [a["sbatch_options"] for a in hist["attempts"]] == [[], ["--mem=128G"], ["--mem=128G", "--time=48:00:00"]]
    for n, a in enumerate(hist["attempts"], 1):
        with open(a["log_path"]) as f:
            assert "attempt=%d session=ao job=ao-s1" % n in f.read()
    text = project.ok("history", "--session", "ao", "ao-s1").stdout
    assert "attempt 3 was submitted with --mem=128G --time=48:00:00" in text


@pytest.mark.slow
def test_reconcile_dry_run_shows_the_next_attempts_options(project, fake):
    fake.add_rule(name="ao-s1", action="OUT_OF_MEMORY", nth=1, after=0.1)
    cfg = config(oom={"action": "restart", "backoff_seconds": 0, "sbatch": {"mem": ["8G", "16G"], "exclusive": True}})
    project.ok("plan", project.config(cfg), "--plan-id", "dr")
    project.ok("submit", "dr")
    fake.wait(lambda jobs: len(jobs) == 2 and all(j["state"] not in ("RUNNING", "PENDING") for j in jobs), timeout=30)
    out = project.ok("reconcile", "--dry-run").stdout
    line = [l for l in out.splitlines() if l.startswith("would submit:")]
    assert len(line) == 1 and " --mem=16G " in line[0] and " --exclusive " in line[0] and "attempt 2 (AUTOEXP_ATTEMPT=2)" in line[0]
    assert len(fake.calls("sbatch")) == 2  # nothing submitted by the dry run
    project.ok("reconcile")
    assert [options(a, "mem") for a in argv_of(fake, "ao-s1")] == [[], ["--mem=16G"]]


@pytest.mark.slow
def test_a_crash_between_intent_and_sbatch_submits_the_options_decided(project, fake):
    fake.add_rule(name="ao-s1", action="OUT_OF_MEMORY", nth=1, after=0.1)
    cfg = config(oom={"action": "restart", "sbatch": {"mem": "{attempt*3}G"}})
    cfg["monitoring"]["lost_after_seconds"] = 1  # how long an intent left by a crash is looked up first
    project.ok("plan", project.config(cfg), "--plan-id", "cr")
    project.ok("submit", "cr")
    fake.wait(lambda jobs: len(jobs) == 2 and all(j["state"] not in ("RUNNING", "PENDING") for j in jobs), timeout=30)
    res = project.cli("reconcile", env={"AUTOEXP_CRASH_AT": "after_intent_write"})
    assert res.returncode == 86, res.stderr
    state = helpers.load_state(project.state_dir, "cr")
    job = [j for j in state["jobs"] if j["name"] == "ao-s1"][0]
    assert job["attempts"][-1]["submit_state"] == "intent"
    assert job["attempts"][-1]["sbatch_options"] == ["--mem=6G"]
    helpers.wait_for(lambda: project.ok("reconcile") and len(argv_of(fake, "ao-s1")) == 2, timeout=30)
    assert [options(a, "mem") for a in argv_of(fake, "ao-s1")] == [[], ["--mem=6G"]]


def test_the_script_keeps_its_exclude_when_an_attempt_adds_one(project, fake, tmp_path):
    cfg = config(crash={"action": "restart", "sbatch": {"exclude": "n9"}})
    cfg["job"]["sbatch"] = {"exclude": "n1,n2"}
    cfg["job"]["command"] = "exit 3"
    cfg["sweep"] = {"seed": [1]}
    project.ok("run", project.config(cfg), "--plan-id", "ex")
    subs = argv_of(fake, "ao-s1")
    assert len(subs) == 2
    assert options(subs[0], "exclude") == []  # the script's directive says it
    assert options(subs[1], "exclude") == ["--exclude=n1,n2,n9"]
