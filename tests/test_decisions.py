"""The functional core from tables: every per-job decision of a cycle is a pure function of
records (section 7 of autoexp.py), so each row here is one situation and its answer. After
the cycle's own steps come classify (what an observation and the log's facts mean: monitor
state, mode, live), decide (the restart policies: actions, per-mode budgets, backoff) and
the stop of a failure that repeats at startup."""

import pytest

from helpers import autoexp, monitoring

A = autoexp
NOW = 1700000000.0


def row(job_id, state="RUNNING", comment="autoexp:p1:j", name="j"):
    return A.QueueRow(job_id, job_id.split("_")[0], state, "None", name, comment)


def attempt(n=1, job_id=None, **kw):
    kw.setdefault("submit_state", A.SUBMITTED if job_id else A.INTENT)
    return A.Attempt(attempt=n, job_id=job_id, **kw)


def job(*attempts, **kw):
    return A.Job(name="j", index=0, attempts=list(attempts), **kw)


def sight(cands=(), revived=(), named_ok=True, named_error=""):
    cands = list(cands)
    return A.Sight(cands, [r for r in cands if r.state in A.ACTIVE_STATES] + list(revived), named_ok, named_error)


def mon(**kw):
    d = A.validate_monitoring(kw, A._Checker("test"))
    return A.make_monitoring(d)


# -- backoff -------------------------------------------------------------------------

@pytest.mark.parametrize("base, n, cap, expected", [
    (0, 5, 100, 0.0),            # no backoff configured
    (10, 1, 100, 10.0),
    (10, 2, 100, 20.0),
    (10, 4, 100, 80.0),
    (10, 5, 100, 100.0),         # capped
    (60, 1025, 600, 600.0),      # 2**1024 would overflow a float: the exponent is capped first
    (1e-9, 10 ** 6, float("inf"), 1e-9 * 2.0 ** 64),
    (10, 0, 100, 0.0),
])
def test_backoff(base, n, cap, expected):
    assert A.backoff(base, n, cap) == expected


# -- observe: squeue first, sacct for what it no longer lists -------------------------

def look(acct_ok=True, named_ok=True):
    lk = A.Lookup()
    lk.acct_ok, lk.acct_error = acct_ok, "" if acct_ok else "sacct down"
    lk.named_ok, lk.named_error = named_ok, "" if named_ok else "sacct down"
    return lk


def arow(state, exit_code="0:0"):
    return A.AcctRow("7", "7", "j", state, exit_code, NOW - 100, NOW - 10, "")


@pytest.mark.parametrize("sq, ac, lk, wait_since, source, state, waits_since", [
    # running in squeue: squeue's word
    (row("7"), None, look(), None, A.SRC_SQUEUE, "RUNNING", None),
    # squeue shows it ended, sacct has the record: decided on squeue's row with sacct's exit
    (row("7", "FAILED"), arow("FAILED", "1:0"), look(), None, A.SRC_SQUEUE, "FAILED", None),
    # ended in squeue, no sacct record yet: UNKNOWN, and the wait starts now
    (row("7", "FAILED"), None, look(), None, A.SRC_UNKNOWN, "", NOW),
    # ... still within the grace
    (row("7", "FAILED"), None, look(), NOW - 29, A.SRC_UNKNOWN, "", NOW - 29),
    # ... grace over: decided without sacct
    (row("7", "FAILED"), None, look(), NOW - 30, A.SRC_SQUEUE, "FAILED", NOW - 30),
    # ended in squeue while sacct fails: never decided through an outage
    (row("7", "FAILED"), None, look(acct_ok=False), NOW - 3600, A.SRC_UNKNOWN, "", NOW - 3600),
    # gone from squeue, sacct has it ended
    (None, arow("COMPLETED"), look(), None, A.SRC_SACCT, "COMPLETED", None),
    # gone from squeue, sacct still calls it live: accounting lags
    (None, arow("RUNNING"), look(), None, A.SRC_MISSING, "RUNNING", None),
    # neither knows it, both answered
    (None, None, look(), None, A.SRC_MISSING, "", None),
    # neither knows it, a lookup failed
    (None, None, look(named_ok=False), None, A.SRC_UNKNOWN, "", None),
    # a state word autoexp does not know
    (row("7", "WARPED"), None, look(), None, A.SRC_UNKNOWN, "", None),
])
def test_observe(sq, ac, lk, wait_since, source, state, waits_since):
    obs, since = A.observe(sq, ac, lk, wait_since, NOW)
    assert (obs.source, obs.state, since) == (source, state, waits_since)


# -- moves -----------------------------------------------------------------------------

@pytest.mark.parametrize("sg, kind, row_id", [
    (sight(), A.SUBMIT, None),                                            # nothing in SLURM: submit
    (sight(named_ok=False), A.WAIT, None),                                # sacct by name failed: wait
    (sight([row("9", "COMPLETED")]), A.ADOPT, "9"),                       # an ended job with its tag
    (sight([row("9", "COMPLETED"), row("8")]), A.ADOPT, "8"),             # a running one first
])
def test_first_move(sg, kind, row_id):
    move = A.first_move(sg)
    assert (move.kind, move.row.job_id if move.row else None) == (kind, row_id)
    if kind == A.ADOPT:
        assert move.origin == A.ORIGIN_EXTERNAL


@pytest.mark.parametrize("history, copies, sg, next_at, kind, row_id", [
    # the submission in doubt is found newer than its history: recovered
    ([attempt(1, "5", outcome="timeout"), attempt(2)], [], sight([row("9")]), None, A.RECOVER, "9"),
    # only an older job carries the tag: not this submission's
    ([attempt(1, "5", outcome="timeout"), attempt(2)], [], sight([row("4")]), None, A.SUBMIT, None),
    # a copy seen before (started by hand beside an earlier attempt) is never taken for it
    ([attempt(1, "5", outcome="timeout"), attempt(2)], ["9"], sight([row("9")]), None, A.SUBMIT, None),
    # sacct could not be asked: wait
    ([attempt(1)], [], sight(named_ok=False, named_error="boom"), None, A.WAIT, None),
    # ... also when squeue shows a job with its tag: an earlier one, ended, may be the
    # submission's result, and this one its replacement (simulator F10)
    ([attempt(1, "5", outcome="timeout"), attempt(2)], [], sight([row("9")], named_ok=False, named_error="boom"),
     None, A.WAIT, None),
    # several newer than its history: the first submitted is the submission's (F10)
    ([attempt(1, "5", outcome="timeout"), attempt(2)], [], sight([row("9"), row("8", "CANCELLED")]), None,
     A.RECOVER, "8"),
    # the retry's backoff is not over
    ([attempt(1)], [], sight(), NOW + 5, A.HOLD, None),
    ([attempt(1)], [], sight(), NOW, A.SUBMIT, None),
])
def test_intent_move(history, copies, sg, next_at, kind, row_id):
    j = job(*history, seen_copies=copies, next_submit_at=next_at)
    move = A.intent_move(j, sg, NOW)
    assert (move.kind, move.row.job_id if move.row else None) == (kind, row_id)
    if kind == A.WAIT:
        assert "boom" in move.note


def obs(source, state=""):
    return A.Observation(source, state)


@pytest.mark.parametrize("att, ob, sg, replaced_by", [
    # cancelled by hand and resubmitted with its tag: the newer job replaces it
    (attempt(1, "5"), obs(A.SRC_SQUEUE, "CANCELLED"), sight([row("9")]), "9"),
    # vanished and resubmitted
    (attempt(1, "5"), obs(A.SRC_MISSING), sight([row("9")]), "9"),
    # the tagged job is older: not a replacement
    (attempt(1, "5"), obs(A.SRC_MISSING), sight([row("4")]), None),
    # still running: a copy beside it, not a replacement
    (attempt(1, "5"), obs(A.SRC_SQUEUE, "RUNNING"), sight([row("9")]), None),
    # it failed on its own: its own policy decides
    (attempt(1, "5"), obs(A.SRC_SACCT, "FAILED"), sight([row("9")]), None),
    # already decided
    (attempt(1, "5", outcome="timeout"), obs(A.SRC_MISSING), sight([row("9")]), None),
    # UNKNOWN never replaces
    (attempt(1, "5"), obs(A.SRC_UNKNOWN), sight([row("9")]), None),
])
def test_replacement(att, ob, sg, replaced_by):
    r = A.replacement(att, ob, sg)
    assert (r.job_id if r else None) == replaced_by


@pytest.mark.parametrize("sg, next_at, kind, row_id", [
    (sight(), NOW - 1, A.SUBMIT, None),                          # backoff over
    (sight(), NOW + 1, A.HOLD, None),                            # backoff running
    (sight(), None, A.HOLD, None),                               # nothing scheduled
    (sight([row("9")]), NOW + 60, A.ADOPT, "9"),                 # resubmitted by hand during the backoff
    (sight(revived=[row("5", "PENDING")]), NOW + 60, A.ADOPT, "5"),  # the ended attempt requeued
    (sight([row("9", "COMPLETED")]), NOW - 1, A.SUBMIT, None),   # an ended copy is no reason to wait
    # sacct could not tell whether the ended attempt ran again: nothing submitted (F8)
    (sight(named_ok=False, named_error="sacct down"), NOW - 1, A.WAIT, None),
    (sight(named_ok=False, named_error="sacct down"), NOW + 1, A.HOLD, None),
])
def test_restart_move(sg, next_at, kind, row_id):
    j = job(attempt(1, "5", outcome="timeout"), next_submit_at=next_at)
    move = A.restart_move(j, sg, NOW)
    assert (move.kind, move.row.job_id if move.row else None) == (kind, row_id)


@pytest.mark.parametrize("status, history, sg, expected", [
    # a stopped job with a copy running under its tag runs again
    (A.STOPPED, [attempt(1, "5", outcome="crash")], sight([row("9")]), [(A.REACTIVATE, "9", A.ORIGIN_EXTERNAL)]),
    # ... a finalized one too
    (A.FINALIZED, [attempt(1, "5", outcome="success")], sight([row("9")]), [(A.REACTIVATE, "9", A.ORIGIN_EXTERNAL)]),
    # sbatch failed until autoexp gave up, yet one of the tries queued it: that submission recovered
    (A.STOPPED, [attempt(1, outcome="submit_failed")], sight([row("9")]), [(A.REACTIVATE, "9", A.ORIGIN_RECOVERED)]),
    # a cancelled job's copies are cancelled, each
    (A.CANCELLED, [attempt(1, "5", outcome="cancelled")], sight([row("9"), row("8")]),
     [(A.CANCEL_COPY, "9", None), (A.CANCEL_COPY, "8", None)]),
    # ... but not one whose cancel was already asked for
    (A.CANCELLED, [attempt(1, "5", outcome="cancelled"), attempt(2, "9", cancel_requested_at=NOW - 5)],
     sight(revived=[row("9")]), []),
    # nothing runs: nothing to do
    (A.STOPPED, [attempt(1, "5", outcome="crash")], sight(), []),
    # an ended copy does not reactivate
    (A.STOPPED, [attempt(1, "5", outcome="crash")], sight([row("9", "COMPLETED")]), []),
    # ... but the ended run of a submission in doubt is that attempt: decided like any (F5)
    (A.STOPPED, [attempt(1, outcome="submit_failed", ended_at=NOW - 60)], sight([row("9", "COMPLETED")]),
     [(A.REACTIVATE, "9", A.ORIGIN_RECOVERED)]),
    # ... and for a job cancelled meanwhile, recorded, never abandoned
    (A.CANCELLED, [attempt(1, outcome="cancelled", ended_at=NOW - 60)], sight([row("9", "COMPLETED")]),
     [(A.RECORD, "9", A.ORIGIN_RECOVERED)]),
    # which job is the submission's needs sacct: without it nothing is recovered (F10) ...
    (A.STOPPED, [attempt(1, outcome="submit_failed")], sight([row("9")], named_ok=False), []),
    (A.CANCELLED, [attempt(1, outcome="cancelled", ended_at=NOW - 60)],
     sight([row("9", "COMPLETED")], named_ok=False), []),
    # ... but a cancelled job's running copies are still cancelled
    (A.CANCELLED, [attempt(1, outcome="cancelled", ended_at=NOW - 60)], sight([row("9")], named_ok=False),
     [(A.CANCEL_COPY, "9", None)]),
    # the first submitted after the intent is the submission's result
    (A.STOPPED, [attempt(1, outcome="submit_failed")], sight([row("9"), row("8", "CANCELLED")]),
     [(A.REACTIVATE, "8", A.ORIGIN_RECOVERED)]),
])
def test_inactive_moves(status, history, sg, expected):
    j = job(*history, status=status)
    moves = A.inactive_moves(j, sg, NOW, 30.0)
    assert [(m.kind, m.row.job_id, m.origin) for m in moves] == expected


@pytest.mark.parametrize("ended_ago, named_ok, abandoned", [
    (31, True, True),      # squeue and sacct answered without it for long enough
    (29, True, False),     # accounting may still be catching up
    (3600, False, False),  # sacct could not be asked: never abandoned on no answer
])
def test_a_failed_submission_is_abandoned_only_after_answers(ended_ago, named_ok, abandoned):
    j = job(attempt(1, outcome="submit_failed", ended_at=NOW - ended_ago), status=A.STOPPED)
    moves = A.inactive_moves(j, sight(named_ok=named_ok), NOW, 30.0)
    assert [(m.kind, m.attempt) for m in moves] == ([(A.ABANDON, 1)] if abandoned else [])


# -- sbatch failures -------------------------------------------------------------------

def sb(outcome, message="boom"):
    return A.SubmitResult(outcome, None, message)


@pytest.mark.parametrize("res, failures, refusals, action, delay, counts, text", [
    # a clear refusal: stop at once, the counts untouched
    (sb(A.SB_PERMANENT, "Invalid partition"), 0, 0, A.STOP, 0.0, (0, 0), "sbatch refused the job: Invalid partition"),
    # a queue limit: retry with backoff (60, 120, ... capped at 600), for as long as it takes,
    # counted apart from the failures (found by the simulator, F4)
    (sb(A.SB_THROTTLED), 0, 0, A.RESTART, 60.0, (0, 1), "over a queue limit, retrying in 60s"),
    (sb(A.SB_THROTTLED), 0, 3, A.RESTART, 480.0, (0, 4), "retrying in 480s"),
    (sb(A.SB_THROTTLED), 2, 50, A.RESTART, 600.0, (2, 51), "retrying in 600s"),
    (sb(A.SB_THROTTLED), 0, 5000, A.RESTART, 600.0, (0, 5001), "retrying in 600s"),
    # uncertain: looked up by tag, retried after the backoff (never before accounting's grace)
    (sb(A.SB_UNCERTAIN), 0, 0, A.RESTART, 60.0, (1, 0), "looking it up by tag, then retrying in 60s"),
    (sb(A.SB_UNCERTAIN), 4, 0, A.RESTART, 960.0, (5, 0), "retrying in 960s"),
    # ... up to submit_retries (5) retries, then stop; queue-limit refusals do not count
    (sb(A.SB_UNCERTAIN), 5, 0, A.STOP, 0.0, (6, 0), "sbatch failed 6 times: boom"),
    (sb(A.SB_UNCERTAIN), 0, 20, A.RESTART, 60.0, (1, 20), "looking it up by tag"),
])
def test_after_sbatch_failure(res, failures, refusals, action, delay, counts, text):
    v = A.after_sbatch_failure(res, failures, refusals, mon())
    assert (v.action, v.delay, (v.failures, v.refusals)) == (action, delay, counts)
    assert text in (v.reason if action == A.STOP else v.detail)


def test_an_uncertain_retry_waits_at_least_for_accounting():
    v = A.after_sbatch_failure(sb(A.SB_UNCERTAIN), 0, 0, mon(submit_backoff_seconds=0))
    assert v.delay == A.ACCOUNTING_GRACE


# -- cancels, lookups, waits -----------------------------------------------------------

@pytest.mark.parametrize("result, ago, interval, due", [
    (None, 0, 10, True),                       # decided, never sent (a crash before scancel returned)
    ({"ok": False}, 0, 10, True),              # scancel could not reach SLURM
    ({"ok": True}, 59, 10, False),             # SLURM took it: give KillWait its time
    ({"ok": True}, 60, 10, True),
    ({"ok": True}, 100, 60, False),            # with a long interval, two cycles
    ({"ok": True}, 120, 60, True),
])
def test_cancel_resend_due(result, ago, interval, due):
    if result is not None:
        result = dict(result, time=A.iso_time(NOW - ago))
    assert A.cancel_resend_due(result, NOW, interval) is due


def test_acct_targets_are_the_live_jobs_squeue_no_longer_shows_running():
    running, ended, gone, dead = (attempt(1, "1", live=True), attempt(1, "2", live=True),
                                  attempt(1, "3", live=True), attempt(1, "4", live=False))
    jobs = [job(running), job(ended), job(gone), job(dead)]
    snap = A.Snapshot([row("1"), row("2", "TIMEOUT"), row("4", "COMPLETED")])
    assert [a.job_id for a in A.acct_targets(jobs, snap)] == ["2", "3"]


@pytest.mark.parametrize("j, in_squeue, in_acct, expected", [
    (job(), False, False, None),                                   # never submitted: if squeue shows no tag
    # a submission in doubt: always, since its result may have ended and been replaced by
    # a job squeue shows (simulator F10)
    (job(attempt(1)), False, False, True),
    (job(attempt(1, "5", live=True)), True, False, False),         # squeue has it
    (job(attempt(1, "5", live=True)), False, True, False),         # sacct by id has it
    (job(attempt(1, "5", live=True)), False, False, True),         # vanished: a successor?
    (job(attempt(1, "5", outcome="crash"), status=A.STOPPED), False, False, False),
    (job(attempt(1, outcome="submit_failed"), status=A.STOPPED), False, False, True),  # unresolved
])
def test_seeks_by_name(j, in_squeue, in_acct, expected):
    snap = A.Snapshot([row("5")] if in_squeue else [])
    lk = look()
    if in_acct:
        lk.acct = {"5": arow("RUNNING")}
    assert A.seeks_by_name(j, snap, lk) is expected


def test_tagged_candidates_newest_first_by_tag_and_array_task_never_by_name_alone():
    array = A.ArraySpec("p1", "/x", "/l", "autoexp:p1:@array", None, [])
    snap = A.Snapshot([row("10", comment="autoexp:p1:j"), row("12_0", comment="autoexp:p1:@array"),
                       row("12_1", comment="autoexp:p1:@array"), row("13", comment="autoexp:p2:j"),
                       row("14", comment="")])
    named = [A.AcctRow("11", "11", "j", "COMPLETED", "0:0", None, None, "autoexp:p1:j"),
             A.AcctRow("15", "15", "j", "COMPLETED", "0:0", None, None, "")]
    j = job(attempt(1, "10", live=True))
    cands = A.tagged_candidates(j, "autoexp:p1:j", array, snap, named)
    assert [c.job_id for c in cands] == ["12_0", "11"]


def test_tagged_candidates_leave_out_a_refused_submission():
    # sbatch refused it (--exclude left no node) yet used up an id carrying the tag: FAILED,
    # never a node (real 22.05 and 24.11): an intent never takes it for its own
    snap = A.Snapshot([row("20", "FAILED", comment="autoexp:p1:j")._replace(nodes=None),
                       row("21", "FAILED", comment="autoexp:p1:j")._replace(nodes="vm")])
    named = [A.AcctRow("19", "19", "j", "FAILED", "1:0", None, None, "autoexp:p1:j", nodes=None),
             A.AcctRow("18", "18", "j", "FAILED", "1:0", None, None, "autoexp:p1:j", nodes="vm")]
    j = job(attempt(1, "10", live=False, outcome="node_fail"))
    cands = A.tagged_candidates(j, "autoexp:p1:j", None, snap, named)
    assert [c.job_id for c in cands] == ["21", "18"]  # a job that failed on a node is one


def test_revived_rows_are_ended_attempts_slurm_runs_again():
    j = job(attempt(1, "5", outcome="timeout"), attempt(2, "6", live=True))
    snap = A.Snapshot([row("5", "PENDING"), row("6")])
    assert [r.job_id for r in A.revived_rows(j, snap)] == ["5"]
    snap = A.Snapshot([row("5", "COMPLETED")])
    assert A.revived_rows(j, snap) == []


def _acct(job_id, state, end):
    return A.AcctRow(job_id, job_id, "j", state, "0:0", NOW - 500, end, "")


@pytest.mark.parametrize("recorded, sq, ac, rerun", [
    # squeue shows the ended attempt ended again in another state: requeued and finished
    (dict(last_slurm_state="TIMEOUT"), row("5", "COMPLETED"), None, True),
    (dict(last_slurm_state="TIMEOUT"), row("5", "TIMEOUT"), None, False),
    # it left squeue: sacct's record ends later than the end recorded (simulator F8)
    (dict(last_slurm_state="PREEMPTED", slurm_end=NOW - 300), None, _acct("5", "COMPLETED", NOW - 10), True),
    (dict(last_slurm_state="FAILED", slurm_end=NOW - 300), None, _acct("5", "FAILED", NOW - 10), True),
    # the same run as recorded, however sacct names its state
    (dict(last_slurm_state="PREEMPTED", slurm_end=NOW - 10), None, _acct("5", "COMPLETED", NOW - 10), False),
    # no end recorded: another end state tells
    (dict(last_slurm_state="TIMEOUT"), None, _acct("5", "COMPLETED", NOW - 10), True),
    (dict(last_slurm_state="TIMEOUT"), None, _acct("5", "TIMEOUT", NOW - 10), False),
    # left squeue, accounting lags and still calls it running: with a later start than the
    # one recorded, it ran again (followed, never run beside: outside review) ...
    (dict(last_slurm_state="PREEMPTED", slurm_start=NOW - 900, slurm_end=NOW - 300), None,
     A.AcctRow("5", "5", "j", "RUNNING", "", NOW - 60, None, ""), True),
    # ... with the recorded start, it is the run already decided (accounting late with its end)
    (dict(last_slurm_state="PREEMPTED", slurm_start=NOW - 900, slurm_end=NOW - 300), None,
     A.AcctRow("5", "5", "j", "RUNNING", "", NOW - 900, None, ""), False),
    # squeue's row wins over sacct's
    (dict(last_slurm_state="PREEMPTED", slurm_end=NOW - 300), row("5", "PREEMPTED"), _acct("5", "COMPLETED", NOW), False),
])
def test_rerun_rows(recorded, sq, ac, rerun):
    j = job(attempt(1, "5", outcome="preempted", **recorded))
    snap = A.Snapshot([sq] if sq else [])
    acct = {ac.job_id: ac} if ac else {}
    assert [r.job_id for r in A.rerun_rows(j, snap, acct)] == (["5"] if rerun else [])


def test_a_rerun_a_later_attempt_follows_is_not_one():
    j = job(attempt(1, "5", outcome="preempted", last_slurm_state="PREEMPTED", slurm_end=NOW - 300),
            attempt(2, "5", live=True))
    assert A.rerun_rows(j, A.Snapshot([]), {"5": _acct("5", "COMPLETED", NOW)}) == []


@pytest.mark.parametrize("status, live, outcome, next_at, due", [
    ("active", False, "crash", NOW - 1, True),
    ("active", False, "crash", NOW + 1, False),   # backoff running
    ("active", False, "crash", None, False),
    ("active", True, None, NOW - 1, False),       # still live
    ("stopped", False, "crash", NOW - 1, False),
])
def test_restart_due(status, live, outcome, next_at, due):
    j = job(attempt(1, "5", live=live, outcome=outcome), status=status, next_submit_at=next_at)
    assert A.restart_due(j, NOW) is due


class _S(object):
    def __init__(self, interval, cap):
        self.monitoring = mon(interval_seconds=interval, unknown_backoff_max_seconds=cap)


@pytest.mark.parametrize("sessions, ok, failures, interval, wait", [
    ([_S(60, 600)], True, 0, None, 60),
    ([_S(60, 600), _S(10, 600)], True, 0, None, 10),     # the shortest interval
    ([_S(60, 600)], True, 0, 5, 5),                       # --interval wins
    ([_S(60, 600)], False, 1, None, 120),                 # UNKNOWN: doubling
    ([_S(60, 600)], False, 3, None, 480),
    ([_S(60, 600)], False, 4, None, 600),                 # capped
    ([_S(60, 600)], False, 10 ** 6, None, 600),           # never overflows
    ([_S(60, 30)], False, 5, None, 60),                   # a cap below the interval: the interval
])
def test_next_wait(sessions, ok, failures, interval, wait):
    assert A.next_wait(sessions, ok, failures, interval) == wait


# -- classify: what an observation and the log's facts mean --------------------------

Obs = autoexp.Observation
Facts = autoexp.Facts

MON = monitoring(interval_seconds=10, termination_string=None, inactivity_threshold_seconds=100,
                 lost_after_seconds=60)
MON_TERM = MON._replace(termination_string="DONE")
CLASSIFY_NOW = 1000.0


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
    v = autoexp.classify(obs, facts, CLASSIFY_NOW, mon)
    assert (v.monitor_state, v.mode, v.live) == expected


def test_lost_default_grace_is_at_least_min_job_age():
    assert monitoring(interval_seconds=1).lost_after == 300
    assert monitoring(interval_seconds=600).lost_after == 1800
    assert monitoring(interval_seconds=1, lost_after_seconds=5).lost_after == 5


# -- decide: the restart policies, their budgets and backoff -------------------------

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


@pytest.mark.parametrize("end, mtime, own", [
    (1000.0, 990.0, True),     # written before the job's end: its own run (an unwatched requeue)
    (1000.0, 1030.0, True),    # within LOG_END_SLACK: the file server's clock differs
    (1000.0, 1031.0, False),   # written after: a successor's or a replacement's
    (None, 990.0, False),      # no end known: not credited to this attempt
])
def test_own_restart_of_an_ended_attempts_shared_log(end, mtime, own):
    assert autoexp.LOG_END_SLACK == 30.0
    att = autoexp.Attempt(attempt=1, job_id="7", slurm_end=end)
    assert autoexp.own_restart(att, mtime) is own


INF = float("inf")


@pytest.mark.parametrize("status, att, monitor, steady", [
    ("active", None, None, None),                                                      # never submitted
    ("active", dict(job_id=None), None, None),                                          # submission in doubt
    ("active", dict(job_id="7", live=True, last_slurm_state="PENDING"), "running", INF),   # queued: its row tells
    ("active", dict(job_id="7", live=True, last_slurm_state="RUNNING", running_since=NOW,
                    last_log_growth_at=NOW), "running", NOW + 600),                     # stall deadline
    ("active", dict(job_id="7", live=True, last_slurm_state="COMPLETING"), "running", INF),
    # the cycle it left squeue, sacct did not answer: due again every cycle, not never
    ("active", dict(job_id="7", live=True, last_slurm_state="COMPLETING"), "unknown", None),
    ("active", dict(job_id="7", live=True, last_slurm_state="RUNNING"), "unknown", None),
    ("active", dict(job_id="7", live=True, last_slurm_state="COMPLETING", missing_since=NOW), "missing", None),
    ("active", dict(job_id="7", live=True, last_slurm_state="COMPLETED", acct_wait_since=NOW), "running", None),
    ("active", dict(job_id="7", live=True, last_slurm_state="RUNNING", cancel_requested_at=NOW), "running", None),
    ("finalized", dict(job_id="7", live=False, outcome="success"), "finished", INF),
    ("finalized", dict(job_id="7", live=True, outcome="success"), "finished", None),    # still settling in SLURM
    ("stopped", dict(job_id="7", live=False, outcome="failed"), "unknown", None),
])
def test_steady_until(status, att, monitor, steady):
    """When a job is next looked at if nothing about it changes: None is every cycle."""
    attempts = [attempt(1, submit_state=A.SUBMITTED if att.get("job_id") else A.INTENT, **att)] if att else []
    j = job(*attempts, status=status, last_monitor_state=monitor)
    assert A.steady_until(j, mon(inactivity_threshold_seconds=600)) == steady


@pytest.mark.parametrize("start, mtime, offset, again", [
    (2000.0, 1000.0, 50, True),     # started after the last write read: it ran again
    (1030.0, 1000.0, 50, False),    # within LOG_END_SLACK: clocks differ
    (1031.0, 1000.0, 50, True),
    (900.0, 1000.0, 50, False),     # the run autoexp read
    (2000.0, None, 50, False),      # never read
    (None, 1000.0, 50, False),      # no start known
    (2000.0, 1000.0, 0, False),     # nothing consumed: read from the start anyway
])
def test_ran_after_read(start, mtime, offset, again):
    att = A.Attempt(attempt=1, job_id="7", slurm_start=start, log_mtime=mtime, log_offset=offset)
    assert A.ran_after_read(att) is again


# -- per-attempt sbatch options (SPEC 5.4) ---------------------------------------------

def policies(**restart):
    """The session's policies for a restart section, validated as a config would be."""
    c = A._Checker("test")
    d = A.validate_restart(restart, A.validate_monitoring({}, c), c)
    return A.make_policies(d)


@pytest.mark.parametrize("spec, attempt, expected", [
    ("{attempt*64}G", 2, "128G"),
    ("{attempt*64}G", 3, "192G"),
    ("{attempt}", 7, "7"),
    ("48:00:00", 2, "48:00:00"),
    (["64G", "128G", "256G"], 2, "128G"),
    (["64G", "128G", "256G"], 3, "256G"),
    (["64G", "128G", "256G"], 9, "256G"),  # beyond the list: its last entry
    ([16, 32], 1, "16"),
    (True, 4, True),
    ("{attempt*2}x{attempt}", 3, "6x3"),
])
def test_attempt_value(spec, attempt, expected):
    assert A.attempt_value(spec, attempt) == expected


def ended_attempt(n, outcome, action="restart"):
    return attempt(n, job_id=str(100 + n), outcome=outcome, actions=[{"action": action, "mode": outcome}])


OOM_MEM = {"oom": {"action": "restart", "max_attempts": 5, "sbatch": {"mem": "{attempt*64}G"}},
           "timeout": {"action": "restart", "sbatch": {"time": "48:00:00"}},
           "crash": {"action": "restart", "sbatch": {"partition": ["gpu", "gpu", "big"], "exclude": "bad1"}},
           "stall": {"action": "restart"}}


@pytest.mark.parametrize("outcomes, exclude, script_exclude, expected", [
    ([], (), None, []),                                   # a first submission: the plan's own
    (["oom"], (), None, ["--mem=128G"]),
    (["oom", "oom"], (), None, ["--mem=192G"]),           # a later value of one option wins
    (["oom", "timeout"], (), None, ["--mem=128G", "--time=48:00:00"]),  # raised stays raised
    (["timeout", "oom"], (), None, ["--time=48:00:00", "--mem=192G"]),
    (["stall"], (), None, []),                            # a restart without sbatch adds nothing
    (["replaced", "success"], (), None, []),              # outcomes no policy restarts
    (["crash"], (), None, ["--partition=gpu", "--exclude=bad1"]),
    (["crash", "crash"], (), None, ["--partition=big", "--exclude=bad1"]),
    (["crash"], ("n7",), "gpu[01-02],n3", ["--partition=gpu", "--exclude=gpu[01-02],n3,bad1,n7"]),
    ([], ("n7", "n8"), None, ["--exclude=n7,n8"]),
    ([], ("n7",), "n7,n2", ["--exclude=n7,n2"]),          # merged without repeats
    ([], (), "n2", []),                                   # the script's own --exclude suffices
])
def test_attempt_sbatch_options(outcomes, exclude, script_exclude, expected):
    j = job(*[ended_attempt(i + 1, o) for i, o in enumerate(outcomes)])
    assert A.attempt_sbatch_options(j, policies(**OOM_MEM), exclude, script_exclude) == expected


def test_attempt_sbatch_options_come_only_from_restarts_that_happened():
    # oom restarted once, then its budget was used up (stop): a retry's attempt 3 keeps the
    # 128G the restart rendered for attempt 2, not the policy rendered for 3
    j = job(ended_attempt(1, "oom"), ended_attempt(2, "oom", action="stop"))
    assert A.attempt_sbatch_options(j, policies(**OOM_MEM)) == ["--mem=128G"]


def test_attempt_sbatch_options_keep_the_order_of_the_restarts_that_set_them():
    pol = policies(oom={"action": "restart", "sbatch": {"mem": ["64G", "100G"], "exclusive": True}})
    assert A.attempt_sbatch_options(job(ended_attempt(1, "oom")), pol) == ["--mem=100G", "--exclusive"]


@pytest.mark.parametrize("text, expected", [
    ("#!/bin/bash\n#SBATCH --exclude=a,b\necho\n", "a,b"),
    ("#!/bin/bash\n#SBATCH -x n1\n", "n1"),
    ("#!/bin/bash\n#SBATCH -xn1\n", "n1"),
    ("#!/bin/bash\n#SBATCH --exclude \"gpu[1-2]\"  # why\n", "gpu[1-2]"),
    ("#!/bin/bash\n#SBATCH --time=1\n", None),
    ("#!/bin/bash\necho hi\n#SBATCH --exclude=late\n", None),  # after the first command: not a directive
    ("#!/bin/bash\n# SBATCH --exclude=off\n", None),
    ("#!/bin/bash\n#SBATCH --exclud=gpu05\n", "gpu05"),     # a prefix sbatch takes
    ("#!/bin/bash\n#SBATCH --exclud gpu05\n", "gpu05"),
    ("#!/bin/bash\n#SBATCH --exclu=gpu05\n", None),         # ambiguous (exclusive): not exclude
    ("#!/bin/bash\n#SBATCH --exclusive\n", None),
])
def test_script_directive(text, expected):
    assert A.script_directive(text, "exclude", "x", "exclud") == expected


@pytest.mark.parametrize("node_list, expected", [
    ("a,b", ["a", "b"]), ("gpu[01-03,7],c", ["gpu[01-03,7]", "c"]), ("", []), (None, []), (" a , ", ["a"]),
])
def test_split_node_list(node_list, expected):
    assert A.split_node_list(node_list) == expected


# -- the session's throttle: monitoring.max_running ---------------------------------

@pytest.mark.parametrize("rows, in_doubt, live", [
    ([], [], 0),
    ([("a", "PENDING"), ("b", "RUNNING"), ("c", "COMPLETING")], [], 3),     # queued and running count
    ([("a", "COMPLETED"), ("b", "FAILED"), ("c", "CANCELLED"), ("d", "TIMEOUT")], [], 0),  # ended: free
    ([("a", "WEIRD_NEW_STATE")], [], 1),                                  # a state autoexp does not know: live
    ([("a", "SUSPENDED"), ("a", "PENDING")], [], 2),                        # a copy beside it: SLURM runs two
    ([], ["a", "b"], 2),                                                    # intents in doubt: maybe queued
    ([("a", "PENDING")], ["a"], 1),                                         # its intent is that row: once
    ([("a", "COMPLETED")], ["a"], 1),                                       # ended row, another intent in doubt
    ([("a", "RUNNING")], ["a", "a", "b"], 2),
    ([(None, "PENDING"), (None, "RUNNING")], [], 2),                        # array tasks of no job still count
])
def test_live_count(rows, in_doubt, live):
    assert A.live_count(rows, in_doubt) == live


@pytest.mark.parametrize("live, limit, free", [
    (0, None, None), (50, None, None),   # no limit
    (0, 4, 4), (3, 4, 1), (4, 4, 0),
    (6, 4, 0),                           # over it (a hand submission, a requeue): nothing new, never negative
    (0, 1, 1),
])
def test_slots_free(live, limit, free):
    assert A.slots_free(live, limit) == free


W = A.Want


@pytest.mark.parametrize("wanting, live, limit, granted, waiting", [
    # no limit: everyone, restarts first then by index
    ([W(2, False, "c"), W(0, False, "a")], 9, None, ["a", "c"], []),
    # 6 first submissions, limit 2, nothing live: the first two by index
    ([W(i, False, "j%d" % i) for i in (5, 3, 1, 0, 2, 4)], 0, 2, ["j0", "j1"], ["j2", "j3", "j4", "j5"]),
    # one slot left: a restart goes before a first submission of a smaller index
    ([W(0, False, "a"), W(3, True, "d")], 1, 2, ["d"], ["a"]),
    # restarts among themselves by index
    ([W(4, True, "e"), W(1, True, "b"), W(0, False, "a")], 0, 2, ["b", "e"], ["a"]),
    ([W(0, False, "a")], 2, 2, [], ["a"]),           # full
    ([W(0, True, "a")], 5, 2, [], ["a"]),            # over the limit: even a restart waits
    ([], 0, 2, [], []),
])
def test_grant_slots(wanting, live, limit, granted, waiting):
    g, w = A.grant_slots(wanting, live, limit)
    assert [x.name for x in g] == granted and [x.name for x in w] == waiting
# -- a job resubmitted by hand without its tag ------------------------------------------

WD = "/proj/run"
T_END = NOW - 100          # the latest attempt's end (SLURM's)


def hand(job_id, submit_at=NOW - 50, name="j", comment="", state="PENDING", user="me", workdir=WD):
    return A.QueueRow(job_id, job_id, state, "None", name, comment, A.local_time(submit_at), user, workdir)


def ended_job(**kw):
    return job(attempt(1, "5", outcome="timeout", ended_at=NOW - 90, slurm_end=T_END), **kw)


@pytest.mark.parametrize("candidate, adopted", [
    (hand("9"), True),                                      # its name, user and directory, after the end
    (hand("9", workdir="/proj/other"), False),              # another directory
    (hand("9", user="someone"), False),                     # another user
    (hand("9", workdir=None), False),                       # a line whose directory could not be told
    (hand("9", name="j2"), False),                          # another name
    (hand("9", comment="autoexp:p2:j"), False),             # another session's tag: never by name
    (hand("9", comment="my own note"), True),               # a comment of the user's is no tag
    (hand("9", state="COMPLETED"), False),                  # ended already: nothing to follow
    (hand("9", state="EXPEDITING"), True),                  # a state it does not know: may be live
    (hand("5"), False),                                     # its own attempt
])
def test_resubmits_by_hand(candidate, adopted):
    found = A.resubmits_by_hand(ended_job(), [candidate], "me", (WD, "/real/proj/run"))
    assert (found == [candidate]) is adopted


@pytest.mark.parametrize("submits, expected", [
    ([NOW - 50], "9"),                 # one, after the end
    ([T_END], "9"),                    # in the very second it ended (SLURM's whole seconds)
    ([T_END - 1], None),               # submitted before the attempt ended: not its resubmission
    ([NOW - 50, NOW - 40], None),      # two: cannot be told apart, neither is adopted
    ([T_END - 30, NOW - 40], "10"),    # one before the end, one after: the one after
])
def test_hand_resubmit_needs_exactly_one_submitted_after_the_end(submits, expected):
    rows = tuple(hand(str(9 + i), at) for i, at in enumerate(submits))
    sg = A.Sight([], [], True, by_hand=rows)
    found = A.hand_resubmit(ended_job(), sg)
    assert (found.job_id if found else None) == expected


def test_hand_resubmit_beside_one_in_a_state_autoexp_does_not_know_is_none():
    """Simulator: squeue printed one of two hand resubmissions in a state word autoexp does
    not know (a newer SLURM's); that one may be live, so neither is adopted, nor it alone."""
    unknown = hand("10", NOW - 40, state="EXPEDITING")
    rows = A.resubmits_by_hand(ended_job(), [hand("9", state="RUNNING"), unknown], "me", (WD,))
    assert [r.job_id for r in rows] == ["9", "10"]
    assert A.hand_resubmit(ended_job(), A.Sight([], [], True, by_hand=tuple(rows))) is None
    assert A.hand_resubmit(ended_job(), A.Sight([], [], True, by_hand=(unknown,))) is None
    moves = A.inactive_moves(ended_job(status=A.STOPPED), A.Sight([], [], True, by_hand=tuple(rows)), NOW, 30.0)
    assert moves == []
    att = attempt(1, "5", live=True, slurm_submit=A.local_time(NOW - 500))
    cancelled = A.Observation(A.SRC_SQUEUE, "CANCELLED", "", "0:15", "5", NOW - 400, T_END, None)
    assert A.replacement(att, cancelled, A.Sight([], [], True, by_hand=tuple(rows))) is None


def test_hand_resubmit_of_a_running_or_unsubmitted_attempt_is_none():
    sg = A.Sight([], [], True, by_hand=(hand("9"),))
    assert A.hand_resubmit(job(attempt(1, "5", live=True)), sg) is None  # not ended
    assert A.hand_resubmit(job(attempt(1)), sg) is None                  # never submitted
    # without SLURM's end, when autoexp saw it end
    j = job(attempt(1, "5", outcome="timeout", ended_at=NOW - 60))
    assert A.hand_resubmit(j, sg).job_id == "9"
    assert A.hand_resubmit(j, A.Sight([], [], True, by_hand=(hand("9", NOW - 70),))) is None


@pytest.mark.parametrize("status, sg, expected", [
    # a stopped job with one hand resubmission: reactivated with it, by hand
    (A.STOPPED, A.Sight([], [], True, by_hand=(hand("9"),)), [(A.REACTIVATE, "9", A.BY_HAND)]),
    (A.FINALIZED, A.Sight([], [], True, by_hand=(hand("9"),)), [(A.REACTIVATE, "9", A.BY_HAND)]),
    # two: none
    (A.STOPPED, A.Sight([], [], True, by_hand=(hand("9"), hand("10", NOW - 40))), []),
    # a job cancelled with autoexp never adopts one, and never cancels one for its name
    (A.CANCELLED, A.Sight([], [], True, by_hand=(hand("9"),)), []),
    # a running job with its tag comes first
    (A.STOPPED, A.Sight([row("8")], [row("8")], True, by_hand=(hand("9"),)), [(A.REACTIVATE, "8", "")]),
])
def test_inactive_moves_of_a_hand_resubmission(status, sg, expected):
    moves = A.inactive_moves(ended_job(status=status), sg, NOW, 30.0)
    assert [(m.kind, m.row.job_id, m.note) for m in moves] == expected


@pytest.mark.parametrize("by_hand, next_at, kind", [
    ((hand("9"),), NOW + 100, A.ADOPT),                      # during the backoff: followed, not doubled
    ((hand("9"),), NOW - 1, A.ADOPT),                        # backoff over: still followed
    ((hand("9"), hand("10", NOW - 40)), NOW - 1, A.SUBMIT),  # ambiguous: the policy's restart goes on
    ((hand("9", T_END - 5),), NOW - 1, A.SUBMIT),            # from before the end: not its resubmission
])
def test_restart_move_with_a_hand_resubmission(by_hand, next_at, kind):
    move = A.restart_move(ended_job(next_submit_at=next_at), A.Sight([], [], True, by_hand=by_hand), NOW)
    assert move.kind == kind
    if kind == A.ADOPT:
        assert move.row.job_id == "9" and move.note == A.BY_HAND


def test_replacement_by_a_hand_resubmission_needs_the_cancel_and_one_job():
    att = attempt(1, "5", live=True, slurm_submit=A.local_time(NOW - 500))
    cancelled = A.Observation(A.SRC_SQUEUE, "CANCELLED", "", "0:15", "5", NOW - 400, T_END, None)
    timed_out = cancelled._replace(state="TIMEOUT")
    one = A.Sight([], [], True, by_hand=(hand("9"),))
    two = A.Sight([], [], True, by_hand=(hand("9"), hand("10", NOW - 40)))
    early = A.Sight([], [], True, by_hand=(hand("9", T_END - 5),))
    assert A.replacement(att, cancelled, one).job_id == "9"
    assert A.replacement(att, cancelled, two) is None
    assert A.replacement(att, cancelled, early) is None
    assert A.replacement(att, timed_out, one) is None      # an end of its own: decided by its policy


# -- retry ------------------------------------------------------------------------------

@pytest.mark.parametrize("j, refused", [
    (ended_job(status=A.STOPPED), None),
    (ended_job(status=A.CANCELLED), None),
    (job(status=A.CANCELLED), None),                                    # cancelled before any submission
    (ended_job(), "it is active"),
    (ended_job(status=A.FINALIZED), "finalized"),
    (job(attempt(1), status=A.STOPPED), "may have queued it"),          # a submission in doubt
    (job(attempt(1, "5", live=True, cancel_requested_at=NOW), status=A.CANCELLED), "SLURM job 5 may still run"),
])
def test_retry_refusal(j, refused):
    why = A.retry_refusal(j)
    assert (why is None) if refused is None else (refused in why)


def test_counted_attempts_start_at_attempts_base():
    j = job(*[attempt(i, str(i), outcome="timeout") for i in (1, 2, 3)] + [attempt(4, "4")])
    assert [a.attempt for a in A.counted_attempts(j)] == [1, 2, 3, 4]
    j.attempts_base = 3
    assert [a.attempt for a in A.counted_attempts(j)] == [4]
    j.attempts_base = 99   # a hand-edited value past the end counts everything
    assert len(A.counted_attempts(j)) == 4




# -- pending jobs: blocked, pending_too_long ------------------------------------------

@pytest.mark.parametrize("text, name, blocked", [
    ("PartitionTimeLimit", "PartitionTimeLimit", True),
    ("PartitionNodeLimit", "PartitionNodeLimit", True),
    ("PartitionConfig", "PartitionConfig", True),   # 22.05's -c beyond every node (real capture 16)
    ("BadConstraints", "BadConstraints", True),
    ("QOSMaxWallDurationPerJobLimit", "QOSMaxWallDurationPerJobLimit", True),
    ("QOSMaxGRESPerJob", "QOSMaxGRESPerJob", True),
    ("AssocMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit", True),
    ("InvalidAccount", "InvalidAccount", True),
    ("InvalidQOS", "InvalidQOS", True),
    ("DependencyNeverSatisfied", "DependencyNeverSatisfied", True),
    # waiting its turn: never blocked
    ("Priority", "Priority", False),
    ("Resources", "Resources", False),
    ("Dependency", "Dependency", False),
    ("BeginTime", "BeginTime", False),
    ("JobHeldUser", "JobHeldUser", False),
    ("QOSMaxJobsPerUserLimit", "QOSMaxJobsPerUserLimit", False),   # per user: other jobs' end frees it
    ("AssocGrpGRES", "AssocGrpGRES", False),                       # a group limit: the same
    ("JobArrayTaskLimit", "JobArrayTaskLimit", False),
    # slurmctld's descriptions instead of a bare name (state_desc): the name at their start
    ("ReqNodeNotAvail, UnavailableNodes:node[1-4]", "ReqNodeNotAvail", False),
    ("ReqNodeNotAvail, Reserved for maintenance", "ReqNodeNotAvail", False),
    ("RaisedSignal:9(Killed)", "RaisedSignal", False),
    # free text is no reason's name, even when a blocking name is inside it
    ("Job is at or exceeds QOS normal's max TRES(cpu) minutes", "", False),
    ("Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions", "", False),
    ("PartitionTimeLimitX", "PartitionTimeLimitX", False),   # names are SLURM's, exactly
    ("partitiontimelimit", "partitiontimelimit", False),
    ("", "", False),
    ("None", "None", False),
])
def test_pending_reasons(text, name, blocked):
    assert A.reason_name(text) == name
    why = A.blocked_reason(text)
    assert (why is not None) == blocked
    if blocked:
        assert why.startswith(name + ": ") and why == "%s: %s" % (name, A.BLOCKED_REASONS[name])


def test_a_blocked_reason_in_plain_words():
    assert A.blocked_reason("PartitionTimeLimit") == (
        "PartitionTimeLimit: the job's --time is above the partition's time limit; lower it or choose another "
        "partition")
    assert A.plain_reason("Priority") == "Priority (jobs of higher priority are ahead of it)"
    assert A.plain_reason("ReqNodeNotAvail, UnavailableNodes:n1") == (
        "ReqNodeNotAvail, UnavailableNodes:n1 (nodes it needs are down, drained or reserved)")
    assert A.plain_reason("SomethingNew") == "SomethingNew"   # as SLURM said it


PMON = monitoring(interval_seconds=10, max_pending_seconds=600)


def pfacts(reason=None, looks=0, since=None, warned=False):
    return Facts(pending_reason=reason, pending_looks=looks, pending_since=since, pending_warned=warned)


@pytest.mark.parametrize("ob, facts, mon_, mode", [
    # a blocking reason seen in two answered looks in a row: blocked
    (Obs("squeue", "PENDING", "PartitionTimeLimit"), pfacts("PartitionTimeLimit", 2, 990), MON, "blocked"),
    (Obs("squeue", "PENDING", "InvalidQOS"), pfacts("InvalidQOS", 2, 990), MON, "blocked"),
    # ... one look is not enough: a reason of a passing moment
    (Obs("squeue", "PENDING", "PartitionTimeLimit"), pfacts("PartitionTimeLimit", 1, 990), MON, None),
    # transient reasons never, however long they last (without max_pending_seconds)
    (Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, 0), MON, None),
    (Obs("squeue", "PENDING", "Resources"), pfacts("Resources", 2, 0), MON, None),
    (Obs("squeue", "PENDING", "ReqNodeNotAvail, UnavailableNodes:n1"),
     pfacts("ReqNodeNotAvail, UnavailableNodes:n1", 2, 0), MON, None),
    # never from anything but an answered squeue showing it PENDING
    (Obs("unknown"), pfacts("PartitionTimeLimit", 2, 0), PMON, None),
    (Obs("sacct", "PENDING"), pfacts("PartitionTimeLimit", 2, 0), PMON, None),
    (Obs("missing", "PENDING"), pfacts("PartitionTimeLimit", 2, 0), PMON, None),
    (Obs("squeue", "RUNNING"), pfacts("PartitionTimeLimit", 0, None), PMON, None),  # the last reason stays
    # pending too long: from when this monitor first saw it pending
    (Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, 400), PMON, "pending_too_long"),
    (Obs("squeue", "PENDING", "None"), pfacts(None, 0, 400), PMON, "pending_too_long"),
    (Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, 401), PMON, None),   # 599 s
    (Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, None), PMON, None),
    (Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, 0), MON, None),       # off by default
    # blocked comes first: it says more
    (Obs("squeue", "PENDING", "PartitionTimeLimit"), pfacts("PartitionTimeLimit", 2, 0), PMON, "blocked"),
    # noted once under `ignore`: nothing more is decided while it waits
    (Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, 0, True), PMON, None),
    (Obs("squeue", "PENDING", "PartitionTimeLimit"), pfacts("PartitionTimeLimit", 2, 0, True), PMON, None),
])
def test_pending_verdicts(ob, facts, mon_, mode):
    v = A.classify(ob, facts, CLASSIFY_NOW, mon_)
    assert v.mode == mode
    if mode:
        assert v.live is True and v.monitor_state == "pending"


def test_pending_verdicts_say_why_in_words():
    v = A.classify(Obs("squeue", "PENDING", "Priority"), pfacts("Priority", 2, 100), CLASSIFY_NOW, PMON)
    assert v.reason == ("PENDING for 900s (max_pending_seconds 600); SLURM's reason: Priority (jobs of higher "
                        "priority are ahead of it)")
    v = A.classify(Obs("squeue", "PENDING", "QOSMaxGRESPerJob"), pfacts("QOSMaxGRESPerJob", 2, 999),
                   CLASSIFY_NOW, PMON)
    assert v.reason == A.blocked_reason("QOSMaxGRESPerJob")


@pytest.mark.parametrize("before, ob, after", [
    # (reason, looks, since) before and after one observation at NOW
    ((None, 0, None), Obs("squeue", "PENDING", "None"), (None, 0, NOW)),
    ((None, 0, NOW - 5), Obs("squeue", "PENDING", "PartitionTimeLimit"), ("PartitionTimeLimit", 1, NOW - 5)),
    (("PartitionTimeLimit", 1, NOW - 5), Obs("squeue", "PENDING", "PartitionTimeLimit"),
     ("PartitionTimeLimit", 2, NOW - 5)),
    (("PartitionTimeLimit", 2, NOW - 5), Obs("squeue", "PENDING", "PartitionTimeLimit"),
     ("PartitionTimeLimit", 2, NOW - 5)),                                   # capped: a steady job changes nothing
    (("Priority", 2, NOW - 5), Obs("squeue", "PENDING", "PartitionTimeLimit"), ("PartitionTimeLimit", 1, NOW - 5)),
    (("PartitionTimeLimit", 1, NOW - 5), Obs("squeue", "PENDING", "None"), ("PartitionTimeLimit", 0, NOW - 5)),
    (("PartitionTimeLimit", 0, NOW - 5), Obs("squeue", "PENDING", "PartitionTimeLimit"),
     ("PartitionTimeLimit", 1, NOW - 5)),                                   # not in a row: counted again
    (("Priority", 2, NOW - 5), Obs("squeue", "RUNNING", "None"), ("Priority", 0, None)),   # kept after the start
    (("Priority", 2, NOW - 5), Obs("sacct", "PENDING"), ("Priority", 2, NOW - 5)),         # sacct knows no reason
    (("Priority", 2, NOW - 5), Obs("unknown"), ("Priority", 2, NOW - 5)),
    ((None, 0, None), Obs("squeue", "PENDING", "x" * 500), ("x" * A.MAX_REASON_CHARS, 1, NOW)),  # bounded
])
def test_the_pending_reason_an_attempt_keeps(before, ob, after):
    att = attempt(1, "7", live=True, last_slurm_state="PENDING", pending_reason=before[0], pending_looks=before[1],
                  pending_since=before[2])
    att.note(ob, NOW)
    assert (att.pending_reason, att.pending_looks, att.pending_since) == after


PEND_POL = A.make_policies(A.validate_restart({}, {"log_events": []}, A._Checker("t")))


@pytest.mark.parametrize("mode, pol, expected", [
    ("blocked", {}, "stop"),                                          # default: cancelled and stopped
    ("pending_too_long", {}, "ignore"),                               # default: an event only
    ("pending_too_long", {"action": "restart"}, "restart"),
    ("pending_too_long", {"action": "stop"}, "stop"),
    ("blocked", {"action": "ignore"}, "ignore"),                      # it has not ended: it keeps waiting
    ("stall", {"action": "ignore"}, "stop"),                          # an ended attempt: ignore stops
])
def test_decide_pending_modes(mode, pol, expected):
    pols = A.make_policies(A.validate_restart({mode: pol} if pol else {}, {"log_events": []}, A._Checker("t")))
    assert A.decide(mode, pols, [A.Ended(mode, "|", None)]).action == expected


def test_pending_too_long_restarts_use_their_budget():
    pols = A.make_policies(A.validate_restart({"pending_too_long": {"action": "restart"}}, {"log_events": []},
                                              A._Checker("t")))
    assert A.decide("pending_too_long", pols, [A.Ended("pending_too_long", "|", None)] * 3).action == "stop"


@pytest.mark.parametrize("att, mon_, steady", [
    (dict(pending_reason="Priority", pending_looks=2, pending_since=NOW), mon(), INF),           # its row tells
    (dict(pending_reason="PartitionTimeLimit", pending_looks=1, pending_since=NOW), mon(), None),  # to confirm
    (dict(pending_reason="Priority", pending_looks=2, pending_since=NOW), mon(max_pending_seconds=60), NOW + 60),
    (dict(pending_reason="Priority", pending_since=NOW, pending_warned=True), mon(max_pending_seconds=60), INF),
    (dict(pending_reason="PartitionTimeLimit", pending_looks=2, pending_warned=True), mon(), INF),
])
def test_steady_until_of_a_pending_job(att, mon_, steady):
    a = attempt(1, "7", live=True, last_slurm_state="PENDING", **att)
    assert A.steady_until(job(a, status="active", last_monitor_state="pending"), mon_) == steady


# -- node exclusion (SPEC 5.5) -------------------------------------------------------

@pytest.mark.parametrize("text, names", [
    ("gpu01", ["gpu01"]),
    ("gpu[01-04]", ["gpu01", "gpu02", "gpu03", "gpu04"]),
    ("gpu[01-02,07],cpu1", ["gpu01", "gpu02", "gpu07", "cpu1"]),      # padding kept, items in order
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),                # groups multiply
    ("n[1-2],n1", ["n1", "n2"]),                                       # each once
    ("", []),
])
def test_expand_hostlist(text, names):
    assert A.expand_hostlist(text) == names


@pytest.mark.parametrize("text", [
    "gpu[01-04", "gpu01]", "gpu[a-b]", "gpu[4-1]", "n[[1]]", "gpu[1-99999999999]",
    "gpu$(reboot)", "n[1-300]", "n[1-20]x[1-20]",
])
def test_expand_hostlist_refuses_what_is_malformed_or_too_long(text):
    with pytest.raises(ValueError):
        A.expand_hostlist(text, limit=256)


def test_node_list_is_parsed_from_squeue_and_sacct_as_slurm_prints_it():
    fmt = A.SQUEUE_FORMAT
    rows = A.parse_squeue("1|1|RUNNING|None|2026-12-01T10:00:00|gpu[01-04]|u|/w|a|autoexp:p:a\n"
                          "2|2|PENDING|Priority|2026-12-01T10:00:00||u|/w|b|autoexp:p:b\n", fmt)
    assert [r.nodes for r in rows] == ["gpu[01-04]", None]
    # 24.11's capture 88 (Partition between End and NodeList): pending "None assigned", then the node
    fields = "JobID,JobIDRaw,JobName,State,ExitCode,Submit,Start,End,Partition,NodeList,Comment"
    acct = A.parse_sacct("47|47|namecheck2|PENDING|0:0|2026-12-01T14:49:14|Unknown|Unknown|debug|None assigned|\n"
                         "48|48|namecheck2|FAILED|2:0|2026-12-01T14:49:22|2026-12-01T14:49:23|"
                         "2026-12-01T14:49:23|debug|vm|c1\n", fields)
    assert [(r.nodes, r.comment) for r in acct] == [(None, ""), ("vm", "c1")]
    obs, _ = A.observe(None, acct[1], look(), None, NOW)
    assert obs.nodes == "vm"
    obs, _ = A.observe(rows[0], None, look(), None, NOW)
    assert obs.nodes == "gpu[01-04]"


def ne(**kw):
    d = A.validate_node_exclusion(kw, {"log_events": [{"mode": "nccl"}]}, A._Checker("test"))
    return A.make_node_exclusion(d)


def ended_on(n, nodes, outcome="node_fail", ended_at=NOW - 100, **kw):
    return attempt(n, str(n), nodes=nodes, outcome=outcome, ended_at=ended_at, **kw)


@pytest.mark.parametrize("att, cfg, names, why", [
    (ended_on(1, "gpu[01-02]"), ne(), ["gpu01", "gpu02"], "node_fail"),           # all nodes by default
    (ended_on(1, "gpu[01-02]", "timeout"), ne(), [], None),                         # not a mode of `on`
    (ended_on(1, "gpu[01-02]", "timeout"), ne(on=["timeout"]), ["gpu01", "gpu02"], "timeout"),
    (ended_on(1, "gpu[01-02]", "crash", exclude_event="nccl"), ne(), ["gpu01", "gpu02"], "log:nccl"),
    (ended_on(1, "gpu[01-02]", "crash", exclude_event="ecc", blamed_nodes=["gpu02"]), ne(), ["gpu02"], "log:ecc"),
    (ended_on(1, None), ne(), [], "node_fail"),                                     # never had nodes
    (ended_on(1, "gpu[01-"), ne(), [], "node_fail"),                                # unreadable list
    (ended_on(1, "gpu[01-02]"), ne(max_nodes=0), [], None),                         # exclusion off
])
def test_blamed_nodes(att, cfg, names, why):
    assert A.blamed_nodes(att, cfg) == (names, why)


@pytest.mark.parametrize("attempts, cfg, nodes, capped", [
    # one node failure: the next attempt avoids both nodes
    ([ended_on(1, "gpu[01-02]")], ne(), ("gpu01", "gpu02"), None),
    # a crash is the job's own fault: nothing
    ([ended_on(1, "gpu01", "crash")], ne(), (), None),
    # exclusions add up, oldest first, each node once
    ([ended_on(1, "gpu01"), ended_on(2, "gpu[01-02]")], ne(), ("gpu01", "gpu02"), None),
    # max_attempts 1: attempt 1's exclusion held for attempt 2 only, not for attempt 3
    ([ended_on(1, "gpu01"), ended_on(2, "gpu02", "timeout")], ne(max_attempts=1), (), None),
    ([ended_on(1, "gpu01"), ended_on(2, "gpu02")], ne(max_attempts=1), ("gpu02",), None),
    ([ended_on(1, "gpu01"), ended_on(2, "gpu02", "timeout")], ne(max_attempts=2), ("gpu01",), None),
    # max_hours: counted from the attempt's end
    ([ended_on(1, "gpu01", ended_at=NOW - 7200)], ne(max_hours=1), (), None),
    ([ended_on(1, "gpu01", ended_at=NOW - 1800)], ne(max_hours=1), ("gpu01",), None),
    # the cap: the oldest causes kept, the rest said and not excluded
    ([ended_on(1, "gpu[01-02]"), ended_on(2, "gpu[03-04]")], ne(max_nodes=3), ("gpu01", "gpu02", "gpu03"),
     "not excluded: gpu04"),
    ([ended_on(1, "gpu[01-02]")], ne(max_nodes=0), (), None),
    # scope session: the job's own attempts count only through the session's entries
    ([ended_on(1, "gpu01")], ne(scope="session"), (), None),
])
def test_node_exclusions_scope_job(attempts, cfg, nodes, capped):
    ex = A.node_exclusions(attempts, (), cfg, NOW)
    assert ex.nodes == nodes
    assert len(ex.notes) == len(nodes)
    assert (ex.capped is None) if capped is None else (capped in ex.capped and "max_nodes" in ex.capped)


def test_node_exclusion_notes_say_why():
    ex = A.node_exclusions([ended_on(1, "gpu01"), ended_on(2, "gpu02", "crash", exclude_event="ecc",
                                                           blamed_nodes=["gpu02"])], (), ne(), NOW)
    assert ex.notes == ("gpu01 (node_fail of #1)", "gpu02 (log:ecc of #2)")


def entry(node, age=0.0, uses=0):
    return {"node": node, "time": A.iso_time(NOW - age), "job": "k", "attempt": 1, "why": "node_fail of k #1",
            "uses": uses}


@pytest.mark.parametrize("entries, cfg, nodes, used", [
    ([entry("gpu01"), entry("gpu02")], ne(scope="session"), ("gpu01", "gpu02"), (0, 1)),
    ([entry("gpu01", uses=2), entry("gpu02", uses=1)], ne(scope="session", max_attempts=2), ("gpu02",), (1,)),
    ([entry("gpu01", age=7200), entry("gpu02", age=60)], ne(scope="session", max_hours=1), ("gpu02",), (1,)),
    ([entry("gpu01"), entry("gpu02")], ne(scope="session", max_nodes=1), ("gpu01",), (0,)),
    ([entry("gpu01")], ne(scope="job"), (), ()),                   # scope job ignores the session's
])
def test_node_exclusions_scope_session(entries, cfg, nodes, used):
    ex = A.node_exclusions([], entries, cfg, NOW)
    assert (ex.nodes, ex.used) == (nodes, used)


@pytest.mark.parametrize("entries, att, cfg, held, added, capped", [
    ([], ended_on(3, "gpu[01-02]"), ne(scope="session"), ["gpu01", "gpu02"], ["gpu01", "gpu02"], False),
    ([entry("gpu01")], ended_on(3, "gpu[01-02]"), ne(scope="session"), ["gpu01", "gpu02"], ["gpu02"], False),
    ([entry("gpu01", age=7200)], ended_on(3, "gpu02"), ne(scope="session", max_hours=1), ["gpu02"], ["gpu02"],
     False),                                                          # the expired entry is dropped
    ([entry("gpu01")], ended_on(3, "gpu[02-03]"), ne(scope="session", max_nodes=2), ["gpu01", "gpu02"],
     ["gpu02"], True),
    ([], ended_on(3, "gpu01", "crash"), ne(scope="session"), [], [], False),
])
def test_record_exclusions(entries, att, cfg, held, added, capped):
    out, new, cap = A.record_exclusions(entries, "j", att, cfg, NOW)
    assert [e["node"] for e in out] == held and new == added and bool(cap) == capped
    for e in out:
        if e["node"] in added:
            assert e["why"] == "node_fail of j #3" and e["uses"] == 0 and A.parse_iso(e["time"]) == NOW


@pytest.mark.parametrize("bad, message", [
    ({"scope": "cluster"}, "must be one of job/session"),
    ({"on": ["nosuch"]}, "'nosuch' is not a mode"),
    ({"on": "node_fail"}, "must be a list"),
    ({"max_nodes": -1}, "at least 0"),
    ({"max_nodes": 10 ** 6}, "at most 10000"),
    ({"max_hours": 0}, "greater than 0"),
    ({"max_attempts": 0}, "at least 1"),
    ({"bogus": 1}, "unknown key"),
])
def test_node_exclusion_config_is_checked(bad, message):
    with pytest.raises(A.ConfigError) as e:
        A.validate_node_exclusion(bad, {"log_events": []}, A._Checker("c.json"))
    assert message in str(e.value)


# -- where a job is, for `status` (job_phase) and its restart budget (attempt_budget) --------

@pytest.mark.parametrize("j, queued, phase", [
    (job(), False, A.PH_PENDING),                                                       # nothing submitted yet
    (job(attempt(1)), False, A.PH_PENDING),                                             # its intent, no id yet
    (job(attempt(1, "5", live=True)), False, A.PH_PENDING),                             # submitted, not seen yet
    (job(attempt(1, "5", live=True, last_slurm_state="PENDING")), False, A.PH_PENDING),
    (job(attempt(1, "5", live=True, last_slurm_state="RUNNING")), False, A.PH_RUNNING),
    (job(attempt(1, "5", live=True, last_slurm_state="REQUEUED")), False, A.PH_PENDING),  # requeued: waits again
    (job(attempt(1, "5", outcome="timeout")), False, A.PH_RESTARTING),                 # between attempts
    (job(attempt(1, "5", live=True, last_slurm_state="RUNNING", outcome="stall")), False, A.PH_RESTARTING),
    (job(attempt(1, "5", outcome="success"), status=A.FINALIZED), False, A.PH_DONE),
    (job(attempt(1, "5", outcome="crash"), status=A.STOPPED), False, A.PH_FAILED),
    (job(attempt(1, "5", outcome="cancelled"), status=A.CANCELLED), False, A.PH_CANCELLED),
    (job(attempt(1, "5", live=True, last_slurm_state="RUNNING", cancel_requested_at=NOW), status=A.CANCELLED),
     False, A.PH_CANCELLING),                                                           # scancel sent, not yet ended
    (job(attempt(1, "5", live=True, last_slurm_state="RUNNING")), True, A.PH_CANCELLING),  # request queued
    (job(attempt(1, "5", outcome="timeout")), True, A.PH_RESTARTING),                  # nothing in SLURM to cancel
])
def test_job_phase(j, queued, phase):
    assert A.job_phase(j, queued) == phase


@pytest.mark.parametrize("outcomes, base, budget", [
    ([], 0, None),
    ([None], 0, None),                                             # the first attempt runs
    (["timeout", None], 0, ("timeout", 1, 3)),
    (["timeout", "crash", "timeout", None], 0, ("timeout", 2, 3)),  # the latest ended mode's budget
    (["timeout", "timeout", None], 2, None),                        # --reset-attempts: counted from the third
    (["timeout", "timeout", "timeout", None], 2, ("timeout", 1, 3)),
    (["timeout", "replaced", None], 0, ("timeout", 1, 3)),         # a replaced attempt spends no budget
    (["success"], 0, None),                                         # finalize: no restart budget
    (["preempted", None], 0, ("preempted", 1, 10)),
])
def test_attempt_budget(outcomes, base, budget):
    j = job(*[attempt(i + 1, str(i + 1), outcome=o) for i, o in enumerate(outcomes)], attempts_base=base)
    assert A.attempt_budget(j, A.make_policies(A.DEFAULT_POLICIES)) == budget


# -- follow-ups: which a decided job gets (SPEC 5.7) ----------------------------------

def spec(name, parent="j", when=(A.FINALIZED,)):
    return A.FollowupSpec(name, 9, {}, "/p/%s.sbatch" % name, "/l/%s.log" % name, "autoexp:p1:" + name, [],
                          parent, list(when), [0])


EVAL, REPORT, OTHER = spec("j-eval"), spec("j-report", when=(A.STOPPED, A.CANCELLED)), spec("k-eval", parent="k")


@pytest.mark.parametrize("status, specs, existing, due", [
    (A.ACTIVE, [EVAL, REPORT], (), []),                      # undecided (running, or between restarts): none
    (A.FINALIZED, [EVAL, REPORT], (), ["j-eval"]),           # `when` picks by the parent's status
    (A.STOPPED, [EVAL, REPORT], (), ["j-report"]),
    (A.CANCELLED, [EVAL, REPORT], (), ["j-report"]),
    (A.FINALIZED, [EVAL], ("j-eval",), []),                  # already in the session: never a second one
    (A.FINALIZED, [EVAL, OTHER], (), ["j-eval"]),            # another job's follow-up is not this one's
    (A.STOPPED, [EVAL], (), []),                             # finalized only (the default)
    (A.FINALIZED, [], (), []),
])
def test_followups_due(status, specs, existing, due):
    j = job(attempt(1, "10", outcome="success"), status=status)
    held = dict((n, object()) for n in existing)
    assert [f.name for f in A.followups_due(j, specs, held.get)] == due


@pytest.mark.parametrize("chain, depth", [
    ([], 0), (["a"], 1), (["a", "b"], 2),
    (["x"] * 10, A.MAX_FOLLOWUP_DEPTH + 1),                 # a hand-edited loop of parents still ends
])
def test_job_depth(chain, depth):
    jobs = {}
    names = ["j"] + chain
    for name, parent in zip(names, chain + [None]):
        jobs.setdefault(name, A.Job(name=name, index=0, parent=parent))
    assert A.job_depth(jobs["j"], jobs.get) == depth
