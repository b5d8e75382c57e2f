"""When SLURM does not answer or does not know, in the controller with a fake clock and a
scripted SLURM: a failed or unparsable squeue or sacct is UNKNOWN and changes nothing (said
once, with a capped backoff, exit 1 from reconcile) while an unreadable line of someone
else's job is only skipped and said, an unknown state word is no end, a job gone from squeue
is read from sacct, lost only after the grace period (and never while sacct calls it running
or cannot be asked), and an end seen in squeue waits for sacct's record, through an outage
or a short accounting lag (timings real SLURM showed)."""

import pytest

from helpers import A, B, Harness, autoexp, controller_config as config, run_main, timeout_stall_config

pytestmark = pytest.mark.timeout(30)


def test_unknown_squeue_changes_nothing(tmp_path):
    h = Harness(tmp_path, config())
    h.slurm.set(h.live_id(A), "TIMEOUT")
    before = h.state_bytes()
    sacct_before = h.slurm.count("sacct")
    h.slurm.fail["squeue"] = 5
    for _ in range(5):
        assert h.cycle() is False
    assert h.state_bytes() == before
    assert h.slurm.count("sbatch") == 2 and h.slurm.count("sacct") == sacct_before
    warnings = [l for l in h.out if "SLURM did not answer" in l]
    assert len(warnings) == 1  # said once, not once per cycle
    assert h.cycle() is True
    assert h.slurm.count("sbatch") == 3  # the timeout is acted on once SLURM answers


def test_ten_minute_outage_takes_no_action(tmp_path):
    h = Harness(tmp_path, config(unknown_backoff_max_seconds=120))
    for n in (A, B):
        h.slurm.set(h.live_id(n), "RUNNING")
    h.cycle()
    h.slurm.fail["squeue"] = 10 ** 6
    for n in (A, B):
        h.slurm.set(h.live_id(n), "FAILED", "1:0")
    h.ctl.stop_requested = False
    start = h.clock.now
    calls = []
    orig = h.slurm.squeue

    def squeue():
        calls.append(h.clock.now)
        if h.clock.now - start > 600:
            h.ctl.stop_requested = True
        return orig()
    h.slurm.squeue = squeue
    code = h.ctl.run([h.session])
    assert code == autoexp.EXIT_INTERRUPTED
    assert h.slurm.count("sbatch") == 2 and h.slurm.count("scancel") == 0
    assert all(j.status == "active" for j in h.reload().jobs)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] == 20 and max(gaps) == 120  # backoff doubles, capped


def test_squeue_with_cluster_headers_is_unknown(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    text = "CLUSTER: alpha\n%s|%s|RUNNING|None|%s|autoexp:p1:%s\n" % (jid, jid, A, A)
    h.slurm.squeue = lambda: autoexp.SlurmClient(
        runner=lambda a, t, e: autoexp.Completed(a, 0, text, "", False), user="u").squeue()
    assert h.cycle() is False


def test_an_squeue_answer_with_a_column_not_asked_for_decides_nothing(tmp_path):
    # an squeue answer with fields autoexp did not ask for is UNKNOWN (test_parsers): the cycle
    # decides nothing then
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    jid = h.live_id(A)
    text = "%s|%s|RUNNING|None|2026-12-01T10:00:00|n1|u|/w|%s|autoexp:p1:%s|x\n" % (jid, jid, A, A)
    h.slurm.squeue = lambda: autoexp.SlurmClient(runner=lambda a, t, e: autoexp.Completed(a, 0, text, "", False),
                                                 user="u").squeue()
    assert h.cycle() is False and h.slurm.count("sbatch") == 1


class _WithSkipped(object):
    """A scripted SLURM whose squeue is a real client's (so `skipped` is its)."""

    def __init__(self, slurm, client):
        self._slurm, self._client = slurm, client

    def __getattr__(self, name):
        if name == "skipped":
            return self._client.skipped
        return getattr(self._slurm, name)


def test_a_foreign_squeue_line_that_cannot_be_read_is_skipped_and_said(tmp_path):
    # a foreign job with a newline in its name does not blind autoexp: its lines are no
    # answer about autoexp's jobs (an unreadable line with autoexp's tag is UNKNOWN: test_parsers)
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    jid = h.live_id(A)
    text = ("%s|%s|RUNNING|None|2026-12-01T10:00:00|n1|u|/w|%s|autoexp:p1:%s\n"
            "99|99|RUNNING|None|2026-12-01T10:00:00|n1|u|/w|my\nnotebook|(null)\n" % (jid, jid, A, A))
    client = autoexp.SlurmClient(runner=lambda a, t, e: autoexp.Completed(a, 0, text, "", False), user="u")
    h.slurm.squeue = client.squeue
    h.ctl.slurm = _WithSkipped(h.slurm, client)
    assert h.cycle() is True
    assert len(client.skipped) == 2
    assert any("cannot be read" in line for line in h.out)
    assert h.job(A).current.last_slurm_state == "RUNNING"


def test_an_unknown_state_word_is_unknown_not_an_end(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.slurm.set(jid, "SOMENEWSTATE")     # a state word a newer SLURM might print
    for _ in range(3):
        h.cycle(advance=600)             # nor is it a stall, however long it lasts
    att = h.job(A).current
    assert att.live and att.outcome is None and att.last_monitor_state == "unknown"
    assert h.job(A).status == "active" and h.slurm.count("sbatch") == 1 and h.slurm.count("scancel") == 0
    h.slurm.set(jid, "COMPLETED")
    h.log(A, "TRAINING FINISHED\n")
    h.cycle()
    h.cycle()
    assert h.job(A).status == "finalized"


def test_sacct_failure_is_unknown_for_missing_jobs(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.slurm.purge(h.live_id(A))
    h.slurm.fail["sacct"] = 3
    for _ in range(3):
        h.cycle(advance=100)
    att = h.job(A).current
    assert att.outcome is None and att.missing_since is None
    h.log(A, "TRAINING FINISHED\n")
    h.cycle()
    assert h.job(A).status == "finalized"


def test_a_sacct_outage_is_said_and_exits_1(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "FAILED", "1:0")
    h.slurm.fail["sacct"] = 1000
    h.clock.now += 300
    code, out = run_main(h, ["reconcile"], monkeypatch, capsys)
    assert code == 1 and "sacct did not answer" in out.err
    assert h.job(A).current.outcome is None


def test_finished_and_purged_is_read_from_sacct(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.purge(h.live_id(A))
    h.cycle()
    assert h.job(A).attempts[0].outcome == "timeout" and len(h.job(A).attempts) == 2


def test_lost_only_after_grace(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.forget(first)
    h.cycle()
    assert h.job(A).current.missing_since is not None and h.job(A).current.outcome is None
    h.cycle(advance=30)
    assert h.job(A).current.outcome is None
    h.cycle(advance=40)
    assert h.job(A).attempts[0].outcome == "lost"
    assert h.live_id(A) != first


def test_missing_with_termination_string_is_success(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.log(A, "TRAINING FINISHED\n")
    h.slurm.forget(h.live_id(A))
    h.cycle()
    assert h.job(A).status == "finalized"


def test_not_lost_while_the_lookup_by_name_fails(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.forget(first)

    def failing(names, since):
        h.slurm.calls.append(("sacct",))
        raise autoexp.SlurmUnavailable("sacct did not answer within 60s")
    h.slurm.sacct_by_name = failing
    for advance in (10, 30, 40, 100):
        h.cycle(advance=advance)
    assert h.job(A).current.outcome is None and h.slurm.count("sbatch") == 1


def test_a_job_sacct_calls_running_is_never_lost(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    h.slurm.purge(first)   # squeue no longer lists it; sacct says RUNNING (accounting lags)
    for advance in (10, 30, 40, 300):
        h.cycle(advance=advance)
    att = h.job(A).current
    assert att.outcome is None and att.last_monitor_state == "missing" and h.slurm.count("sbatch") == 1


def test_an_end_seen_in_squeue_waits_for_sacct_through_an_outage(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "FAILED", "3:0")
    h.slurm.fail["sacct"] = 3
    for _ in range(3):
        h.cycle(advance=60)
        assert h.job(A).current.outcome is None and h.slurm.count("sbatch") == 1
    h.cycle()
    att = h.job(A).attempts[0]
    assert att.outcome == "crash" and att.exit_code == "3:0"


def test_an_end_seen_in_squeue_waits_a_little_for_sacct_to_catch_up(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "FAILED", "3:0")
    h.slurm.jobs[jid]["in_sacct"] = False   # accounting lags
    h.cycle(advance=5)
    h.cycle(advance=5)
    assert h.job(A).current.outcome is None
    h.slurm.jobs[jid]["in_sacct"] = True
    h.cycle(advance=5)
    assert h.job(A).attempts[0].exit_code == "3:0"
    # and with no record at all (accounting off), it is decided after the grace
    nxt = h.live_id(A)
    h.slurm.set(nxt, "FAILED", "3:0")
    h.slurm.jobs[nxt]["in_sacct"] = False
    h.cycle(advance=5)
    assert h.job(A).current.outcome is None
    h.cycle(advance=40)
    assert h.job(A).attempts[1].outcome == "crash" and h.job(A).attempts[1].exit_code is None
