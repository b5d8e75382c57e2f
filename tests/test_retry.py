"""`autoexp retry` and jobs resubmitted by hand without their tag, end to end: the CLI as a
user runs it, on the fake SLURM (one case in-process on the scripted SLURM). A retry takes
the lock, writes its intent, then submits exactly once, also across a crash between the
two; an active job is refused; --reset-attempts gives the policy its budget back; and
`reconcile` (from cron, no --session) follows a session whose only active job is a retried
one to its end. A hand resubmission is adopted only when exactly one job of the name was
submitted by the same user from the plan's directory after the attempt ended."""

import os
import time

import pytest

from helpers import A, Harness, autoexp, controller_config, read_events, run_main, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

PLAN = "rt"
NAME = "rt-s1"
# fails (crash: stopped by default) until the file ok-1 exists, then succeeds
COMMAND = "if [ -e {workdir}/ok-{seed} ]; then echo TRAINING FINISHED; else echo no; exit 3; fi"


def setup(project, command=COMMAND, plan_id=PLAN, **restart):
    cfg = {
        "project": "rt",
        "sweep": {"seed": [1]},
        "job": {"name": "{project}-s{seed}", "command": command.replace("{workdir}", project.root),
                "log": "logs/{name}-%j.log"},
        "monitoring": {"interval_seconds": 0.2, "termination_string": "TRAINING FINISHED",
                       "slurm_timeout_seconds": 10, "lost_after_seconds": 2, "unknown_backoff_max_seconds": 1},
        "restart": restart,
    }
    project.config(cfg)
    project.ok("plan", os.path.join(project.root, "cfg.json"), "--plan-id", plan_id)


def job_of(project, name=NAME, plan_id=PLAN):
    return [j for j in project.state(plan_id)["jobs"] if j["name"] == name][0]


def run_until_stopped(project):
    project.ok("submit", PLAN)
    project.ok("monitor", "--session", PLAN)
    job = job_of(project)
    assert job["status"] == "stopped", job
    return job


def reconcile_until_done(project, args=(), timeout=40):
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = project.cli("reconcile", *args)
        assert res.returncode in (0, 1), res.stderr  # 1: a pass SLURM did not answer fully
        if job_of(project)["status"] != "active":
            return job_of(project)
        time.sleep(0.3)
    raise AssertionError("reconcile did not finish the job: %s" % job_of(project))


def events(project, kind):
    return [e for e in read_events(project.state_dir, PLAN) if e["event"] == kind]


# --- retry --------------------------------------------------------------------------

def test_retry_of_a_stopped_job_submits_once_and_cron_reconcile_follows_it_to_success(project, fake):
    setup(project)
    run_until_stopped(project)
    assert len(fake.submissions(NAME)) == 1
    seq = project.state(PLAN)["event_seq"]
    project.ok("reconcile")   # cron's: a session with nothing active is not even opened
    assert project.state(PLAN)["event_seq"] == seq
    open(os.path.join(project.root, "ok-1"), "w").close()
    res = project.ok("retry", "--session", PLAN, NAME)
    runs = fake.submissions(NAME)
    assert len(runs) == 2 and res.stdout.splitlines()[0].split() == [NAME, runs[-1]["job_id"]]
    job = job_of(project)
    assert job["status"] == "active" and job["attempts"][-1]["origin"] == "submitted"
    # cron's reconcile, with no --session: the session has an active job again
    job = reconcile_until_done(project)
    assert job["status"] == "finalized"
    assert [a["outcome"] for a in job["attempts"]] == ["crash", "success"]
    assert len(fake.submissions(NAME)) == 2
    assert len(events(project, "retried")) == 1
    kinds = [e["event"] for e in read_events(project.state_dir, PLAN)]
    assert kinds.index("intent", kinds.index("stopped")) < kinds.index("submitted", kinds.index("stopped"))


def test_retry_of_an_active_job_is_refused_and_submits_nothing(project, fake):
    setup(project, command="sleep 20")
    project.ok("submit", PLAN)
    res = project.cli("retry", "--session", PLAN, NAME)
    assert res.returncode == 2 and "is active" in res.stderr and "nothing was submitted" in res.stderr
    res = project.cli("retry", "--session", PLAN, "nope")
    assert res.returncode == 2 and "no job nope" in res.stderr
    assert len(fake.submissions(NAME)) == 1 and not events(project, "retried")
    project.ok("cancel", "--session", PLAN, "--all")


def test_retry_dry_run_prints_the_sbatch_line_and_changes_nothing(project, fake):
    setup(project)
    run_until_stopped(project)
    before = project.state(PLAN)
    res = project.ok("retry", "--session", PLAN, NAME, "--dry-run")
    assert "would submit: sbatch --parsable" in res.stdout and "rt-s1.sbatch" in res.stdout
    assert len(fake.submissions(NAME)) == 1 and project.state(PLAN)["jobs"] == before["jobs"]


def test_retry_when_squeue_does_not_answer_submits_nothing(project, fake):
    # whether a rerun is queued already is UNKNOWN: no retry beside it
    setup(project)
    run_until_stopped(project)
    before = project.state(PLAN)
    fake.fail_next("squeue", count=3)
    res = project.cli("retry", "--session", PLAN, NAME)
    assert res.returncode == 1 and "cannot tell whether it runs already" in res.stderr, res.stderr
    assert len(fake.submissions(NAME)) == 1 and project.state(PLAN)["jobs"] == before["jobs"]


@pytest.mark.parametrize("point", ["after_intent_write", "after_sbatch"])
def test_retry_killed_between_intent_and_sbatch_result_submits_exactly_once(project, fake, point):
    setup(project)
    run_until_stopped(project)
    open(os.path.join(project.root, "ok-1"), "w").close()
    res = project.cli("retry", "--session", PLAN, NAME, env={"AUTOEXP_CRASH_AT": point})
    assert res.returncode == 86, res.stderr
    job = job_of(project)
    assert job["status"] == "active" and job["attempts"][-1]["submit_state"] == "intent"
    assert len(fake.submissions(NAME)) == (1 if point == "after_intent_write" else 2)
    job = reconcile_until_done(project, ("--session", PLAN))
    assert job["status"] == "finalized" and [a["outcome"] for a in job["attempts"]] == ["crash", "success"]
    assert len(fake.submissions(NAME)) == 2  # the retry's one sbatch, never a second
    assert job["attempts"][-1]["origin"] == ("submitted" if point == "after_intent_write" else "recovered")


def test_reset_attempts_gives_the_policy_its_budget_back(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, controller_config(), names=[A])   # crash: restart, max_attempts 2
    for _ in range(2):
        h.slurm.set(h.live_id(A), "RUNNING")
        h.cycle(advance=100)
        h.slurm.set(h.live_id(A), "FAILED", "1:0")
        h.cycle(advance=100)
    assert h.job(A).status == "stopped" and len(h.job(A).attempts) == 2
    h.clock.now += 100
    # without --reset-attempts: submitted all the same, but the budget is used up
    code, out = run_main(h, ["retry", "--session", "p1", A], monkeypatch, capsys)
    assert code == 0 and out.out.splitlines()[0].split() == [A, h.slurm.by_name(A)[-1]]
    s = h.reload()
    h.session = s
    h.slurm.set(s.job(A).current.job_id, "RUNNING")
    h.cycle(advance=100)
    h.slurm.set(s.job(A).current.job_id, "FAILED", "1:0")
    h.cycle(advance=100)
    job = s.job(A)
    assert job.status == "stopped" and len(job.attempts) == 3 and "crash 3 of 2: stop" in job.reason
    # with it: counted from the retried attempt, so one failure restarts it
    code, out = run_main(h, ["retry", "--session", "p1", A, "--reset-attempts"], monkeypatch, capsys)
    assert code == 0
    s = h.reload()
    h.session = s
    assert s.job(A).attempts_base == 3
    for _ in range(2):
        h.slurm.set(s.job(A).current.job_id, "RUNNING")
        h.cycle(advance=100)
        h.slurm.set(s.job(A).current.job_id, "FAILED", "1:0")
        h.cycle(advance=100)
    job = s.job(A)
    assert [a.outcome for a in job.attempts] == ["crash"] * 5
    assert job.status == "stopped" and "crash 2 of 2: stop" in job.reason
    assert h.slurm.count("sbatch") == 5


# --- resubmitted by hand without the tag ----------------------------------------------

def hand_sbatch(project, fake, cwd=None, extra_env=None, text="echo TRAINING FINISHED"):
    """`sbatch --job-name=NAME --wrap ...` as the user types it: no tag."""
    env = dict(project.env, **(extra_env or {}))
    import subprocess
    out = subprocess.check_output(
        [os.path.join(fake.shim_dir, "sbatch"), "--parsable", "--job-name=" + NAME,
         "--output=" + os.path.join(project.root, "logs", NAME + "-%j.log"), "--wrap", text],
        cwd=cwd or project.root, env=env)
    return out.decode().strip()


def test_a_single_hand_resubmission_from_the_plans_directory_is_adopted(project, fake):
    setup(project)
    run_until_stopped(project)
    hand = hand_sbatch(project, fake)
    job = reconcile_until_done(project, ("--session", PLAN))
    assert job["status"] == "finalized"
    assert [a["job_id"] for a in job["attempts"]][-1] == hand
    assert [a["outcome"] for a in job["attempts"]] == ["crash", "success"]
    assert job["attempts"][-1]["origin"] == "external" and len(fake.submissions(NAME)) == 2
    ev = events(project, "reactivated")
    assert len(ev) == 1 and "resubmitted by hand" in ev[0]["detail"]


def test_two_hand_resubmissions_adopt_none_and_name_both(project, fake):
    setup(project)
    run_until_stopped(project)
    ids = [hand_sbatch(project, fake, text="sleep 5; echo TRAINING FINISHED") for _ in range(2)]
    res = project.ok("reconcile", "--session", PLAN)
    assert "cannot tell which" in res.stderr and all(i in res.stderr for i in ids), res.stderr
    res = project.ok("reconcile", "--session", PLAN)
    assert "cannot tell which" not in res.stderr   # said once
    job = job_of(project)
    assert job["status"] == "stopped" and len(job["attempts"]) == 1
    assert len(events(project, "resubmits_ambiguous")) == 1
    for i in ids:
        fake.cancel(i)


@pytest.mark.parametrize("how", ["other_directory", "other_user"])
def test_a_job_of_the_name_from_elsewhere_is_not_adopted(project, fake, how, tmp_path):
    setup(project)
    run_until_stopped(project)
    if how == "other_directory":
        other = tmp_path / "elsewhere"
        other.mkdir()
        hand = hand_sbatch(project, fake, cwd=str(other), text="sleep 3; echo TRAINING FINISHED")
    else:
        hand = hand_sbatch(project, fake, extra_env={"FAKE_SLURM_SUBMIT_UID": "65534"},
                           text="sleep 3; echo TRAINING FINISHED")
    wait_for(lambda: [j for j in fake.jobs() if j["job_id"] == hand and j["state"] == "RUNNING"], what="hand job")
    for _ in range(2):
        project.ok("reconcile", "--session", PLAN)
    job = job_of(project)
    assert job["status"] == "stopped" and [a["job_id"] for a in job["attempts"]] != [hand]
    assert len(job["attempts"]) == 1 and not events(project, "reactivated")
    fake.cancel(hand)
