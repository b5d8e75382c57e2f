"""Resume and reconcile, end to end on the fake SLURM: whatever happened while no monitor ran,
the next `monitor` or `reconcile` finds out and carries on as if it had watched all along.
A monitor (or `run`, also while it submits) stopped by a signal says how to resume; the lock
names who holds it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import (BOOT, ROOT, autoexp, load_state, read_events, sweep_config, timeout_stall_config, wait_for,
                     write_config)

pytestmark = pytest.mark.timeout(120)


def cfg(command="echo seed {seed}; sleep 0.3; echo TRAINING FINISHED", seeds=(1, 2), **monitoring):
    return sweep_config("rs", command, seeds, {"lost_after_seconds": 2}, **monitoring)


def submit(project, config, plan_id, *extra):
    project.ok("plan", project.config(config, plan_id + ".json"), "--plan-id", plan_id)
    return project.ok("submit", plan_id, *extra)


def sbatch_by_hand(project, plan_id, name):
    script = os.path.join(project.state_dir, "plans", plan_id, "jobs", name + ".sbatch")
    return subprocess.check_output(["sbatch", "--parsable", script], env=project.env, cwd="/").decode().strip()


def finished_and_purged(fake, job_ids, min_job_age):
    """Wait until the jobs ended and left squeue (MinJobAge): only sacct knows them now."""
    def done():
        jobs = dict((j["job_id"], j) for j in fake.jobs())
        return all(jobs[i]["end_time"] and time.time() - jobs[i]["end_time"] > min_job_age + 0.3 for i in job_ids)
    wait_for(done, timeout=30, what="jobs %s to end and be purged" % job_ids)
    out = subprocess.check_output(["squeue", "-h", "-t", "all", "-o", "%i"], env=fake.env()).decode().split()
    assert not set(job_ids) & set(out)


def attempts(project, session, name):
    return project.history(session, name)["jobs"][0]["attempts"]


# --- the five failures of the issue ----------------------------------------------------

@pytest.mark.slow
def test_job_id_changed_while_no_monitor_ran_is_adopted(project, fake):
    submit(project, cfg(command="sleep 3; echo TRAINING FINISHED"), "chg")
    old = project.state("chg")["jobs"][0]["job_id"]
    subprocess.check_call(["scancel", old], env=project.env)
    new = sbatch_by_hand(project, "chg", "rs-s1")
    fake.wait(lambda jobs: [j for j in jobs if j["job_id"] == old and j["state"] == "CANCELLED"], timeout=10)
    res = project.ok("reconcile", "--session", "chg")
    assert "adopted" in res.stdout
    atts = attempts(project, "chg", "rs-s1")
    assert [a["job_id"] for a in atts] == [old, new]
    assert atts[0]["outcome"] == "replaced" and atts[1]["origin"] == "external" and atts[1]["live"]
    assert len(fake.calls("sbatch")) == 3  # autoexp's two submissions and the one by hand
    project.ok("monitor", "--session", "chg")
    atts = attempts(project, "chg", "rs-s1")
    assert [a["outcome"] for a in atts] == ["replaced", "success"] and len(fake.submissions("rs-s1")) == 2


@pytest.mark.slow
def test_job_finished_while_no_monitor_ran_is_finalized_from_sacct(project, fake):
    fake.configure(min_job_age=1)
    submit(project, cfg(), "fin")
    ids = [j["job_id"] for j in project.state("fin")["jobs"]]
    finished_and_purged(fake, ids, 1)
    res = project.ok("reconcile", "--session", "fin")
    assert res.stdout.count("finalized") == 2
    for name in ("rs-s1", "rs-s2"):
        (a,) = attempts(project, "fin", name)
        assert a["slurm_state"] == "COMPLETED" and a["outcome"] == "success" and a["exit_code"] == "0:0"
    assert project.status("fin")["sessions"][0]["counts"] == {"finalized": 2}
    assert project.ok("reconcile", "--session", "fin").stdout == ""  # nothing left to change
    assert len(fake.calls("sbatch")) == 2


@pytest.mark.slow
def test_job_failed_while_no_monitor_ran_gets_its_policy_once(project, fake):
    fake.configure(min_job_age=1)
    submit(project, cfg(command="if [ ! -e once-{seed} ]; then touch once-{seed}; exit 3; fi; echo TRAINING FINISHED",
                        seeds=(1,)), "fail")
    first = project.state("fail")["jobs"][0]["job_id"]
    finished_and_purged(fake, [first], 1)
    project.ok("reconcile", "--session", "fail")
    atts = attempts(project, "fail", "rs-s1")
    assert [a["outcome"] for a in atts] == ["crash", None] and atts[0]["exit_code"] == "3:0"
    project.ok("reconcile", "--session", "fail")
    assert len(fake.submissions("rs-s1")) == 2  # the crash policy ran exactly once
    project.ok("monitor", "--session", "fail")
    assert [a["outcome"] for a in attempts(project, "fail", "rs-s1")] == ["crash", "success"]


@pytest.mark.slow
def test_no_accounting_log_decides_success_else_lost_after_grace(project, fake):
    fake.configure(min_job_age=1)
    submit(project, cfg(command="if [ {seed} = 1 ]; then echo TRAINING FINISHED; fi; sleep 0.2"), "noacct")
    ids = [j["job_id"] for j in project.state("noacct")["jobs"]]
    finished_and_purged(fake, ids, 1)
    fake.fail_next("sacct", count=1000, stderr="Slurm accounting storage is disabled\n", rc=1)
    project.ok("reconcile", "--session", "noacct")
    state = dict((j["name"], j) for j in project.state("noacct")["jobs"])
    assert state["rs-s1"]["status"] == "finalized"
    s2 = state["rs-s2"]
    assert s2["status"] == "active" and s2["attempts"][0]["outcome"] is None  # UNKNOWN: wait
    assert s2["attempts"][0]["last_monitor_state"] == "missing"
    time.sleep(2.2)  # lost_after_seconds
    project.ok("reconcile", "--session", "noacct")
    atts = attempts(project, "noacct", "rs-s2")
    assert atts[0]["outcome"] == "lost" and len(atts) == 2
    assert len(fake.submissions("rs-s2")) == 2


@pytest.mark.slow
def test_monitor_all_registers_untracked_jobs(project, fake):
    submit(project, cfg(seeds=(1, 2, 3)), "part", "--only", "rs-s1")
    assert [j["name"] for j in project.state("part")["jobs"]] == ["rs-s1"]
    by_hand = sbatch_by_hand(project, "part", "rs-s2")
    project.ok("monitor", "--session", "part", "--monitor-all")
    state = dict((j["name"], j) for j in project.state("part")["jobs"])
    assert sorted(state) == ["rs-s1", "rs-s2", "rs-s3"]
    assert all(j["status"] == "finalized" for j in state.values())
    assert state["rs-s2"]["attempts"][0]["job_id"] == by_hand
    assert state["rs-s2"]["attempts"][0]["origin"] == "external"
    assert len(fake.submissions("rs-s2")) == 1 and len(fake.submissions("rs-s3")) == 1


@pytest.mark.slow
def test_history_marks_the_live_attempt_and_survives_finalize(project, fake):
    fake.add_rule(name="rs-s1", nth=1, action="TIMEOUT", after=0.1)
    submit(project, cfg(command="sleep 1.5; echo TRAINING FINISHED", seeds=(1,)), "hist")

    def second_running():
        atts = attempts(project, "hist", "rs-s1")
        return len(atts) == 2 and atts[1]["job_id"] and atts
    project.ok("reconcile", "--session", "hist")
    atts = wait_for(lambda: project.ok("reconcile", "--session", "hist") and second_running(), timeout=20)
    assert [a["live"] for a in atts] == [False, True]
    text = project.ok("history", "--session", "hist").stdout
    assert "live: %s" % atts[1]["job_id"] in text
    assert [l.split()[0] for l in text.splitlines()[2:]] == ["1", "*"]
    project.ok("monitor", "--session", "hist")
    hist = project.history("hist")["jobs"][0]
    assert hist["status"] == "finalized" and [a["outcome"] for a in hist["attempts"]] == ["timeout", "success"]
    assert hist["job_id"] is None and not any(a["live"] for a in hist["attempts"])


@pytest.mark.slow
def test_log_events_never_fire_twice_across_a_stop(project, fake):
    c = cfg(command="echo WARN one; echo WARN two; sleep 2; echo WARN three; echo TRAINING FINISHED", seeds=(1,))
    c["monitoring"]["log_events"] = [{"name": "warn", "pattern": "WARN", "mode": "note"}]
    c["restart"]["note"] = {"action": "ignore"}
    submit(project, c, "logs")
    wait_for(lambda: project.ok("reconcile", "--session", "logs") and
             [e for e in read_events(project.state_dir, "logs") if e["event"] == "log:warn"], timeout=10)
    for _ in range(3):
        project.ok("reconcile", "--session", "logs")
    project.ok("monitor", "--session", "logs")
    events = [e["event"] for e in read_events(project.state_dir, "logs")]
    assert events.count("log:warn") == 1 and events.count("log:success") == 1
    assert project.state("logs")["jobs"][0]["status"] == "finalized"


# --- stopping the monitor ----------------------------------------------------------------

def _restart_sweep(project, fake, plan_id):
    fake.add_rule(name="rs-s1", nth=1, action="TIMEOUT", after=0.3)
    fake.add_rule(name="rs-s1", nth=2, action="TIMEOUT", after=0.3)
    fake.add_rule(name="rs-s2", nth=1, action="FAILED", exit_code=2, after=0.3)
    submit(project, cfg(command="sleep 1; echo TRAINING FINISHED", seeds=(1, 2, 3)), plan_id)


def _expected_after_restart_sweep(project, fake, plan_id):
    outcomes = dict((j["name"], [a["outcome"] for a in j["attempts"]]) for j in project.history(plan_id)["jobs"])
    assert outcomes == {"rs-s1": ["timeout", "timeout", "success"], "rs-s2": ["crash", "success"],
                        "rs-s3": ["success"]}
    assert [len(fake.submissions(n)) for n in ("rs-s1", "rs-s2", "rs-s3")] == [3, 2, 1]
    events = read_events(project.state_dir, plan_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def _monitor_proc(project, session):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "autoexp.py"), "monitor", "--session", session],
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stop_the_monitor_mid_sweep_and_resume(project, fake, sig):
    _restart_sweep(project, fake, "stop")
    proc = _monitor_proc(project, "stop")
    wait_for(lambda: len(fake.submissions("rs-s1")) >= 2, timeout=20, what="a restart")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        hint = "resume with: python3 %s monitor --session stop" % os.path.join(ROOT, "autoexp.py")
        assert hint.encode() in out, out
    else:
        assert proc.returncode == -signal.SIGKILL
    project.ok("monitor", "--session", "stop")
    _expected_after_restart_sweep(project, fake, "stop")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_during_run_submission_exits_130_with_the_resume_hint(tmp_path, fake):
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = timeout_stall_config(interval_seconds=0.2, slurm_timeout_seconds=30)
    cfg["sweep"] = {"seed": [1, 2, 3]}
    cfg["job"]["command"] = "sleep 0.5; echo TRAINING FINISHED"
    cfg_path = write_config(str(proj / "cfg.json"), cfg)
    fake.fail_next("sbatch", count=1, mode="hang", hang_seconds=3)
    env = dict(fake.env(), FAKE_SLURM_PYTHON=sys.executable)
    p = subprocess.Popen([sys.executable, "-c", BOOT, "run", cfg_path, "--plan-id", "sig"], cwd=str(proj),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: os.path.exists(str(proj / "autoexp-state" / "sig.json")), timeout=30, interval=0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == autoexp.EXIT_INTERRUPTED, (out, err)
    assert b"resume with: python3" in out and b"monitor --session sig" in out
    res = subprocess.run([sys.executable, "-c", BOOT, "monitor", "--session", "sig"], cwd=str(proj), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
    assert res.returncode == 0, res.stderr
    state = load_state(str(proj / "autoexp-state"), "sig")
    assert [j["status"] for j in state["jobs"]] == ["finalized"] * 3
    submitted = [j for j in fake.jobs()]
    assert len(set(j["comment"] for j in submitted)) == len(submitted) == 3


@pytest.mark.slow
def test_reconcile_from_a_loop_takes_the_sweep_to_the_end(project, fake):
    _restart_sweep(project, fake, "cron")
    deadline = time.time() + 60
    while time.time() < deadline:
        res = project.cli("reconcile")
        assert res.returncode == 0, res.stderr
        if not any(j["status"] == "active" for j in project.state("cron")["jobs"]):
            break
        time.sleep(0.3)
    _expected_after_restart_sweep(project, fake, "cron")


@pytest.mark.slow
def test_requeue_under_the_same_id_is_not_restarted(project, fake):
    fake.configure(requeue_delay=1.5)  # long enough for a cycle to see it PENDING again
    submit(project, cfg(command="sleep 1.5; echo TRAINING FINISHED", seeds=(1,)), "rq")
    jid = project.state("rq")["jobs"][0]["job_id"]
    proc = _monitor_proc(project, "rq")
    fake.wait(lambda jobs: [j for j in jobs if j["job_id"] == jid and j["state"] == "RUNNING"], timeout=10)
    time.sleep(0.5)
    fake.requeue(jid)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    (att,) = attempts(project, "rq", "rs-s1")
    assert att["job_id"] == jid and att["outcome"] == "success"
    assert project.state("rq")["jobs"][0]["attempts"][0]["requeues"] == 1
    assert len(fake.submissions("rs-s1")) == 1
    assert b"requeued" in out


@pytest.mark.slow
def test_reconcile_dry_run_changes_nothing(project, fake):
    fake.add_rule(name="rs-s1", nth=1, action="TIMEOUT", after=0.1)
    submit(project, cfg(), "dry")
    fake.wait(timeout=10)
    state_path = os.path.join(project.state_dir, "dry.json")
    before = open(state_path, "rb").read()
    subs = fake.submissions()
    res = project.ok("reconcile", "--session", "dry", "--dry-run")
    assert "would submit: sbatch --parsable" in res.stdout and "timeout" in res.stdout
    assert open(state_path, "rb").read() == before
    assert fake.submissions() == subs and fake.calls("scancel") == [] and len(fake.calls("sbatch")) == 2
    assert not os.path.exists(os.path.join(project.state_dir, "actions", "dry"))


@pytest.mark.slow
def test_two_sessions_with_the_same_names_never_adopt_each_other(project, fake):
    c = cfg(command="sleep 2; echo TRAINING FINISHED", seeds=(1,))
    submit(project, c, "one")
    submit(project, c, "two")
    mine = project.state("one")["jobs"][0]["job_id"]
    theirs = project.state("two")["jobs"][0]["job_id"]
    subprocess.check_call(["scancel", mine], env=project.env)
    fake.wait(lambda jobs: [j for j in jobs if j["job_id"] == mine and j["state"] == "CANCELLED"], timeout=10)
    project.ok("reconcile", "--session", "one")
    atts = attempts(project, "one", "rs-s1")
    assert [a["job_id"] for a in atts] == [mine] and atts[0]["outcome"] == "cancelled"
    assert theirs not in [a["job_id"] for j in project.state("one")["jobs"] for a in j["attempts"]]
    project.ok("monitor", "--session", "two")
    assert attempts(project, "two", "rs-s1")[0]["outcome"] == "success"


# --- the lock ------------------------------------------------------------------------------

def test_second_writer_gets_75_with_the_holder(project, fake):
    submit(project, cfg(command="sleep 3; echo TRAINING FINISHED", seeds=(1,)), "lock")
    proc = _monitor_proc(project, "lock")
    lock = os.path.join(project.state_dir, "lock.lock")
    wait_for(lambda: os.path.exists(lock) and b'"pid"' in open(lock, "rb").read(), timeout=10)
    for args in (["monitor", "--session", "lock", "--once"], ["reconcile", "--session", "lock"]):
        res = project.cli(*args)
        assert res.returncode == 75, res.stderr
        assert "pid %d on %s" % (proc.pid, os.uname()[1]) in res.stderr + res.stdout
    res = project.ok("cancel", "--session", "lock", "rs-s1")
    assert "queued" in res.stdout
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    job = project.state("lock")["jobs"][0]
    assert job["status"] == "cancelled" and job["attempts"][0]["cancel_result"]["ok"] is True
    fake.wait(timeout=10)
    assert fake.submissions("rs-s1")[0]["state"] == "CANCELLED"


@pytest.mark.slow
def test_lock_of_a_killed_monitor_does_not_block(project, fake):
    submit(project, cfg(command="sleep 2; echo TRAINING FINISHED", seeds=(1,)), "dead")
    proc = _monitor_proc(project, "dead")
    lock = os.path.join(project.state_dir, "dead.lock")
    wait_for(lambda: os.path.exists(lock) and b'"pid"' in open(lock, "rb").read(), timeout=10)
    proc.kill()
    proc.communicate()
    project.ok("monitor", "--session", "dead")
    assert project.state("dead")["jobs"][0]["status"] == "finalized"


def _lock_info(path):
    try:
        with open(path) as f:
            text = f.read()
        return json.loads(text) if text.strip() else None
    except (IOError, ValueError):
        return None


@pytest.mark.slow
def test_the_lock_says_run_while_run_monitors(tmp_path, fake):
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = timeout_stall_config(interval_seconds=0.2)
    cfg["sweep"] = {"seed": [1]}
    cfg["job"]["command"] = "sleep 3; echo TRAINING FINISHED"
    cfg_path = write_config(str(proj / "cfg.json"), cfg)
    env = dict(fake.env(), FAKE_SLURM_PYTHON=sys.executable)
    p = subprocess.Popen([sys.executable, "-c", BOOT, "run", cfg_path, "--plan-id", "lk"], cwd=str(proj),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = str(proj / "autoexp-state" / "lk.lock")
    info = wait_for(lambda: _lock_info(lock), timeout=30, interval=0.05)
    assert info["command"] == "run"
    p.communicate(timeout=60)


@pytest.mark.slow
def test_monitor_all_watches_every_session_with_one_squeue_per_cycle(project, fake):
    c = cfg(command="sleep 1; echo TRAINING FINISHED", seeds=(1, 2))
    submit(project, c, "a1")
    submit(project, c, "a2")
    before = len(fake.calls("squeue"))
    res = project.ok("monitor", "--all", "-o", "interval_seconds=0.5", "--save")
    assert "session a1 done" in res.stdout and "session a2 done" in res.stdout
    # the two sessions share job names: each event line says whose it is
    assert " a1/rs-s1 #1 " in res.stdout and " a2/rs-s1 #1 " in res.stdout
    squeues = len(fake.calls("squeue")) - before
    cycles = res.stdout.count("\n")  # bounded below by the events printed
    assert 2 <= squeues < 20 and cycles > 0
    for sid in ("a1", "a2"):
        st = project.state(sid)
        assert st["monitor_overrides"] == ["monitoring.interval_seconds=0.5"]
        assert st["config"]["monitoring"]["interval_seconds"] == 0.5
        assert all(j["status"] == "finalized" for j in st["jobs"])


@pytest.mark.slow
def test_state_file_moved_aside_is_rebuilt_from_slurm_with_monitor_all(project, fake):
    fake.configure(min_job_age=1)
    submit(project, cfg(command="if [ {seed} = 2 ]; then sleep 3; fi; echo TRAINING FINISHED", seeds=(1, 2, 3)),
           "lost", "--only", "rs-s1", "rs-s2")
    ids = dict((j["name"], j["job_id"]) for j in project.state("lost")["jobs"])
    finished_and_purged(fake, [ids["rs-s1"]], 1)  # s1 ended and left squeue; s2 still runs
    path = os.path.join(project.state_dir, "lost.json")
    with open(path, "ab") as f:
        f.write(b"garbage")  # corrupt: refused, never overwritten
    res = project.cli("monitor", "--session", "lost")
    assert res.returncode == 2 and "move it aside" in res.stderr
    os.rename(path, path + ".corrupt")
    project.ok("monitor", "--session", "lost", "--monitor-all")
    hist = dict((j["name"], j) for j in project.history("lost")["jobs"])
    assert [hist[n]["attempts"][0]["job_id"] for n in ("rs-s1", "rs-s2")] == [ids["rs-s1"], ids["rs-s2"]]
    assert all(hist[n]["attempts"][0]["origin"] == "external" for n in ("rs-s1", "rs-s2"))
    assert all(j["status"] == "finalized" and len(j["attempts"]) == 1 for j in hist.values())
    assert [len(fake.submissions(n)) for n in ("rs-s1", "rs-s2", "rs-s3")] == [1, 1, 1]
