"""autoexp's parsers and SLURM client fed with both SLURM generations' real output, side by
side: SLURM 22.05.8 (Debian 12, tests/captures/) and 24.11.5 (Debian 13,
tests/captures-24.11/). The same scenario has the same file name in both sets; where 24.11
behaves differently, each generation's capture is checked for what autoexp must make of it.
"""

import re

import pytest

from helpers import Capture, autoexp, captures

pytestmark = pytest.mark.timeout(30)

BOTH = ["22.05", "24.11"]
# autoexp's sacct (tests/captures' by hand, captures-24.11's ax_* with autoexp's environment)
AUTOEXP_SACCT = (r"sacct -X (?:-n -P|-P -n) -o JobID\\,JobIDRaw\\,JobName\\,State\\,ExitCode\\,(?:Submit\\,)?Start\\,"
                 r"End\\,Comment(?: |$)")
AUTOEXP_SQUEUE = r"squeue -h -r -t all -u \S+ -o %i\\\|%A\\\|%T\\\|%r\\\|(?:%V\\\|)?%j\\\|%k$"
LONG_SQUEUE = r"^squeue .*-o %i\\\|%j\\\|%T\\\|%r"  # the captures' own %i|%j|%T|%r|%M|%l|%N


def client(cap, user="root"):
    """A SlurmClient whose every command answers with this capture, read in the format the
    capture was taken with (autoexp's formats grew submit times since some were taken)."""
    return cap.client(user)


def acct(name, capset):
    cap = Capture(name, capset)
    return dict((r.job_id, r) for r in autoexp.parse_sacct(cap.stdout, cap.output_format))


def long_rows(name, capset):
    """{job id: (state, reason)} of a capture in squeue's %i|%j|%T|%r|... format."""
    out = {}
    for line in Capture(name, capset).stdout.splitlines():
        f = line.split("|")
        for job_id in autoexp.expand_job_id(f[0]):
            out[job_id] = (autoexp.normalize_state(f[2]), f[3])
    return out


def monitoring(**kw):
    return autoexp.make_monitoring(autoexp.validate_monitoring(kw, autoexp._Checker("test")))


# --- everything parses, in both generations ------------------------------------------------

@pytest.mark.parametrize("capset", BOTH)
def test_every_sacct_capture_in_autoexp_format_parses_or_is_unknown(capset):
    caps = captures(command_re=AUTOEXP_SACCT, capset=capset)
    assert len(caps) >= 30
    for cap in caps:
        c = client(cap)
        if cap.rc != 0:
            with pytest.raises(autoexp.SlurmUnavailable):
                c.sacct(["1"], 0)
            continue
        rows = c.sacct(["1"], 0)
        for line in cap.stdout.splitlines():
            f = line.split("|")
            for job_id in autoexp.expand_job_id(f[0]):
                r = rows[job_id]
                assert (r.name, r.state, r.exit_code, r.comment) == (f[2], f[3].split()[0], f[4], f[7]), cap.name
                assert (r.start is None) == (f[5] in ("Unknown", "None")), cap.name
                assert (r.end is None) == (f[6] == "Unknown"), cap.name


@pytest.mark.parametrize("capset", BOTH)
def test_every_squeue_capture_gives_ids_and_states_autoexp_knows(capset):
    caps = captures(command_re=LONG_SQUEUE, capset=capset)
    assert len(caps) >= 15
    known = autoexp.ACTIVE_STATES | set(autoexp.TERMINAL_MODE)
    for cap in caps:
        for line in cap.stdout.splitlines():
            f = line.split("|")
            assert all(re.match(r"^\d+(_\d+)?$", i) for i in autoexp.expand_job_id(f[0])), cap.name
            assert autoexp.normalize_state(f[2]) in known, cap.name


def test_autoexps_own_squeue_on_24_11():
    """captures-24.11's ax_*_squeue_* are autoexp's exact squeue: every line parses, with
    the comment (autoexp's tag) and the reason kept whole."""
    caps = captures(prefix_re=r"^ax_", command_re=AUTOEXP_SQUEUE, capset="24.11")
    assert len(caps) >= 12
    for cap in caps:
        if cap.rc != 0:
            with pytest.raises(autoexp.SlurmUnavailable):
                client(cap).squeue()
            continue
        rows = client(cap).squeue()
        lines = cap.stdout.splitlines()
        assert len(rows) >= len(lines), cap.name
        for line in lines:
            f = line.split("|")
            for job_id in autoexp.expand_job_id(f[0]):
                r = [r for r in rows if r.job_id == job_id][-1]
                assert (r.state, r.reason, r.name) == (f[2], f[3], f[4]), cap.name
                assert r.comment == ("" if f[5] == "(null)" else f[5]), cap.name


@pytest.mark.parametrize("capset", BOTH)
def test_every_failed_query_is_unknown(capset):
    """squeue and sacct failing (controller down, slurmdbd down, bad option, invalid id,
    a broken accounting plugin) never read as "no jobs"."""
    caps = [c for c in captures(command_re=r"(^|\s)(squeue|sacct) ", capset=capset)
            if c.rc != 0 and "--json" not in c.command]
    assert len(caps) >= 8
    for cap in caps:
        c = client(cap, "u")
        if "accounting storage is disabled" in cap.stderr:
            assert c.sacct(["1"], 0) == {}  # an answer: no records
            continue
        with pytest.raises(autoexp.SlurmUnavailable):
            c.squeue() if re.search(r"(^|\s)squeue ", cap.command) else c.sacct(["1"], 0)


@pytest.mark.parametrize("capset", BOTH)
@pytest.mark.parametrize("name, outcome", [
    ("01_sbatch_trivial.txt", "ok"),
    ("14_sbatch_parsable_with_M.txt", "ok"),
    ("15_sbatch_bad_partition.txt", "permanent"),
    ("15_sbatch_bad_time.txt", "permanent"),
    ("15_sbatch_mem_too_big.txt", "permanent"),
    ("15_sbatch_no_script.txt", "permanent"),
    ("15_sbatch_no_shebang.txt", "permanent"),
    ("15_sbatch_exclude_only_node.txt", "permanent"),  # uses up a job id: FAILED, BadConstraints
    ("15_sbatch_exclude_unknown_node.txt", "permanent"),  # a policy's "exclude" naming no node
    ("71_sbatch_ctld_down.txt", "uncertain"),
    ("14_sbatch_not_parsable.txt", "uncertain"),
])
def test_sbatch_answers_are_classified_alike(capset, name, outcome):
    cap = Capture(name, capset)
    res = autoexp.classify_sbatch(cap.completed())
    assert res.outcome == outcome, (cap.stderr, res)
    if outcome == "ok":
        assert res.job_id == cap.stdout.strip().split(";")[0]


@pytest.mark.parametrize("capset", BOTH)
@pytest.mark.parametrize("name, ok", [
    ("35_scancel_running.txt", True), ("35_scancel_pending.txt", True), ("37_scancel_nonexistent.txt", True),
    ("37_scancel_finished_job.txt", True), ("37_scancel_already_cancelled.txt", True),
    ("73_scancel_ctld_down.txt", False),
])
def test_scancel_answers_alike(capset, name, ok):
    cap = Capture(name, capset)
    assert client(cap, "u").scancel("16")[0] is ok


# --- what changed from 22.05 to 24.11 -------------------------------------------------------

@pytest.mark.parametrize("capset, name, job_id, state", [
    # a submission refused at once, whose id was used up (BadConstraints)
    ("22.05", "16_sacct_after_errors.txt", "65", "FAILED"),
    ("24.11", "16_sacct_after_errors.txt", "13", "FAILED"),
    # a job cancelled while pending
    ("22.05", "36_sacct_cancelled.txt", "10", "CANCELLED"),
    ("24.11", "36_sacct_cancelled.txt", "26", "CANCELLED"),
    # the pending part of an array cancelled as a whole
    ("22.05", "97_sacct_array_cancelled.txt", "22_4", "CANCELLED"),
    ("24.11", "97_sacct_array_cancelled.txt", "40_4", "CANCELLED"),
])
def test_start_of_a_job_that_never_started(capset, name, job_id, state):
    """22.05 writes the end time as Start; 24.11 writes None, which autoexp reads as unset
    (no run time: such an attempt never counts as a fast, deterministic failure)."""
    row = acct(name, capset)[job_id]
    assert row.state == state and row.end is not None
    if capset == "22.05":
        assert row.start == row.end
    else:
        assert row.start is None
        line = [l for l in Capture(name, capset).stdout.splitlines()
                if job_id in autoexp.expand_job_id(l.split("|")[0])][0]
        assert line.split("|")[5] == "None"


@pytest.mark.parametrize("capset, job_id, name", [
    ("22.05", "10", "allocation"),      # slurmdbd's placeholder: the real name comes seconds later
    ("24.11", "26", "cancel-pending"),  # the real name at once
])
def test_name_of_a_fresh_job_in_sacct(capset, job_id, name):
    assert acct("36_sacct_cancelled.txt", capset)[job_id].name == name


def test_fresh_jobs_are_found_by_name_at_once_on_24_11():
    """24.11: a job sbatch just queued is in `sacct --name` (autoexp's lookup of an intent
    without an id) under its real name; 22.05 showed nothing, then `allocation`, for up to
    5 s (its capture 88), so autoexp also looks in squeue by tag and waits before believing
    that nothing was queued."""
    by_name = client(Capture("ax_98_sacct_by_name.txt", "24.11")).sacct_by_name(["cap-ax-s1", "capplan"], 0)
    assert sorted((r.job_id, r.name, r.state) for r in by_name) == [
        ("43", "cap-ax-s1", "RUNNING"), ("44_0", "capplan", "RUNNING"), ("44_1", "capplan", "RUNNING")]


@pytest.mark.parametrize("capset, name, job_id, reason", [
    ("22.05", "61_squeue_oom_done.txt", "17", "JobLaunchFailure"),
    ("24.11", "61_squeue_oom_done.txt", "36", "RaisedSignal:9(Killed)"),
    ("24.11", "15b_squeue_bad_output_dir_nonroot.txt", "29", "RaisedSignal:53(Real-time signal 19)"),
])
def test_reason_of_a_job_killed_by_a_signal(capset, name, job_id, reason):
    assert long_rows(name, capset)[job_id] == ("FAILED", reason)


def test_reasons_with_spaces_and_parentheses_stay_whole():
    rows = dict((r.job_id, r) for r in client(Capture("ax_40_squeue_held.txt", "24.11")).squeue())
    assert rows["29"] == autoexp.QueueRow("29", "29", "FAILED", "RaisedSignal:11(Segmentation fault)", "sig-job", "")
    obs = autoexp.Observation("squeue", "FAILED", rows["29"].reason, "0:11")
    verdict = autoexp.classify(obs, autoexp.Facts(), 0.0, monitoring())
    assert verdict.mode == "crash" and verdict.reason == "SLURM state FAILED (exit code 0:11)"


def test_sacct_by_task_id_misses_tasks_of_a_pending_range():
    """24.11: `sacct -j A_k` has no row for a task still inside the pending range A_[..]
    (nor after the whole array was cancelled); `-j A` and `--name` return the range."""
    rows = client(Capture("ax_20_sacct_array_tasks_running_and_pending.txt", "24.11")).sacct(
        ["18_0", "18_1", "18_2", "18_3"], 0)
    assert sorted(rows) == ["18_0"]
    squeue = dict((r.job_id, r.state) for r in client(Capture("ax_20_squeue_array_running_and_pending.txt",
                                                                "24.11")).squeue())
    assert [squeue[t] for t in ("18_1", "18_2", "18_3")] == ["PENDING"] * 3  # squeue knows them meanwhile
    by_tasks = client(Capture("ax_93_sacct_by_task_ids_after_purge.txt", "24.11")).sacct(
        ["30_%d" % i for i in range(5)], 0)
    assert sorted(by_tasks) == ["30_0", "30_1"]
    for cap, lookup in (("ax_93_sacct_by_array_id_after_purge.txt", lambda c: list(c.sacct(["30"], 0).values())),
                        ("ax_93_sacct_by_name_after_purge.txt", lambda c: c.sacct_by_name(["hc-arr"], 0))):
        rows = dict((r.job_id, r) for r in lookup(client(Capture(cap, "24.11"))))
        assert sorted(rows) == ["30_%d" % i for i in range(5)], cap
        for t in ("30_2", "30_3", "30_4"):  # the range, expanded: cancelled before they started
            assert (rows[t].state, rows[t].start, rows[t].comment) == ("CANCELLED", None, "autoexp:hcplan:@array")
    # a lone pending task is a record of its own, found by its id
    assert acct("ax_98_sacct_by_id.txt", "24.11")["44_3"].state == "PENDING"


@pytest.mark.parametrize("capset, running", [("22.05", "CANCELLED"), ("24.11", "COMPLETING")])
def test_whole_array_scancel(capset, running):
    """Right after `scancel <array>`, 24.11 shows its running tasks COMPLETING (still live:
    nothing is decided yet), 22.05 CANCELLED; the pending range is CANCELLED at once."""
    rows = long_rows("96_squeue_right_after.txt", capset)
    base = "22" if capset == "22.05" else "40"
    assert rows[base + "_0"][0] == rows[base + "_1"][0] == running
    assert [rows["%s_%d" % (base, t)] for t in (2, 3, 4, 5)] == [("CANCELLED", "Resources")] * 4
    obs = autoexp.Observation("squeue", running)
    verdict = autoexp.classify(obs, autoexp.Facts(), 0.0, monitoring())
    if running == "COMPLETING":
        assert autoexp.observation_live(obs) and verdict.mode is None
    else:
        assert verdict.mode == "cancelled"


@pytest.mark.parametrize("capset, accepted", [("22.05", True), ("24.11", False)])
def test_more_cpus_than_the_node_has(capset, accepted):
    """22.05 queued `sbatch -c N` beyond the node's CPUs (pending for ever, PartitionConfig);
    24.11 refuses it at submit, a permanent error for autoexp, but still uses up a job id:
    squeue and sacct show a FAILED|BadConstraints job, as both did for --mem beyond the node."""
    res = autoexp.classify_sbatch(Capture("15_sbatch_too_many_cpus.txt", capset).completed())
    assert res.outcome == ("ok" if accepted else "permanent")
    if not accepted:
        assert "Requested node configuration is not available" in res.message
    rows = long_rows("16_squeue_after_errors.txt", capset)
    refused = sorted(j for j, (state, reason) in rows.items() if reason == "BadConstraints")
    assert all(rows[j][0] == "FAILED" for j in refused)
    assert len(refused) == (1 if accepted else 2)  # --mem=500G, and on 24.11 also -c 16
    if accepted:
        assert ("PENDING", "PartitionConfig") in rows.values()


@pytest.mark.parametrize("capset", BOTH)
def test_sacct_right_after_slurmdbd_came_back(capset):
    """A job that ended while slurmdbd was down: 22.05 shows it COMPLETED with End Unknown
    for a while; 24.11 has no row for about 8 s (then PENDING for a second, capture 77b).
    autoexp decides on the first, and waits on the second: a job missing from squeue and
    sacct is lost only after lost_after_seconds, one sacct still calls live never."""
    mon = monitoring(lost_after_seconds=120)
    first = client(Capture("77_sacct_after_dbd_back.txt", capset)).sacct(["25", "59"], 0)
    later = client(Capture("77_sacct_after_dbd_back_later.txt", capset)).sacct(["25", "59"], 0)
    (row,) = later.values()
    assert row.state == "COMPLETED"
    if capset == "22.05":
        assert list(first) == list(later) and first[row.job_id].end is None
        verdict = autoexp.classify(autoexp.Observation("sacct", "COMPLETED", exit_code="0:0"), autoexp.Facts(), 0, mon)
        assert verdict.mode == "success"
    else:
        assert first == {} and row.end is not None
        gap = autoexp.classify(autoexp.Observation("missing"), autoexp.Facts(missing_since=0.0), 9.0, mon)
        assert (gap.monitor_state, gap.mode) == ("missing", None)
        pending = autoexp.classify(autoexp.Observation("missing", "PENDING"), autoexp.Facts(missing_since=0.0), 10.0,
                                   mon)
        assert pending.mode is None and "sacct still says PENDING" in pending.reason


@pytest.mark.parametrize("capset, first_line", [
    ("22.05", "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to "
              "host:localhost:6819: Connection refused"),
    ("24.11", "sacct: error: _open_persist_conn: failed to open persistent connection to host:127.0.0.1:7819: "
              "Connection refused"),
])
def test_sacct_with_slurmdbd_down(capset, first_line):
    """The first stderr line changed; the exit code (1) did not, and that is all autoexp reads."""
    cap = Capture("76_sacct_dbd_down.txt", capset)
    assert cap.rc == 1 and cap.stderr.splitlines()[0] == first_line
    assert cap.stderr.splitlines()[1:] == ["sacct: error: Sending PersistInit msg: Connection refused",
                                           "sacct: error: Problem talking to the database: Connection refused"]
    with pytest.raises(autoexp.SlurmUnavailable) as e:
        client(cap).sacct(["9"], 0)
    assert "exit 1" in str(e.value)


@pytest.mark.parametrize("capset, last_line", [
    ("22.05", "Slurm unable to initialize storage plugin"),
    ("24.11", "sacct: fatal: failed to initialize the accounting storage plugin"),
])
def test_sacct_with_a_broken_accounting_plugin_is_unknown_not_disabled(capset, last_line):
    cap = Capture("86_sacct_with_accounting_filetxt.txt", capset)
    assert cap.stderr.splitlines()[-1] == last_line
    with pytest.raises(autoexp.SlurmUnavailable):
        client(cap).sacct(["1"], 0)
    assert client(Capture("86_sacct_with_accounting_none_jobcomp_filetxt.txt", capset)).sacct(["1"], 0) == {}


@pytest.mark.parametrize("capset", BOTH)
def test_controller_down_texts_are_the_same(capset):
    for name in ("70_squeue_ctld_down.txt", "70_squeue_ctld_down_j.txt"):
        with pytest.raises(autoexp.SlurmUnavailable) as e:
            client(Capture(name, capset), "u").squeue()
        assert "Unable to contact slurm controller" in str(e.value)
    res = autoexp.classify_sbatch(Capture("71_sbatch_ctld_down.txt", capset).completed())
    assert res.outcome == "uncertain"  # it may have queued the job: looked up before any retry
