"""autoexp.pyz against a real SLURM: the scenarios of tests/test_e2e.py and tests/test_resume.py
(sweep, array retry, TIMEOUT, requeue, hand resubmission, reconcile after purge, outages of
slurmctld and slurmdbd, stall), each checked against what sacct says.

Run: AUTOEXP_REAL_SLURM=1 .venv-test/bin/python -m pytest tests/real_slurm -v (as root, on
Debian/Ubuntu; conftest.py starts the cluster with setup.sh --fresh). Without the variable
every test here is skipped.
"""

import calendar
import json
import os
import time

import pytest

from .harness import run, wait_for

# A command that behaves differently the first time it runs in the project folder.
FIRST_TIME = "if [ ! -e {marker} ]; then touch {marker}; %s; fi; %s"


def first_time(marker, first, then):
    return FIRST_TIME.replace("{marker}", marker) % (first, then)


def config(project, command, seeds=(1,), sbatch=None, restart=None, **monitoring):
    mon = {"interval_seconds": 1, "lost_after_seconds": 120, "slurm_timeout_seconds": 30,
           "unknown_backoff_max_seconds": 2, "submit_backoff_seconds": 2}
    mon.update(monitoring)
    job = {"name": "{project}-s{seed}", "command": command, "log": "logs/{name}-%j.log"}
    if sbatch:
        job["sbatch"] = sbatch
    cfg = {"project": project, "sweep": {"seed": list(seeds)}, "job": job, "monitoring": mon}
    if restart:
        cfg["restart"] = restart
    return cfg


def plan_id(project):
    return "%s-%s" % (project, time.strftime("%H%M%S"))


def plan_and_submit(proj, cfg, *submit_args):
    pid = plan_id(cfg["project"])
    proj.ok("plan", proj.config(cfg), "--plan-id", pid)
    return pid, proj.ok("submit", pid, *submit_args).stdout


def base_state(state):
    """'CANCELLED by 0' -> 'CANCELLED', as autoexp records it."""
    return state.split()[0] if state else state


def attempt_ids(hist):
    return [a["job_id"] for job in hist.values() for a in job["attempts"] if a["job_id"]]


def sacct_of_history(proj, session):
    """`history --json` and sacct's rows (by id) for every attempt, once SLURM says they ended."""
    hist = proj.history(session)
    return hist, proj.slurm.wait_final(attempt_ids(hist))


def history_vs_sacct(hist, rows):
    """Where an attempt's SLURM state or exit code in the history is not sacct's."""
    wrong = []
    for name, job in sorted(hist.items()):
        for a in job["attempts"]:
            if not a["job_id"]:  # sbatch refused it: SLURM has no record of it
                continue
            row = rows[a["job_id"]]
            if a["slurm_state"] != base_state(row["State"]) or a["exit_code"] != row["ExitCode"]:
                wrong.append("  %s #%d (%s, outcome %s): history says state %r exit_code %r; sacct says %r %r" % (
                    name, a["attempt"], a["job_id"], a["outcome"], a["slurm_state"], a["exit_code"],
                    row["State"], row["ExitCode"]))
    if not wrong:
        return ""
    return ("history --json differs from sacct (SPEC 6.1: an attempt's last_slurm_state and its exit_code, "
            "sacct's N:S). A null exit_code: autoexp took the final state from squeue in a cycle where sacct "
            "had no row for the job yet, or did not answer, and never asked again; a null state: the attempt "
            "was never observed:\n" + "\n".join(wrong))


def assert_history_is_sacct(hist, rows):
    problem = history_vs_sacct(hist, rows)
    assert not problem, problem


def assert_only_these_jobs(proj, session, extra_names=()):
    """SLURM knows no job of the session's names besides those in its history: nothing was
    submitted twice or behind autoexp's back (sacct learns a fresh job's name late: retried)."""
    hist = proj.history(session)
    names = sorted(hist) + list(extra_names)
    expected = set(attempt_ids(hist))
    seen = {}

    def same():
        seen["ids"] = proj.slurm.jobs_named(names, proj.started)
        return seen["ids"] == expected
    try:
        wait_for(same, 20, "SLURM's jobs of %s to be the history's" % names, interval=1)
    except AssertionError:
        raise AssertionError("SLURM jobs named %s: %s; autoexp's history: %s (extra: %s, missing: %s)" % (
            names, sorted(seen["ids"]), sorted(expected), sorted(seen["ids"] - expected),
            sorted(expected - seen["ids"])))


def assert_journal_whole(proj, session):
    seqs = [e["seq"] for e in proj.events(session)]
    assert seqs == list(range(1, len(seqs) + 1)), "event journal seqs are not 1..n: %s" % seqs


def outcomes(hist, name):
    return [a["outcome"] for a in hist[name]["attempts"]]


def wait_state(proj, session, predicate, timeout, what):
    return wait_for(lambda: os.path.exists(proj.state_path(session)) and predicate(proj.state(session)),
                    timeout, what)


def all_running(state):
    return all(j["attempts"] and j["attempts"][-1]["last_slurm_state"] == "RUNNING" for j in state["jobs"])


# --- 1. a sweep to success -------------------------------------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(180)
def test_four_job_sweep_to_success(proj):
    cfg = config("rs-sweep", 'echo seed {seed} on "$(hostname)"; sleep 2; echo done', seeds=(1, 2, 3, 4))
    pid = plan_id("rs-sweep")
    res = proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=150)
    assert "session %s done: 4 finalized" % pid in res.stdout, res.stdout
    assert proj.status(pid)["counts"] == {"finalized": 4}
    hist, rows = sacct_of_history(proj, pid)
    for seed in (1, 2, 3, 4):
        name = "rs-sweep-s%d" % seed
        (att,) = hist[name]["attempts"]
        assert hist[name]["status"] == "finalized" and att["outcome"] == "success" and att["origin"] == "submitted"
        assert att["log_path"] == os.path.join(proj.root, "logs", "%s-%s.log" % (name, att["job_id"]))
        with open(att["log_path"]) as f:
            assert f.read().startswith("seed %d on " % seed)
        row = rows[att["job_id"]]
        assert (row["State"], row["ExitCode"], row["JobName"], row["Comment"]) == (
            "COMPLETED", "0:0", name, "autoexp:%s:%s" % (pid, name)), row
    assert_only_these_jobs(proj, pid)
    assert_journal_whole(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 2. an array task fails once and is resubmitted alone -------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(180)
def test_array_task_fails_once_and_only_it_is_resubmitted(proj):
    command = ('if [ {index} = 2 ] && [ ! -e failed-once ]; then touch failed-once; echo failing; exit 3; fi; '
               'sleep 2; echo ok')
    cfg = config("rs-arr", command, seeds=(1, 2, 3, 4), restart={"crash": {"action": "restart", "max_attempts": 2}})
    pid, out = plan_and_submit(proj, cfg, "--array")
    submitted = dict(line.split() for line in out.splitlines())
    first = submitted["rs-arr-s1"].split("_")[0]
    assert submitted == dict(("rs-arr-s%d" % (i + 1), "%s_%d" % (first, i)) for i in range(4)), out
    proj.ok("monitor", "--session", pid, timeout=150)
    hist, rows = sacct_of_history(proj, pid)
    for i in range(4):
        job = hist["rs-arr-s%d" % (i + 1)]
        assert job["status"] == "finalized"
        assert [a["array_task"] for a in job["attempts"]] == [i] * len(job["attempts"])
        assert len(job["attempts"]) == (2 if i == 2 else 1), job
    retried = hist["rs-arr-s3"]["attempts"]
    new_base, task = retried[1]["job_id"].split("_")
    assert task == "2" and new_base != first and retried[0]["job_id"] == first + "_2", retried
    assert outcomes(hist, "rs-arr-s3") == ["crash", "success"]
    assert os.path.basename(retried[1]["log_path"]) == "rs-arr-%s.log" % retried[1]["job_id"]
    assert (rows[first + "_2"]["State"], rows[first + "_2"]["ExitCode"]) == ("FAILED", "3:0")
    for row in rows.values():
        assert row["JobName"] == pid and row["Comment"] == "autoexp:%s:@array" % pid, row
    assert_only_these_jobs(proj, pid, extra_names=[pid])
    assert_history_is_sacct(hist, rows)


# --- 3. TIMEOUT, restarted ----------------------------------------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(300)
def test_timeout_is_restarted_and_the_next_attempt_succeeds(proj):
    command = first_time("timed-out-once", "echo past the limit; sleep 600", "echo second run; sleep 1")
    cfg = config("rs-to", command, sbatch={"time": "1"})
    pid = plan_id("rs-to")
    res = proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=280)
    hist, rows = sacct_of_history(proj, pid)
    job = hist["rs-to-s1"]
    assert job["status"] == "finalized"
    assert outcomes(hist, "rs-to-s1") == ["timeout", "success"], job
    assert [rows[a["job_id"]]["State"] for a in job["attempts"]] == ["TIMEOUT", "COMPLETED"]
    assert "restart_scheduled" in res.stdout
    assert_only_these_jobs(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 4. scontrol requeue: the same id, not a failure ---------------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(240)
def test_requeue_under_the_same_id_is_not_a_failure(proj):
    command = first_time("started-once", "echo first run; sleep 300", "echo second run; sleep 2")
    pid, _ = plan_and_submit(proj, config("rs-rq", command))
    job_id = proj.state(pid)["jobs"][0]["job_id"]
    mon = proj.background("monitor", "--session", pid)
    wait_state(proj, pid, all_running, 60, "autoexp to see job %s RUNNING" % job_id)
    proj.slurm.scontrol("requeue", job_id)
    # SLURM holds a requeued job back for ~120 s (BeginTime); once autoexp saw it pending
    # again, let it start at once
    wait_state(proj, pid, lambda s: s["jobs"][0]["attempts"][0]["requeues"] >= 1, 60,
               "autoexp to record the requeue of %s" % job_id)
    assert proj.slurm.state_of(job_id) == "PENDING"
    proj.slurm.scontrol("update", "JobId=" + job_id, "StartTime=now")
    out, err = proj.finish(mon, 120)
    job = proj.state(pid)["jobs"][0]
    (att,) = job["attempts"]
    assert att["job_id"] == job_id and att["requeues"] == 1 and att["outcome"] == "success", att
    assert job["status"] == "finalized"
    assert "requeued" in out
    events = [e["event"] for e in proj.events(pid)]
    assert events.count("requeued") == 1 and events.count("outcome") == 1 and "restart_scheduled" not in events
    hist, rows = sacct_of_history(proj, pid)
    assert [a["job_id"] for a in hist["rs-rq-s1"]["attempts"]] == [job_id]
    both = proj.slurm.sacct("-j", job_id, duplicates=True)
    assert [r["State"] for r in both] == ["REQUEUED", "COMPLETED"], both
    with open(hist["rs-rq-s1"]["attempts"][0]["log_path"]) as f:
        assert f.read() == "second run\n"  # SLURM truncated the log for the second run
    assert_only_these_jobs(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 5. cancelled and resubmitted by hand while no monitor ran ----------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(180)
def test_job_resubmitted_by_hand_is_adopted_by_reconcile(proj):
    command = first_time("started-once", "sleep 300", "sleep 10; echo done")
    pid, _ = plan_and_submit(proj, config("rs-hand", command))
    old = proj.state(pid)["jobs"][0]["job_id"]
    wait_for(lambda: proj.slurm.state_of(old) == "RUNNING", 30, "job %s to run" % old)
    proj.slurm.scancel(old)
    new = run(["sbatch", "--parsable", proj.script(pid, "rs-hand-s1")], cwd="/").stdout.strip()
    wait_for(lambda: proj.slurm.state_of(old) in ("CANCELLED", None), 30, "job %s to end CANCELLED" % old)
    # while no monitor ran: accounting has the cancel by the time cron looks. autoexp asks
    # sacct by name, and SLURM 22.05 lists a fresh job under the name `allocation` for
    # seconds; it decides an end only on sacct's record (else it waits for the next pass)
    wait_for(lambda: any(r["JobID"] == old and r["State"].startswith("CANCELLED")
                         for r in proj.slurm.sacct("-S", "now-1hours", "--name=rs-hand-s1") or []),
             60, "sacct to list job %s under its name, cancelled" % old)
    res = proj.ok("reconcile", "--session", pid)
    assert "adopted" in res.stdout, res.stdout
    atts = proj.history(pid)["rs-hand-s1"]["attempts"]
    assert [a["job_id"] for a in atts] == [old, new], atts
    assert atts[0]["outcome"] == "replaced", atts[0]
    assert atts[1]["origin"] == "external" and atts[1]["live"] and atts[1]["attempt"] == 2, atts[1]
    assert_only_these_jobs(proj, pid)  # reconcile submitted nothing
    proj.ok("monitor", "--session", pid, timeout=120)
    hist, rows = sacct_of_history(proj, pid)
    assert outcomes(hist, "rs-hand-s1") == ["replaced", "success"]
    assert rows[old]["State"] == "CANCELLED by 0" and rows[new]["State"] == "COMPLETED"
    assert rows[new]["Comment"] == "autoexp:%s:rs-hand-s1" % pid
    assert_only_these_jobs(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 6. finished and purged from squeue while no monitor ran -------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(180)
def test_job_finished_and_purged_is_finalized_by_reconcile_from_sacct(proj):
    pid, _ = plan_and_submit(proj, config("rs-fin", "echo hello {seed}; sleep 1", seeds=(1, 2)))
    ids = [j["job_id"] for j in proj.state(pid)["jobs"]]
    proj.slurm.wait_final(ids)
    wait_for(lambda: not set(ids) & set(r["JobID"] for r in proj.slurm.squeue()), 60,
             "jobs %s to leave squeue (MinJobAge)" % ids)
    res = proj.ok("reconcile", "--session", pid)
    assert res.stdout.count("finalized") == 2, res.stdout
    hist, rows = sacct_of_history(proj, pid)
    for name in ("rs-fin-s1", "rs-fin-s2"):
        (a,) = hist[name]["attempts"]
        assert (a["slurm_state"], a["outcome"], a["exit_code"]) == ("COMPLETED", "success", "0:0"), a
    assert proj.status(pid)["counts"] == {"finalized": 2}
    assert proj.ok("reconcile", "--session", pid).stdout == ""  # nothing left to change
    assert_only_these_jobs(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 7. slurmctld away while the monitor runs ------------------------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(300)
def test_slurmctld_outage_takes_no_action_then_the_sweep_finishes(proj):
    command = ('if [ {seed} = 2 ] && [ ! -e failed-once ]; then touch failed-once; sleep 8; exit 3; fi; '
               'sleep 8; echo done')
    cfg = config("rs-ctld", command, seeds=(1, 2), restart={"crash": {"action": "restart", "max_attempts": 2}})
    pid, _ = plan_and_submit(proj, cfg)
    names = ["rs-ctld-s1", "rs-ctld-s2"]
    mon = proj.background("monitor", "--session", pid)
    wait_state(proj, pid, all_running, 60, "autoexp to see both jobs RUNNING")
    t_stop = time.time()
    proj.slurm.daemon("stop", "slurmctld")
    wait_for(lambda: "SLURM did not answer" in proj.output(mon)[1], 60, "the monitor to say SLURM did not answer")
    t_noticed = time.time()
    events = proj.events(pid)
    state_bytes = proj.state_bytes(pid)
    acct_before = proj.slurm.sacct("-S", "now-1hours", "--name=" + ",".join(names))  # sacct needs no slurmctld
    time.sleep(max(0.0, t_stop + 18 - time.time()))  # both jobs end meanwhile (they run 8 s)
    problems = []
    if proj.events(pid) != events:
        problems.append("events written while slurmctld was down: %s" % proj.events(pid)[len(events):])
    if proj.state_bytes(pid) != state_bytes:
        problems.append("the state file was rewritten while slurmctld was down")
    acct_during = proj.slurm.sacct("-S", "now-1hours", "--name=" + ",".join(names))
    if sorted(r["JobID"] for r in acct_during) != sorted(r["JobID"] for r in acct_before):
        problems.append("jobs submitted while slurmctld was down: %s" % acct_during)
    proj.slurm.daemon("start", "slurmctld")
    t_up = time.time()
    out, err = proj.finish(mon, 180)
    print("slurmctld down %.1fs; the monitor said so %.1fs after the stop began; it finished %.1fs after "
          "slurmctld was back" % (t_up - t_stop, t_noticed - t_stop, time.time() - t_up))
    assert not problems, "\n".join(problems)
    assert err.count("SLURM did not answer") == 1, err
    assert "SLURM answers again" in out, out
    hist, rows = sacct_of_history(proj, pid)
    assert outcomes(hist, "rs-ctld-s1") == ["success"] and outcomes(hist, "rs-ctld-s2") == ["crash", "success"], hist
    restart = [e for e in proj.events(pid) if e["job"] == "rs-ctld-s2" and e["attempt"] == 2 and e["event"] == "intent"]
    assert restart and epoch(restart[0]["time"]) >= t_up - 1, "restart decided before slurmctld was back: %s" % restart
    assert_only_these_jobs(proj, pid)
    assert_journal_whole(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 8. slurmdbd away while jobs finish ----------------------------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(300)
def test_slurmdbd_outage_finalizes_nothing_wrongly_then_reconciles(proj):
    """Two sessions through one slurmdbd outage: "watched" has a monitor running; "cron" has
    none until its jobs ended and left squeue, then a reconcile pass during the outage and
    passes after it. In each, job s2 fails once (crash: restart)."""
    command = ('if [ {seed} = 2 ] && [ ! -e failed-once-{project} ]; then touch failed-once-{project}; '
               'sleep 8; exit 3; fi; sleep 8; echo done')
    kw = dict(seeds=(1, 2), restart={"crash": {"action": "restart", "max_attempts": 2}}, lost_after_seconds=300)
    watched, _ = plan_and_submit(proj, config("rs-dbdw", command, **kw))
    cron, _ = plan_and_submit(proj, config("rs-dbdc", command, **kw))
    ids = [j["job_id"] for sid in (watched, cron) for j in proj.state(sid)["jobs"]]
    mon = proj.background("monitor", "--session", watched)
    wait_state(proj, watched, all_running, 60, "autoexp to see the jobs RUNNING")
    wait_for(lambda: all(proj.slurm.state_of(i) == "RUNNING" for i in ids), 30, "jobs %s to run" % ids)
    proj.slurm.daemon("stop", "slurmdbd")
    t_stop = time.time()
    assert proj.slurm.sacct("-j", ids[0], check=False) is None, "sacct still answers with slurmdbd stopped"
    wait_for(lambda: not set(ids) & set(r["JobID"] for r in proj.slurm.squeue()), 60,
             "the jobs to end and leave squeue (only sacct, which is down, knows them now)")
    problems = []
    # the session without a monitor: one pass changes nothing (its jobs are UNKNOWN) and says
    # that sacct could not be asked: exit 1 (SPEC 1, 8)
    res = proj.cli("reconcile", "--session", cron)
    if res.returncode != 1 or res.stdout or "sacct did not answer" not in res.stderr:
        problems.append("reconcile during the slurmdbd outage: exit %d, printed %r (stderr %r); expected exit 1, "
                        "'sacct did not answer' and no change" % (res.returncode, res.stdout, res.stderr))
    for job in proj.state(cron)["jobs"]:
        (a,) = job["attempts"]
        if a["outcome"] is not None or a["missing_since"] or a["last_monitor_state"] != "unknown":
            problems.append("cron session, %s (%s) during the outage: outcome %r, missing_since %r, monitor "
                            "state %r; expected UNKNOWN" % (job["name"], a["job_id"], a["outcome"],
                                                            a["missing_since"], a["last_monitor_state"]))
    # the watched session: SPEC 4 - a job squeue lists as ended is asked about in sacct, and
    # "when only sacct is UNKNOWN, the jobs it was asked about are UNKNOWN that cycle"; SPEC 9 -
    # "a failed sacct does the same [no submission, cancel, finalization] for the jobs it was asked about"
    for job in proj.state(watched)["jobs"]:
        for a in job["attempts"]:
            if a["outcome"] is not None:
                problems.append("watched session, %s #%d (%s) got outcome %r (%s) while sacct failed (slurmdbd "
                                "down): decided from squeue alone, although SPEC.md says the jobs sacct was asked "
                                "about are UNKNOWN that cycle (section 4) and a failed sacct means no submission, "
                                "cancel or finalization for them (section 9, never acting on UNKNOWN)" % (
                                    job["name"], a["attempt"], a["job_id"], a["outcome"], a["reason"]))
            if a["outcome"] == "lost":
                problems.append("watched session, %s #%d called lost during the outage" % (job["name"], a["attempt"]))
    proj.slurm.daemon("start", "slurmdbd")
    t_up = time.time()

    def cron_caught_up():
        proj.ok("reconcile", "--session", cron)
        jobs = dict((j["name"], j) for j in proj.state(cron)["jobs"])
        return jobs["rs-dbdc-s1"]["status"] == "finalized" and len(jobs["rs-dbdc-s2"]["attempts"]) == 2
    wait_for(cron_caught_up, 90, "reconcile to finalize rs-dbdc-s1 and restart rs-dbdc-s2 from sacct", interval=1)
    t_caught_up = time.time()
    proj.ok("monitor", "--session", cron, timeout=120)
    proj.finish(mon, 120)
    print("slurmdbd down %.1fs; reconcile caught up %.1fs after it was back" % (t_up - t_stop, t_caught_up - t_up))
    for sid, project in ((watched, "rs-dbdw"), (cron, "rs-dbdc")):
        hist, rows = sacct_of_history(proj, sid)
        assert outcomes(hist, project + "-s1") == ["success"], hist
        assert outcomes(hist, project + "-s2") == ["crash", "success"], hist
        assert proj.status(sid)["counts"] == {"finalized": 2}
        assert_only_these_jobs(proj, sid)
        problem = history_vs_sacct(hist, rows)
        if problem:
            problems.append("%s session: %s" % ("watched" if sid == watched else "cron", problem))
    assert not problems, "\n".join(problems)


# --- 9. stall: cancelled for real, then restarted -------------------------------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(180)
def test_stalled_job_is_cancelled_and_restarted(proj):
    command = first_time("stalled-once", "echo started; sleep 300", "echo second run; sleep 1")
    cfg = config("rs-stall", command, inactivity_threshold_seconds=4)
    pid = plan_id("rs-stall")
    res = proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=150)
    hist, rows = sacct_of_history(proj, pid)
    atts = hist["rs-stall-s1"]["attempts"]
    assert [a["outcome"] for a in atts] == ["stall", "success"], atts
    assert hist["rs-stall-s1"]["status"] == "finalized"
    events = [e["event"] for e in proj.events(pid) if e["attempt"] == 1]
    assert [e for e in events if e in ("cancel_requested", "scancel")] == ["cancel_requested", "scancel"], events
    assert "scancel" in res.stdout
    assert rows[atts[0]["job_id"]]["State"] == "CANCELLED by 0", rows
    assert rows[atts[1]["job_id"]]["State"] == "COMPLETED"
    assert_only_these_jobs(proj, pid)
    assert_history_is_sacct(hist, rows)


# --- 10. a restart policy's sbatch options reach SLURM; the job knows its attempt ----------------

def sacct_columns(proj, ids, *columns):
    """{job id: {column: value}} from sacct for columns beyond autoexp's own."""
    out = run(["sacct", "-X", "-P", "-n", "-o", ",".join(("JobID",) + columns), "-j", ",".join(ids)]).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return dict((r[0], dict(zip(columns, r[1:]))) for r in rows)


@pytest.mark.real_slurm
@pytest.mark.timeout(120)
def test_restart_options_reach_slurm_and_the_job_knows_its_attempt(proj):
    command = ("echo attempt=$AUTOEXP_ATTEMPT session=$AUTOEXP_SESSION; "
               + first_time("failed-once", "exit 1", "sleep 1; echo done"))
    policy = {"action": "restart", "max_attempts": 2, "sbatch": {"mem": "{attempt*100}M", "time": "{attempt*2}"}}
    cfg = config("rs-opt", command, restart={"crash": policy})
    pid = plan_id("rs-opt")
    proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=100)
    hist, rows = sacct_of_history(proj, pid)
    atts = hist["rs-opt-s1"]["attempts"]
    assert [a["outcome"] for a in atts] == ["crash", "success"], atts
    # attempt 2 is the one the restart led to: {attempt*K} rendered with 2
    assert [sorted(a["sbatch_options"]) for a in atts] == [[], ["--mem=200M", "--time=4"]], atts
    for n, a in enumerate(atts, 1):
        with open(a["log_path"]) as f:
            assert f.read().startswith("attempt=%d session=%s\n" % (n, pid)), a["log_path"]
    # what SLURM itself granted each attempt: the plan's defaults, then the policy's
    ids = [a["job_id"] for a in atts]
    slurm_says = sacct_columns(proj, ids, "ReqMem", "Timelimit")
    assert slurm_says[ids[1]] == {"ReqMem": "200M", "Timelimit": "00:04:00"}, slurm_says
    assert slurm_says[ids[0]]["ReqMem"] != "200M" and slurm_says[ids[0]]["Timelimit"] != "00:04:00", slurm_says
    assert_only_these_jobs(proj, pid)
    assert_history_is_sacct(hist, rows)


def tres_count(tres, key):
    """N of key=N in sacct's AllocTRES (cpu=2,mem=1G,node=1,billing=2); 0 when absent."""
    for part in tres.split(","):
        k, _, v = part.partition("=")
        if k == key:
            return int(v)
    return 0


@pytest.mark.real_slurm
@pytest.mark.timeout(120)
def test_cost_of_attempts_is_sacct_elapsed_times_allocated_cpus(proj):
    """SPEC 4, Cost: an ended attempt's CPU and GPU hours are sacct's ElapsedRaw times its
    AllocTRES; a failed attempt's are wasted, the successful one's used, per job and session."""
    command = first_time("cost-failed-once", "sleep 3; exit 1", "sleep 5; echo done")
    cfg = config("rs-cost", command, sbatch={"cpus-per-task": 2}, restart={"crash": {"action": "restart"}})
    pid = plan_id("rs-cost")
    proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=100)
    hist, rows = sacct_of_history(proj, pid)
    atts = hist["rs-cost-s1"]["attempts"]
    assert [a["outcome"] for a in atts] == ["crash", "success"], atts
    ids = [a["job_id"] for a in atts]
    slurm_says = sacct_columns(proj, ids, "ElapsedRaw", "AllocTRES")
    for a in atts:
        row = slurm_says[a["job_id"]]
        cpus, gpus = tres_count(row["AllocTRES"], "cpu"), tres_count(row["AllocTRES"], "gres/gpu")
        assert (a["elapsed_raw"], a["alloc_cpus"], a["alloc_gpus"]) == (int(row["ElapsedRaw"]), cpus, gpus), (a, row)
        assert cpus == 2 and int(row["ElapsedRaw"]) >= 3, row
        assert a["cpu_hours"] == pytest.approx(int(row["ElapsedRaw"]) * cpus / 3600.0), a
        assert a["gpu_hours"] == 0.0, a
    wasted, used = (int(slurm_says[i]["ElapsedRaw"]) * 2 / 3600.0 for i in ids)
    cost = proj.status(pid)["cost"]
    assert cost["wasted_cpu_hours"] == pytest.approx(wasted, abs=1e-4), cost
    assert cost["useful_cpu_hours"] == pytest.approx(used, abs=1e-4), cost
    assert (cost["useful_gpu_hours"], cost["wasted_gpu_hours"], cost["unknown_attempts"]) == (0.0, 0.0, 0), cost
    assert_history_is_sacct(hist, rows)


@pytest.mark.real_slurm
@pytest.mark.timeout(120)
def test_restart_exclude_reaches_slurm_which_refuses_to_exclude_its_only_node(proj):
    """The policy excludes the cluster's only node: SLURM refuses that sbatch at once (it
    uses up a job id, listed FAILED/BadConstraints with ExcNodeList=<node>), and autoexp
    stops the job with SLURM's words: a clear refusal is never retried (SPEC 8)."""
    node = run(["sinfo", "-h", "-N", "-o", "%N"]).stdout.split()[0]
    command = first_time("failed-once", "exit 1", "echo done")
    cfg = config("rs-exc", command, restart={"crash": {"action": "restart", "max_attempts": 2,
                                                       "sbatch": {"exclude": node}}})
    pid, _ = plan_and_submit(proj, cfg)
    mon = proj.background("monitor", "--session", pid)
    # the refused job stays in squeue for MinJobAge seconds: catch it there
    refused = wait_for(lambda: [r for r in proj.slurm.squeue()
                                if r["JobName"] == "rs-exc-s1" and r["State"] == "FAILED" and r["Reason"] == "BadConstraints"],
                       60, "squeue to list the refused attempt 2 of rs-exc-s1", interval=0.2)
    shown = proj.slurm.scontrol("show", "job", refused[0]["JobID"]).stdout
    assert "ExcNodeList=%s" % node in shown.split(), shown
    proj.finish(mon, 60)
    job = proj.history(pid)["rs-exc-s1"]
    first, second = job["attempts"]
    assert first["outcome"] == "crash" and second["sbatch_options"] == ["--exclude=" + node], job
    assert second["outcome"] == "submit_failed" and second["job_id"] is None, second
    assert "Requested node configuration is not available" in second["reason"], second
    assert job["status"] == "stopped", job
    events = [e["event"] for e in proj.events(pid) if e["attempt"] == 2]
    assert "submit_error" not in events, events  # not retried


# --- 11. a dependency that can never be met: blocked, cancelled, stopped ---------------------------

@pytest.mark.real_slurm
@pytest.mark.timeout(120)
def test_dependency_never_satisfied_is_blocked_cancelled_and_stopped(proj):
    """SLURM keeps a job whose afterok dependency failed PENDING for ever (no
    kill_invalid_depend here), reason DependencyNeverSatisfied (24.11 says Dependency for
    its first 1-2 s): autoexp calls it blocked after two looks, cancels it and stops the job
    with the reason in words."""
    failed = run(["sbatch", "--parsable", "--job-name=rs-dep-parent", "--output=/dev/null", "--wrap=exit 1"],
                 cwd="/").stdout.strip()
    proj.slurm.wait_final([failed])
    cfg = config("rs-dep", "echo never runs", sbatch={"dependency": "afterok:" + failed})
    pid = plan_id("rs-dep")
    t0 = time.time()
    res = proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=100)
    took = time.time() - t0
    assert "session %s done: 1 stopped" % pid in res.stdout, res.stdout
    job = proj.history(pid)["rs-dep-s1"]
    (att,) = job["attempts"]
    assert job["status"] == "stopped" and att["outcome"] == "blocked", job
    assert att["pending_reason"].startswith("DependencyNeverSatisfied"), att
    assert "DependencyNeverSatisfied" in att["reason"] and "dependency" in att["reason"], att
    events = [e["event"] for e in proj.events(pid)]
    assert events.count("blocked") == 1 and events.count("scancel") == 1, events
    assert not os.path.exists(att["log_path"]), "it never ran"
    rows = proj.slurm.wait_final([att["job_id"]])
    row = rows[att["job_id"]]
    assert (row["JobName"], row["State"]) == ("rs-dep-s1", "CANCELLED by 0"), row  # cancelled while PENDING
    # never eligible, the job is in `sacct -j ID` only, never in `sacct --name=...` (with or
    # without -S or -s CA; 22.05 and 24.11 alike): autoexp asks by id for the cancel's end,
    # and does not wait lost_after_seconds (120 s here) for it
    assert proj.slurm.sacct("-S", "now-1hours", "--name=rs-dep-s1") == []
    assert_history_is_sacct(proj.history(pid), rows)
    assert took < 60, "run took %.0fs" % took


# --- 12. NODE_FAIL: the attempt's node recorded and excluded; SLURM refuses, so it is used again --

def the_node():
    return run(["sinfo", "-h", "-N", "-o", "%N"]).stdout.split()[0]


def node_takes_jobs(node):
    """Wait until the node is usable again after a test set it DOWN (slurmd re-registers it
    by itself: ReturnToService=2); resumed by hand if it stays down."""
    resumed = []

    def usable():
        st = run(["sinfo", "-h", "-n", node, "-o", "%T"]).stdout.strip()
        if st in ("idle", "mixed", "allocated", "completing"):
            return st
        if not resumed and st.startswith(("down", "drain", "fail")):
            resumed.append(run(["scontrol", "update", "NodeName=" + node, "State=RESUME"], check=False))
        return None
    return wait_for(usable, 30, "node %s to take jobs again" % node, interval=0.3)


def running_on(node):
    return lambda st: all(j["attempts"] and j["attempts"][-1]["last_slurm_state"] == "RUNNING"
                          and j["attempts"][-1].get("nodes") == node for j in st["jobs"])


@pytest.mark.real_slurm
@pytest.mark.timeout(120)
def test_node_fail_excludes_the_node_then_the_only_node_is_used_again(proj):
    """The job runs on the cluster's only node when it goes DOWN: NODE_FAIL (--no-requeue,
    else SLURM requeues it itself under its id). Its node is in the history; attempt 2 is
    submitted with --exclude=<node>, which SLURM refuses (it uses up a job id, FAILED,
    BadConstraints); autoexp submits the same attempt again without its exclusion
    (exclusion_capped), and it runs on the node and succeeds (SPEC 5.5)."""
    node = the_node()
    command = first_time("nf-once", "echo first run; sleep 120", "echo second run; sleep 1")
    restart = {"node_fail": {"action": "restart", "max_attempts": 2, "backoff_seconds": 0}}
    pid, _ = plan_and_submit(proj, config("rs-nf", command, sbatch={"no-requeue": True}, restart=restart))
    mon = proj.background("monitor", "--session", pid)
    wait_state(proj, pid, running_on(node), 60, "autoexp to see the job RUNNING on %s" % node)
    proj.slurm.scontrol("update", "NodeName=" + node, "State=DOWN", "Reason=autoexp-real-tier")
    node_takes_jobs(node)
    proj.finish(mon, 60)
    hist, rows = sacct_of_history(proj, pid)
    job = hist["rs-nf-s1"]
    first, second = job["attempts"]
    assert (first["slurm_state"], first["outcome"], first["nodes"]) == ("NODE_FAIL", "node_fail", node), first
    assert (second["outcome"], second["nodes"], second["excluded_nodes"]) == ("success", node, []), second
    assert "--exclude=" + node not in second["sbatch_options"], second
    assert "would leave no node" in second["exclusion_note"], second
    assert job["status"] == "finalized", job
    events = [(e["event"], e["detail"]) for e in proj.events(pid) if e["attempt"] == 2]
    kinds = [k for k, _ in events]
    assert kinds.index("nodes_excluded") < kinds.index("exclusion_capped") < kinds.index("submitted"), events
    assert_history_is_sacct(hist, rows)
    ids = attempt_ids(hist)
    assert set(v["NodeList"] for v in sacct_columns(proj, ids, "NodeList").values()) == {node}
    # the refused submission used up a job id that carries the job's tag: never taken for
    # an attempt (SLURM knows it FAILED, never started)
    refused = wait_for(lambda: proj.slurm.jobs_named(["rs-nf-s1"], proj.started) - set(ids), 20,
                       "sacct to list the refused submission of rs-nf-s1", interval=1)
    assert len(refused) == 1, refused
    row = proj.slurm.sacct_ids(sorted(refused))[refused.pop()]
    assert row["State"] == "FAILED" and row["Comment"] in ("", "autoexp:%s:rs-nf-s1" % pid), row


# --- setup.sh itself ---------------------------------------------------------------------------

# --- follow-ups and notifications (SPEC 5.6-5.8) ---------------------------------------------

class _Hook(object):
    """A webhook receiver on 127.0.0.1 (an ephemeral port), run by the test: what autoexp's
    workers POST, as parsed JSON bodies."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                bodies.append(json.loads(body.decode("utf-8")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.daemon = True
        self.thread.start()
        self.url = "http://127.0.0.1:%d/hooks/rs-secret-token" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.real_slurm
@pytest.mark.timeout(240)
def test_follow_up_eval_runs_after_training_and_a_webhook_hears_of_both(proj):
    """A training job logs its checkpoint; once it is finalized its follow-up eval job is
    submitted (no SLURM dependency), runs after it with the captured checkpoint path, and a
    webhook on 127.0.0.1 is told of both jobs' ends; an `on` rule's command runs once per eval."""
    hook = _Hook()
    try:
        ckpt = os.path.join(proj.root, "ckpt-{seed}.pt")
        command = "echo saved checkpoint to %s; sleep 2; echo trained" % ckpt
        cfg = config("rs-fu", command, log_events=[
            {"name": "ckpt", "pattern": r"saved checkpoint to (?P<ckpt>\S+)"}])
        cfg["job"]["then"] = [{"name": "{name}-eval", "command": "echo evaluating {ckpt}; sleep 1; echo evaluated"}]
        cfg["notify"] = {"targets": {"hook": {"webhook": hook.url, "format": "generic"}}, "events": ["finalized"]}
        cfg["on"] = [{"event": "finalized", "jobs": "*-eval", "run": "echo {name} {ckpt} >> evaluated.txt"}]
        pid = plan_id("rs-fu")
        res = proj.ok("run", proj.config(cfg), "--plan-id", pid, timeout=200)
        assert "rs-secret-token" not in res.stdout + res.stderr  # the webhook URL is never printed whole
        hist, rows = sacct_of_history(proj, pid)
        assert sorted(hist) == ["rs-fu-s1", "rs-fu-s1-eval"], sorted(hist)
        assert [hist[n]["status"] for n in sorted(hist)] == ["finalized", "finalized"]
        (train,) = hist["rs-fu-s1"]["attempts"]
        (ev,) = hist["rs-fu-s1-eval"]["attempts"]
        assert hist["rs-fu-s1-eval"]["parent"] == "rs-fu-s1"
        assert hist["rs-fu-s1"]["captured"] == {"ckpt": ckpt.replace("{seed}", "1")}
        times = sacct_columns(proj, [train["job_id"], ev["job_id"]], "Start", "End")
        # SLURM ran the eval after the training ended, with no dependency on its id
        assert times[ev["job_id"]]["Start"] >= times[train["job_id"]]["End"], times
        with open(ev["log_path"]) as f:
            assert f.read().startswith("evaluating %s\n" % ckpt.replace("{seed}", "1"))
        with open(os.path.join(proj.root, "evaluated.txt")) as f:
            assert f.read() == "rs-fu-s1-eval %s\n" % ckpt.replace("{seed}", "1")
        told = sorted((e["job"], e["event"]) for b in hook.bodies for e in b["events"])
        assert told == [("rs-fu-s1", "finalized"), ("rs-fu-s1-eval", "finalized")], hook.bodies
        assert all(b["session"] == pid for b in hook.bodies)
        sent = [e for e in proj.events(pid) if e["event"] == "notify_sent"]
        assert len(sent) == len(hook.bodies) == 2
        assert_only_these_jobs(proj, pid)
        assert_journal_whole(proj, pid)
        assert_history_is_sacct(hist, rows)
    finally:
        hook.close()


@pytest.mark.real_slurm
@pytest.mark.timeout(120)
def test_setup_is_idempotent_and_refuses_non_root(slurm):
    daemons = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
    confs = ("/etc/slurm/slurm.conf", "/etc/slurm/slurmdbd.conf", "/etc/slurm/cgroup.conf")
    before = (slurm.pids(daemons), [os.stat(c).st_mtime for c in confs])
    t0 = time.time()
    res = slurm.setup()
    took = time.time() - t0
    assert res.stdout.startswith("real-slurm: READY "), res.stdout
    assert (slurm.pids(daemons), [os.stat(c).st_mtime for c in confs]) == before, "a second setup.sh changed something"
    assert took < 10, "a second setup.sh took %.1fs" % took
    res = run(["runuser", "-u", "nobody", "--", "bash", slurm.setup_sh], check=False)
    assert res.returncode == 3 and res.stderr.count("\n") == 1 and "root" in res.stderr, res


def epoch(iso):
    """'2026-11-29T08:24:33.123Z' (UTC) -> seconds since the epoch."""
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) + float(iso[19:23] or 0)
