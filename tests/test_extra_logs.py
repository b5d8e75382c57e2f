"""Files watched besides the log (job.sbatch.error's, monitoring.extra_logs), log_events
matched as plain substrings, and reasons that name what decided: end to end through the CLI
on the fake SLURM (which writes a job's stderr to its --error file), plus the pure pieces
(validation, the matcher, classify's reasons)."""

import json
import os

import pytest

import helpers
from helpers import Harness, autoexp, controller_config, monitoring, read_events, refused, resolve

pytestmark = pytest.mark.timeout(120)

NCCL_LINE = "[rank3]: NCCL error: unhandled system error"


def sweep_config(command, seeds=(1, 2), **mon):
    return helpers.sweep_config("xl", command, seeds, {"lost_after_seconds": 15}, **mon)


def attempts(project, session, name):
    return project.history(session, name)["jobs"][0]["attempts"]


def state_job(project, session, name):
    return [j for j in project.state(session)["jobs"] if j["name"] == name][0]


# --- end to end on the fake SLURM ---------------------------------------------------------

def test_a_substring_only_in_the_error_file_decides_the_mode(project, fake):
    # seed 1 writes the NCCL line to its stderr only (a separate --error file) and hangs;
    # seed 2 finishes. The same text as a regex (a character class) never matches.
    cmd = ("if [ {seed} = 1 ]; then echo 'step 1'; echo '%s' >&2; sleep 60; fi; echo TRAINING FINISHED"
           % NCCL_LINE)
    cfg = sweep_config(cmd)
    cfg["job"]["sbatch"] = {"error": "logs/{name}-%j.err"}
    cfg["monitoring"]["log_events"] = [
        {"name": "nccl_regex", "pattern": "[rank3]: NCCL error", "mode": "oom"},
        {"name": "nccl_error", "pattern": "[rank3]: NCCL error", "match": "substring", "mode": "crash"}]
    cfg["restart"]["crash"] = {"action": "stop"}
    project.ok("run", project.config(cfg), "--plan-id", "err")

    first = attempts(project, "err", "xl-s1")
    assert [a["outcome"] for a in first] == ["crash"]
    assert first[0]["reason"] == "log_events 'nccl_error' matched: " + NCCL_LINE
    err = os.path.join(project.root, "logs", "xl-s1-%s.err" % first[0]["job_id"])
    with open(err) as f:
        assert NCCL_LINE in f.read()  # the fake SLURM wrote stderr there...
    with open(first[0]["log_path"]) as f:
        log = f.read()
    assert "step 1" in log and "NCCL" not in log  # ...and not into the log
    att = state_job(project, "err", "xl-s1")["attempts"][0]
    assert att["log_matches"] == ["nccl_error"]  # the regex with brackets matched nothing
    assert [r["path"] for r in att["extra_logs"]] == [err]
    # read past the NCCL line, not beyond the file (slurmstepd's CANCELLED line may come before
    # the last read, or after it)
    assert len(NCCL_LINE) + 1 <= att["extra_logs"][0]["offset"] <= os.path.getsize(err)
    assert len(fake.submissions("xl-s1")) == 1

    second = attempts(project, "err", "xl-s2")
    assert [a["outcome"] for a in second] == ["success"]
    assert second[0]["reason"] == "termination string 'TRAINING FINISHED' found in the log"
    events = [e for e in read_events(project.state_dir, "err") if e["event"].startswith("log:")]
    assert [(e["job"], e["event"]) for e in events] == [("xl-s1", "log:nccl_error"), ("xl-s2", "log:success")]


@pytest.mark.parametrize("extra", [True, False])
def test_an_extra_log_growing_keeps_a_silent_log_from_being_a_stall(project, fake, extra):
    # the main log is silent for 4 s while the program writes its own file every 0.4 s;
    # with that file watched the job is no stall (the control without it is one)
    cmd = ("mkdir -p runs; echo started; for i in 1 2 3 4 5 6 7 8 9 10; do echo step $i >> runs/{name}.log; "
           "sleep 0.4; done; echo TRAINING FINISHED")
    cfg = sweep_config(cmd, seeds=(1,), inactivity_threshold_seconds=1.5)
    cfg["restart"]["stall"] = {"action": "stop"}
    if extra:
        cfg["monitoring"]["extra_logs"] = ["runs/{name}.log"]
    project.ok("run", project.config(cfg), "--plan-id", "act")
    outcomes = [a["outcome"] for a in attempts(project, "act", "xl-s1")]
    if extra:
        assert outcomes == ["success"]
        rec = state_job(project, "act", "xl-s1")["attempts"][0]["extra_logs"][0]
        assert rec["path"] == os.path.join(project.root, "runs", "xl-s1.log")
        assert rec["template"] == rec["path"]  # no %-pattern: one file for every attempt
    else:
        assert outcomes == ["stall"]


def test_a_resumed_monitor_does_not_replay_an_extra_file(project, fake):
    # a warning (policy ignore) in the program's own file, read by one monitor process;
    # each later process goes on from the persisted offset, and the job ends successfully
    cmd = ("mkdir -p runs; echo 'WARN: loss spike' >> runs/{name}.log; echo epoch 1; sleep 2.5; "
           "echo 'epoch 2' >> runs/{name}.log; echo TRAINING FINISHED")
    cfg = sweep_config(cmd, seeds=(1,))
    cfg["monitoring"]["extra_logs"] = ["runs/{name}.log"]
    cfg["monitoring"]["log_events"] = [{"name": "spike", "pattern": "WARN: loss spike", "match": "substring",
                                        "mode": "spike"}]
    cfg["restart"]["spike"] = {"action": "ignore"}
    project.ok("plan", project.config(cfg), "--plan-id", "res")
    project.ok("submit", "res")
    extra = os.path.join(project.root, "runs", "xl-s1.log")
    helpers.wait_for(lambda: os.path.exists(extra) and os.path.getsize(extra) > 0, what="the warning")
    project.ok("monitor", "--session", "res", "--once")
    rec = state_job(project, "res", "xl-s1")["attempts"][0]["extra_logs"][0]
    assert rec["offset"] == len("WARN: loss spike\n")  # saved when the process ended
    assert state_job(project, "res", "xl-s1")["attempts"][0]["log_matches"] == ["spike"]
    project.ok("monitor", "--session", "res", "--once")  # a new process: nothing new, nothing again
    project.ok("monitor", "--session", "res")            # to the end
    job = state_job(project, "res", "xl-s1")
    assert job["status"] == "finalized" and len(job["attempts"]) == 1
    assert job["attempts"][0]["extra_logs"][0]["offset"] == os.path.getsize(extra)
    kinds = [e["event"] for e in read_events(project.state_dir, "res")]
    assert kinds.count("log:spike") == 1 and "log_restarted" not in kinds


# --- the controller: attempts on a file every attempt writes ------------------------------

def test_a_restarted_attempt_starts_at_the_end_of_a_shared_extra_file(tmp_path):
    # the first attempt's NCCL line stays in the file the program appends to: the next
    # attempt must not inherit it (it starts where the file ended at its intent)
    cfg = controller_config()
    cfg["monitoring"]["extra_logs"] = ["runs/{name}.log"]
    cfg["monitoring"]["log_events"] = [{"name": "nccl", "pattern": "NCCL error", "match": "substring",
                                        "mode": "crash"}]
    h = Harness(tmp_path, cfg, names=[helpers.A])
    os.makedirs(str(tmp_path / "runs"))
    extra = str(tmp_path / "runs" / (helpers.A + ".log"))
    helpers.running(h, helpers.A)
    with open(extra, "a") as f:
        f.write("NCCL error on rank 0\n")
    h.cycle()
    job = h.job(helpers.A)
    assert job.attempts[0].outcome == "crash"  # cancelled, and restarted once it has ended
    h.cycle()
    assert len(job.attempts) == 2
    second = job.attempts[1]
    assert second.extra_logs[0]["offset"] == os.path.getsize(extra)
    helpers.running(h, helpers.A)
    with open(extra, "a") as f:
        f.write("epoch 1\n")
    h.cycle()
    assert job.current is second and second.outcome is None and list(second.log_matches) == []
    assert second.extra_logs[0]["offset"] == os.path.getsize(extra)
    helpers.finish(h, helpers.A)
    h.cycle()
    assert second.outcome == "success"


def test_an_unreadable_extra_file_is_said_once_and_is_no_stall(tmp_path):
    cfg = controller_config(inactivity_threshold_seconds=30)
    cfg["monitoring"]["extra_logs"] = ["runs/{name}"]
    h = Harness(tmp_path, cfg, names=[helpers.A])
    os.makedirs(str(tmp_path / "runs" / helpers.A))  # a folder where the file should be
    helpers.running(h, helpers.A)
    for _ in range(6):
        h.cycle(advance=20)
    att = h.job(helpers.A).current
    assert att.outcome is None  # 120 s of a silent log, but a watched file could not be read
    kinds = [e["event"] for e in read_events(h.state_dir, "p1")]
    assert kinds.count("log_unreadable") == 1


# --- the pure pieces ------------------------------------------------------------------

def test_substring_with_brackets_matches_literally_and_the_regex_does_not():
    events = [{"name": "as_regex", "pattern": "[rank3]: NCCL error", "mode": "crash"},
              {"name": "as_text", "pattern": "[rank3]: NCCL error", "match": "substring", "mode": "crash"},
              {"name": "dots", "pattern": "loss=nan (step", "match": "substring", "mode": "crash"}]
    matcher = autoexp.LogMatcher(monitoring(log_events=events))
    hits = matcher.scan([NCCL_LINE, "k: NCCL error", "loss=nan (step 12)", "lossXnan (step"])
    assert [(h.event, h.line) for h in hits] == [("as_text", NCCL_LINE), ("as_regex", "k: NCCL error"),
                                                 ("dots", "loss=nan (step 12)")]


def test_log_events_match_and_extra_logs_are_validated():
    cfg = controller_config()
    ev = {"name": "x", "pattern": "(a+)+$", "mode": "crash"}
    cfg["monitoring"]["log_events"] = [ev]
    refused(cfg, "exponential time")
    ev["match"] = "substring"  # the same text as plain text is harmless
    assert resolve(cfg)["monitoring"]["log_events"][0]["match"] == "substring"
    ev["match"] = "glob"
    refused(cfg, "log_events[0].match", "regex or substring")
    ev.update(match="substring", pattern="a\nb")
    refused(cfg, "line break")
    cfg["monitoring"]["log_events"] = [{"name": "x", "pattern": "[rank3", "mode": "crash"}]
    refused(cfg, "invalid regular expression", '"match": "substring"')
    cfg["monitoring"]["log_events"] = []
    cfg["monitoring"]["extra_logs"] = ["a%d.log" % i for i in range(9)]
    refused(cfg, "monitoring.extra_logs", "at most 8")
    cfg["monitoring"]["extra_logs"] = ["runs/%N.log"]
    refused(cfg, "monitoring.extra_logs[0]", "%N")
    cfg["monitoring"]["extra_logs"] = "runs/x.log"
    refused(cfg, "must be a list")


def test_an_error_file_must_be_one_autoexp_can_follow(tmp_path):
    cfg = controller_config()
    cfg["job"]["sbatch"] = {"error": "logs/{name}-%N.err"}
    with pytest.raises(autoexp.ConfigError) as e:
        Harness(tmp_path, cfg)
    assert "job.sbatch.error" in str(e.value) and "%N" in str(e.value)


@pytest.mark.parametrize("error, extra, watched", [
    ("logs/{name}-%j.err", [], ["logs/demo-s1-%j.err"]),
    ("/dev/null", [], []),
    ("logs/{name}-%j.log", [], []),                   # the log itself: not twice
    (None, ["runs/{name}/{seed}.txt", "o%%.log"], ["runs/demo-s1/1.txt", "o%%.log"]),
])
def test_the_files_an_attempt_watches(tmp_path, error, extra, watched):
    cfg = controller_config()
    if error:
        cfg["job"]["sbatch"] = {"error": error}
    cfg["monitoring"]["extra_logs"] = extra
    h = Harness(tmp_path, cfg, names=[helpers.A])
    att = h.job(helpers.A).current
    assert [r["template"] for r in att.extra_logs] == [str(tmp_path / w) for w in watched]
    # the state file keeps them, and an older one without the field still loads
    doc = json.loads(h.job(helpers.A).line())
    assert len(doc["attempts"][0].get("extra_logs", [])) == len(watched)
    doc["attempts"][0].pop("extra_logs", None)
    assert autoexp.Job.from_dict(doc).attempts[0].extra_logs == ()


@pytest.mark.parametrize("term, reason", [
    ("TRAINING FINISHED", "termination string 'TRAINING FINISHED' found in the log"),
    ("x" * 100, "termination string '%s...' found in the log" % ("x" * 77)),
    (None, "termination string found in the log"),
])
def test_a_success_reason_names_the_termination_string(term, reason):
    mon = monitoring(termination_string=term)
    obs = autoexp.Observation("sacct", "COMPLETED", exit_code="0:0")
    facts = autoexp.Facts(success_seen=True, running_since=1.0)
    assert autoexp.classify(obs, facts, 10.0, mon).reason == reason
