"""The pure parts of autoexp, tested from tables: parsers (fed with real SLURM captures),
templates and quoting, the log tail, classification and policies."""

import os
import re
import shlex

import pytest

from helpers import Capture, autoexp, captures, monitoring, slurm_get_argument

pytestmark = pytest.mark.timeout(30)

Obs = autoexp.Observation
Facts = autoexp.Facts


# --- parsers ------------------------------------------------------------------------

SACCT_CMD = r"sacct -X(?! -D) -n -P -o JobID\\,JobIDRaw\\,JobName\\,State\\,ExitCode\\,(Submit\\,)?Start\\,End\\,Comment"
OLD_SQUEUE_FORMAT = "%i|%A|%T|%r|%j|%k"  # the format of the hand-written lines below


def test_every_sacct_capture_in_autoexp_format_parses_or_is_unknown():
    caps = captures(command_re=SACCT_CMD)
    assert len(caps) >= 30
    for cap in caps:
        client = cap.client(user="root")
        ncols = len(cap.output_format.split(","))
        if cap.rc == 0:
            rows = client.sacct(["1"], 0)
            # one row per line, except that a pending array range expands to its tasks
            lines = [l for l in cap.stdout.splitlines() if l]
            assert len(rows) >= len(set(l.split("|")[0] for l in lines)), cap.name
            for line in lines:
                fields = line.split("|")
                for job_id in autoexp.expand_job_id(fields[0]):
                    row = rows[job_id]
                    assert row.name == fields[2]
                    assert row.state == fields[3].split()[0]
                    assert row.exit_code == fields[4]
                    assert row.comment == line.split("|", ncols - 1)[-1]
        elif "accounting storage is disabled" in cap.stderr:
            assert client.sacct(["1"], 0) == {}
        else:
            with pytest.raises(autoexp.SlurmUnavailable):
                client.sacct(["1"], 0)


@pytest.mark.parametrize("name, job_id, expected", [
    ("24_sacct_after_finish.txt", "2", ("2", "single-job", "COMPLETED", "0:0", "my comment with spaces")),
    ("24_sacct_after_finish.txt", "3_3", ("3", "arr-job", "RUNNING", "0:0", "")),
    ("24_sacct_after_finish.txt", "3_0", ("4", "arr-job", "COMPLETED", "0:0", "arraycomment")),
    ("36_sacct_cancelled.txt", "9", ("9", "cancel-job", "CANCELLED", "0:0", "")),
    ("36_sacct_cancelled.txt", "10", ("10", "allocation", "CANCELLED", "0:0", "")),
    ("97_sacct_array_cancelled.txt", "22_4", ("", "arr-cancel", "CANCELLED", "0:0", "")),
    ("94_sacct_array_final.txt", "19_1", ("21", "arr-thr", "FAILED", "1:0", "")),
    ("58_sacct_requeued_done_X.txt", "16", ("16", "requeue-job", "COMPLETED", "0:0", "")),
    ("77_sacct_after_dbd_back.txt", "25", ("25", "dbd-down-job", "COMPLETED", "0:0", "")),
    ("65_cgroup_sacct_oom.txt", None, None),
])
def test_sacct_fields(name, job_id, expected):
    rows = dict((r.job_id, r) for r in autoexp.parse_sacct(Capture(name).stdout, Capture(name).output_format))
    if job_id is None:
        assert any(r.state == "OUT_OF_MEMORY" and r.exit_code == "0:125" for r in rows.values())
        return
    r = rows[job_id]
    assert (r.raw_id, r.name, r.state, r.exit_code, r.comment) == expected


def test_sacct_times_and_unknown():
    rows = dict((r.job_id, r) for r in autoexp.parse_sacct(Capture("24_sacct_after_finish.txt").stdout, Capture("24_sacct_after_finish.txt").output_format))
    assert rows["3_3"].end is None and rows["3_3"].start is not None
    assert rows["2"].end - rows["2"].start == 25
    assert autoexp.parse_slurm_time("None") is None and autoexp.parse_slurm_time("Unknown") is None


def test_sacct_steps_are_skipped():
    rows = autoexp.parse_sacct(Capture("24_sacct_after_finish_nonX.txt").stdout, Capture("24_sacct_after_finish_nonX.txt").output_format)
    assert sorted(r.job_id for r in rows) == ["2", "3_0", "3_1", "3_2", "3_3"]


def test_squeue_ids_and_states_of_every_capture_parse():
    """Every first field and state field autoexp would read in the real squeue captures."""
    caps = captures(command_re=r"^squeue .*-o %i\\\|%j\\\|%T")
    assert len(caps) >= 10
    seen = 0
    for cap in caps:
        if cap.rc != 0:
            continue
        for line in cap.stdout.splitlines():
            f = line.split("|")
            ids = autoexp.expand_job_id(f[0])
            assert ids and all(re.match(r"^\d+(_\d+)?$", i) for i in ids)
            assert autoexp.normalize_state(f[2]) in autoexp.ACTIVE_STATES | set(autoexp.TERMINAL_MODE)
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize("text, expected", [
    ("12", ["12"]), ("3_4", ["3_4"]), ("3_[1-3]", ["3_1", "3_2", "3_3"]),
    ("19_[0-3%1]", ["19_0", "19_1", "19_2", "19_3"]), ("123_[5-10%2]", ["123_%d" % i for i in range(5, 11)]),
    ("7_[1,4-5]", ["7_1", "7_4", "7_5"]), ("9_[1-7:3]", ["9_1", "9_4", "9_7"]),
])
def test_expand_job_id(text, expected):
    assert autoexp.expand_job_id(text) == expected


@pytest.mark.parametrize("text", ["abc", "12.batch", "3_[", "3_[5-1]", "", "12;x", "1_[0-999999999]"])
def test_expand_job_id_rejects(text):
    with pytest.raises(ValueError):
        autoexp.expand_job_id(text)


def test_parse_squeue_autoexp_format():
    text = ("12|12|RUNNING|None|demo-a|autoexp:p1:demo-a\n"
            "3_[1-2]|3|PENDING|Resources|p1|autoexp:p1:@array\n"
            "3_0|4|RUNNING|None|p1|autoexp:p1:@array\n"
            "20|20|PENDING|launch failed requeued held|other|(null)\n"
            "21|21|COMPLETED|None|we|ird|na|me|my|comment\n"
            "22|22|RUNNING|None|x|y|autoexp:p1:demo-b\n")
    rows = dict((r.job_id, r) for r in autoexp.parse_squeue(text, OLD_SQUEUE_FORMAT))
    assert rows["12"] == autoexp.QueueRow("12", "12", "RUNNING", "None", "demo-a", "autoexp:p1:demo-a")
    assert rows["3_2"].state == "PENDING" and rows["3_2"].raw_id == "" and rows["3_2"].comment == "autoexp:p1:@array"
    assert rows["3_0"].raw_id == "4"
    assert rows["20"].reason == "launch failed requeued held" and rows["20"].comment == ""
    assert rows["21"].comment == "" and rows["21"].name == "we|ird|na|me|my|comment"
    assert rows["22"].name == "x|y" and rows["22"].comment == "autoexp:p1:demo-b"


@pytest.mark.parametrize("text", [
    "12|12|RUNNING|None|a|b",              # truncated: no final newline
    "12|12|RUNNING\n",                    # too few fields
    "12|12|running|None|a|b\n",           # not a state word
    "x12|12|RUNNING|None|a|b\n",          # not a job id
    "12|1x|RUNNING|None|a|b\n",           # not a raw id
])
def test_parse_squeue_garbage_is_an_error(text):
    with pytest.raises(ValueError):
        autoexp.parse_squeue(text, OLD_SQUEUE_FORMAT)


def test_every_failed_squeue_and_sacct_capture_is_unknown():
    """Whatever the error text (controller down, slurmdbd down, bad option, invalid id),
    a failed query is UNKNOWN: never an empty answer."""
    caps = [c for c in captures(command_re=r"^(squeue|sacct) ") if c.rc != 0 and "--json" not in c.command]
    assert len(caps) >= 8
    for cap in caps:
        client = cap.client()
        if "accounting storage is disabled" in cap.stderr:
            assert client.sacct(["1"], 0) == {}
            continue
        with pytest.raises(autoexp.SlurmUnavailable):
            client.squeue() if cap.command.startswith("squeue") else client.sacct(["1"], 0)


def test_squeue_errors_are_unknown_never_empty():
    for name in ("70_squeue_ctld_down.txt", "70_squeue_ctld_down_j.txt"):
        cap = Capture(name)
        client = autoexp.SlurmClient(runner=lambda argv, t, env: cap.completed(), user="u")
        with pytest.raises(autoexp.SlurmUnavailable) as e:
            client.squeue()
        assert "Unable to contact slurm controller" in str(e.value)
    timed_out = autoexp.Completed([], -9, "", "", True)
    with pytest.raises(autoexp.SlurmUnavailable):
        autoexp.SlurmClient(runner=lambda a, t, e: timed_out, user="u").squeue()


def test_squeue_command_line_and_environment():
    seen = {}

    def runner(argv, timeout, env):
        seen.update(argv=argv, env=env, timeout=timeout)
        return autoexp.Completed(argv, 0, "", "", False)
    base = {"PATH": "/bin", "SQUEUE_FORMAT": "%i", "SACCT_FORMAT": "x", "SLURM_TIME_FORMAT": "relative",
            "LC_TIME": "de_DE", "SQUEUE_SORT": "-t", "SCANCEL_INTERACTIVE": "1", "SBATCH_PARTITION": "gpu",
            "SLURM_CLUSTERS": "a,b", "SBATCH_WAIT": "1", "SLURM_BITSTR_LEN": "10"}
    client = autoexp.SlurmClient(runner=runner, env=base, timeout=7, user="alice")
    assert client.squeue() == []
    assert seen["argv"] == ["squeue", "-h", "-r", "-t", "all", "-u", "alice", "-o", "%i|%A|%T|%r|%V|%j|%k"]
    env = seen["env"]
    assert env["SLURM_TIME_FORMAT"] == "standard" and env["LC_ALL"] == "C"
    assert env["SLURM_BITSTR_LEN"] == "0"
    for k in ("SQUEUE_FORMAT", "SACCT_FORMAT", "SQUEUE_SORT", "SCANCEL_INTERACTIVE", "LC_TIME", "SLURM_CLUSTERS",
              "SBATCH_WAIT"):
        assert k not in env
    assert env["SBATCH_PARTITION"] == "gpu"  # a user's sbatch default is theirs to keep
    assert seen["timeout"] == 7


@pytest.mark.parametrize("name, outcome", [
    ("01_sbatch_trivial.txt", "ok"),
    ("14_sbatch_parsable_with_M.txt", "ok"),
    ("15_sbatch_bad_partition.txt", "permanent"),
    ("15_sbatch_bad_time.txt", "permanent"),
    ("15_sbatch_mem_too_big.txt", "permanent"),
    ("15_sbatch_no_script.txt", "permanent"),
    ("15_sbatch_no_shebang.txt", "permanent"),
    ("71_sbatch_ctld_down.txt", "uncertain"),
    ("14_sbatch_not_parsable.txt", "uncertain"),  # no --parsable: no id we can trust
])
def test_classify_sbatch_captures(name, outcome):
    res = autoexp.classify_sbatch(Capture(name).completed())
    assert res.outcome == outcome
    if outcome == "ok":
        assert res.job_id == Capture(name).stdout.strip().split(";")[0]


def test_classify_sbatch_socket_timeout_and_hang():
    err = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
    assert autoexp.classify_sbatch(autoexp.Completed([], 1, "", err, False)).outcome == "uncertain"
    assert autoexp.classify_sbatch(autoexp.Completed([], -9, "", "", True)).outcome == "uncertain"
    assert autoexp.classify_sbatch(autoexp.Completed([], 0, "63;cluster\n", "", False)).job_id == "63"


def test_scancel_captures():
    for name, ok in (("35_scancel_running.txt", True), ("37_scancel_nonexistent.txt", True),
                     ("37_scancel_finished_job.txt", True), ("73_scancel_ctld_down.txt", False)):
        cap = Capture(name)
        client = autoexp.SlurmClient(runner=lambda a, t, e, cap=cap: cap.completed(), user="u")
        assert client.scancel("16")[0] is ok, name


# --- templates and quoting ----------------------------------------------------------

def test_render_template():
    values = {"lr": "0.001", "name": "a b", "project": "p"}
    assert autoexp.render_template("--lr {lr} ${HOME} {{x}} ${A:-b}", values, "w") == "--lr 0.001 ${HOME} {x} ${A:-b}"
    assert autoexp.render_template("run {name}", values, "w", quote=shlex.quote) == "run 'a b'"
    with pytest.raises(autoexp.ConfigError, match=r"unknown placeholder \{nope\}"):
        autoexp.render_template("{nope}", values, "w")
    with pytest.raises(autoexp.ConfigError, match="lone"):
        autoexp.render_template("for i in {1..3", values, "w")


def _array_plan(**job):
    raw = {"project": "p", "sweep": {"seed": [1, 2, 3]},
           "job": dict({"name": "{project}-{seed}", "command": "train {seed}", "log": "logs/{name}-%j.log"}, **job)}
    config = autoexp.resolve_config(raw, "c.json", [])
    return autoexp.build_plan(config, "c.json", "p1", "/st", "/w", 0)


def test_the_array_script_carries_its_throttle_and_a_chosen_log():
    manifest, scripts = _array_plan(array_max_running=2, array_log="alogs/{plan_id}-%A_%a.log")
    text = scripts[manifest["array"]["script_path"]]
    assert "#SBATCH --array=0,1,2%2\n" in text   # the throttle also holds for a hand `sbatch`
    assert "#SBATCH --output=/w/alogs/p1-%A_%a.log\n" in text
    assert manifest["array_error"] is None


def test_an_array_log_the_user_wrote_wrong_is_a_plan_error():
    with pytest.raises(autoexp.ConfigError, match=r"c.json: job.array_log.*\{seed\}"):
        _array_plan(array_log="alogs/{seed}-%A_%a.log")
    # a default that cannot be rendered only leaves the plan without an array
    manifest, _ = _array_plan(log="logs/{seed}/{name}-%j.log")
    assert manifest["array"] is None and "job.array_log" in manifest["array_error"]


@pytest.mark.parametrize("value", ["gpu", "a b", 'say "hi"', "back\\slash", "x#y", "it's", "", "  lead", "B:USR1@300"])
def test_sbatch_quote_round_trips_through_sbatch_parser(value):
    line = autoexp.render_sbatch_line("comment", value)[len("#SBATCH "):]
    assert slurm_get_argument(line) == ["--comment=" + value]


# --- log tail ----------------------------------------------------------------------

def test_read_log_complete_lines_offsets_and_replacement(tmp_path):
    p = str(tmp_path / "x.log")
    assert autoexp.read_log(p, 0, None).lines == []
    with open(p, "wb") as f:
        f.write(b"one\ntw")
    r = autoexp.read_log(p, 0, None)
    assert r.lines == ["one"] and r.offset == 4
    with open(p, "ab") as f:
        f.write(b"o\nthree\n")
    r2 = autoexp.read_log(p, r.offset, r.inode)
    assert r2.lines == ["two", "three"] and not r2.restarted
    # no new bytes: nothing
    assert autoexp.read_log(p, r2.offset, r2.inode).lines == []
    # a partial final line is taken when the job has ended
    with open(p, "ab") as f:
        f.write(b"TRAINING FINISHED")
    assert autoexp.read_log(p, r2.offset, r2.inode).lines == []
    assert autoexp.read_log(p, r2.offset, r2.inode, final=True).lines == ["TRAINING FINISHED"]
    # truncation: read from the start, once
    with open(p, "wb") as f:
        f.write(b"new\n")
    r3 = autoexp.read_log(p, r2.offset, r2.inode)
    assert r3.restarted and r3.lines == ["new"] and r3.offset == 4
    # replaced by another file of the same size or larger: new inode
    os.rename(p, p + ".old")
    with open(p, "wb") as f:
        f.write(b"other file\nmore\n")
    r4 = autoexp.read_log(p, r3.offset, r3.inode)
    assert r4.restarted and r4.lines == ["other file", "more"]


def test_read_log_bounds_memory(tmp_path):
    p = str(tmp_path / "big.log")
    with open(p, "wb") as f:
        f.write(b"x" * 1000 + b"\n" + b"y" * 10)
    r = autoexp.read_log(p, 0, None, max_bytes=100)
    assert r.offset == 100 and len(r.lines) == 1  # an over-long line is cut, never buffered whole


def test_resolve_log_path():
    f = autoexp.resolve_log_path
    assert f("/l/%x-%j.log", "12", "12", "job", "u") == "/l/job-12.log"
    assert f("/l/p-%A_%a.log", "3_1", None, "p", "u") == "/l/p-3_1.log"
    assert f("/l/p-%j.log", "3_1", None, "p", "u") is None  # the task's own id is unknown yet
    assert f("/l/p-%j.log", "3_1", "5", "p", "u") == "/l/p-5.log"
    assert f("/l/50%%-%u-%4a.log", "3_1", None, "p", "bob") == "/l/50%-bob-0001.log"


def test_log_matcher():
    mon = monitoring(termination_string="TRAINING FINISHED",
                     log_events=[{"name": "oom", "pattern": r"CUDA out of memory", "mode": "oom"},
                                 {"name": "nccl", "pattern": r"NCCL (error|timeout)", "mode": "crash"}])
    hits = autoexp.LogMatcher(mon).scan(["step 1", "NCCL timeout at x", "RuntimeError: CUDA out of memory",
                                         "TRAINING FINISHED"])
    assert [(h.event, h.mode) for h in hits] == [("nccl", "crash"), ("oom", "oom"), ("success", "success")]


# --- classification ------------------------------------------------------------------

MON = monitoring(interval_seconds=10, termination_string=None, inactivity_threshold_seconds=100,
                 lost_after_seconds=60)
MON_TERM = MON._replace(termination_string="DONE")
NOW = 1000.0


@pytest.mark.parametrize("obs, facts, mon, expected", [
    # UNKNOWN decides nothing, whatever the log says
    (Obs("unknown", reason="x"), Facts(success_seen=True), MON, ("unknown", None, None)),
    (Obs("unknown"), Facts(log_mode="oom"), MON, ("unknown", None, None)),
    # live states
    (Obs("squeue", "PENDING"), Facts(), MON, ("pending", None, True)),
    (Obs("squeue", "CONFIGURING"), Facts(), MON, ("configuring", None, True)),
    (Obs("squeue", "RUNNING"), Facts(running_since=950), MON, ("running", None, True)),
    (Obs("squeue", "COMPLETING"), Facts(), MON, ("completing", None, True)),
    (Obs("squeue", "SUSPENDED"), Facts(), MON, ("suspended", None, True)),
    (Obs("squeue", "REQUEUED"), Facts(), MON, ("requeued", None, True)),
    (Obs("squeue", "RESIZING"), Facts(), MON, ("resizing", None, True)),
    # terminal states
    (Obs("squeue", "COMPLETED"), Facts(), MON, ("completed", "success", False)),
    (Obs("sacct", "COMPLETED"), Facts(), MON_TERM, ("completed", "incomplete", False)),
    (Obs("sacct", "COMPLETED"), Facts(success_seen=True), MON_TERM, ("completed", "success", False)),
    (Obs("sacct", "FAILED", exit_code="1:0"), Facts(), MON, ("failed", "crash", False)),
    (Obs("sacct", "TIMEOUT"), Facts(), MON, ("timeout", "timeout", False)),
    (Obs("sacct", "DEADLINE"), Facts(), MON, ("deadline", "timeout", False)),
    (Obs("sacct", "CANCELLED"), Facts(), MON, ("cancelled", "cancelled", False)),
    (Obs("sacct", "NODE_FAIL"), Facts(), MON, ("node_fail", "node_fail", False)),
    (Obs("sacct", "BOOT_FAIL"), Facts(), MON, ("boot_fail", "node_fail", False)),
    (Obs("sacct", "OUT_OF_MEMORY"), Facts(), MON, ("out_of_memory", "oom", False)),
    (Obs("sacct", "PREEMPTED"), Facts(), MON, ("preempted", "preempted", False)),
    # the log speaks first: a log mode beats SLURM's generic FAILED
    (Obs("sacct", "FAILED"), Facts(log_mode="oom", log_reason="r"), MON, ("failed", "oom", False)),
    (Obs("squeue", "RUNNING"), Facts(log_mode="crash"), MON, ("running", "crash", True)),
    (Obs("sacct", "FAILED"), Facts(success_seen=True), MON_TERM, ("failed", "success", False)),
    (Obs("squeue", "RUNNING"), Facts(success_seen=True), MON_TERM, ("running", "success", True)),
    # stall: only while RUNNING, from the last activity
    (Obs("squeue", "RUNNING"), Facts(running_since=800, last_activity=850), MON, ("running", "stall", True)),
    (Obs("squeue", "RUNNING"), Facts(running_since=800, last_activity=950), MON, ("running", None, True)),
    (Obs("squeue", "PENDING"), Facts(running_since=None, last_activity=10), MON, ("pending", None, True)),
    (Obs("squeue", "RUNNING"), Facts(running_since=800), MON._replace(inactivity_threshold_seconds=None),
     ("running", None, True)),
    # missing: lost only after the grace period
    (Obs("missing"), Facts(missing_since=990), MON, ("missing", None, None)),
    (Obs("missing"), Facts(missing_since=900), MON, ("lost", "lost", None)),
    (Obs("missing"), Facts(missing_since=900, success_seen=True), MON_TERM, ("missing", "success", None)),
    (Obs("missing", "RUNNING"), Facts(missing_since=995), MON, ("missing", None, None)),
])
def test_classify_table(obs, facts, mon, expected):
    v = autoexp.classify(obs, facts, NOW, mon)
    assert (v.monitor_state, v.mode, v.live) == expected


def test_lost_default_grace_is_at_least_min_job_age():
    assert monitoring(interval_seconds=1).lost_after == 300
    assert monitoring(interval_seconds=600).lost_after == 1800
    assert monitoring(interval_seconds=1, lost_after_seconds=5).lost_after == 5


POL = autoexp.make_policies(autoexp.validate_restart({
    "timeout": {"action": "restart", "max_attempts": 3},
    "node_fail": {"action": "restart", "max_attempts": 3, "backoff_seconds": 100, "backoff_max_seconds": 250},
    "oom": {"action": "stop"}, "success": {"action": "finalize"}, "crash": {"action": "restart", "max_attempts": 2},
    "stall": {"action": "ignore"},
}, {"log_events": []}, autoexp._Checker("t")))


def ended(*modes):
    """A history of attempts that each ran for an hour: nothing deterministic about them."""
    return [autoexp.Ended(m, "exit 1", 3600.0) for m in modes]


@pytest.mark.parametrize("mode, outcomes, expected", [
    ("success", ["success"], ("finalize", 0)),
    ("oom", ["oom"], ("stop", 0)),
    ("timeout", ["timeout"], ("restart", 0)),
    ("timeout", ["timeout", "timeout"], ("restart", 0)),
    ("timeout", ["timeout", "timeout", "timeout"], ("stop", 0)),
    ("timeout", ["node_fail", "node_fail", "timeout"], ("restart", 0)),  # budgets are per mode
    ("crash", ["crash", "crash"], ("stop", 0)),
    ("node_fail", ["node_fail"], ("restart", 100)),
    ("node_fail", ["node_fail", "node_fail"], ("restart", 200)),
    ("node_fail", ["timeout", "node_fail", "timeout", "node_fail"], ("restart", 200)),
    ("cancelled", ["cancelled"], ("stop", 0)),            # default policy
    ("preempted", ["preempted"] * 9, ("restart", 60)),     # default: 10, a minute apart
    ("preempted", ["preempted"] * 10, ("stop", 0)),
    ("stall", ["stall"], ("stop", 0)),                     # ignore on an ended attempt stops
    ("made_up", ["made_up"], ("stop", 0)),
])
def test_decide_table(mode, outcomes, expected):
    d = autoexp.decide(mode, POL, ended(*outcomes))
    assert (d.action, d.delay) == expected


def test_backoff_is_capped():
    d = autoexp.decide("node_fail", POL, ended("node_fail", "node_fail"))
    assert d.delay == 200
    pol = dict(POL, node_fail=POL["node_fail"]._replace(max_attempts=10))
    assert autoexp.decide("node_fail", pol, ended(*["node_fail"] * 5)).delay == 250


def test_a_policy_without_action_refines_the_default():
    events = {"log_events": [{"name": "nccl", "pattern": "NCCL", "mode": "nccl"}]}
    pol = autoexp.validate_restart({
        "timeout": {"max_attempts": 5}, "node_fail": {"backoff_seconds": 30},
        "nccl": {"max_attempts": 4}, "crash": {"action": "restart"},
    }, events, autoexp._Checker("t"))
    assert pol["timeout"] == {"action": "restart", "max_attempts": 5}
    assert pol["node_fail"] == {"action": "restart", "max_attempts": 3, "backoff_seconds": 30}
    assert pol["nccl"] == {"action": "stop", "max_attempts": 4}       # a log_events mode's default
    assert pol["crash"] == {"action": "restart", "max_attempts": 3}   # replaced, with the default budget


E = autoexp.Ended
CRASHY = dict(POL, crash=POL["crash"]._replace(max_attempts=10), timeout=POL["timeout"]._replace(max_attempts=10))


@pytest.mark.parametrize("history, expected", [
    ([E("crash", "1:0|", 5), E("crash", "1:0|", 3)], "stop"),             # same failure at startup twice
    ([E("crash", "1:0|", 5)], "restart"),                                # once is not a pattern
    ([E("crash", "1:0|", 5), E("crash", "2:0|", 3)], "restart"),          # another exit code
    ([E("crash", "1:0|NCCL", 5), E("crash", "1:0|OOM", 3)], "restart"),   # another log line
    ([E("crash", "1:0|", 5000), E("crash", "1:0|", 3)], "restart"),       # the first ran for a while
    ([E("crash", "1:0|", 5), E("crash", "1:0|", 600)], "restart"),        # this one ran for a while
    ([E("timeout", "0:0|", 5), E("timeout", "0:0|", 5)], "restart"),      # circumstantial modes never
    ([E("crash", "1:0|", 5), E("timeout", "0:0|", 5), E("crash", "1:0|", 5)], "restart"),  # not consecutive
])
def test_deterministic_failures_stop(history, expected):
    assert autoexp.decide(history[-1].mode, CRASHY, history).action == expected
