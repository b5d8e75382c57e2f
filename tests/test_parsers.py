"""What autoexp reads from SLURM, tested on real SLURM output (tests/captures): squeue's and
sacct's lines parsed into rows (job ids, array ranges, state words, names and comments with
'|' in them), failed or garbled answers turned into UNKNOWN and never into "no jobs", the
command line and environment SlurmClient runs them with (sacct's split to stay within the
kernel's limits), and what sbatch's and scancel's exit codes and texts mean (submitted,
refused for good, or in doubt; a site's notices around the id). SLURM's times are parsed
as strptime would, across daylight saving; an squeue line with a column autoexp did not ask
for, or an unreadable one with autoexp's tag, is UNKNOWN."""

import errno
import os
import re
import subprocess
import time

import pytest

from helpers import Capture, autoexp, captures

pytestmark = pytest.mark.timeout(30)


# --- sacct ------------------------------------------------------------------------

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
    assert autoexp.slurm_epoch(rows["2"].end) - autoexp.slurm_epoch(rows["2"].start) == 25  # read when used
    assert autoexp.parse_slurm_time("None") is None and autoexp.parse_slurm_time("Unknown") is None


def test_sacct_steps_are_skipped():
    rows = autoexp.parse_sacct(Capture("24_sacct_after_finish_nonX.txt").stdout, Capture("24_sacct_after_finish_nonX.txt").output_format)
    assert sorted(r.job_id for r in rows) == ["2", "3_0", "3_1", "3_2", "3_3"]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_fast_slurm_time_parsing_agrees_with_strptime_across_daylight_saving(tz, monkeypatch):
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    autoexp._HOUR_STARTS.clear()
    try:
        t = 1774000000.0
        for _ in range(24 * 60):  # two months, every hour or so
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
            assert autoexp.parse_slurm_time(text) == time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")), text
            t += 3541
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
        autoexp._HOUR_STARTS.clear()
    for bad in ["2026-13-01T00:00:00", "2026-12-01 14:49:14", "2026-12-01T14:61:00", "yesterday"]:
        with pytest.raises(ValueError):
            autoexp.parse_slurm_time(bad)


# --- squeue and job ids -------------------------------------------------------------


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


def test_a_heterogeneous_job_in_the_queue_is_just_another_job():
    rows = autoexp.parse_squeue("1234+0|1234|RUNNING|None|other|(null)\n1234+1|1235|RUNNING|None|other|(null)\n",
                                "%i|%A|%T|%r|%j|%k")
    assert [r.job_id for r in rows] == ["1234+0", "1234+1"]


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


def test_an_squeue_line_with_an_extra_trailing_column_is_unknown_not_a_silent_loss_of_tags():
    # fields autoexp did not ask for: the answer is UNKNOWN (the cycle then decides nothing: test_outages)
    text = "7|7|RUNNING|None|2026-12-01T10:00:00|n1|u|/w|demo-s1|autoexp:p1:demo-s1|extra\n"
    client = autoexp.SlurmClient(runner=lambda a, t, e: autoexp.Completed(a, 0, text, "", False), user="u")
    with pytest.raises(autoexp.SlurmUnavailable) as e:
        client.squeue()
    assert "did not ask for" in str(e.value)


def test_a_tagged_squeue_line_that_cannot_be_read_is_still_unknown():
    # still: a foreign line that cannot be read is only skipped (test_outages); one with
    # autoexp's tag makes the whole answer UNKNOWN
    text = "7|7|WEIRD STATE|None|2026-12-01T10:00:00|u|/w|x\ny|autoexp:p1:x\n"
    client = autoexp.SlurmClient(runner=lambda a, t, e: autoexp.Completed(a, 0, text, "", False), user="u")
    with pytest.raises(autoexp.SlurmUnavailable):
        client.squeue()


# --- failed queries are UNKNOWN; how SlurmClient asks -------------------------------


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
    assert seen["argv"] == ["squeue", "-h", "-r", "-t", "all", "-u", "alice", "-o", "%i|%A|%T|%r|%V|%N|%u|%Z|%j|%k"]
    env = seen["env"]
    assert env["SLURM_TIME_FORMAT"] == "standard" and env["LC_ALL"] == "C"
    assert env["SLURM_BITSTR_LEN"] == "0"
    for k in ("SQUEUE_FORMAT", "SACCT_FORMAT", "SQUEUE_SORT", "SCANCEL_INTERACTIVE", "LC_TIME", "SLURM_CLUSTERS",
              "SBATCH_WAIT"):
        assert k not in env
    assert env["SBATCH_PARTITION"] == "gpu"  # a user's sbatch default is theirs to keep
    assert seen["timeout"] == 7


def test_sacct_arguments_stay_within_the_kernels_limits_for_100000_long_names():
    names = ["%s-%06d" % ("n" * 53, i) for i in range(100000)]  # 60 characters each
    calls = []

    def runner(argv, timeout, env):
        calls.append(argv)
        return autoexp.Completed(argv, 0, "", "", False)
    client = autoexp.SlurmClient(runner=runner, user="u")
    client.sacct_by_name(names, 0)
    client.sacct([str(10 ** 9 + i) for i in range(100000)], 0)
    asked_names, asked_ids = [], []
    for argv in calls:
        assert all(len(a.encode()) < 128 * 1024 for a in argv)
        assert sum(len(a.encode()) + 1 for a in argv) < 2 * 1024 * 1024 // 2
        if argv[-1].startswith("--name="):
            asked_names += argv[-1][len("--name="):].split(",")
        else:
            asked_ids += argv[argv.index("-j") + 1].split(",")
    assert asked_names == names and len(asked_ids) == 100000
    assert len(calls) < 200  # chunks of about 100 KB, not one call per job


def test_a_sweep_of_4000_jobs_with_long_names_is_looked_up_by_name(tmp_path):
    """The defect: with ~3,500 36-character names, one --name= argument was too long and
    every submission and reconcile of the session failed, for good."""
    names = ["job-with-a-thirty-six-char-name-%04d" % i for i in range(4000)]
    with pytest.raises(OSError) as e:  # what the kernel says to one argument of them all
        subprocess.call(["true", "--name=" + ",".join(names)])
    assert e.value.errno == errno.E2BIG
    calls = []

    def runner(argv, timeout, env):
        subprocess.check_call(["true"] + argv[1:])  # through the kernel, as sacct would be
        calls.append(argv)
        return autoexp.Completed(argv, 0, "", "", False)
    autoexp.SlurmClient(runner=runner, user="u").sacct_by_name(names, 0)
    assert len(calls) == 2


# --- sbatch and scancel --------------------------------------------------------------


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


# a site's sbatch may print notices around the id
@pytest.mark.parametrize("out, job_id", [
    ("Note: your default account is proj123\n4711\n", "4711"),
    ("4711;cluster\nReminder: maintenance on Friday\n", "4711"),
    ("warning: 12 jobs queued\n4711\n", "4711"),
])
def test_the_sbatch_id_line_is_found_among_notices(out, job_id):
    res = autoexp.classify_sbatch(autoexp.Completed([], 0, out, "", False))
    assert (res.outcome, res.job_id) == (autoexp.SB_OK, job_id)


def test_two_sbatch_id_lines_are_no_answer():
    res = autoexp.classify_sbatch(autoexp.Completed([], 0, "4711\n4712\n", "", False))
    assert res.outcome == autoexp.SB_UNCERTAIN


def test_scancel_captures():
    for name, ok in (("35_scancel_running.txt", True), ("37_scancel_nonexistent.txt", True),
                     ("37_scancel_finished_job.txt", True), ("73_scancel_ctld_down.txt", False)):
        cap = Capture(name)
        client = autoexp.SlurmClient(runner=lambda a, t, e, cap=cap: cap.completed(), user="u")
        assert client.scancel("16")[0] is ok, name


def test_squeue_lines_seen_in_the_last_answer_give_the_same_rows_unparsed():
    known = {}
    first = "1|1|RUNNING|None|2026-12-01T10:00:00|n1|u|/w|a|autoexp:p:a\n2|2|PENDING|Priority|2026-12-01T10:00:00||u|/w|b|autoexp:p:b\n"
    rows1 = autoexp.parse_squeue(first, known=known)
    assert len(known) == 2
    second = first.replace("PENDING|Priority|2026-12-01T10:00:00|", "RUNNING|None|2026-12-01T10:00:00|n2") + \
        "3_[0-1]|3|PENDING|None|2026-12-01T10:01:00||u|/w|c|autoexp:p:c\n"
    rows2 = autoexp.parse_squeue(second, known=known)
    assert rows2[0] is rows1[0]                        # unchanged: the very same row
    assert rows2[1] is not rows1[1] and rows2[1].state == "RUNNING" and rows2[1].nodes == "n2"
    assert rows1[0].nodes == "n1" and rows1[1].nodes is None  # pending: no nodes yet
    assert [r.job_id for r in rows2[2:]] == ["3_0", "3_1"]
    assert rows2 == autoexp.parse_squeue(second)       # the same answer as without it
    assert len(known) == 3                             # the last answer's lines only
    # an answer that does not parse leaves what was known as it was
    with pytest.raises(ValueError):
        autoexp.parse_squeue(second + "4|4|RUNNING|None|x|n1|u|/w|d|autoexp:p:d|extra\n", known=known)
    assert autoexp.parse_squeue(second, known=known)[0] is rows1[0]


# --- user and working directory: a job resubmitted by hand without its tag ------------

def test_squeue_user_and_working_directory_and_a_directory_holding_a_bar():
    fmt = autoexp.SQUEUE_FORMAT
    rows = autoexp.parse_squeue(
        "5|5|PENDING|None|2026-12-01T10:00:00||alice|/proj/run|j|\n"              # by hand: no tag
        "6|6|RUNNING|None|2026-12-01T10:00:00|g[1-2]|alice|/proj/a|b|j|\n"       # '|' in the directory
        "7|7|PENDING|None|2026-12-01T10:00:00||alice|/proj/a|b|j|autoexp:p1:j\n", fmt)
    by = dict((r.job_id, r) for r in rows)
    assert (by["5"].user, by["5"].workdir, by["5"].name, by["5"].comment) == ("alice", "/proj/run", "j", "")
    assert by["6"].user == "alice" and by["6"].workdir is None          # cannot be told: never matched
    assert [by[i].nodes for i in "567"] == [None, "g[1-2]", None]       # the node list before it stays in place
    assert by["7"].comment == "autoexp:p1:j" and by["7"].workdir is None


def test_sacct_user_and_working_directory_and_a_directory_holding_a_bar():
    f = autoexp.SACCT_FIELDS
    t = "2026-12-01T10:00:00"
    rows = autoexp.parse_sacct(
        "5|5|j|RUNNING|0:0|%s|%s|Unknown|7|cpu=1|g1|alice|/proj/run|\n"
        "6|6|j|COMPLETED|0:0|%s|%s|%s|9|cpu=1|g[1-2]|alice|/proj/a|b|autoexp:p1:j\n"   # the tag shows where the directory ends
        "7|7|j|COMPLETED|0:0|%s|%s|%s|0||None assigned|alice|/proj/a|b|my|note\n" % (t, t, t, t, t, t, t, t), f)
    by = dict((r.job_id, r) for r in rows)
    assert (by["5"].user, by["5"].workdir, by["5"].comment) == ("alice", "/proj/run", "")
    assert (by["6"].workdir, by["6"].comment) == ("/proj/a|b", "autoexp:p1:j")
    assert by["7"].workdir is None and by["7"].user == "alice"
    assert [by[i].nodes for i in "567"] == ["g1", "g[1-2]", None]


@pytest.mark.parametrize("version", ["22.05", "24.11"])
def test_the_fake_slurm_shows_user_and_working_directory_as_autoexp_asks(tmp_path, version):
    from helpers import fake_slurm
    fs = fake_slurm.FakeSlurm(str(tmp_path / "fs"), subreaper=False)
    fs.configure(version=version)
    wd = str(tmp_path / "wd")
    rc, out, err = fs.run("sbatch", "--parsable", "--hold", "--job-name=j", "--chdir=" + wd, "--wrap", "true")
    assert rc == 0, err
    jid = out.strip()

    def runner(argv, timeout, env):
        rc, out, err = fs.run(argv[0], *argv[1:])
        return autoexp.Completed(argv, rc, out, err, False)
    client = autoexp.SlurmClient(runner=runner, user=fake_slurm.user_name(os.getuid()))
    row = [r for r in client.squeue() if r.job_id == jid][0]
    assert (row.name, row.comment, row.user, row.workdir) == ("j", "", client.user, wd)
    fs.cancel(jid)  # 22.05's accounting shows a held job only once it ended
    # held, then cancelled: never eligible, so only `sacct -j` lists it (never by name)
    deadline = time.time() + 10
    acct = list(client.sacct([jid], time.time() - 60).values())
    while not acct and time.time() < deadline:  # and accounting records the end a moment later
        time.sleep(0.05)
        acct = list(client.sacct([jid], time.time() - 60).values())
    assert client.sacct_by_name(["j"], time.time() - 60) == []
    assert [(r.job_id, r.user, r.workdir) for r in acct] == [(jid, client.user, wd)]


@pytest.mark.parametrize("elapsed,tres,expected", [
    ("3600", "billing=2,cpu=2,gres/gpu=4,mem=1G,node=1", (3600, 2, 4)),
    ("90", "billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=64G,node=1", (90, 8, 2)),  # typed and total: the total
    ("90", "cpu=8,gres/gpu:a100=2,gres/gpu:v100=1,node=1", (90, 8, 3)),  # typed only: summed
    ("90", "billing=1,cpu=1,mem=256M,node=1", (90, 1, 0)),  # CPUs and no GPU: none held
    ("0", "", (0, None, None)),  # never ran: nothing allocated
    ("", "", (None, None, None)),
    ("-5", "cpu=x,gres/gpu=9999999999", (None, None, None)),  # malformed or beyond belief: not told
    ("99999999999", "cpu=4", (None, 4, 0)),
])
def test_alloc_of_reads_elapsedraw_and_alloctres(elapsed, tres, expected):
    row = autoexp.AcctRow("1", "1", "j", "COMPLETED", "0:0", None, None, "", elapsed=elapsed, tres=tres)
    assert autoexp.alloc_of(row) == expected


def test_sacct_cost_fields_sit_before_the_node_list():
    t = "2026-12-01T10:00:00"
    row = autoexp.parse_sacct("8|8|j|TIMEOUT|0:0|%s|%s|%s|87|billing=2,cpu=2,gres/gpu=4,mem=1G,node=1|g1|al|/w|c\n"
                              % (t, t, t), autoexp.SACCT_FIELDS)[0]
    assert (row.elapsed, row.tres, row.nodes, row.comment) == ("87", "billing=2,cpu=2,gres/gpu=4,mem=1G,node=1", "g1", "c")
    assert autoexp.alloc_of(row) == (87, 2, 4)
