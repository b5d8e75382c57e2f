"""The session life cycle, end to end through the CLI on the fake SLURM: `archive` moves a
finished session into archive/<id>/ (status, reconcile and monitor --all stop listing it,
status --archived shows it, its plan id is never reused, submit and monitor --monitor-all
refuse to start it again), refuses one with work left or held by a monitor, finishes a move
a crash cut short, `--finished` takes every finished session, `unarchive` brings one back.
And the override rule: `monitor -o` holds for that run unless --save; `run -o` takes the
same keys as `monitor -o` (the `monitoring.` prefix optional in both)."""

import json
import os

import pytest

import helpers
from helpers import autoexp

pytestmark = pytest.mark.timeout(120)


def config(project="lc", seeds=(1,), command="echo TRAINING FINISHED"):
    return helpers.sweep_config(project, command, seeds, {})


def finished(project, sid, seeds=(1,)):
    """A session whose jobs all finished (run returns when they have)."""
    project.ok("run", project.config(config(seeds=seeds), name=sid + ".json"), "--plan-id", sid)
    assert all(j["status"] == "finalized" for j in project.state(sid)["jobs"])


def running(project, sid):
    """A session whose one job runs for a while."""
    project.ok("plan", project.config(config(command="sleep 60; echo TRAINING FINISHED"), name=sid + ".json"),
               "--plan-id", sid)
    project.ok("submit", sid)


def ids(project, *args):
    res = project.cli("status", "--json", *args)
    assert res.returncode == 0, res.stderr
    return sorted(d["session_id"] for d in json.loads(res.stdout)["sessions"])


def files_of(folder, sid):
    return sorted(n for n in os.listdir(folder) if n.startswith(sid + ".") and n != sid + ".lock")


def test_a_job_with_an_action_not_done_keeps_its_session_from_the_archive():
    job = autoexp.Job(name="j", status="finalized", attempts=[autoexp.Attempt(attempt=1, outcome="success")],
                      effects=[autoexp.new_effect("j", {"seq": 3, "event": "finalized"}, 0, {"run": "true"})])
    s = autoexp.Session("x.json", [job], session_id="x", project="p", manifest_path="m", created_at="t",
                        config={"monitoring": {}, "restart": {}})
    assert autoexp.unfinished_jobs(s) == ["j (finalized, an action or notification not done)"]
    job.effects[0]["state"] = "done"
    assert autoexp.unfinished_jobs(s) == []


def test_unfinished_jobs_table():
    Job, Attempt = autoexp.Job, autoexp.Attempt

    def att(**kw):
        d = dict(attempt=1, job_id="5", submit_state="submitted", log_offset=0, live=False, outcome="success")
        d.update(kw)
        return Attempt(**d)

    class S(object):
        def __init__(self, *jobs):
            self.jobs = list(jobs)
    rows = [
        (Job(name="a", index=0, status="finalized", attempts=[att()]), []),
        (Job(name="a", index=0, status="stopped", attempts=[att(outcome="crash")]), []),
        (Job(name="a", index=0, status="cancelled", attempts=[att(outcome="cancelled")]), []),
        (Job(name="a", index=0, status="active", attempts=[att(live=True, outcome=None)]), ["a (active)"]),
        (Job(name="a", index=0, status="cancelled", attempts=[att(live=True, outcome="cancelled")]),
         ["a (cancelled, an attempt SLURM may still run)"]),
        (Job(name="a", index=0, status="stopped", attempts=[att(job_id=None, submit_state="intent", outcome=None)]),
         ["a (stopped, a submission in doubt)"]),
    ]
    for job, want in rows:
        assert autoexp.unfinished_jobs(S(job)) == want, (job.to_dict(), want)


def test_archive_a_finished_session_then_status_reconcile_plan_and_unarchive(project):
    finished(project, "old")
    running(project, "live")
    root = project.state_dir
    before = files_of(root, "old")
    assert "old.json" in before and "old.events.jsonl" in before
    for kind in ("actions", "requests"):  # a payload a consumer left, a request: they move with it
        os.makedirs(os.path.join(root, kind, "old"), exist_ok=True)
        with open(os.path.join(root, kind, "old", "x.json"), "w") as f:
            f.write("{}\n")
    moved = dict((k, sorted(os.listdir(os.path.join(root, k, "old")))) for k in ("actions", "requests"))
    assert len(moved["actions"]) == 2  # the finalize payload, and ours
    res = project.ok("archive", "--session", "old")
    arch = os.path.join(root, "archive", "old")
    assert res.stdout.strip() == "archived old: %s" % arch
    assert files_of(root, "old") == [] and files_of(arch, "old") == before  # moved, every one
    for kind in ("actions", "requests"):
        assert sorted(os.listdir(os.path.join(arch, kind, "old"))) == moved[kind]
        assert not os.path.exists(os.path.join(root, kind, "old"))
    assert os.path.exists(os.path.join(root, "old.lock"))  # the lock file stays: never deleted
    assert os.path.isdir(os.path.join(root, "plans", "old"))  # the plan stays: the id is taken

    assert ids(project, "--all") == ["live"]
    assert ids(project, "--archived") == ["old"]
    doc = json.loads(project.ok("status", "--archived", "--session", "old", "--json").stdout)["sessions"][0]
    assert doc["counts"] == {"finalized": 1} and doc["jobs"][0]["params"] == {"seed": 1}
    text = project.ok("status", "--archived").stdout
    assert "session old (project lc)" in text and "lc-s1" in text
    # history reads the archived copy by its path; by id it says where the session went
    hist = json.loads(project.ok("history", "--session", os.path.join(arch, "old.json"), "--json").stdout)
    assert hist["jobs"][0]["status"] == "finalized"
    res = project.cli("monitor", "--session", "old", "--once")
    assert res.returncode == 2 and "is archived" in res.stderr and "unarchive --session old" in res.stderr

    # reconcile over the folder and monitor --all no longer see it
    rec = json.loads(project.ok("reconcile", "--json").stdout)
    assert "old" not in json.dumps(rec["changes"])
    mon = project.ok("monitor", "--all", "--include-completed", "--once")
    assert "old" not in mon.stdout and "live" in mon.stdout

    # its id is never reused, and its plan does not start a second session
    res = project.cli("plan", project.config(config(), name="again.json"), "--plan-id", "old")
    assert res.returncode == 2 and "already exists" in res.stderr
    res = project.cli("submit", "old")
    assert res.returncode == 2 and "is archived" in res.stderr
    res = project.cli("monitor", "--session", "old", "--monitor-all", "--once")
    assert res.returncode == 2 and "is archived" in res.stderr
    assert not os.path.exists(os.path.join(root, "old.json"))

    res = project.ok("unarchive", "--session", "old")
    assert res.stdout.strip() == "unarchived old: %s" % root
    assert files_of(root, "old") == before and not os.path.exists(arch)
    assert dict((k, sorted(os.listdir(os.path.join(root, k, "old")))) for k in moved) == moved
    assert ids(project, "--all") == ["live", "old"]
    assert project.state("old")["jobs"][0]["status"] == "finalized"
    res = project.cli("unarchive", "--session", "old")
    assert res.returncode == 2 and "not archived" in res.stderr


def test_archive_is_refused_with_work_left_and_while_a_monitor_holds_the_session(project):
    running(project, "live")
    res = project.cli("archive", "--session", "live")
    assert res.returncode == 2
    assert "has work left" in res.stderr and "lc-s1 (active)" in res.stderr
    assert os.path.exists(os.path.join(project.state_dir, "live.json"))
    assert not os.path.exists(os.path.join(project.state_dir, "archive", "live"))

    finished(project, "done")
    lock = autoexp.SessionLock(os.path.join(project.state_dir, "done.lock")).acquire("monitor")
    try:
        res = project.cli("archive", "--session", "done")
        assert res.returncode == 75 and "held by monitor" in res.stderr
        res = project.cli("archive", "--finished")
        assert res.returncode == 75 and "skipping session done" in res.stderr
    finally:
        lock.release()
    assert ids(project, "--all") == ["done", "live"]
    res = project.ok("archive", "--finished")
    assert res.stdout.strip() == "archived done: %s" % os.path.join(project.state_dir, "archive", "done")
    assert ids(project, "--all") == ["live"] and ids(project, "--archived") == ["done"]


@pytest.mark.parametrize("point", ["archive_before_commit", "archive_after_commit"])
def test_a_crash_in_the_middle_leaves_a_readable_state_and_archive_again_finishes(project, point):
    finished(project, "old", seeds=(1, 2))
    root = project.state_dir
    before = files_of(root, "old")
    res = project.cli("archive", "--session", "old", env={"AUTOEXP_CRASH_AT": point})
    assert res.returncode == autoexp.EXIT_CRASH_POINT
    if point == "archive_before_commit":
        # the session is still whole where it was; its copy in archive/ is not yet one
        assert ids(project, "--all") == ["old"] and project.status("old")["sessions"][0]["counts"] == {"finalized": 2}
        assert project.cli("status", "--archived").returncode == 2
    else:
        # committed: listed as archived, whole; what is left behind is no session
        assert project.cli("status", "--all").returncode == 2  # no sessions left in the folder
        assert ids(project, "--archived") == ["old"]
        assert "old.events.jsonl" in files_of(root, "old") and "old.json" not in files_of(root, "old")
    again = "archive --finished" if point == "archive_after_commit" else "archive --session old"
    res = project.ok(*again.split())
    assert ("finished archiving old" if point == "archive_after_commit" else "archived old") in res.stdout
    arch = os.path.join(root, "archive", "old")
    assert files_of(root, "old") == [] and files_of(arch, "old") == before
    doc = json.loads(project.ok("status", "--archived", "--json").stdout)["sessions"][0]
    assert doc["counts"] == {"finalized": 2}
    res = project.ok("archive", "--session", "old")
    assert "already archived old" in res.stdout


def test_monitor_overrides_hold_for_the_run_unless_saved(project):
    finished(project, "m")
    assert project.state("m")["monitor_overrides"] == []
    res = project.ok("monitor", "--session", "m", "--once", "-o", "monitoring.interval_seconds=5")
    assert "every 5s" in res.stdout
    st = project.state("m")
    assert st["monitor_overrides"] == [] and st["config"]["monitoring"]["interval_seconds"] == 0.2
    res = project.ok("monitor", "--session", "m", "--once", "-o", "interval_seconds=7", "--save")
    assert "every 7s" in res.stdout
    st = project.state("m")
    assert st["monitor_overrides"] == ["monitoring.interval_seconds=7"]
    assert st["config"]["monitoring"]["interval_seconds"] == 7
    # the saved one holds for the next monitor; a run-only one on top does not replace it
    res = project.ok("monitor", "--session", "m", "--once", "-o", "max_running=3")
    assert "every 7s" in res.stdout
    assert project.state("m")["monitor_overrides"] == ["monitoring.interval_seconds=7"]
    res = project.cli("monitor", "--session", "m", "--once", "-o", "interval_seconds=-1")
    assert res.returncode == 2 and "interval_seconds" in res.stderr


def test_run_o_takes_the_monitoring_keys_with_or_without_their_prefix(project):
    cfg = project.config(config(seeds=(1, 2)))
    project.ok("run", cfg, "-o", "max_running=1", "--plan-id", "bare")
    project.ok("run", cfg, "-o", "monitoring.max_running=1", "--plan-id", "full")
    bare, full = project.state("bare"), project.state("full")
    assert bare["config"]["monitoring"]["max_running"] == 1
    assert bare["config"]["monitoring"] == full["config"]["monitoring"]
    # a top-level key keeps its meaning; an unknown bare key is still refused
    assert autoexp.qualify_override("project=x") == "project=x"
    assert autoexp.qualify_override("interval_seconds=3") == "monitoring.interval_seconds=3"
    assert autoexp.qualify_override("job.sbatch.partition=gpu") == "job.sbatch.partition=gpu"
    res = project.cli("plan", cfg, "-o", "no_such_key=1")
    assert res.returncode == 2 and "no_such_key" in res.stderr


def test_an_archived_session_given_by_its_path_is_not_archived_again(tmp_path, monkeypatch, capsys):
    """archive --session archive/p1/p1.json would nest it (archive/p1/archive/p1), where
    unarchive never looks: refused, nothing moved, and unarchive still brings it back."""
    h = helpers.Harness(tmp_path, helpers.controller_config(), names=[helpers.A])
    helpers.finish(h, helpers.A)
    h.cycle()
    code, out = helpers.run_main(h, ["archive", "--session", "p1"], monkeypatch, capsys)
    assert code == 0, out.err
    archived = os.path.join(h.state_dir, "archive", "p1", "p1.json")
    before = sorted(os.listdir(os.path.dirname(archived)))
    code, out = helpers.run_main(h, ["archive", "--session", archived], monkeypatch, capsys)
    assert code == 2 and "already archived" in out.err and "unarchive" in out.err, out
    assert sorted(os.listdir(os.path.dirname(archived))) == before and "archive" not in before
    code, out = helpers.run_main(h, ["unarchive", "--session", "p1"], monkeypatch, capsys)
    assert code == 0 and os.path.isfile(os.path.join(h.state_dir, "p1.json")), out


def test_status_of_a_folder_whose_sessions_are_all_archived_points_to_archived(tmp_path, monkeypatch, capsys):
    h = helpers.Harness(tmp_path, helpers.controller_config(), names=[helpers.A])
    helpers.finish(h, helpers.A)
    h.cycle()
    assert helpers.run_main(h, ["archive", "--finished"], monkeypatch, capsys)[0] == 0
    code, out = helpers.run_main(h, ["status"], monkeypatch, capsys)
    assert code == 2 and "1 archived" in out.err and "status --archived" in out.err, out
    code, out = helpers.run_main(h, ["status", "--archived"], monkeypatch, capsys)
    assert code == 0 and "session p1" in out.out
