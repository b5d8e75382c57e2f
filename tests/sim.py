#!/usr/bin/env python3
"""Deterministic simulation of autoexp (issue 11): the real Controller, in-process, against a
model of SLURM, a file system of job logs and a crowd of users, in virtual time, driven by a seed.

    python3 tests/sim.py --seed N [--replay] [--shrink] [--scenario NAME ...]
    python3 tests/sim.py --seeds 0:200            (a range; prints one line per failing seed)

Same seed, same trace, byte for byte: every choice comes from random.Random(<seed-derived
string>), time is virtual (the Controller's clock, sleep and SLURM client are the simulator's),
and the trace names no temporary path, inode or pid. A failing seed prints its first broken
invariant; --shrink delta-debugs its fault list and its parameters down to a short trace and
prints the command that replays it (--jobs, --faults, --simplify select the smaller case).

What is simulated
-----------------
SLURM (class SlurmModel): job ids (MaxJobId wrap-around as a scenario), single jobs and array
tasks (their own ids once started, a --array=%N throttle), PENDING/RUNNING/SUSPENDED/COMPLETING
and every end state, requeues under the same id (SLURM's own, after a node failure or a
preemption, and `scontrol requeue` by hand), id changes (a job REVOKED and continued under a new
id), jobs vanishing from the controller, hand resubmissions with the tag, squeue with MinJobAge
purges, foreign jobs of the same user (a '|' in a name, hetjob components, another plan's tag,
an untagged job with one of our names), sacct with accounting lag, the transient "allocation"
JobName, comments stored only once a job ended, the -S window, outages, timeouts and garbled
answers (which autoexp's own parsers must refuse: the model prints text and the adapter parses it
with autoexp's parse_squeue/parse_sacct/classify_sbatch), slurmctld restarts, sbatch errors that
did or did not queue the job, timeouts, permanent refusals, a QOS submit limit, scancel errors with
or without effect. Every job runs a program (class Program) that writes its log: whole lines,
lines in pieces, ignored warnings, log events, the termination string, huge lines, silence and
hangs; logs are truncated by requeues and by copytruncate rotation.
Users (class World): the monitor process (Controller.run, with the simulator's clock and sleep),
cron `reconcile` passes, `cancel` (direct, or a request file while the monitor holds the lock),
SIGTERM, SIGKILL at random moments and at each named crash point (autoexp.CRASH_POINTS; the
hook autoexp.crash_point is replaced for the run; a crash discards every in-memory object and the
next process reloads the session from disk), monitor restarts, a consumer deleting action
payloads, a user deleting the lock file, clock skew and jumps.
Processes: each has its own StateStore (which remembers the lock it took) and Controller; they
run one at a time, a cron pass or a cancel nested in a monitor's wait or SLURM call (so it runs
beside it when the lock file was deleted). The lock is autoexp's own (fcntl on <id>.lock); since
the simulated processes are one OS process, whose POSIX locks never exclude each other, the
simulator keeps which process holds a lock on which file (by inode) and refuses a command
exactly when the kernel would. A process that gets LockLostError exits 75, as the CLI does.
Clocks: every process runs on one host (one autoexp.clock_identity()) whose wall clock is
SLURM's time plus a skew that jumps (clock_jumps), and whose monotonic clock (the Controller's
mono=) never jumps; a jump while no process runs is seen through the session's clock_ref. Job
logs are written on the compute nodes, whose clock is SLURM's: each write sets the file's mtime
to the virtual time (os.utime), as do a job's start (O_TRUNC) and a rotation.
After `fault_until` nothing fails any more (SLURM answers, no crash, programs succeed): the
session must then converge.

Invariants (checked after every step: each sbatch and scancel, each monitor cycle, each
process; squeue/sacct answers and job changes check what concerns them; the last at the end)
------------------------------------------------------------------------------------------
  one-live          At most one live SLURM job per logical job: model jobs in an active state
                    (autoexp's ACTIVE_STATES, COMPLETING included) that carry its tag, or the
                    array tag with its index. Users never make copies beside a live job (a hand
                    replacement cancels first), so every second one is autoexp's doing.
  no-rerun          No job that finished successfully runs again: autoexp never sbatches a job one
                    of whose SLURM jobs wrote the termination string (when one is configured) and
                    ended COMPLETED (unless the user ran it again by hand since, hand_untagged).
  no-healthy-cancel autoexp never scancels a foreign job, nor an active job of its own that is
                    healthy, unless the user cancelled that logical job. Unhealthy: a run of that
                    SLURM job wrote a line of a log_events mode whose policy is not `ignore` (a
                    requeue does not take it back), or it is hung and its log did not grow for
                    the inactivity threshold (growth by size, whatever the lines: a progress
                    bar's \r updates are activity, issue 11 item 1). Writing the termination
                    string is healthy. A PENDING job is healthy unless it can never start and
                    two answered squeues in a row printed its reason, or it has pended for
                    max_pending_seconds with a pending_too_long policy that acts (judged when
                    the cancel is decided: a job that started since autoexp's squeue counts as
                    pending). One that no longer runs (a runaway record, a job slurmctld
                    forgot) may go too: cancelling it harms nothing.
  journal           Every event exactly once in the journal (<state>/<session>.events.jsonl): its
                    seqs are 1..N, gapless, in order; the state file's event_seq is >= N, its
                    outbox holds every seq in N+1..event_seq, and an event in both is the same.
                    At the end N == event_seq (the outbox may still hold journaled events: they
                    leave it with the next state write, SPEC 6.2).
  state-loads       The state file, once it exists, never disappears and always loads: every
                    version is read (incrementally: StateFiles) and checked; StateStore.load runs
                    on the first three versions, every 64th, after each process and at the end,
                    and must read what the incremental reading reads.
  actions-once      Each action payload once: never two payloads for one (job, attempt, job_id,
                    action), never one back after a consumer deleted it; an action the state
                    marks written has its payload on disk (or consumed); at the end every action
                    is marked written.
  no-traceback      autoexp raises nothing (a simulated crash is the simulator's own exception).
  keeps-cycling     A running monitor calls squeue at least every max(interval,
                    unknown_backoff_max) + (jobs + 4) x 3 x (slurm_timeout + 10) + 60 seconds of
                    SLURM time (its sleep is the simulator's: the bound is virtual time).
  retries-honoured  A job stopped because sbatch kept failing had more than submit_retries
                    uncertain failures in a row (queue-limit refusals do not count, SPEC 8).
  converges         Within settle_bound() after fault_until (SLURM answers, no crash, programs
                    succeed) every job is finalized, stopped or cancelled, the session has
                    nothing left to do, its journal and payloads are in sync with the state, and
                    no SLURM job with one of its tags is active.
  no-orphan         At the end every SLURM job autoexp submitted (or the id it went on under) is
                    an attempt in the state.
  true-success      An attempt autoexp calls a success wrote the termination string (or, with none
                    configured, ended COMPLETED).
  no-leftovers      When a process takes the lock, no temporary file of a killed writer remains.
  decided-first     Every sbatch and scancel is announced on disk first: when autoexp calls
                    sbatch, the state file holds that job's intent (an attempt without id);
                    when it calls scancel, an attempt with that id and cancel_requested_at.
  lock-lost-stops   A process whose lock file was deleted or replaced (the file it locked is
                    no longer the one at the path) writes no state and runs no sbatch or
                    scancel any more: it stops (LockLostError, exit 75). With the others
                    (one-live: no double submission; journal: no doubled seq; actions-once),
                    what a deleted lock file must not break (issue 11 item 4).
  plan-refuses      (term_newline) A termination string with a newline is refused at plan
                    time (ConfigError, exit 2): it could never match a log line.
  blocked-right     (pending_reasons) A job is declared `blocked` only if its reason can never
                    clear and two answered squeues in a row printed it so (never a passing
                    reason, a hold, nor an UNKNOWN squeue); at the end a blocked attempt's SLURM
                    job never ran and ended CANCELLED, and a job whose last attempt is blocked
                    is stopped (or cancelled by the user).
  hand-adopt        (hand_untagged) A job resubmitted by hand without its tag becomes an attempt
                    only of the job it was submitted for, from the plan's folder, not of a job
                    the user cancelled, and only if no other such job submitted after the
                    previous attempt ended was live at the squeue the process decided on. Once
                    adopted it counts as the job's (one-live, converges, no-orphan).
  sbatch-options    Every sbatch carries the options its intent on disk holds (sbatch_options),
                    which are those SPEC 5.4 derives from the job's history (the oom and timeout
                    policies' `sbatch` of a third of the default mix's seeds, and one --exclude of
                    the nodes the intent excluded, SPEC 5.5), also after a crash
                    between intent and sbatch; AUTOEXP_ATTEMPT in sbatch's environment is the
                    attempt's number.
  max-running       (monitoring.max_running, in a quarter of the default mix's seeds) autoexp's
                    own single sbatch finds fewer than max_running of the session's SLURM jobs it
                    submitted live; a job SLURM requeued since that process last asked squeue is
                    not counted (SPEC 8: a requeue may put the session over the limit).

Scenario switches (--scenario NAME): KNOWN_BUGS (issue 11's items the simulator can produce),
FINDINGS (what it found beyond them) and FEATURES (situations a feature must handle:
pending_reasons, submissions kept PENDING with a passing reason, one that never clears or a
hold, with max_pending_seconds and pending_too_long ignored or restarted; hand_untagged, jobs
resubmitted by hand without the tag, once, twice, from another folder or replacing a running
one); each makes its situation happen. Once its bug is fixed
a switch joins the default mix (MIX: on in a share of the seeds run without --scenario; --no-mix
turns them all off); test_sim.py keeps the others as strict xfails with a seed that shows them.
The default mix passes. Not simulated: what happens at plan time or
in the CLI's argument handling (issue 11 items 2, 3, 5, 6, 7, 10, 11, 14, 17, 19 and parts of
21; term_newline only checks that the plan refuses item 16's string), `monitor --all` over
several sessions, rebuilding a session with --monitor-all after its state file was moved
aside, hand resubmissions during a restart backoff (a race no tool can win), two monitors at
once (with the lock file deleted, cron passes and cancels run beside a monitor, another monitor
does not), torn (short) writes.

Speed: the state folder and the logs are on /dev/shm when it exists, so the fsync of every
state write costs nothing; os.fsync is not replaced. The checker reads the state files
incrementally (StateFiles: only the batches appended since its last read) and runs
StateStore.load itself, which rebuilds the whole session, on the first versions, every 64th,
after each process and at the end (and the two readings must agree). Each seed also draws how
soon autoexp writes a new generation of job files (AUTOEXP_COMPACT_BYTES), so generations roll
often in some seeds and never in others. Set AUTOEXP_PARANOID=1 (the suite's conftest does) to
have every save check that no job changed without being touched; it costs a serialisation of
every job per save.

All of autoexp's API the simulator uses is in class Api (one place to edit on a rename).
"""

import argparse
import bisect
import contextlib
import hashlib
import heapq
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import OrderedDict
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import autoexp  # noqa: E402


# ============================================================================
# 1. The adapter: every use of autoexp's API
# ============================================================================

class Api(object):
    """The simulator's only contact with autoexp: plan, session, lock, controller, commands'
    flows (as the CLI runs them, minus argument parsing and wall clock), and the parsers that
    turn the model's text into what SlurmClient would return. Keep it small and obvious."""

    __slots__ = ()
    SlurmUnavailable = autoexp.SlurmUnavailable
    StateError = autoexp.StateError
    LockedError = autoexp.LockedError  # LockLostError too: the CLI's exit 75
    EXIT_LOCKED = autoexp.EXIT_LOCKED
    ACTIVE_STATES = autoexp.ACTIVE_STATES
    MAX_LOG_READ = autoexp.MAX_LOG_READ
    EXIT_OK = autoexp.EXIT_OK

    @staticmethod
    def plan(config, root, plan_id, now):
        """`autoexp plan`: returns (store, plan). A config the plan refuses raises ConfigError."""
        cfg = os.path.join(root, "cfg.json")
        with open(cfg, "w") as f:
            json.dump(config, f, indent=1)
        resolved = autoexp.resolve_config(autoexp.load_config_file(cfg), cfg, [])
        manifest, scripts = autoexp.build_plan(resolved, cfg, plan_id, os.path.join(root, "state"), root, now)
        plan = autoexp.load_manifest(autoexp.write_plan(manifest, scripts))
        store = autoexp.StateStore(os.path.join(root, "state"))
        store.ensure()
        return store, plan

    ConfigError = autoexp.ConfigError

    @staticmethod
    def process_store(store):
        """A process's own StateStore: it remembers the lock that process took (and checks
        it before every write, sbatch and scancel); processes share nothing in memory."""
        return autoexp.StateStore(store.root)

    @staticmethod
    def paths(store, sid):
        """state file, journal, actions folder, requests folder, lock file of a session."""
        return (store.session_path(sid), os.path.join(store.root, sid + ".events.jsonl"),
                os.path.join(store.root, "actions", sid), store.requests_dir(sid),
                os.path.join(store.root, sid + ".lock"))

    @staticmethod
    def load(store, path, with_plan=True):
        return store.load(path, with_plan=with_plan)

    @staticmethod
    def unlock(lock):
        lock.release()

    @staticmethod
    def open_for_write(store, sid, command, now):
        """What `reconcile` and `cancel` do first (StateStore.open_for_write): lock, re-read,
        catch up. Returns (session, lock)."""
        return store.open_for_write(store.session_path(sid), command, now)

    @staticmethod
    def controller(store, slurm, sink, clock, sleep, mono):
        """clock: the host's wall clock (it jumps); mono: its monotonic clock (it does not)."""
        report = autoexp.Reporter(1, sink, sink)
        return autoexp.Controller(store, slurm, report, clock=clock, sleep=sleep, mono=mono)

    @staticmethod
    def open_or_create(store, plan, command, now):
        """`run`'s submission (submit_plan) takes the lock and opens or creates the session:
        returns (session, lock, created)."""
        return store.open_or_create(plan, command, now)

    @staticmethod
    def submit(store, plan, s, created, ctl, array, now):
        """The rest of `run`'s submission once the lock is held (_submit_and_say): register
        what the session does not track, save, one cycle."""
        todo = [pj for pj in plan.jobs if created or s.job(pj.name) is None]
        if not todo:
            return
        ctl.register(s, todo, array)
        store.save(s, now)
        ctl.cycle([s])

    @staticmethod
    def monitor(ctl, s):
        return ctl.run([s])

    @staticmethod
    def cycle(ctl, s):
        return ctl.cycle([s])

    @staticmethod
    def interrupt(ctl):
        ctl.stop_requested = True  # what the SIGTERM handler does

    @staticmethod
    def reconcile_wants(store, s):
        """`reconcile --all` opens a session with work left, or whose journal or payloads
        lag behind its state (cmd_reconcile's filter)."""
        return s.active() or store.needs_sync(s)

    @staticmethod
    def cancel(ctl, s, names, now):
        """`cancel` holding the lock: mark, persist, scancel."""
        todo = autoexp.Todo()
        ctl.cancel_jobs(s, names, now, todo)
        ctl.commit(s, now, todo, True)

    @staticmethod
    def cancel_request(store, sid, names, now, n):
        """`cancel` while a monitor holds the lock: a request file it carries out."""
        folder = store.requests_dir(sid)
        autoexp.make_private_dir(folder)
        path = os.path.join(folder, "%d-%d.json" % (int(now * 1000), n))
        autoexp.atomic_write(path, autoexp.dump_json({"action": "cancel", "jobs": names,
                                                      "created_at": autoexp.iso_time(now)}))

    @staticmethod
    def parse_squeue(text, skipped):
        return autoexp.parse_squeue(text, skipped=skipped)

    @staticmethod
    def parse_sacct(text):
        return autoexp.parse_sacct(text)

    @staticmethod
    def sbatch_result(rc, out, err, timed_out=False):
        return autoexp.classify_sbatch(autoexp.Completed(["sbatch"], rc, out, err, timed_out))

    @staticmethod
    @contextlib.contextmanager
    def crash_hook(fn):
        """autoexp.crash_point is looked up by global name at each call: replace it for the run."""
        saved = autoexp.crash_point
        autoexp.crash_point = fn
        try:
            yield
        finally:
            autoexp.crash_point = saved

    # never reached here (the simulated sweeps have no `on` rules and no follow-ups, and archive
    # nothing; test_effects, test_followups, test_archive and test_crash crash there): left out,
    # so the seeds draw as before
    CRASH_POINTS = tuple(p for p in autoexp.CRASH_POINTS if not p.startswith(("effect_", "archive_"))
                         and p != "after_followup_script")

    @staticmethod
    def state_key(store, sid):
        """What changes whenever the session's state is written: its header's and current
        job files' identities and sizes."""
        path = store.session_path(sid)
        try:
            with open(path) as f:
                gen = json.load(f).get("generation", 0)
        except (IOError, OSError, ValueError):
            gen = 0
        key = []
        for p in [path] + list(store.gen_paths(sid, gen)):
            try:
                st = os.stat(p)
                key.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                key.append(None)
        return tuple(key)

    @staticmethod
    def state_doc(s):
        """A loaded session as one document (schema 1's form: the header and "jobs" in full)."""
        doc = json.loads(json.dumps(s.to_dict()))
        doc["jobs"] = json.loads(json.dumps([j.to_dict() for j in s.jobs]))
        return doc

    @staticmethod
    def journal_seq(path):
        """The last seq in a journal file (0 if none)."""
        return autoexp.last_journal_seq(path)

    JOB_FIELDS = autoexp.JOB_FIELDS
    ATTEMPT_FIELDS = autoexp.ATTEMPT_FIELDS
    BATCH_SESSION_FIELDS = autoexp.BATCH_SESSION_FIELDS


class StateFiles(object):
    """The checker's reader of a session's files (SPEC 6, schema 2), in the form
    Api.state_doc gives, but incremental: the header and the generation's snapshot when the
    header changes, else only the batches appended since the last read (a batch not yet
    complete is not there, as for StateStore.load). Each job is a plain dict with every field
    (defaults filled in). Its reading is cross-checked against StateStore.load's (check)."""

    __slots__ = ("store", "sid", "path", "head_key", "jobs", "session", "delta", "off", "batch")

    def __init__(self, store, sid):
        self.store, self.sid = store, sid
        self.path = store.session_path(sid)
        self.head_key = self.jobs = self.session = self.delta = None
        self.off = self.batch = 0

    @staticmethod
    def _fields(d, fields):
        out = {}
        for f in fields:
            v = d.get(f.name, f.default)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def job(cls, line):
        d = json.loads(line.decode("utf-8"))
        job = cls._fields(d, Api.JOB_FIELDS)
        job["attempts"] = [cls._fields(a, Api.ATTEMPT_FIELDS) for a in d.get("attempts", ())]
        cur = job["attempts"][-1] if job["attempts"] else None
        job["job_id"] = cur["job_id"] if cur is not None and cur["live"] else None
        return job

    def read(self):
        """The session now: {"event_seq", "outbox", "updated_at", "clock_ref", "jobs"}.
        Raises ValueError (or OSError) if the files do not read."""
        st = os.stat(self.path)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self.head_key:
            with open(self.path, "rb") as f:
                head = json.loads(f.read().decode("utf-8"))
            if head.get("schema_version") != 2:
                raise ValueError("header of schema %r" % head.get("schema_version"))
            snap, self.delta = self.store.gen_paths(self.sid, head["generation"])
            jobs = OrderedDict()
            with open(snap, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        raise ValueError("%s ends in the middle of a line" % os.path.basename(snap))
                    job = self.job(line[:-1])
                    jobs[job["name"]] = job
            self.jobs, self.off, self.batch, self.head_key = jobs, 0, head["batch"], key
            self.session = dict((k, head.get(k)) for k in Api.BATCH_SESSION_FIELDS)
        try:
            with open(self.delta, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except (IOError, OSError):
            data = b""
        pos = 0
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            rec = json.loads(data[pos:end].decode("utf-8"))
            lines, at = [], end + 1
            for _ in range(int(rec["jobs"])):
                end = data.find(b"\n", at)
                if end < 0:
                    break
                lines.append(data[at:end])
                at = end + 1
            if len(lines) < int(rec["jobs"]):
                break  # cut short (a writer crashed in the middle): not there
            if rec["batch"] != self.batch + 1:
                raise ValueError("batch %s follows batch %d" % (rec["batch"], self.batch))
            for k in Api.BATCH_SESSION_FIELDS:
                if k in rec["session"]:
                    self.session[k] = rec["session"][k]
            for line in lines:
                if line.startswith(b'{"batch":'):
                    raise ValueError("batch %s has fewer jobs than it says" % rec["batch"])
                job = self.job(line)
                self.jobs[job["name"]] = job
            self.batch, pos = self.batch + 1, at
        self.off += pos
        doc = dict(self.session)
        doc["outbox"] = doc["outbox"] or []
        doc["jobs"] = sorted(self.jobs.values(), key=lambda j: j["index"])
        return doc

    @staticmethod
    def differs(doc, full, journaled):
        """What differs between this reading and StateStore.load's (None: nothing). The
        loader leaves out of the outbox the events the journal has (up to seq `journaled`)."""
        for k in ("event_seq", "clock_ref"):
            if doc.get(k) != full.get(k):
                return "%s: %r / %r" % (k, doc.get(k), full.get(k))
        mine = dict((e["seq"], e) for e in doc["outbox"])
        for e in full["outbox"]:
            if mine.get(e["seq"]) != e:
                return "outbox event %s: %r / %r" % (e["seq"], mine.get(e["seq"]), e)
        theirs = set(e["seq"] for e in full["outbox"])
        left = sorted(k for k in mine if k not in theirs and k > journaled)
        if left:
            return "outbox: events %s, not in the journal, are not in StateStore.load's" % left
        if [j["name"] for j in doc["jobs"]] != [j["name"] for j in full["jobs"]]:
            return "the jobs: %s / %s" % ([j["name"] for j in doc["jobs"]], [j["name"] for j in full["jobs"]])
        for a, b in zip(doc["jobs"], full["jobs"]):
            if a != b:
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                return "job %s: %s" % (a["name"], ", ".join("%s %r / %r" % (k, a.get(k), b.get(k)) for k in keys)[:400])
        return None


# ============================================================================
# 2. Scenario: parameters, scenario switches, the fault schedule
# ============================================================================

T0 = 1780000000.0  # 2026-05-28: the virtual epoch every simulation starts at
MONO_AT_T0 = 3 * 86400.0 + 1234.5  # the monitor host's monotonic clock then (booted three days before)
MAX_JOB_ID = 67043328  # SLURM's default MaxJobId; ids wrap to FirstJobId (1)
PLAN_ID = "simplan"
TERM = "TRAINING FINISHED"

# Known bugs of issue 11: each switch makes the simulator produce the situation; off by default.
KNOWN_BUGS = OrderedDict([
    ("tqdm_progress", "item 1: programs draw tqdm progress bars (\\r updates, no newline for long)"),
    ("clock_jumps", "item 9: the monitor host's clock jumps an hour forward or backward (NTP, VM suspend)"),
    ("clock_ahead", "item 9: the monitor host's clock runs two hours ahead of SLURM's"),
    ("jobid_wrap", "item 12: SLURM job ids wrap around MaxJobId during the sweep"),
    ("squeue_extra_column", "item 13: squeue prints one extra trailing column"),
    ("throttle_overflow", "item 8: a queue limit refuses submissions more than 1,025 times"),
    ("term_at_4mib", "item 15: the termination string straddles a 4 MiB read boundary in a huge line"),
    ("rotate_tail", "item 21: copytruncate rotation right after the termination string was written"),
    ("lock_deleted", "item 4: the .lock file is deleted, so cron passes run beside the monitor"),
    ("foreign_newline", "item 18: a foreign job of the user has a newline in its name"),
    ("term_newline", "item 16: a termination string with a newline in it"),
    ("sbatch_notice", "item 20: the site's sbatch prints a notice line before the job id"),
])

# What the simulator found beyond issue 11 (each a switch, off by default, until it is fixed).
FINDINGS = OrderedDict([
    ("suspend_stall", "F1: a job SUSPENDED longer than the inactivity threshold is a stall the moment it runs again"),
    ("cron_recovery", "F2: a killed monitor is not restarted; cron `reconcile` is the only writer after a crash"),
    ("slow_accounting", "F3: accounting lags behind MinJobAge: an ended job leaves squeue before sacct has its end"),
    ("throttle_then_error", "F4: sbatch errors while a queue limit refuses submissions"),
    ("queued_last_try", "F5: a submission in doubt queued a job that ends before autoexp finds it, and the job "
                        "is no longer active (sbatch retries used up, or cancelled by the user meanwhile)"),
    ("shared_log_replace", "F6: a job with a shared log (no %j) is replaced by hand, or goes on under a new id"),
    ("unknown_state_requeue", "F7: a job SLURM requeued shows a state word autoexp does not know"),
    ("requeue_after_end", "F8: SLURM requeues a job after autoexp recorded its end, and the rerun ends before "
                          "autoexp looks again"),
    ("runaway_record", "F9: slurmctld loses a running job, and accounting keeps it RUNNING (a runaway job)"),
    ("replace_in_doubt", "F10: a job queued by an sbatch that answered with an error is replaced by hand (scancel, "
                         "sbatch again) before autoexp found it"),
    ("shared_log_rerun", "F11: a job with a shared log (no %j) runs again (its next attempt, or requeued under its "
                         "id) and ends between two looks of autoexp"),
    ("acct_down_at_end", "F12: sacct is down when jobs end (squeue shows the end, then purges the job)"),
])

# Features the simulator exercises (on in a share of the default mix's seeds; test_sim.py
# COVERED keeps a seed of each that shows it): not bugs, situations a feature must handle.
FEATURES = OrderedDict([
    ("pending_reasons", "submissions stay PENDING with a reason: a passing one (Priority, Resources, "
                        "ReqNodeNotAvail), one that can never clear (PartitionTimeLimit...), a user's hold; "
                        "monitoring.max_pending_seconds with pending_too_long ignored or restarted"),
    ("hand_untagged", "the user resubmits a job by hand without its tag: from its directory (once, or twice and "
                      "then cancels one), from another directory, or cancelling its running job first"),
])

SCENARIOS = OrderedDict(list(KNOWN_BUGS.items()) + list(FINDINGS.items()) + list(FEATURES.items()))

# The default mix: each switch whose bug is fixed (test_sim.py FIXED) is on in a share of the
# seeds run without --scenario, drawn from the seed (its own stream: adding a switch here
# changes no other draw). A switch is added once its bug is fixed and it passes on a wide
# seed range; the costly ones (a 30-hour queue limit, 4 MiB lines) less often.
MIX = OrderedDict([
    ("tqdm_progress", 0.08), ("clock_jumps", 0.1), ("clock_ahead", 0.05), ("jobid_wrap", 0.05),
    ("squeue_extra_column", 0.04), ("throttle_overflow", 0.015), ("term_at_4mib", 0.02), ("lock_deleted", 0.08),
    ("foreign_newline", 0.05), ("sbatch_notice", 0.05), ("suspend_stall", 0.05), ("cron_recovery", 0.05),
    ("slow_accounting", 0.05), ("throttle_then_error", 0.04), ("queued_last_try", 0.04),
    ("unknown_state_requeue", 0.04), ("runaway_record", 0.04), ("shared_log_replace", 0.04),
    ("shared_log_rerun", 0.04), ("acct_down_at_end", 0.05), ("requeue_after_end", 0.04),
    ("replace_in_doubt", 0.04), ("rotate_tail", 0.05), ("pending_reasons", 0.12), ("hand_untagged", 0.12),
])

# Per-attempt sbatch options (SPEC 5.4) of the seeds that draw them (Params.opts_policy)
OOM_SBATCH = {"mem": "{attempt*8}G"}
TIMEOUT_TIMES = ("08:00:00", "10:00:00", "12:00:00")
# Pending reasons the model gives (SPEC 5.1): passing ones, and ones that never clear
WAITING = ("Priority", "Resources", "ReqNodeNotAvail, UnavailableNodes:node[07-09]", "QOSMaxJobsPerUserLimit")
NEVER = ("PartitionTimeLimit", "QOSMaxWallDurationPerJobLimit", "AssocMaxMemPerJob", "BadConstraints")


def draw_mix(seed):
    r = random.Random("autoexp-sim:%d:mix" % seed)
    return tuple(name for name, share in MIX.items() if r.random() < share)

# Simplifications the shrinker tries (and --simplify applies), each making a case smaller.
SIMPLIFY = ("single", "no_cron", "no_threshold", "no_foreign", "no_skew", "no_limit", "plain_log")


class Fault(NamedTuple):
    t: float        # seconds after T0
    kind: str
    job: int = -1   # logical job index, -1: none or all
    dur: float = 0.0
    arg: str = ""

    def describe(self):
        parts = ["%9.1f %s" % (self.t, self.kind)]
        if self.job >= 0:
            parts.append("job=%d" % self.job)
        if self.dur:
            parts.append("dur=%g" % self.dur)
        if self.arg:
            parts.append("arg=%s" % self.arg)
        return " ".join(parts)


# kind: (weight per hour, which jobs it needs)
FAULT_RATES = OrderedDict([
    ("squeue_down", 0.35), ("sacct_down", 0.3), ("ctld_restart", 0.08), ("sbatch_err", 0.35),
    ("scancel_err", 0.2), ("kill", 0.25), ("kill_at", 0.35), ("sigterm", 0.06), ("monitor_start", 0.1),
    ("cancel", 0.04), ("hand_replace", 0.06), ("hand_requeue", 0.08), ("hand_restart_stopped", 0.06),
    ("migrate", 0.04), ("vanish", 0.03), ("rotate", 0.1), ("truncate", 0.04), ("consume", 0.3),
    ("foreign", 0.3), ("slow_calls", 0.1),
])


def loguniform(r, lo, hi):
    return math.exp(r.uniform(math.log(lo), math.log(hi)))


def weighted(r, pairs):
    total = sum(w for _, w in pairs)
    x = r.uniform(0, total)
    for item, w in pairs:
        x -= w
        if x <= 0:
            return item
    return pairs[-1][0]


class Params(object):
    """One simulated sweep: its config, its site, its schedule's bounds."""

    __slots__ = ("seed", "n_jobs", "array", "interval", "threshold", "termination", "lost_after",
                 "shared_log", "submit_retries", "submit_backoff", "unknown_backoff_max", "slurm_timeout",
                 "crash_policy", "crash_backoff", "min_job_age", "acct_lag", "name_lag", "job_comment",
                 "max_submit", "first_id", "cron_every", "skew", "fault_until", "scenarios", "foreign_start",
                 "compact", "max_running", "max_pending", "pending_policy", "opts_policy")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.pop(k))
        assert not kw, kw

    def lost_grace(self):
        return self.lost_after if self.lost_after is not None else max(3 * self.interval, 300.0)

    def settle_bound(self):
        """How long after fault_until the session may take to converge: a hung or lingering run
        reaching its time limit (8 h), a restart's longest backoff, the lost grace, queueing,
        the quiet phase's short successful runs, and a few cycles and UNKNOWN backoffs."""
        return (8 * 3600 + 3600 + self.lost_grace() + 2 * 3600 + 1800 + 20 * self.interval
                + 2 * self.unknown_backoff_max + 1200)

    def config(self):
        mon = OrderedDict([
            ("interval_seconds", self.interval),
            ("termination_string", self.termination),
            ("inactivity_threshold_seconds", self.threshold),
            ("lost_after_seconds", self.lost_after),
            ("slurm_timeout_seconds", self.slurm_timeout),
            ("unknown_backoff_max_seconds", self.unknown_backoff_max),
            ("submit_retries", self.submit_retries),
            ("submit_backoff_seconds", self.submit_backoff),
            ("log_events", [{"name": "nccl", "pattern": "NCCL error", "mode": "crash"},
                            {"name": "nan", "pattern": "loss is nan", "mode": "diverged"},
                            {"name": "warn", "pattern": "^WARNING", "mode": "noise"}]),
        ])
        if self.max_running is not None:
            mon["max_running"] = self.max_running
        if self.max_pending is not None:
            mon["max_pending_seconds"] = self.max_pending
        restart = OrderedDict([
            ("crash", {"action": self.crash_policy, "max_attempts": 2, "backoff_seconds": self.crash_backoff}),
            ("noise", {"action": "ignore"}),
            ("timeout", {"action": "restart", "max_attempts": 3}),
        ])
        if self.pending_policy is not None:
            restart["pending_too_long"] = {"action": self.pending_policy, "max_attempts": 2}
        if self.opts_policy:
            # SPEC 5.4: the options of attempt N come from the restarts that led to it
            restart["oom"] = {"action": "restart", "max_attempts": 3, "sbatch": dict(OOM_SBATCH)}
            restart["timeout"] = {"action": "restart", "max_attempts": 3, "sbatch": {"time": list(TIMEOUT_TIMES)}}
        return OrderedDict([
            ("project", "sim"),
            ("sweep", {"i": list(range(self.n_jobs))}),
            ("job", OrderedDict([("name", "{project}-{i}"), ("command", "python3 train.py --seed {i}"),
                                 ("log", "logs/{name}.log" if self.shared_log else "logs/{name}-%j.log"),
                                 ("sbatch", {"time": "08:00:00"})])),
            ("monitoring", mon), ("restart", restart)])

    def describe(self):
        return " ".join("%s=%s" % (k, getattr(self, k)) for k in self.__slots__ if k != "scenarios") + \
            " scenarios=%s" % (",".join(self.scenarios) or "-")


class Scenario(object):
    """Parameters and the fault list, generated from the seed; --jobs/--faults/--simplify make
    a smaller case of the same seed (the shrinker's moves)."""

    __slots__ = ("params", "faults", "seed")

    def __init__(self, params, faults, seed):
        self.params, self.faults, self.seed = params, faults, seed

    @classmethod
    def generate(cls, seed, scenarios=(), mix=True):
        """scenarios: the switches to turn on; none given, the default mix (unless mix is False)."""
        r = random.Random("autoexp-sim:%d:params" % seed)
        sc = tuple(scenarios) or (draw_mix(seed) if mix else ())
        n_jobs = r.choice([1, 2, 2, 3, 3, 4, 5, 6])
        interval = r.choice([20, 30, 60, 60, 120, 300, 600])
        threshold = r.choice([None, None, 600, 1800, 3600, 3600]) if "tqdm_progress" not in sc else 1800
        if threshold is not None and threshold < interval:
            threshold = float(interval * 3)
        p = Params(
            seed=seed, n_jobs=n_jobs, array=r.random() < 0.3, interval=interval, threshold=threshold,
            termination=TERM if r.random() < 0.8 else None,
            lost_after=r.choice([None, None, None, 600, 1800]),
            shared_log=r.random() < 0.2,
            submit_retries=r.choice([0, 2, 5, 5]), submit_backoff=r.choice([0, 10, 60, 60]),
            unknown_backoff_max=r.choice([60, 600, 600]), slurm_timeout=r.choice([10, 60, 60]),
            crash_policy=r.choice(["restart", "restart", "stop"]), crash_backoff=r.choice([0, 60, 300]),
            min_job_age=r.choice([2, 10, 300, 300, 600]), acct_lag=r.choice([0.5, 3, 10, 30]),
            name_lag=r.choice([0.0, 0.0, 3.0]), job_comment=True,
            max_submit=None, first_id=r.randint(1000, 5000000),
            cron_every=r.choice([None, None, 300, 900, 3600]),
            skew=r.uniform(-30, 30), fault_until=r.choice([6, 12, 24, 36]) * 3600.0,
            scenarios=sc, foreign_start=r.randint(0, 4),
            # AUTOEXP_COMPACT_BYTES: how much the state's batches grow before a new generation
            # of job files is written (None: autoexp's default, 1 MiB); small, generations
            # roll often (state_before_rename and state_after_rename are reached every time)
            compact=random.Random("autoexp-sim:%d:store" % seed).choice([None, None, 0, 4096, 65536]),
            max_running=None, max_pending=None, pending_policy=None, opts_policy=False)
        if not scenarios:
            # monitoring.max_running in a quarter of the default mix's seeds, from a stream of its
            # own (the other draws stay what they were); a scenario switch keeps the seed it shows
            rt = random.Random("autoexp-sim:%d:max_running" % seed)
            if rt.random() < 0.25:
                p.max_running = rt.randint(1, max(1, n_jobs - 1))
            # per-attempt sbatch options (SPEC 5.4) in a third of them, from their own stream
            p.opts_policy = random.Random("autoexp-sim:%d:sbatch_options" % seed).random() < 0.33
        if "pending_reasons" in sc:
            # monitoring.max_pending_seconds and its policy, from a stream of their own
            rp = random.Random("autoexp-sim:%d:pending" % seed)
            p.max_pending = rp.choice([None, 1800.0, 3600.0, 4 * 3600.0])
            if p.max_pending is not None:
                p.pending_policy = rp.choice(["ignore", "restart", "restart"])
        if r.random() < 0.25:
            p.max_submit = r.randint(2, n_jobs + 3)
            if p.array:
                p.max_submit = max(p.max_submit, n_jobs + 2)  # an array bigger than the limit never fits
        if p.termination is None and "term_newline" in sc:
            p.termination = TERM
        if "term_newline" in sc:
            p.termination = "TRAINING\nFINISHED"
        if "jobid_wrap" in sc:
            p.first_id = MAX_JOB_ID - r.randint(2, 3 * n_jobs + 2)
        if "slow_accounting" in sc:
            p.acct_lag, p.min_job_age = r.choice([10, 30, 120]), r.choice([2, 10])
        elif p.min_job_age < 1.5 * p.acct_lag + 5:
            p.min_job_age = 300  # SLURM's default: longer than any accounting lag
        if "queued_last_try" in sc:
            p.submit_retries, p.interval = 0, max(p.interval, 300)
        if "requeue_after_end" in sc:
            p.interval = 600  # the requeued run can start and end between two cycles
        if "cron_recovery" in sc:
            p.cron_every = r.choice([300, 600])
        if "lock_deleted" in sc and not p.cron_every:
            p.cron_every = 300  # cron passes are what runs beside a monitor that lost its lock
        if "clock_ahead" in sc:
            p.skew = 2 * 3600.0
            p.min_job_age = 2
        if "throttle_overflow" in sc:
            # from the start, two hogs fill the limit for 14 hours (three for an array, which
            # needs a slot per task): over 1,025 refusals of each job (one per 20-40 s)
            p.interval, p.submit_backoff, p.fault_until = 20, 0, 16 * 3600.0
            p.max_submit = n_jobs + 2 if p.array else 2
        if "term_at_4mib" in sc or "rotate_tail" in sc or "term_newline" in sc:
            p.termination = p.termination or TERM
        faults = cls._faults(seed, p)
        if p.shared_log and "shared_log_replace" not in sc:
            faults = [f for f in faults if f.kind not in ("hand_replace", "migrate")]
        if "shared_log_replace" in sc or "shared_log_rerun" in sc:
            p.shared_log = True
        if "shared_log_rerun" in sc:
            p.interval = 600  # a short run starts and ends between two looks
        if "acct_down_at_end" in sc:
            p.termination = None  # an end is decided by sacct's record (squeue knows no exit code)
        if "replace_in_doubt" in sc:
            p.shared_log, p.max_submit, p.submit_retries = False, None, max(p.submit_retries, 2)
        if p.max_submit is not None and "throttle_then_error" not in sc:
            faults = [f for f in faults if not (f.kind == "sbatch_err" and f.arg != "permanent")]
        if "sbatch_notice" in sc:
            p.max_submit = None  # with a queue limit it shows F4 (throttle_then_error), not itself
        if "throttle_then_error" in sc and p.max_submit is None:
            p.max_submit = max(2, n_jobs // 2 + 1) if not p.array else n_jobs + 2
        return cls(p, faults, seed)

    @staticmethod
    def _faults(seed, p):
        r = random.Random("autoexp-sim:%d:faults" % seed)
        out = []
        hours = p.fault_until / 3600.0
        for kind, rate in FAULT_RATES.items():
            n = sum(1 for _ in range(int(math.ceil(hours * rate * 4))) if r.random() < 0.25)
            for _ in range(n):
                t = r.uniform(60, p.fault_until)
                job = r.randrange(p.n_jobs)
                if kind in ("squeue_down", "sacct_down"):
                    dur = loguniform(r, 20, 3 * 3600)
                    arg = r.choice(["refused", "timeout", "garbled", "truncated", "unknown_state"]
                                   if kind == "squeue_down" else ["refused", "timeout", "garbled"])
                    out.append(Fault(t, kind, -1, round(dur, 1), arg))
                elif kind == "ctld_restart":
                    out.append(Fault(t, kind, -1, round(loguniform(r, 10, 1800), 1)))
                elif kind == "sbatch_err":
                    arg = weighted(r, [("queued", 3), ("lost", 3), ("timeout_queued", 1), ("timeout_lost", 1),
                                       ("permanent", 0.2)])
                    out.append(Fault(t, kind, -1, round(loguniform(r, 10, 7200), 1), arg))
                elif kind == "scancel_err":
                    out.append(Fault(t, kind, -1, round(loguniform(r, 10, 3600), 1),
                                     r.choice(["no_effect", "with_effect", "timeout"])))
                elif kind == "kill_at":
                    out.append(Fault(t, kind, r.randint(1, 3), 0.0, r.choice(Api.CRASH_POINTS)))
                elif kind == "kill":
                    out.append(Fault(t, kind, -1, 0.0, r.choice(["any", "any", "sleep", "slurm"])))
                elif kind == "cancel":
                    out.append(Fault(t, kind, job if r.random() < 0.7 else -1))
                elif kind == "foreign":
                    out.append(Fault(t, kind, -1, round(loguniform(r, 60, 6 * 3600), 1),
                                     r.choice(["plain", "pipe", "het", "other_plan", "same_name"])))
                elif kind == "slow_calls":
                    out.append(Fault(t, kind, -1, round(loguniform(r, 60, 3600), 1)))
                elif kind == "suspend":
                    out.append(Fault(t, kind, job, round(loguniform(r, 60, 4 * 3600), 1)))
                else:
                    out.append(Fault(t, kind, job))
        if "suspend_stall" in p.scenarios:
            for _ in range(r.randint(3, 8)):
                out.append(Fault(r.uniform(600, p.fault_until), "suspend", r.randrange(p.n_jobs),
                                 round(loguniform(r, 600, 4 * 3600), 1)))
        if "clock_jumps" in p.scenarios:
            for _ in range(r.randint(2, 5)):
                t = r.uniform(600, p.fault_until)
                out.append(Fault(t, "clock_jump", -1, r.choice([-3600.0, 3600.0, -3600.0, 3600.0, -300.0, 300.0])))
                if r.random() < 0.5:
                    # the monitor dies just before: the next process sees the jump through clock_ref
                    out.append(Fault(max(60.0, t - r.uniform(1, 600)), "kill", -1, 0.0, "sleep"))
        if "lock_deleted" in p.scenarios:
            for _ in range(r.randint(3, 8)):
                out.append(Fault(r.uniform(60, p.fault_until), "lock_delete"))
        if "foreign_newline" in p.scenarios:
            # a notebook server of the user's, running for weeks
            out.append(Fault(r.uniform(60, 3600), "foreign", -1, 30 * 86400.0, "newline"))
        if {"jobid_wrap", "squeue_extra_column", "queued_last_try"} & set(p.scenarios):
            # sbatch errors that queued the job: what makes the lookup by tag matter
            for _ in range(r.randint(4, 8)):
                out.append(Fault(r.uniform(60, p.fault_until * 0.7), "sbatch_err", -1,
                                 round(loguniform(r, 600, 4 * 3600), 1), r.choice(["queued", "timeout_queued"])))
        if "shared_log_replace" in p.scenarios:
            for _ in range(r.randint(4, 8)):
                t = r.uniform(600, p.fault_until * 0.8)
                out.append(Fault(t, r.choice(["hand_replace", "migrate"]), r.randrange(p.n_jobs)))
                out.append(Fault(t + r.uniform(-300, 300), "sacct_down", -1, round(loguniform(r, 600, 4 * 3600), 1),
                                 "refused"))
        if "runaway_record" in p.scenarios:
            for _ in range(r.randint(1, 3)):
                out.append(Fault(r.uniform(600, p.fault_until * 0.8), "runaway", r.randrange(p.n_jobs)))
        if "unknown_state_requeue" in p.scenarios:
            for _ in range(r.randint(3, 6)):
                out.append(Fault(r.uniform(60, p.fault_until * 0.8), "squeue_down", -1,
                                 round(loguniform(r, 1800, 6 * 3600), 1), "unknown_state"))
        if {"cron_recovery", "slow_accounting"} & set(p.scenarios):
            # crashes right after a decision was written, or after sbatch queued the job
            point = "after_sbatch" if "slow_accounting" in p.scenarios else "state_after_rename"
            for _ in range(r.randint(6, 12)):
                out.append(Fault(r.uniform(60, p.fault_until), "kill_at", r.randint(1, 2), 0.0, point))
        if "throttle_overflow" in p.scenarios:
            for _ in range(3 if p.array else 2):
                out.append(Fault(0.0, "foreign", -1, 14 * 3600.0, "hog"))
        if "hand_untagged" in p.scenarios and not p.array:
            # resubmissions by hand without the tag (SPEC 8), from a stream of their own
            ru = random.Random("autoexp-sim:%d:untagged" % seed)
            for _ in range(ru.randint(3, 8)):
                out.append(Fault(ru.uniform(600, p.fault_until), "hand_untagged", ru.randrange(p.n_jobs), 0.0,
                                 weighted(ru, [("same", 4), ("twice", 2), ("elsewhere", 2), ("replace", 2)])))
        out.sort(key=lambda f: (f.t, f.kind, f.job))
        return out

    def smaller(self, jobs=None, keep=None, simplify=()):
        """The same seed with fewer jobs, a subset of the faults (indexes), simplifications."""
        p = Params(**dict((k, getattr(self.params, k)) for k in Params.__slots__))
        faults = list(self.faults)
        if keep is not None:
            keep = set(keep)
            faults = [f for i, f in enumerate(faults) if i in keep]
        if jobs is not None and jobs < p.n_jobs:
            p.n_jobs = jobs
            faults = [f for f in faults if f.job < jobs or f.kind in ("kill_at",) or f.job < 0]
            if p.max_submit is not None and p.array:
                p.max_submit = max(p.max_submit, jobs + 2)
        for s in simplify:
            if s == "single":
                p.array = False
            elif s == "no_cron" and "cron_recovery" not in p.scenarios:
                p.cron_every = None
            elif s == "no_threshold" and "tqdm_progress" not in p.scenarios:
                p.threshold = None
            elif s == "no_foreign":
                p.foreign_start = 0
                faults = [f for f in faults if f.kind != "foreign" or f.arg in ("hog", "newline")]
            elif s == "no_skew" and "clock_ahead" not in p.scenarios:
                p.skew = 0.0
            elif s == "no_limit" and "throttle_overflow" not in p.scenarios:
                p.max_submit = None
            elif s == "plain_log":
                p.shared_log = False
        return Scenario(p, faults, self.seed)


# ============================================================================
# 3. Programs: what each run of a job does and writes
# ============================================================================

class Program(NamedTuple):
    outcome: str      # success linger fail_after_success crash logevent diverge timeout oom node_fail preempt hang
    duration: float   # RUNNING seconds until its outcome
    period: float     # mean seconds between writes
    shape: str        # lines, partial, tqdm
    huge: bool        # writes one line of more than 4 MiB
    requeue: bool     # node_fail/preempt: SLURM requeues it under the same id
    show: float       # seconds SLURM shows the end state before requeueing it
    linger: float     # seconds it runs on after printing the termination string
    event_at: float   # logevent/diverge/hang: when (RUNNING seconds) it happens


OUTCOMES = (("success", 52), ("linger", 3), ("fail_after_success", 3), ("crash", 7), ("logevent", 6),
            ("diverge", 3), ("timeout", 6), ("oom", 3), ("node_fail", 6), ("preempt", 6), ("hang", 5))


def make_program(seed, logical, k, p, quiet, rerun=False):
    """The k-th run of logical job `logical`: drawn from its own stream, so a run does not
    change when faults elsewhere are removed (the shrinker relies on it)."""
    r = random.Random("autoexp-sim:%d:run:%d:%d" % (seed, logical, k))
    outcome = "success" if quiet else weighted(r, OUTCOMES)
    if {"unknown_state_requeue", "requeue_after_end"} & set(p.scenarios) and r.random() < (
            0.9 if "requeue_after_end" in p.scenarios else 0.5):
        outcome = r.choice(["node_fail", "preempt"])  # SLURM requeues these
    if outcome == "hang" and not p.threshold:
        outcome = "timeout"
    duration = loguniform(r, 30, 1800) if quiet else loguniform(r, 60, 6 * 3600)
    if "slow_accounting" in p.scenarios:
        duration = loguniform(r, 60, 900)  # short jobs end while a crashed monitor is away
    if "shared_log_rerun" in p.scenarios:
        duration = loguniform(r, 60, 480)  # shorter than the 600 s between two looks
    if rerun and "requeue_after_end" in p.scenarios:
        outcome, duration = "success", loguniform(r, 60, 300)  # a short rerun that succeeds
    cap = min(900.0, 0.3 * p.threshold) if p.threshold else 900.0
    period = loguniform(r, min(10.0, cap), cap)
    shape = "partial" if r.random() < 0.3 else "lines"
    if "tqdm_progress" in p.scenarios:
        shape = "tqdm"
    huge = r.random() < 0.004 or ("term_at_4mib" in p.scenarios and outcome == "success")
    requeue = r.random() < 0.5 or bool({"unknown_state_requeue", "requeue_after_end"} & set(p.scenarios))
    show = r.choice([0.0, 5.0, r.uniform(5, 30)])  # SLURM requeues within seconds
    if "requeue_after_end" in p.scenarios:
        show = r.uniform(30, 55)  # still within the 60 s backoff of node_fail and preempted
    linger = r.uniform(0, 30) if outcome != "linger" else loguniform(r, 600, 3 * 3600)
    event_at = r.uniform(0.05, 0.9) * duration
    if outcome == "hang":
        duration = event_at + p.threshold + loguniform(r, 60, 3 * 3600)  # then its time limit
    return Program(outcome, duration, period, shape, huge, requeue, show, linger, event_at)


class Run(object):
    """One start of a SLURM job: its program and what it has written so far."""

    __slots__ = ("prog", "k", "start", "last_write", "last_line", "term_written", "event_written", "hung", "ticks",
                 "pending_part", "times", "paused_at", "ended", "noted")

    def __init__(self, prog, k, start):
        self.prog, self.k, self.start = prog, k, start
        self.last_write = self.last_line = start
        self.term_written = self.event_written = self.hung = self.ended = False
        self.ticks = 0
        self.pending_part = b""
        self.times = {}  # action -> absolute virtual time it is due
        self.paused_at = None
        self.noted = False  # said that it wrote without a newline for over the threshold


# ============================================================================
# 4. The SLURM model
# ============================================================================

ACTIVE = frozenset(Api.ACTIVE_STATES)
TERMINAL_EXIT = {"COMPLETED": "0:0", "FAILED": "1:0", "TIMEOUT": "0:15", "OUT_OF_MEMORY": "0:125",
                 "NODE_FAIL": "0:0", "PREEMPTED": "0:0", "CANCELLED": "0:15", "REVOKED": "0:0"}


class MJob(object):
    """A SLURM job (or array task) in the model."""

    __slots__ = ("id", "base", "task", "raw", "name", "comment", "owner", "logical", "state", "reason",
                 "exit_code", "submit_t", "start_t", "end_t", "snaps", "out_tpl", "run", "in_squeue",
                 "gen", "acct_lag", "succeeded", "pending_cancel", "runaway", "array_key", "forgotten", "bad",
                 "successor", "requeued_t", "workdir", "hand_of", "blocked", "wait_until", "reason_looks", "pair",
                 "pend_cancel_ok")

    def __init__(self, jid, base, task, name, comment, owner, logical, t):
        self.id, self.base, self.task = jid, base, task
        self.raw = base if task is None else None
        self.name, self.comment, self.owner, self.logical = name, comment, owner, logical
        self.state, self.reason, self.exit_code = "PENDING", "Priority", "0:0"
        self.submit_t, self.start_t, self.end_t = t, None, None
        self.snaps = []  # sacct's view: sorted (time, seq, state, exit, start, end, name)
        self.out_tpl = None
        self.run = None
        self.in_squeue = True
        self.gen = 0
        self.acct_lag = 0.0
        self.succeeded = False
        self.pending_cancel = False
        self.runaway = False  # slurmctld forgot it while sacct keeps it RUNNING
        self.array_key = None
        self.forgotten = False  # gone from the controller and from accounting
        self.bad = False  # a run of it wrote a log event line (a requeue does not take that back)
        self.successor = None  # the id it goes on under, once REVOKED by an id change
        self.requeued_t = None  # when SLURM last put it back to PENDING
        self.workdir = None  # --chdir; None: the user's other jobs' folder
        self.hand_of = None  # resubmitted by hand without the tag: the logical job it is meant for
        self.blocked = False  # pending with a reason that never clears (pending_reasons)
        self.wait_until = None  # pending (a passing reason, a hold) until then
        self.reason_looks = 0  # answered squeues in a row that printed it PENDING with its blocking reason
        self.pair = None  # resubmitted twice by hand without the tag: the other one
        self.pend_cancel_ok = False  # autoexp may cancel it while PENDING (blocked, or pending too long)


class SlurmModel(object):
    """SLURM as the Controller sees it through squeue/sacct/sbatch/scancel, printed as text and
    parsed by autoexp's own parsers; plus the hand operations users and admins do."""

    __slots__ = ("w", "p", "jobs", "order", "next_id", "user", "faults", "snap_seq", "sbatch_fails",
                 "refusals", "array_running", "names", "sid", "shown_unknown")

    def __init__(self, world, params):
        self.w = world
        self.p = params
        self.jobs = OrderedDict()  # id -> MJob, in submission order
        self.order = []
        self.next_id = params.first_id
        self.user = "simuser"
        self.faults = {}  # kind -> (until, arg)
        self.snap_seq = 0
        self.sbatch_fails = {}  # logical -> consecutive uncertain sbatch failures
        self.refusals = {}  # logical -> queue-limit refusals so far
        self.shown_unknown = set()  # ids of requeued jobs squeue showed in an unknown state
        self.array_running = {}
        self.names = {}
        self.sid = PLAN_ID

    # -- ids, tags ---------------------------------------------------------------------

    def new_id(self):
        while True:
            jid = self.next_id
            self.next_id = self.next_id + 1 if self.next_id < MAX_JOB_ID else 1
            if str(jid) not in self.jobs and not any(j.base == jid for j in self._recent()):
                return jid

    def _recent(self):
        return self.order[-50:]

    def logical_of(self, comment, task):
        prefix = "autoexp:%s:" % self.sid
        if not comment.startswith(prefix):
            return None
        name = comment[len(prefix):]
        if name == "@array":
            return task
        return self.names.get(name)

    def live_for(self, logical):
        return [j for j in self.order if j.logical == logical and j.state in ACTIVE and not j.forgotten
                and not j.runaway]

    # -- lifecycle -------------------------------------------------------------------

    def snap(self, job, t=None, name=None):
        """Record what sacct will show from t + the accounting lag on."""
        self.snap_seq += 1
        rec = (self.w.t if t is None else t, self.snap_seq, job.state, job.exit_code, job.start_t, job.end_t,
               name or job.name)
        bisect.insort(job.snaps, rec)

    def create(self, base, task, name, comment, owner, out_tpl, array_key=None):
        w = self.w
        jid = str(base) if task is None else "%d_%d" % (base, task)
        job = MJob(jid, base, task, name, comment, owner, self.logical_of(comment, task), w.t)
        job.out_tpl = out_tpl
        job.array_key = array_key
        job.acct_lag = self.p.acct_lag * w.rng("lag").uniform(0.5, 1.5)
        self.jobs[jid] = job
        self.order.append(job)
        self.snap(job, name="allocation" if self.p.name_lag else None)
        if self.p.name_lag:
            self.snap(job, t=w.t + self.p.name_lag)
        w.check_one_live(job)
        self.schedule_start(job, loguniform(w.rng("pend"), 1, 3600) if owner != "foreign" else 5.0)
        if "pending_reasons" in self.p.scenarios and owner != "foreign" and w.t < w.quiet_at:
            self.pending_reason(job)
        return job

    def pending_reason(self, job):
        """pending_reasons: some submissions wait with a reason, a passing one (the job starts
        later), one that never clears (it never starts), or a user's hold (released later)."""
        w = self.w
        r = w.rng("reasons")
        if r.random() >= 0.35:
            return
        kind = weighted(r, [("waiting", 5), ("never", 2), ("held", 2)])
        if kind == "never" and "squeue_extra_column" in self.p.scenarios:
            # autoexp reads no squeue while one of its jobs is listed (with the extra column):
            # a job that never leaves the queue would hold every decision for ever
            kind = "waiting"
        if kind == "never":
            job.blocked, job.wait_until, job.reason = True, float("inf"), "None"
            # SLURM's scheduler gives the reason at its next pass
            w.at(w.t + r.uniform(1, 60), self._set_reason, job, job.gen, r.choice(NEVER))
        elif kind == "held":
            job.reason, job.wait_until = "JobHeldUser", w.t + loguniform(r, 600, 6 * 3600)
            w.at(job.wait_until, self._set_reason, job, job.gen, "Priority")
        else:
            job.reason, job.wait_until = r.choice(WAITING), w.t + loguniform(r, 600, 5 * 3600)
        w.trace("slurm", "%s %s pends: %s" % (job.id, job.name, kind if kind != "never" else "can never start"))

    def _set_reason(self, job, gen, reason):
        if job.gen == gen and job.state == "PENDING":
            job.reason = reason
            self.w.trace("slurm", "%s %s PENDING (%s)" % (job.id, job.name, reason))

    def schedule_start(self, job, delay):
        self.w.at(self.w.t + delay, self.start, job, job.gen)

    def start(self, job, gen):
        w = self.w
        if job.gen != gen or job.state != "PENDING" or job.forgotten:
            return
        if job.wait_until is not None and w.t < job.wait_until:
            if job.wait_until != float("inf"):
                self.schedule_start(job, job.wait_until - w.t + 1.0)
            return
        if job.array_key is not None:
            limit = self.array_running.get(job.array_key, (0, None))[1]
            running = sum(1 for j in self.order if j.array_key == job.array_key and j.state in ("RUNNING", "COMPLETING", "SUSPENDED"))
            if limit and running >= limit:
                self.schedule_start(job, 60.0)
                return
        if job.task is not None and job.raw is None:
            pending = [j for j in self.order if j.base == job.base and j.task is not None and j.raw is None]
            job.raw = job.base if len(pending) == 1 else self.new_id()
        job.state, job.reason, job.start_t = "RUNNING", "None", w.t
        self.snap(job)
        w.trace("slurm", "%s %s RUNNING" % (job.id, job.name))
        if job.owner == "foreign":
            return
        w.programs.begin(job)

    def end(self, job, state, exit_code=None, show=0.0):
        """The job's run ends in a terminal state (COMPLETING first for a normal exit)."""
        w = self.w
        job.gen += 1
        if job.run is not None:
            job.run.ended = True
        if job.state == "RUNNING" and state not in ("NODE_FAIL", "REVOKED") and show >= 0:
            job.state = "COMPLETING"
            job.end_t = w.t
            self.snap(job)
            w.at(w.t + w.rng("completing").uniform(0.5, 8), self._final, job, job.gen, state, exit_code)
        else:
            job.end_t = job.end_t or w.t
            self._final(job, job.gen, state, exit_code)

    def _final(self, job, gen, state, exit_code):
        w = self.w
        if job.gen != gen:
            return
        job.state = state
        job.reason = "None" if state == "COMPLETED" else ("NonZeroExitCode" if state == "FAILED" else state.title())
        job.exit_code = exit_code or TERMINAL_EXIT.get(state, "0:0")
        job.end_t = job.end_t or w.t
        job.succeeded = (state == "COMPLETED" and job.run is not None
                         and (job.run.term_written or self.p.termination is None))
        self.snap(job)
        if job.pending_cancel and self.p.name_lag:
            self.snap(job, name="allocation")
            self.snap(job, t=w.t + 2.7)
        w.trace("slurm", "%s %s %s %s" % (job.id, job.name, state, job.exit_code))
        if ("acct_down_at_end" in self.p.scenarios and job.owner == "autoexp" and w.t < w.quiet_at
                and "sacct_down" not in self.faults and w.rng("f12").random() < 0.5):
            w.apply_fault(Fault(w.t - T0, "sacct_down", -1, round(loguniform(w.rng("f12"), 300, 3600), 1), "refused"))
        w.at(w.t + self.p.min_job_age + w.rng("purge").uniform(0, 5), self.purge, job, job.gen)
        w.job_ended(job)

    def purge(self, job, gen):
        if job.gen == gen and job.state not in ACTIVE:
            job.in_squeue = False
            w = self.w
            if ("slow_accounting" in self.p.scenarios and job.owner == "autoexp" and not w.procs
                    and w.checker.in_doubt(job.logical)):
                # F3: the next autoexp looks now, while the job is in neither squeue nor
                # accounting (its record lags): a monitor started by hand, a cron pass
                w.trace("sim", "%s left squeue; its submission is in doubt on disk; accounting lags" % job.id)
                w.at(w.t + 1.0, w.start_process, "cron" if w.p.cron_every else "monitor")

    def requeue(self, job, why):
        """Back to PENDING under the same id (SLURM after a node failure or preemption, or
        `scontrol requeue`): a new run starts later and truncates its log."""
        w = self.w
        job.gen += 1
        if job.run is not None:
            job.run.ended = True
        job.state, job.reason, job.in_squeue = "PENDING", "BeginTime", True
        job.wait_until, job.reason_looks = None, 0
        job.succeeded = False
        job.requeued_t = w.t
        self.snap(job)
        w.trace("slurm", "%s %s requeued (%s)" % (job.id, job.name, why))
        w.check_one_live(job)
        wait = loguniform(w.rng("pend"), 1, 1800)
        if "requeue_after_end" in self.p.scenarios:
            wait = min(wait, 30.0)
        self.schedule_start(job, 121.0 + wait)  # a requeued job is eligible again 121 s later

    def cancel(self, job, by):
        w = self.w
        if job.state not in ACTIVE:
            return
        w.trace("slurm", "%s %s cancelled by %s" % (job.id, job.name, by))
        if job.state == "COMPLETING":
            return
        # squeue shows CANCELLED at once (capture 35b), for a running job as for a pending one
        job.pending_cancel = job.state == "PENDING"
        job.gen += 1
        if job.run is not None:
            job.run.ended = True
        job.end_t = w.t
        self._final(job, job.gen, "CANCELLED", "0:0" if job.pending_cancel else "0:15")

    # -- views -------------------------------------------------------------------

    def squeue_text(self):
        lines = []
        extra = "|N/A" if "squeue_extra_column" in self.p.scenarios else ""
        for job in self.order:
            if not job.in_squeue or job.forgotten or job.runaway:
                continue
            raw = job.raw if job.raw is not None else job.base
            state = job.state
            if (self.faults.get("squeue_down", (0, ""))[1] == "unknown_state" and job.state == "PENDING"
                    and (job.run is None or "unknown_state_requeue" in self.p.scenarios)):
                state = "EXPEDITING"  # a state word of a newer SLURM
                if job.run is not None and job.id not in self.shown_unknown:
                    self.shown_unknown.add(job.id)
                    self.w.trace("slurm", "squeue shows %s, requeued, as EXPEDITING (a state word autoexp "
                                 "does not know)" % job.id)
            nodes = "sim[1-2]" if job.run is not None and state != "PENDING" else ""  # %N: none while pending
            lines.append("%s|%s|%s|%s|%s|%s|%s|%s|%s|%s%s" % (
                job.id, raw, state, job.reason, local(job.submit_t), nodes, self.user, self.workdir_of(job), job.name,
                job.comment or "(null)", extra if job.owner != "foreign" else ""))
        return "".join(l + "\n" for l in lines)

    def acct_view(self, job, t):
        """The snapshot sacct shows at t (its lag behind the controller), or None."""
        if job.forgotten:
            return None
        q = t - job.acct_lag
        i = bisect.bisect_right(job.snaps, (q, float("inf")))
        if i == 0:
            return None
        return job.snaps[i - 1]

    def sacct_line(self, job, view, jid=None):
        _, _, state, exit_code, start, end, name = view
        if job.runaway:
            state, end = "RUNNING", None
        comment = job.comment if (state not in ACTIVE and self.p.job_comment) else ""
        if state == "CANCELLED" and job.pending_cancel:
            start_s = "None"
        else:
            start_s = local(start) if start and state not in ("PENDING",) else "Unknown"
        end_s = local(end) if end and state not in ACTIVE else "Unknown"
        shown = "CANCELLED by 4242" if state == "CANCELLED" else state
        raw = job.raw if job.raw is not None else job.base
        nodes = "sim[1-2]" if start and state != "PENDING" else "None assigned"
        ran = start and state != "PENDING"
        elapsed = int((end if end and state not in ACTIVE else self.w.t) - start) if ran else 0
        tres = "billing=4,cpu=4,gres/gpu=8,mem=8G,node=2" if ran else ""
        return "%s|%s|%s|%s|%s|%s|%s|%s|%d|%s|%s|%s|%s|%s" % (jid or job.id, raw, name, shown, exit_code,
                                                              local(job.submit_t), start_s, end_s, max(elapsed, 0),
                                                              tres, nodes, self.user, self.workdir_of(job), comment)

    @staticmethod
    def workdir_of(job):
        """The job's --chdir: autoexp's jobs run in the plan's folder (and so do the user's
        resubmissions from there); the user's other jobs (an untagged one of one of our names
        among them) elsewhere, so none is taken for a hand resubmission."""
        return job.workdir or "/home/simuser/elsewhere"

    @staticmethod
    def in_window(view, since):
        end = view[5]
        return view[2] in ACTIVE or end is None or end >= since

    def sacct_ids_text(self, ids, since):
        t = self.w.t
        since = math.floor(since)
        out = []
        for jid in ids:
            job = self.jobs.get(jid)
            if job is None:
                continue
            view = self.acct_view(job, t)
            if view is None or not self.in_window(view, since):
                continue
            out.append(self.sacct_line(job, view))
        return "".join(l + "\n" for l in out)

    def sacct_names_text(self, names, since):
        t = self.w.t
        since = math.floor(since)
        out = []
        groups = OrderedDict()
        for job in self.order:
            view = self.acct_view(job, t)
            if view is None or view[6] not in names or not self.in_window(view, since):
                continue
            if job.task is not None and view[2] == "PENDING" and job.raw is None:
                groups.setdefault((job.base, view[6:]), []).append((job, view))  # printed as a range
                continue
            out.append(self.sacct_line(job, view))
        for (base, _), members in groups.items():
            tasks = ",".join(str(j.task) for j, _ in members)
            out.append(self.sacct_line(members[0][0], members[0][1], jid="%d_[%s]" % (base, tasks)))
        return "".join(l + "\n" for l in out)

    def active_count(self):
        return sum(1 for j in self.order if j.state in ACTIVE and not j.forgotten and not j.runaway)


def local(t):
    import time as _time  # formatting only: sacct prints local time, autoexp parses it back
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.localtime(t))


class SlurmView(object):
    """The SlurmClient interface the Controller calls: user, squeue, sacct, sacct_by_name,
    sbatch, scancel. Each call takes virtual time (during which the world moves on), may be hit
    by a fault window, and is a crash opportunity before and after it takes effect."""

    __slots__ = ("w", "m", "user", "skipped")

    def __init__(self, world, model):
        self.w, self.m, self.user = world, model, model.user
        self.skipped = []  # SlurmClient's: lines of other jobs squeue printed that cannot be read

    def _latency(self, base):
        w = self.w
        slow = w.model.faults.get("slow_calls")
        return base * (20 if slow else 1) * w.rng("lat").uniform(0.5, 2.0)

    def _fail(self, what, msg, timeout):
        w = self.w
        if timeout:
            w.advance(w.p.slurm_timeout)
            raise Api.SlurmUnavailable("%s did not answer within %gs" % (what, w.p.slurm_timeout))
        raise Api.SlurmUnavailable("%s failed (exit 1): %s" % (what, msg))

    def squeue(self):
        w, m = self.w, self.m
        w.crash_opportunity("slurm", "squeue:before")
        w.note_squeue()
        down = m.faults.get("squeue_down")
        ctld = m.faults.get("ctld_restart")
        if ctld:
            w.advance(9.0)
            self._fail("squeue", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)", False)
        if down and down[1] in ("refused", "timeout"):
            w.advance(0.01)
            self._fail("squeue", "slurm_load_jobs error: Socket timed out on send/recv operation",
                       down[1] == "timeout")
        w.advance(self._latency(0.005))
        text = m.squeue_text()
        if down and down[1] == "truncated" and text:
            text = text[:max(1, len(text) * 2 // 3)]
            if text.endswith("\n"):
                text = text[:-1]
        elif down and down[1] == "garbled":
            text += "slurm_load_jobs error: Zero Bytes were transmitted or received\n"
        skipped = []
        try:
            rows = Api.parse_squeue(text, skipped)
        except ValueError as e:
            raise Api.SlurmUnavailable("squeue printed output autoexp cannot parse: %s" % e)
        self.skipped = skipped
        if "pending_reasons" in w.p.scenarios:
            self.count_looks(rows)
        w.crash_opportunity("slurm", "squeue:after")
        return rows

    def count_looks(self, rows):
        """An answered squeue: each job that can never start, printed PENDING with its reason,
        was seen so once more in a row; printed otherwise, the count starts again."""
        for row in rows:
            job = self.m.jobs.get(row.job_id)
            if job is None or not job.blocked:
                continue
            if row.state == "PENDING" and row.reason in NEVER:
                job.reason_looks += 1
            elif row.state in ACTIVE:
                job.reason_looks = 0  # (a state word autoexp does not know tells it nothing)

    def _sacct(self, render):
        w, m = self.w, self.m
        w.crash_opportunity("slurm", "sacct:before")
        down = m.faults.get("sacct_down")
        if down and down[1] in ("refused", "timeout"):
            w.advance(0.05)
            self._fail("sacct", "sacct: error: Problem talking to the database: Connection refused",
                       down[1] == "timeout")
        w.advance(self._latency(0.09))
        text = render()
        if down and down[1] == "garbled":
            text = text + "sacct: error: slurmdbd: Getting response to message type: DBD_GET_JOBS_COND\n"
        try:
            rows = Api.parse_sacct(text)
        except ValueError as e:
            raise Api.SlurmUnavailable("sacct printed output autoexp cannot parse: %s" % e)
        w.crash_opportunity("slurm", "sacct:after")
        return rows

    def sacct(self, job_ids, since):
        rows = self._sacct(lambda: self.m.sacct_ids_text(job_ids, since))
        return dict((r.job_id, r) for r in rows)

    def sacct_by_name(self, names, since):
        return self._sacct(lambda: self.m.sacct_names_text(names, since))

    def sbatch(self, script, args=(), env=None):
        w, m = self.w, self.m
        w.crash_opportunity("slurm", "sbatch:before")
        spec = sbatch_spec(script, args)
        err_fault = m.faults.get("sbatch_err")
        kind = err_fault[1] if err_fault else None
        w.advance(self._latency(0.006))
        tasks = [None]
        if spec.get("array"):
            tasks = parse_array(spec["array"])[0]
        logicals = [m.logical_of(spec.get("comment", ""), t) for t in tasks]
        w.checker.check_files()
        for lg in logicals:
            w.checker.check_announced_submit(lg)
        opts = w.checker.check_sbatch_options(logicals, spec, args, env)
        if opts:
            w.trace("call", "sbatch with %s (AUTOEXP_ATTEMPT=%s)" % (" ".join(opts), (env or {}).get("AUTOEXP_ATTEMPT")))
        if m.faults.get("ctld_restart"):
            w.advance(9.0)
            return self._result(logicals, 1, "", "sbatch: error: Batch job submission failed: Unable to contact "
                                "slurm controller (connect failure)")
        if m.p.max_submit is not None and m.active_count() + len(tasks) > m.p.max_submit:
            return self._result(logicals, 1, "", "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch "
                                "job submission failed: Job violates accounting/QOS policy (job submit limit, "
                                "user's size and/or time limits)")
        if kind == "permanent":
            return self._result(logicals, 1, "", "sbatch: error: Batch job submission failed: Invalid partition "
                                "name specified")
        if kind in ("queued", "timeout_queued") and "queued_last_try" not in m.p.scenarios and any(
                m.sbatch_fails.get(lg, 0) >= m.p.submit_retries for lg in logicals if lg is not None):
            kind = "lost" if kind == "queued" else "timeout_lost"  # F5 needs this one to have queued it
        if ("replace_in_doubt" in m.p.scenarios and kind is None and w.t < w.quiet_at
                and w.rng("f10").random() < 0.3):
            # F10: the sbatch queues the job but answers with an error, squeue goes down for a
            # while (autoexp stays in doubt), and meanwhile the user replaces the job once it runs
            kind = "queued"
            w.apply_fault(Fault(w.t - T0, "squeue_down", -1, round(loguniform(w.rng("f10"), 1800, 3 * 3600), 1),
                                "refused"))
            for lg in logicals:
                if lg is not None:
                    for after in (600.0, 1800.0, 3600.0):  # once it runs: the first of these it runs at
                        w.at(w.t + after, w.apply_fault, Fault(w.t - T0 + after, "hand_replace", lg, 0.0, "f10"))
        queued = kind in (None, "queued", "timeout_queued")
        base = None
        if queued:
            if m.p.max_running is not None and not spec.get("array"):
                w.check_max_running()
            for lg in logicals:
                w.check_no_rerun(lg)
            base = w.submit_job(spec, "autoexp")
        w.crash_opportunity("slurm", "sbatch:after")
        if kind in ("timeout_queued", "timeout_lost"):
            w.advance(w.p.slurm_timeout)
            return self._result(logicals, -9, "", "", timed_out=True)
        if kind in ("queued", "lost"):
            return self._result(logicals, 1, "", "sbatch: error: Batch job submission failed: Socket timed out "
                                "on send/recv operation")
        notice = "sbatch: notice: this cluster is busy, expect long queue times\n" if (
            "sbatch_notice" in m.p.scenarios) else ""
        return self._result(logicals, 0, notice + "%d\n" % base, "")

    def _result(self, logicals, rc, out, err, timed_out=False):
        res = Api.sbatch_result(rc, out, err, timed_out)
        m = self.m
        for lg in logicals:
            if lg is None:
                continue
            if res.outcome == "ok":
                m.sbatch_fails[lg] = 0
            elif res.outcome == "uncertain":
                m.sbatch_fails[lg] = m.sbatch_fails.get(lg, 0) + 1
            elif res.outcome == "throttled":
                n = m.refusals[lg] = m.refusals.get(lg, 0) + 1
                if n in (1025, 1026):  # issue 11 item 8: 2**refusals overflowed after about 1,025
                    self.w.trace("slurm", "logical job %d refused by the queue limit %d times" % (lg, n))
        self.w.trace("call", "sbatch -> %s %s %s" % (res.outcome, res.job_id or "-", res.message[:60]))
        return res

    def scancel(self, job_id):
        w, m = self.w, self.m
        w.crash_opportunity("slurm", "scancel:before")
        w.advance(self._latency(0.005))
        err = m.faults.get("scancel_err")
        if m.faults.get("ctld_restart"):
            w.advance(9.0)
            w.trace("call", "scancel %s -> failed (controller down)" % job_id)
            return False, "scancel: error: Kill job error on job id %s: Unable to contact slurm controller" % job_id
        kind = err[1] if err else None
        w.checker.check_files()
        w.checker.check_announced_cancel(job_id)
        for job in m.order:
            if job.id == job_id:
                w.note_pending_cancel(job)
        targets = [j for j in m.order if (j.id == job_id or (j.base == int(job_id.split("_")[0]) and "_" not in job_id
                                                                and j.task is not None)) and not j.forgotten]
        if kind != "no_effect" and kind != "timeout":
            for job in targets:
                w.check_cancel(job)
                m.cancel(job, "autoexp")
        w.crash_opportunity("slurm", "scancel:after")
        if kind == "timeout":
            w.advance(w.p.slurm_timeout)
            w.trace("call", "scancel %s -> timed out" % job_id)
            return False, "scancel did not answer in time"
        if kind:
            w.trace("call", "scancel %s -> error (%s)" % (job_id, kind))
            return False, "scancel: error: Kill job error on job id %s: Socket timed out on send/recv operation" % job_id
        w.trace("call", "scancel %s -> ok" % job_id)
        return True, ""


def sbatch_spec(script, args):
    """The options a submission sets: the script's #SBATCH directives, then the command line's."""
    opts = {}
    try:
        with open(script) as f:
            for line in f:
                if line.startswith("#SBATCH --"):
                    key, _, value = line[len("#SBATCH --"):].strip().partition("=")
                    opts[key] = value.strip('"')
    except (IOError, OSError):
        pass
    for a in args:
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            opts[key] = value
    return opts


def parse_array(spec):
    body, _, throttle = spec.partition("%")
    tasks = []
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        tasks.extend(range(int(lo), int(hi or lo) + 1))
    return tasks, (int(throttle) if throttle else None)


def expand_output(tpl, job, user):
    """SLURM's --output patterns, as slurmstepd expands them."""
    out = []
    i = 0
    while i < len(tpl):
        c = tpl[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < len(tpl) and tpl[j].isdigit():
            j += 1
        width = int(tpl[i + 1:j] or 0)
        code = tpl[j] if j < len(tpl) else ""
        value = {"j": str(job.raw), "A": str(job.base), "a": str(job.task if job.task is not None else 4294967294),
                 "x": job.name, "u": user, "%": "%"}.get(code, "")
        out.append(value.zfill(width) if width and value.isdigit() else value)
        i = j + 1
    return "".join(out)


# ============================================================================
# 5. Log writers
# ============================================================================

class Programs(object):
    """Runs each started job's program: schedules its writes and its end, truncating the log
    as SLURM does when a job starts."""

    __slots__ = ("w", "p", "runs_started")

    def __init__(self, world):
        self.w = world
        self.p = world.p
        self.runs_started = {}  # logical -> runs so far (the k of make_program)

    def begin(self, job):
        w = self.w
        # a job resubmitted by hand without the tag runs programs of its own stream
        key = job.logical if job.hand_of is None else 1000 + job.hand_of
        k = self.runs_started.get(key, 0)
        self.runs_started[key] = k + 1
        prog = make_program(w.seed, key, k, self.p, quiet=w.t - T0 >= self.p.fault_until,
                            rerun=job.run is not None)
        run = Run(prog, k, w.t)
        job.run = run
        path = self.path(job)
        try:
            with open(path, "wb"):
                pass  # SLURM opens --output with O_TRUNC when the job starts
            os.utime(path, (w.t, w.t))
        except (IOError, OSError):
            pass
        t = w.t
        run.times["tick"] = t + w.rng("tick").uniform(0.1, 1.0) * prog.period
        if prog.outcome in ("logevent", "diverge", "hang"):
            run.times["event"] = t + prog.event_at
        run.times["end"] = t + prog.duration
        w.trace("prog", "%s run %d of job %s: %s %.0fs every %.0fs %s%s%s" % (
            job.id, k, job.logical, prog.outcome, prog.duration, prog.period, prog.shape,
            " huge" if prog.huge else "", " requeue" if prog.requeue and prog.outcome in ("node_fail", "preempt") else ""))
        self.schedule(job)

    def path(self, job):
        return expand_output(job.out_tpl, job, self.w.model.user)

    def schedule(self, job):
        for action, t in sorted(job.run.times.items(), key=lambda kv: (kv[1], kv[0])):
            self.w.at(t, self.act, job, job.gen, action, t)

    def plan_action(self, job, action, t):
        job.run.times[action] = t
        self.w.at(t, self.act, job, job.gen, action, t)

    def pause(self, job):
        """SUSPENDED: nothing runs; the schedule moves on by the pause on resume."""
        job.gen += 1
        job.run.paused_at = self.w.t

    def resume(self, job):
        run = job.run
        shift = self.w.t - run.paused_at
        run.paused_at = None
        run.times = dict((a, t + shift) for a, t in run.times.items())
        run.last_write += shift  # suspended time is not silence
        run.last_line += shift
        self.schedule(job)

    def write(self, job, data):
        run = job.run
        path = self.path(job)
        try:
            with open(path, "ab") as f:
                f.write(data)
            os.utime(path, (self.w.t, self.w.t))  # written at the compute node's (SLURM's) time
        except (IOError, OSError):
            return
        t = self.w.t
        if (b"\n" not in data and self.p.threshold and t - run.last_line > self.p.threshold
                and not run.noted):
            run.noted = True  # issue 11 item 1: growth without a newline is activity too
            self.w.trace("prog", "%s writes without a newline for over the inactivity threshold" % job.id)
        run.last_write = t
        if b"\n" in data:
            run.last_line = t

    def act(self, job, gen, action, t):
        w = self.w
        if job.gen != gen or job.state != "RUNNING" or job.run is None or job.run.ended:
            return
        run, prog = job.run, job.run.prog
        if run.times.get(action) != t:
            return  # rescheduled since
        del run.times[action]
        if action == "tick":
            if not run.hung:
                self.tick(job, run, prog)
                self.plan_action(job, "tick", w.t + prog.period * w.rng("tick").uniform(0.5, 1.5))
        elif action == "event":
            if prog.outcome == "logevent":
                self.write(job, b"NCCL error: unhandled system error, NCCL version 2.18.1\n")
                run.event_written = job.bad = True
                self.plan_action(job, "end", min(run.times.get("end", w.t), w.t + w.rng("tick").uniform(1, 600)))
                run.hung = True
            elif prog.outcome == "diverge":
                self.write(job, b"step 9999 loss is nan\n")
                run.event_written = job.bad = True
            elif prog.outcome == "hang":
                run.hung = True
                w.trace("prog", "%s hangs (writes nothing more)" % job.id)
        elif action == "end":
            self.finish(job, run, prog)
        elif action == "exit":
            w.model.end(job, "FAILED" if prog.outcome == "fail_after_success" else "COMPLETED",
                        "1:0" if prog.outcome == "fail_after_success" else "0:0")

    def tick(self, job, run, prog):
        r = self.w.rng("text")
        run.ticks += 1
        if run.pending_part:
            self.write(job, run.pending_part)
            run.pending_part = b""
            return
        if prog.huge and run.ticks == 3 and "term_at_4mib" not in self.p.scenarios:
            self.write(job, b"x" * (Api.MAX_LOG_READ + 300000) + b"\n")
            return
        if prog.shape == "tqdm":
            if run.ticks % 50 == 0:
                self.write(job, b"\n")
            self.write(job, ("\r%3d%%|%s| %d/1000" % (run.ticks % 100, "#" * (run.ticks % 10), run.ticks)).encode())
            return
        lines = []
        for _ in range(r.randint(1, 3)):
            if r.random() < 0.05:
                lines.append("WARNING: dataloader worker %d is slow" % r.randint(0, 7))
            else:
                lines.append("step %d loss=%.4f lr=%.2e" % (run.ticks, r.uniform(0, 3), r.uniform(1e-5, 1e-3)))
        data = ("\n".join(lines) + "\n").encode()
        if prog.shape == "partial" and len(data) > 4:
            cut = r.randint(1, len(data) - 2)
            data, run.pending_part = data[:cut], data[cut:]
        self.write(job, data)

    def finish(self, job, run, prog):
        w = self.w
        out = prog.outcome
        if run.pending_part:
            self.write(job, run.pending_part)
            run.pending_part = b""
        if out in ("success", "linger", "fail_after_success"):
            if self.p.termination:
                if prog.huge and "term_at_4mib" in self.p.scenarios:
                    pad = Api.MAX_LOG_READ - 8
                    data = b"y" * pad + self.p.termination.encode() + b" " + b"y" * 1000 + b"\n"
                else:
                    if prog.shape == "tqdm":
                        self.write(job, b"\n")
                    data = ("%s after %d steps\n" % (self.p.termination, run.ticks)).encode()
                self.write(job, data)
                run.term_written = True
                w.trace("prog", "%s wrote the termination string" % job.id)
                if "rotate_tail" in self.p.scenarios:
                    w.programs_rotate(job, copy=True)
            run.hung = True  # nothing but its exit from here on
            self.plan_action(job, "exit", w.t + prog.linger)
        elif out == "crash" or out == "logevent":
            self.write(job, b"Traceback (most recent call last):\nRuntimeError: CUDA error: an illegal memory access\n")
            w.model.end(job, "FAILED", "1:0")
        elif out == "diverge":
            w.model.end(job, "FAILED", "2:0")
        elif out in ("timeout", "hang"):
            w.model.end(job, "TIMEOUT", "0:15")
        elif out == "oom":
            w.model.end(job, "OUT_OF_MEMORY", "0:125")
        elif out in ("node_fail", "preempt"):
            state = "NODE_FAIL" if out == "node_fail" else "PREEMPTED"
            if prog.requeue:
                job.gen += 1
                run.ended = True
                job.state = state
                job.end_t = w.t
                w.model.snap(job)
                w.trace("slurm", "%s %s %s (SLURM requeues it)" % (job.id, job.name, state))
                w.at(w.t + prog.show, self._requeue, job, job.gen)
            else:
                w.model.end(job, state)

    def _requeue(self, job, gen):
        if job.gen != gen:
            return
        w = self.w
        if (not {"requeue_after_end", "unknown_state_requeue"} & set(self.p.scenarios)
                and w.checker.end_recorded(job.id)):
            # F8: autoexp saw it end already; here SLURM gives up on it instead
            w.model._final(job, job.gen, job.state, None)
            return
        w.model.requeue(job, "by SLURM")


# ============================================================================
# 6. The world: virtual time, processes, users, faults
# ============================================================================

# Where a process must still hold its lock (checked by lock-lost-stops): each state write,
# sbatch and scancel (autoexp checks its lock right before them).
LOCKED_ACTS = frozenset(("state_before_rename", "state_before_append", "before_sbatch", "before_scancel"))


class SimCrash(BaseException):
    """The process running autoexp died (SIGKILL, power cut). BaseException: autoexp's own
    except clauses must not catch it."""


class SimStop(BaseException):
    """The simulation ends: unwind whatever runs."""


class Violation(BaseException):
    """An invariant broke: the simulation stops here."""

    def __init__(self, invariant, detail):
        BaseException.__init__(self, "%s: %s" % (invariant, detail))
        self.invariant, self.detail = invariant, detail


class Proc(object):
    """One autoexp process (monitor, cron reconcile, cancel, submit)."""

    __slots__ = ("kind", "n", "lock", "lock_key", "ctl", "last_squeue", "cycled", "started")

    def __init__(self, kind, n, t):
        self.kind, self.n, self.started = kind, n, t
        self.lock = self.lock_key = self.ctl = None
        self.last_squeue = t
        self.cycled = False


class Sink(object):
    """Reporter output, into the trace."""

    __slots__ = ("w", "buf")
    encoding = "utf-8"

    def __init__(self, world):
        self.w, self.buf = world, ""

    def write(self, text):
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.w.trace("say", line)

    def flush(self):
        pass


class Result(object):
    __slots__ = ("seed", "violation", "trace", "sim_seconds", "steps", "cycles", "digest", "stats")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def line(self):
        return "seed %d: %s (%.2f sim-days, %d steps, %d cycles)" % (
            self.seed, "ok" if self.violation is None else "FAIL %s" % self.violation,
            self.sim_seconds / 86400.0, self.steps, self.cycles)


class World(object):
    """Everything around autoexp, in one event loop of virtual time."""

    def __init__(self, scenario, root, keep_trace=True):
        self.scenario = scenario
        self.p = p = scenario.params
        self.seed = scenario.seed
        self.root = root
        self.t = T0
        self.skew = p.skew
        self.heap = []
        self.seq = 0
        self.rngs = {}
        self.trace_lines = [] if keep_trace else None
        self.digest = hashlib.sha1()
        self.steps = 0
        self.cycles = 0
        self.model = SlurmModel(self, p)
        self.slurm = SlurmView(self, self.model)
        self.programs = Programs(self)
        self.procs = []      # running processes, innermost last
        self.lock_holders = {}  # (dev, inode) of a lock file -> the process holding a lock on it
        self.lock_path = None
        self.nproc = 0
        self.armed = []      # kill faults waiting for their moment: [kind, arg, count]
        self.crash_counts = {}
        self.user_cancelled = {}  # logical -> time the user cancelled it (all: key -1)
        self.checker = Checker(self)
        self.monitor_alive = False
        self.done = False
        self.end_at = T0 + p.fault_until + p.settle_bound()
        self.quiet_at = T0 + p.fault_until
        self.store = self.plan = None
        self.sid = PLAN_ID
        self.requests = 0
        self.refused = False  # the plan was refused (term_newline): nothing ran
        # hand_untagged: the user acts on ended jobs, so the sweep is not over before then
        self.busy_until = max([T0 + f.t for f in scenario.faults if f.kind == "hand_untagged"] + [T0])

    # -- plumbing ------------------------------------------------------------------

    def rng(self, purpose):
        r = self.rngs.get(purpose)
        if r is None:
            r = self.rngs[purpose] = random.Random("autoexp-sim:%d:%s" % (self.seed, purpose))
        return r

    def trace(self, actor, text):
        line = "%10.3f %-6s %s" % (self.t - T0, actor, text.replace(self.root, "<root>"))
        self.digest.update(line.encode("utf-8", "replace") + b"\n")
        if self.trace_lines is not None:
            self.trace_lines.append(line)

    def at(self, t, fn, *args):
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn, args))

    def advance(self, dt):
        self.run_until(self.t + dt)

    def run_until(self, target):
        heap = self.heap
        while heap and heap[0][0] <= target:
            t, _, fn, args = heapq.heappop(heap)
            if t > self.t:
                self.t = t
            self.steps += 1
            fn(*args)
        if target > self.t:
            self.t = target

    def host_clock(self):
        """The monitor host's wall clock: SLURM's time, off by the skew (which jumps)."""
        return self.t + self.skew

    def mono_clock(self):
        """The monitor host's monotonic clock (time since its boot; every simulated process
        runs on that one host): it never jumps."""
        return self.t - T0 + MONO_AT_T0

    # -- crashes ---------------------------------------------------------------------

    def crash_point(self, name):
        """Replaces autoexp.crash_point during the run."""
        if name in LOCKED_ACTS:
            self.check_lock_kept(name)
        self.crash_opportunity("point", name)

    def check_lock_kept(self, what):
        """lock-lost-stops: a process whose lock file was deleted (or replaced) writes no
        state and runs no sbatch or scancel any more (issue 11 item 4)."""
        proc = self.procs[-1] if self.procs else None
        if proc is None or proc.lock is None:
            return
        try:
            there = os.stat(self.lock_path)
            there = (there.st_dev, there.st_ino)
        except OSError:
            there = None
        if there != proc.lock_key:
            self.checker.fail("lock-lost-stops", "%s #%d reaches %s, but the lock file it locked is %s" % (
                proc.kind, proc.n, what, "gone" if there is None else "another one now"))

    def crash_opportunity(self, where, name):
        if not self.armed or not self.procs:
            return
        for fault in self.armed:
            kind, arg = fault[0], fault[1]
            if kind == "kill_at":
                if where == "point" and name == arg:
                    fault[2] -= 1
                    if fault[2] <= 0:
                        self.armed.remove(fault)
                        self.kill("at crash point %s" % name)
            elif arg == "any" or arg == where or (arg == "sleep" and where == "sleep"):
                self.armed.remove(fault)
                self.kill("at %s %s" % (where, name))

    def kill(self, where):
        proc = self.procs[-1]
        self.trace("kill", "%s #%d killed %s" % (proc.kind, proc.n, where))
        raise SimCrash(where)

    # -- processes -------------------------------------------------------------------

    def lock_holder(self):
        """The process holding a lock on the file now at the lock's path. (The simulated
        processes are one OS process, whose POSIX locks never exclude each other: who holds
        which file is kept here, by inode, as the kernel would.)"""
        try:
            st = os.stat(self.lock_path)
        except OSError:
            return None
        return self.lock_holders.get((st.st_dev, st.st_ino))

    def start_process(self, kind, arg=None):
        """A command starts. If another autoexp process holds the lock, it does what the CLI
        does then: cron is skipped (exit 75), cancel queues a request, monitor refuses.
        A process whose lock was lost stops as the CLI does (exit 75)."""
        if self.done:
            return
        holder = self.lock_holder()
        if holder is not None:
            if kind == "cron":
                self.trace("cron", "reconcile: session locked by %s, skipped (exit 75)" % holder.kind)
            elif kind == "cancel":
                self.requests += 1
                names = self.cancel_names(arg)
                Api.cancel_request(self.store, self.sid, names, self.host_clock(), self.requests)
                self.trace("user", "cancel %s: session busy, request queued" % (" ".join(names) or "(all)"))
            elif kind == "monitor" and holder.kind != "monitor":
                self.at(self.t + 60, self.start_process, "monitor")
            return
        if kind == "monitor" and self.monitor_alive:
            # (with its lock file deleted a second monitor could start; not simulated: the
            # two would have to run at once, and the simulator runs one process at a time,
            # the others nested in its waits; cron passes and cancels do run beside it)
            return
        self.nproc += 1
        proc = Proc(kind, self.nproc, self.t)
        self.procs.append(proc)
        self.trace("proc", "%s #%d starts" % (kind, proc.n))
        try:
            if kind == "monitor":
                self.monitor_alive = True
                self.run_monitor(proc)
            elif kind == "cron":
                self.run_cron(proc)
            elif kind == "cancel":
                self.run_cancel(proc, arg)
        except SimCrash:
            if kind == "monitor":
                self.schedule_monitor_restart("crash")
        except (SimStop, Violation):
            raise
        except Api.LockedError as e:
            # LockLostError: the CLI prints "Error: ..." and exits 75
            self.trace("proc", "%s #%d exits %d: %s" % (kind, proc.n, Api.EXIT_LOCKED, str(e).replace(self.root, "<root>")))
            if kind == "monitor":
                self.schedule_monitor_restart("lost its lock")
        except Api.StateError as e:
            self.checker.fail("state-loads", "%s #%d: %s" % (kind, proc.n, e))
        except Exception as e:  # autoexp raised: a traceback for the user
            import traceback
            tb = traceback.format_exc().replace(self.root, "<root>")
            self.trace("proc", tb)
            self.checker.fail("no-traceback", "%s #%d: %s: %s" % (kind, proc.n, type(e).__name__, e))
        finally:
            self.procs.pop()
            if proc.lock is not None:
                self.lock_holders.pop(proc.lock_key, None)
                Api.unlock(proc.lock)
                proc.lock = None
            if kind == "monitor":
                self.monitor_alive = False
            self.trace("proc", "%s #%d ends" % (kind, proc.n))
        self.checker.check_files(full=True)
        self.maybe_done()

    def took_lock(self, proc, lock, command):
        st = os.fstat(lock.fd)
        proc.lock, proc.lock_key = lock, (st.st_dev, st.st_ino)
        self.lock_holders[proc.lock_key] = proc
        # no-leftovers: taking the lock removes what a killed writer left
        left = [n for n in os.listdir(self.store.root) if n.endswith(".tmp")]
        folder = Api.paths(self.store, self.sid)[2]
        if os.path.isdir(folder):
            left += [n for n in os.listdir(folder) if n.endswith(".tmp")]
        if left:
            self.checker.fail("no-leftovers", "temporary files left after %s took the lock: %s" % (
                command, ", ".join(sorted(left))))

    def controller(self, proc, store):
        return Api.controller(store, self.slurm, Sink(self), self.host_clock, self.sleeper(proc), self.mono_clock)

    def sleeper(self, proc):
        """The Controller's sleep (called every PAUSE_STEP of a wait: the hot path)."""
        bound = max(self.p.interval, self.p.unknown_backoff_max) + (self.p.n_jobs + 4) * 3 * (
            self.p.slurm_timeout + 10) + 60
        heap = self.heap

        def sleep(seconds):
            if proc.cycled:
                proc.cycled = False
                self.cycles += 1
                self.checker.check_files()
                self.maybe_done()
            if self.t - proc.last_squeue > bound:
                self.checker.fail("keeps-cycling", "monitor #%d has not called squeue for %.0fs (bound %.0fs)"
                                  % (proc.n, self.t - proc.last_squeue, bound))
            if self.armed:
                self.crash_opportunity("sleep", "")
            target = self.t + seconds
            if heap and heap[0][0] <= target:
                self.run_until(target)
            else:
                self.t = target
        return sleep

    def note_squeue(self):
        proc = self.procs[-1] if self.procs else None
        if proc is not None:
            proc.last_squeue = self.t
            proc.cycled = True

    def run_monitor(self, proc):
        """`run`: submit what the session does not track, then monitor, under one lock."""
        now = self.host_clock()
        store = Api.process_store(self.store)
        s, lock, created = Api.open_or_create(store, self.plan, "run", now)
        self.took_lock(proc, lock, "run")
        proc.ctl = self.controller(proc, store)
        Api.submit(store, self.plan, s, created, proc.ctl, self.p.array, now)
        self.checker.check_files()
        proc.ctl = self.controller(proc, store)
        code = Api.monitor(proc.ctl, s)
        self.trace("proc", "monitor #%d exits %d" % (proc.n, code))
        if code != Api.EXIT_OK:
            self.schedule_monitor_restart("stopped")

    def run_cron(self, proc):
        """`reconcile --all` from cron: a session with work is locked, read afresh, cycled once."""
        path = Api.paths(self.store, self.sid)[0]
        if not os.path.exists(path):
            return
        s = Api.load(self.store, path, with_plan=False)
        if not Api.reconcile_wants(self.store, s):
            return
        store = Api.process_store(self.store)
        s, lock = Api.open_for_write(store, self.sid, "reconcile", self.host_clock())
        self.took_lock(proc, lock, "reconcile")
        ok = Api.cycle(self.controller(proc, store), s)
        self.trace("cron", "reconcile pass %s" % ("ok" if ok else "UNKNOWN"))

    def cancel_names(self, arg):
        return [] if arg is None or arg < 0 else ["sim-%d" % arg]

    def run_cancel(self, proc, arg):
        path = Api.paths(self.store, self.sid)[0]
        if not os.path.exists(path):
            return
        store = Api.process_store(self.store)
        s, lock = Api.open_for_write(store, self.sid, "cancel", self.host_clock())
        self.took_lock(proc, lock, "cancel")
        Api.cancel(self.controller(proc, store), s, self.cancel_names(arg), self.host_clock())
        self.trace("user", "cancel %s done" % (" ".join(self.cancel_names(arg)) or "(all)"))

    def schedule_monitor_restart(self, why):
        """Someone notices the monitor is gone and starts it again, within minutes or hours;
        with cron_recovery nobody does: cron's reconcile passes carry on."""
        if self.done or "cron_recovery" in self.p.scenarios:
            return
        r = self.rng("restart")
        delay = loguniform(r, 60, 4 * 3600) if self.t < self.quiet_at else 60.0
        self.at(self.t + delay, self.start_process, "monitor")

    # -- the sweep -----------------------------------------------------------------

    def setup(self):
        p = self.p
        try:
            self.store, self.plan = Api.plan(p.config(), self.root, PLAN_ID, self.host_clock())
        except Api.ConfigError as e:
            if "term_newline" not in p.scenarios:
                raise
            self.trace("plan", "refused (exit 2): %s" % str(e).replace(self.root, "<root>"))
            self.refused = True
            raise SimStop()
        if "term_newline" in p.scenarios:
            self.checker.fail("plan-refuses", "a termination string with a newline in it (which can never match "
                              "a log line) was accepted at plan time")
        self.lock_path = Api.paths(self.store, self.sid)[4]
        for f in self.scenario.faults:
            if f.t <= 0:
                self.apply_fault(f)  # there before the sweep starts
        for j in self.plan.jobs:
            self.model.names[j.name] = j.index
        self.at(self.t, self.start_process, "monitor")
        for i in range(p.foreign_start):
            self.foreign(Fault(0.0, "foreign", -1, 3600.0 * (i + 1), ["plain", "pipe", "het", "other_plan",
                                                                     "same_name"][i % 5]))
        for f in self.scenario.faults:
            if f.t > 0:
                self.at(T0 + f.t, self.apply_fault, f)
        if p.cron_every:
            self.at(T0 + p.cron_every * 0.37, self.cron_tick)
        self.at(self.quiet_at, self.quiet)
        self.at(self.end_at, self.end)

    def cron_tick(self):
        self.start_process("cron")
        if not self.done:
            self.at(self.t + self.p.cron_every, self.cron_tick)

    def quiet(self):
        """From here on SLURM answers, nobody crashes: the session must converge."""
        self.trace("sim", "fault window over: SLURM answers reliably from now on")
        self.model.faults.clear()
        self.armed = []
        if "cron_recovery" in self.p.scenarios and not self.checker.session_has_work():
            return  # `status` says it is done: nobody starts a monitor
        self.start_process("monitor")

    def end(self):
        raise SimStop()

    def maybe_done(self):
        """The sweep is over once the fault window has passed, the session has nothing left
        to do, and SLURM runs none of its jobs."""
        if self.done or self.t < self.busy_until:
            return
        if self.checker.session_has_work() or not self.checker.synced():
            return
        if any(j.logical is not None and j.state in ACTIVE and not j.forgotten and not j.runaway
               for j in self.model.order):
            return
        self.done = True
        self.trace("sim", "converged")
        raise SimStop()

    def job_ended(self, job):
        if not self.procs and not self.done:
            self.maybe_done()

    # -- users, admins, faults ---------------------------------------------------------

    def submit_job(self, spec, owner, hand_of=None):
        """A submission SLURM accepted: a job, or one task per array index."""
        m = self.model
        base = m.new_id()
        name = spec.get("job-name", "sbatch")
        comment = spec.get("comment", "")
        out = spec.get("output", os.path.join(self.root, "slurm-%j.out"))
        created = []
        if spec.get("array"):
            tasks, throttle = parse_array(spec["array"])
            key = base
            m.array_running[key] = (0, throttle)
            for t in tasks:
                created.append(m.create(base, t, name, comment, owner, out, array_key=key))
        else:
            created.append(m.create(base, None, name, comment, owner, out))
        for job in created:
            job.workdir = spec.get("chdir")
            job.hand_of = hand_of
        self.trace("slurm", "submitted %d %s (%s)%s" % (base, name, owner,
                                                          " array " + spec["array"] if spec.get("array") else ""))
        return base

    def apply_fault(self, f):
        if self.done:
            return
        m = self.model
        kind = f.kind
        self.trace("fault", f.describe())
        if kind in ("squeue_down", "sacct_down", "ctld_restart", "sbatch_err", "scancel_err", "slow_calls"):
            # overlapping windows of one kind: the newer one says how, the later end wins
            until = max(self.t + f.dur, m.faults.get(kind, (0.0, ""))[0])
            m.faults[kind] = (until, f.arg)
            self.at(until, self.clear_fault, kind, until)
        elif kind == "kill":
            self.armed.append(["kill", f.arg, 1])
        elif kind == "kill_at":
            self.armed.append(["kill_at", f.arg, f.job])
        elif kind == "sigterm":
            for proc in self.procs:
                if proc.kind == "monitor" and proc.ctl is not None:
                    Api.interrupt(proc.ctl)
        elif kind == "monitor_start":
            self.start_process("monitor")
        elif kind == "cancel":
            if "queued_last_try" not in self.p.scenarios and self.checker.in_doubt(f.job):
                return  # F5: a cancel while a submission is in doubt
            self.user_cancelled.setdefault(f.job, self.t)
            self.start_process("cancel", f.job)
        elif kind == "consume":
            folder = Api.paths(self.store, self.sid)[2]
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            for n in names:
                if n.endswith(".json") and not n.startswith("."):
                    self.checker.consumed(n)
                    os.unlink(os.path.join(folder, n))
        elif kind == "foreign":
            self.foreign(f)
        elif kind == "lock_delete":
            # someone deletes the "stale" lock file (issue 11 item 4)
            holder = self.lock_holder()
            try:
                os.unlink(self.lock_path)
            except OSError:
                return
            self.trace("user", "deleted the lock file%s" % (" (held by %s #%d)" % (holder.kind, holder.n)
                                                             if holder is not None else ""))
        elif kind == "clock_jump":
            self.skew += f.dur
            self.trace("fault", "monitor host clock now %+.0fs off%s" % (
                self.skew, "" if self.procs else " (no autoexp process running: the next sees it through clock_ref)"))
        else:
            self.hand(f)

    def clear_fault(self, kind, until):
        cur = self.model.faults.get(kind)
        if cur is not None and cur[0] <= until and self.t >= cur[0]:
            del self.model.faults[kind]
            self.trace("fault", "%s over" % kind)

    def foreign(self, f):
        m = self.model
        names = {"plain": ("jupyter", ""), "pipe": ("eval|a|b", "my | notes"), "het": ("het", ""),
                 "other_plan": ("sim-0", "autoexp:simplan-old:sim-0"), "same_name": ("sim-0", "user comment"),
                 "newline": ("bad\nname", ""), "hog": ("hog", "")}
        name, comment = names.get(f.arg, ("jupyter", ""))
        base = m.new_id()
        if f.arg == "het":
            for c in (0, 1):
                job = MJob("%d+%d" % (base, c), base, None, name, comment, "foreign", None, self.t)
                m.jobs[job.id] = job
                m.order.append(job)
                m.snap(job)
                m.schedule_start(job, 5.0)
                self.at(self.t + f.dur, m.end, job, "COMPLETED")
            return
        job = m.create(base, None, name, comment, "foreign", "/dev/null")
        self.at(self.t + f.dur, self._end_foreign, job)

    def _end_foreign(self, job):
        if job.state in ("PENDING",):
            self.model.cancel(job, "owner")
        elif job.state == "RUNNING":
            self.model.end(job, "COMPLETED")

    def hand(self, f):
        """What a user or admin does to a logical job's SLURM job directly."""
        m = self.model
        live = m.live_for(f.job)
        job = live[-1] if live else None
        state = self.checker.job_state(f.job)
        if f.kind == "hand_replace":
            # scancel it and sbatch its script again (a changed config, a bad node)
            if job is None or job.state != "RUNNING" or job.owner == "foreign":
                return
            if "replace_in_doubt" not in self.p.scenarios and self.checker.in_doubt(f.job):
                return  # F10: a replacement while autoexp does not know the job is its own yet
            if f.arg == "f10":
                if job.owner != "autoexp" or not self.checker.in_doubt(f.job):
                    return
            m.cancel(job, "hand")
            pj = self.plan.jobs[f.job]
            spec = sbatch_spec(pj.script_path, ())
            base = self.submit_job(spec, "hand")
            self.trace("user", "replaced %s by hand with %d" % (job.id, base))
        elif f.kind == "hand_requeue":
            if (job is not None and job.state == "RUNNING" and not job.run.term_written
                    and not self.checker.cancel_pending(f.job)):
                m.requeue(job, "scontrol requeue")
            elif job is None and state == "stopped":
                ended = [j for j in m.order if j.logical == f.job and j.in_squeue and j.state not in ACTIVE
                         and not j.succeeded and not j.forgotten]
                if ended and self.checker.no_work_for(f.job):
                    m.requeue(ended[-1], "scontrol requeue of an ended job")
                    self.at(self.t + 300, self.start_process, "monitor")
        elif f.kind == "hand_restart_stopped":
            if job is None and state == "stopped" and self.checker.no_work_for(f.job) and not self.logical_succeeded(f.job):
                pj = self.plan.jobs[f.job]
                base = self.submit_job(sbatch_spec(pj.script_path, ()), "hand")
                self.trace("user", "resubmitted stopped %s by hand: %d" % (pj.name, base))
                self.at(self.t + 300, self.start_process, "monitor")
        elif f.kind == "hand_untagged":
            self.hand_untagged(f, job, state)
        elif f.kind == "migrate":
            # the job is REVOKED under its id and carries on under a new one
            if job is None or job.state != "RUNNING" or job.task is not None or job.run.term_written:
                return
            m.end(job, "REVOKED", show=-1)
            spec = {"job-name": job.name, "comment": job.comment, "output": job.out_tpl, "chdir": job.workdir}
            job.successor = str(self.submit_job(spec, "slurm", hand_of=job.hand_of))
            if job.owner == "untagged" or job.hand_of is not None:
                self.model.jobs[job.successor].logical = job.logical  # adopted (or not) as it was
        elif f.kind == "vanish":
            # slurmctld restarted from an older state save: a pending job it never recorded is gone
            if job is None or job.state != "PENDING" or self.t - job.submit_t > 60:
                return
            job.forgotten = True
            job.gen += 1
            self.trace("slurm", "%s forgotten by slurmctld" % job.id)
        elif f.kind in ("rotate", "truncate"):
            if job is None or job.state != "RUNNING" or job.run is None:
                return
            if job.run.term_written and "rotate_tail" not in self.p.scenarios:
                return
            self.programs_rotate(job, copy=f.kind == "rotate")
        elif f.kind == "runaway":
            # slurmctld restarted from an older state save and lost the running job; its
            # accounting record stays RUNNING (`sacctmgr show runawayjobs`)
            if job is None or job.state != "RUNNING" or job.task is not None:
                return
            job.runaway = True
            job.gen += 1
            job.run.ended = True
            job.in_squeue = False
            self.trace("slurm", "%s lost by slurmctld; sacct keeps it RUNNING" % job.id)
        elif f.kind == "suspend":
            if job is None or job.state != "RUNNING":
                return
            job.state = "SUSPENDED"
            m.snap(job)
            self.programs.pause(job)
            self.at(self.t + f.dur, self._resume, job, job.gen)

    def hand_untagged(self, f, job, state):
        """The user resubmits a job by hand without its tag (`sbatch --job-name=NAME` of
        another script, SPEC 8): from the plan's folder once a job has ended (or twice, then
        cancels one a while later: autoexp can adopt neither until then), from another
        folder (never adopted), or cancelling its running job first (a replacement)."""
        pj = self.plan.jobs[f.job]
        if self.checker.in_doubt(f.job) or self.checker.cancel_pending(f.job):
            return  # (a submission in doubt may still be found: not a race this models)
        if f.arg == "replace":
            if job is None or job.state != "RUNNING" or job.run is None or job.run.term_written:
                return
            self.model.cancel(job, "hand")
        elif job is not None or state not in ("stopped", "finalized", "cancelled") or not self.checker.no_work_for(f.job):
            return
        spec = sbatch_spec(pj.script_path, ())
        spec.pop("comment", None)  # another script: no tag
        if f.arg == "elsewhere":
            spec["chdir"] = "/home/simuser/other-checkout"
            spec["output"] = os.path.join(self.root, "elsewhere-%j.log")
        else:
            spec["chdir"] = self.plan.workdir
        # two at once write one log when it has no %j: their lines would be each other's
        n = 2 if f.arg == "twice" and "%j" in spec.get("output", "") else 1
        made = [self.submit_job(spec, "untagged", hand_of=f.job) for _ in range(n)]
        self.trace("user", "resubmitted %s by hand without its tag%s: %s" % (
            pj.name, " from another folder" if f.arg == "elsewhere" else "", " ".join(str(b) for b in made)))
        if n == 2:
            a, b = (self.model.jobs[str(x)] for x in made)
            a.pair, b.pair = b, a
            # autoexp warns that it cannot tell them apart; the user cancels one of them
            self.at(self.t + loguniform(self.rng("untagged"), 600, 4 * 3600), self._cancel_one, b)
        self.at(self.t + 300, self.start_process, "monitor")

    def _cancel_one(self, job):
        if job.state in ACTIVE:
            self.model.cancel(job, "user")

    def _resume(self, job, gen):
        if job.gen == gen and job.state == "SUSPENDED":
            job.state = "RUNNING"
            self.model.snap(job)
            paused = self.t - job.run.paused_at
            self.programs.resume(job)
            self.trace("slurm", "%s %s RUNNING again after %.0fs SUSPENDED%s" % (
                job.id, job.name, paused, " (longer than the inactivity threshold)"
                if self.p.threshold and paused > self.p.threshold else ""))

    def programs_rotate(self, job, copy):
        path = self.programs.path(job)
        try:
            if copy:  # logrotate copytruncate with `rotate 2`: .1 becomes .2, the log is copied to .1
                if os.path.exists(path + ".1"):
                    os.replace(path + ".1", path + ".2")
                shutil.copyfile(path, path + ".1")
                os.utime(path + ".1", (self.t, self.t))
            with open(path, "r+b") as f:
                f.truncate(0)
            os.utime(path, (self.t, self.t))
        except (IOError, OSError):
            return
        self.trace("fault", "%s log %s" % (job.id, "rotated (copytruncate)" if copy else "truncated"))

    def logical_succeeded(self, logical):
        return any(j.succeeded for j in self.model.order if j.logical == logical)

    # -- invariant hooks (model side) ------------------------------------------------------

    def check_one_live(self, job):
        if job.logical is None:
            return
        live = self.model.live_for(job.logical)
        if len(live) > 1:
            self.checker.fail("one-live", "logical job %d has %d live SLURM jobs: %s" % (
                job.logical, len(live), ", ".join("%s(%s,%s)" % (j.id, j.state, j.owner) for j in live)))

    def check_max_running(self):
        """max-running: autoexp's own single submission finds fewer than max_running of its
        session's jobs live. A job SLURM requeued since the process last saw squeue is not
        counted (autoexp could not know it; SPEC 8 says a requeue may go over the limit)."""
        proc = self.procs[-1] if self.procs else None
        seen = getattr(proc, "last_squeue", None)
        live = [j for j in self.model.order if j.owner == "autoexp" and j.logical is not None
                and j.state in ACTIVE and not j.forgotten and not j.runaway
                and not (j.requeued_t is not None and seen is not None and j.requeued_t >= seen)]
        if len(live) >= self.p.max_running:
            self.checker.fail("max-running", "sbatch with %d of the session's jobs live (max_running %d): %s" % (
                len(live), self.p.max_running, ", ".join("%s(%s)" % (j.id, j.state) for j in live)))

    def check_no_rerun(self, logical):
        if logical is None:
            return
        # a job the user ran again by hand after its success (adopted: hand_untagged) is his
        # to rerun: successes before that do not count
        rerun_t = max([j.submit_t for j in self.model.order if j.logical == logical and j.owner == "untagged"]
                      + [T0 - 1])
        done = [j for j in self.model.order if j.logical == logical and j.succeeded and j.end_t >= rerun_t]
        if done:
            self.checker.fail("no-rerun", "autoexp submits logical job %d again, though SLURM job %s finished "
                              "successfully" % (logical, done[0].id))

    def note_pending_cancel(self, job):
        """autoexp asks SLURM to cancel a job: while it is PENDING (or since its last squeue
        started), only because its reason can never clear and two answered squeues in a row
        printed it, or because it has pended for max_pending_seconds with a policy that acts
        (SPEC 5.1, 5.2). Once so, the decision stands: its resends are not judged again."""
        if job.pend_cancel_ok or job.state not in ACTIVE:
            return
        proc = self.procs[-1] if self.procs else None
        seen = proc.last_squeue if proc is not None else self.t
        if job.state != "PENDING" and not (job.start_t is not None and job.start_t > seen):
            return
        if job.blocked and job.reason_looks >= 2:
            job.pend_cancel_ok = True
        elif self.p.max_pending and self.p.pending_policy not in (None, "ignore"):
            since = max(job.submit_t, job.requeued_t or job.submit_t)
            # autoexp counts from its first look; 30 s for the second a time is printed in
            job.pend_cancel_ok = seen - since >= self.p.max_pending - 30

    def check_cancel(self, job):
        """autoexp scancels job: only a job the user cancelled, a bad one, one gone already,
        or a PENDING one that is blocked or pended too long (note_pending_cancel)."""
        if job.logical is None:
            if job.state in ACTIVE:
                self.checker.fail("no-healthy-cancel", "autoexp scancels %s, not one of its jobs" % job.id)
            return
        if job.state not in ACTIVE or job.state == "COMPLETING" or job.runaway or job.forgotten:
            return  # nothing runs (a runaway record, a job slurmctld forgot): the scancel is harmless
        if job.logical in self.user_cancelled or -1 in self.user_cancelled or job.bad or job.pend_cancel_ok:
            return
        run = job.run
        if job.state == "PENDING" or run is None:
            self.checker.fail("no-healthy-cancel", "autoexp scancels %s (%s), which is PENDING and healthy "
                              "(reason %s, %d answered looks, pending %.0fs)" % (
                                  job.id, job.name, job.reason, job.reason_looks,
                                  self.t - max(job.submit_t, job.requeued_t or job.submit_t)))
        if run.term_written:
            self.checker.fail("no-healthy-cancel", "autoexp scancels %s, which wrote the termination string" % job.id)
        if run.event_written:
            return
        # Silence is no growth of the file, whatever its line structure (SPEC 5.1; issue 11
        # item 1: a progress bar's \r updates are activity)
        quiet = self.t - run.last_write
        if self.p.threshold and (run.hung or run.prog.outcome == "hang") and quiet >= self.p.threshold:
            return
        self.checker.fail("no-healthy-cancel", "autoexp scancels %s (%s, %s), whose program is healthy "
                          "(last write %.0fs ago, %s)" % (job.id, job.name, job.state, quiet, run.prog.outcome))


# ============================================================================
# 7. Invariants on the files
# ============================================================================

FULL_LOAD_EVERY = 64  # state versions between two StateStore.load cross-checks


class Checker(object):
    """Reads the state file, journal and payloads after each step and checks them."""

    def __init__(self, world):
        self.w = world
        self.state_key = None
        self.state = None
        self.files = None  # StateFiles, once the state exists
        self.full_key = None  # the state version StateStore.load last read
        self.state_existed = False
        self.journal_off = 0
        self.journal = {}  # seq -> event dict
        self.journal_last = 0
        self.payloads = {}  # name -> key
        self.keys = {}  # (job_attempt_action) -> name
        self.deleted = set()
        self.failure = None
        self.versions = 0

    def fail(self, invariant, detail):
        if self.failure is None:
            self.failure = (invariant, detail)
            self.w.trace("FAIL", "%s: %s" % (invariant, detail))
        raise Violation(invariant, detail)

    def consumed(self, name):
        self.deleted.add(name)

    # -- what the on-disk state says ------------------------------------------------------

    def job_state(self, logical):
        if not self.state:
            return None
        jobs = self.state.get("jobs", [])
        for j in jobs:
            if j["index"] == logical:
                return j["status"]
        return None

    def no_work_for(self, logical):
        """The state says this job has no live attempt and no submission in doubt."""
        if not self.state:
            return False
        for j in self.state.get("jobs", []):
            if j["index"] == logical:
                return not any(a["live"] or (a["job_id"] is None and a["submit_state"] == "intent")
                               for a in j["attempts"])
        return False

    def synced(self):
        """The journal has every event of the state, every action its payload (for now)."""
        st = self.state
        if st is None:
            return False
        if st["event_seq"] != self.journal_last:
            return False
        return all(act.get("written") for j in st["jobs"] for a in j["attempts"] for act in a["actions"])

    def check_announced_submit(self, logical):
        """decided-first: sbatch runs only after the state on disk holds its intent."""
        for j in (self.state or {}).get("jobs", []):
            if j["index"] == logical:
                att = j["attempts"][-1] if j["attempts"] else None
                if att is None or att["job_id"] is not None or att["submit_state"] != "intent":
                    self.fail("decided-first", "sbatch for %s, but the state on disk holds no intent for it" % j["name"])
                return
        self.fail("decided-first", "sbatch for logical job %s, which the state on disk does not hold" % logical)

    def check_announced_cancel(self, job_id):
        """decided-first: scancel runs only after the state on disk asks for it."""
        for j in (self.state or {}).get("jobs", []):
            for a in j["attempts"]:
                if a["job_id"] == job_id and a.get("cancel_requested_at"):
                    return
        self.fail("decided-first", "scancel %s, but no attempt on disk asks for that cancel" % job_id)

    def end_recorded(self, job_id):
        """The state records how the attempt of this SLURM job ended."""
        for j in (self.state or {}).get("jobs", []):
            for a in j["attempts"]:
                if a["job_id"] == job_id and a["outcome"] is not None:
                    return True
        return False

    def in_doubt(self, logical):
        """The state holds a submission without a SLURM id (of this job, or of any: -1)."""
        for j in (self.state or {}).get("jobs", []):
            if logical < 0 or j["index"] == logical:
                if any(a["job_id"] is None and a["submit_state"] == "intent" for a in j["attempts"]):
                    return True
        return False

    def cancel_pending(self, logical):
        """`status` shows autoexp already decided to cancel this job's live attempt."""
        for j in (self.state or {}).get("jobs", []):
            if j["index"] == logical:
                return any(a["live"] and a.get("cancel_requested_at") for a in j["attempts"])
        return False

    def session_has_work(self):
        self.check_files()
        if self.state is None:
            return True
        for j in self.state["jobs"]:
            if j["status"] == "active":
                return True
            for a in j["attempts"]:
                if a["job_id"] is None and a["submit_state"] == "intent" and j["status"] != "active":
                    return True
                if a["live"] and a.get("cancel_requested_at"):
                    return True
        return False

    # -- the checks --------------------------------------------------------------------

    def full_load(self, path):
        """StateStore.load, the whole session rebuilt as autoexp reads it; and the
        incremental reading must agree with it."""
        w = self.w
        if self.full_key == self.state_key:
            return  # this version was loaded already
        self.full_key = self.state_key
        try:
            full = Api.state_doc(Api.load(w.store, path))
        except Api.StateError as e:
            self.fail("state-loads", str(e).replace(w.root, "<root>"))
        if self.state is not None:
            diff = StateFiles.differs(self.state, full, Api.journal_seq(Api.paths(w.store, w.sid)[1]))
            if diff:
                self.fail("state-loads", "the files read batch by batch are not what StateStore.load reads: %s"
                          % diff)

    def check_files(self, full=False):
        w = self.w
        path, journal, actions = Api.paths(w.store, w.sid)[:3]
        try:
            os.stat(path)
        except OSError:
            if self.state_existed:
                self.fail("state-loads", "the state file disappeared")
            return
        self.state_existed = True
        self.check_payloads(actions)
        key = Api.state_key(w.store, w.sid)
        if key != self.state_key:
            self.state_key = key
            self.versions += 1
            if self.files is None:
                self.files = StateFiles(w.store, w.sid)
            old = self.state
            try:
                self.state = self.files.read()
            except (IOError, OSError, ValueError, KeyError, TypeError) as e:
                self.fail("state-loads", "the state does not read: %s: %s" % (
                    type(e).__name__, str(e).replace(w.root, "<root>")))
            # Every version is read (incrementally) and checked; StateStore.load itself (the
            # costliest check: it rebuilds every object) runs on the first versions, every
            # 64th, at each process end and at the end, and must read the same.
            if self.versions <= 3 or self.versions % FULL_LOAD_EVERY == 0 or full:
                self.full_load(path)
            self.check_actions_in_state()
            self.check_new_attempts(old)
        elif full:
            self.full_load(path)
        self.read_journal(journal)
        self.check_outbox()

    def check_new_attempts(self, old):
        """What a new version of the state decided: a cancel of a PENDING job is judged when it
        is decided (note_pending_cancel); a job resubmitted by hand without its tag that became
        an attempt counts as the job's from then on (one-live, converges, no-orphan) and must
        be one autoexp may adopt (hand-adopt)."""
        w = self.w
        before = {}
        for j in (old or {}).get("jobs", []):
            before[j["index"]] = (j["status"], set(a["job_id"] for a in j["attempts"] if a["job_id"]))
        for j in self.state["jobs"]:
            status, known = before.get(j["index"], (None, set()))
            for i, a in enumerate(j["attempts"]):
                job = w.model.jobs.get(a["job_id"]) if a["job_id"] else None
                if job is None:
                    continue
                if a["live"] and a.get("cancel_requested_at"):
                    w.note_pending_cancel(job)
                if job.owner != "untagged" or a["job_id"] in known:
                    continue
                prev = w.model.jobs.get(j["attempts"][i - 1]["job_id"] or "") if i else None
                self.check_hand_adopt(j, a, job, status, prev, known)

    def check_hand_adopt(self, j, a, job, status, prev, known):
        """hand-adopt: an untagged job becomes an attempt only if it was resubmitted for this
        job from the plan's folder, the job was not cancelled by the user, and no other such
        job submitted after the previous attempt ended was live at the squeue it was seen in."""
        w = self.w
        if job.logical is None:
            job.logical = j["index"]  # the job's own from now on
            w.check_one_live(job)
        if job.hand_of != j["index"] or job.workdir != w.plan.workdir or job.name != j["name"]:
            self.fail("hand-adopt", "%s attempt %d adopted SLURM job %s, resubmitted by hand for %s from %s" % (
                j["name"], a["attempt"], job.id, job.name, job.workdir))
        if status == "cancelled":
            self.fail("hand-adopt", "%s, cancelled by the user, adopted SLURM job %s resubmitted by hand" % (
                j["name"], job.id))
        proc = w.procs[-1] if w.procs else None
        seen = proc.last_squeue if proc is not None else None
        end = prev.end_t if prev is not None else None
        if seen is None or end is None:
            return
        others = [o for o in w.model.order if o is not job and o.owner == "untagged" and o.name == job.name
                  and o.workdir == job.workdir and o.id not in known and end <= o.submit_t <= seen
                  and (o.end_t is None or o.end_t > seen)]
        if others:
            self.fail("hand-adopt", "%s attempt %d adopted SLURM job %s though %s, also resubmitted by hand after "
                      "its last attempt ended, was live at the squeue it decided on" % (
                          j["name"], a["attempt"], job.id, ", ".join(o.id for o in others)))

    def check_sbatch_options(self, logicals, spec, args, env):
        """sbatch-options: each sbatch carries the options its intent on disk holds, which are
        those SPEC 5.4 derives from the job's history (a crash between intent and sbatch
        submits what was decided), and AUTOEXP_ATTEMPT is the attempt's number."""
        w = self.w
        opts = [x for x in args if x.split("=", 1)[0] in ("--mem", "--time", "--exclude")]
        for lg in logicals:
            for j in (self.state or {}).get("jobs", []):
                if j["index"] != lg:
                    continue
                att = j["attempts"][-1]
                want = self.predict_options(j["attempts"][:-1])
                if att.get("excluded_nodes"):
                    # the nodes autoexp excluded for this attempt (SPEC 5.5), in one --exclude
                    want.append("--exclude=" + ",".join(att["excluded_nodes"]))
                if list(att.get("sbatch_options") or []) != want:
                    self.fail("sbatch-options", "%s attempt %d's intent holds options %s; its history gives %s" % (
                        j["name"], att["attempt"], att.get("sbatch_options"), want))
                if opts != want:
                    self.fail("sbatch-options", "sbatch of %s attempt %d with %s; its intent holds %s" % (
                        j["name"], att["attempt"], opts, want))
                got = (env or {}).get("AUTOEXP_ATTEMPT")
                if got != str(att["attempt"]):
                    self.fail("sbatch-options", "sbatch of %s attempt %d with AUTOEXP_ATTEMPT=%s" % (
                        j["name"], att["attempt"], got))
        return opts

    def predict_options(self, history):
        """SPEC 5.4 on the simulator's config: each ended attempt whose mode's restart policy
        gives sbatch options adds them, rendered for the attempt after it; a later value of
        an option replaces the earlier one (and goes last)."""
        opts = OrderedDict()
        if not self.w.p.opts_policy:
            return []
        for a in history:
            n = a["attempt"] + 1
            if a["outcome"] == "oom":
                opts.pop("mem", None)
                opts["mem"] = "%dG" % (8 * n)
            elif a["outcome"] == "timeout":
                opts.pop("time", None)
                opts["time"] = TIMEOUT_TIMES[min(n, len(TIMEOUT_TIMES)) - 1]
        return ["--%s=%s" % kv for kv in opts.items()]

    def read_journal(self, path):
        try:
            with open(path, "rb") as f:
                f.seek(self.journal_off)
                data = f.read()
        except (IOError, OSError):
            return
        end = data.rfind(b"\n") + 1
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                ev = json.loads(line.decode("utf-8"))
            except ValueError:
                self.fail("journal", "a journal line is not JSON: %r" % line[:100])
            seq = ev.get("seq")
            if seq != self.journal_last + 1:
                self.fail("journal", "seq %r follows %d (a gap or a duplicate): %s %s #%s" % (
                    seq, self.journal_last, ev.get("job"), ev.get("event"), ev.get("attempt")))
            self.journal[seq] = ev
            self.journal_last = seq
            self.on_event(ev)
        self.journal_off += end

    def on_event(self, ev):
        w = self.w
        if ev.get("event") == "blocked":
            job = w.model.jobs.get(ev.get("job_id") or "")
            if job is None or not job.blocked or job.reason_looks < 2:
                self.fail("blocked-right", "%s attempt %s (%s) declared blocked, but SLURM %s" % (
                    ev["job"], ev.get("attempt"), ev.get("job_id"), "knows no such job" if job is None else
                    "printed its reason %s in %d answered looks in a row (%s)" % (
                        job.reason, job.reason_looks, "it can never start" if job.blocked else "a passing one")))
        if ev.get("event") == "stopped" and ev.get("mode") == "submit_failed" and \
                str(ev.get("detail", "")).startswith("sbatch failed"):
            logical = w.model.names.get(ev["job"])
            fails = w.model.sbatch_fails.get(logical, 0)
            if fails <= w.p.submit_retries:
                self.fail("retries-honoured", "%s stopped after %d uncertain sbatch failures in a row (submit_retries "
                          "%d): %s" % (ev["job"], fails, w.p.submit_retries, ev.get("detail")))

    def check_outbox(self):
        st = self.state
        if st is None:
            return
        seq = st["event_seq"]
        if seq < self.journal_last:
            self.fail("journal", "the journal holds seq %d, the state's event_seq is %d" % (self.journal_last, seq))
        outbox = dict((e["seq"], e) for e in st.get("outbox", []))
        for k in range(self.journal_last + 1, seq + 1):
            if k not in outbox:
                self.fail("journal", "event %d is neither in the journal (up to %d) nor in the outbox" % (
                    k, self.journal_last))
        for k, e in outbox.items():
            j = self.journal.get(k)
            if j is not None and j != e:
                self.fail("journal", "event %d differs between the journal and the outbox: %s / %s" % (k, j, e))

    def check_payloads(self, folder):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        for n in names:
            if n.startswith(".") or n in self.payloads:
                continue
            if n in self.deleted:
                self.fail("actions-once", "payload %s came back after a consumer deleted it" % n)
            try:
                with open(os.path.join(folder, n)) as f:
                    doc = json.load(f)
                # SPEC 8: consumers treat payloads as idempotent per (job, job_id, action)
                key = (doc["job"], doc["attempt"], doc["job_id"], doc["action"])
            except (IOError, OSError, ValueError, KeyError) as e:
                self.fail("actions-once", "payload %s does not read: %s" % (n, e))
            if key in self.keys and self.keys[key] != n:
                self.fail("actions-once", "two payloads for one action: %s and %s" % (self.keys[key], n))
            self.keys[key] = n
            self.payloads[n] = key

    def check_actions_in_state(self):
        """An action the state marks written has its payload on disk (or a consumer took it)."""
        for j in self.state["jobs"]:
            for a in j["attempts"]:
                for act in a["actions"]:
                    name = act["id"] + ".json"
                    if act.get("written") and name not in self.payloads and name not in self.deleted:
                        self.fail("actions-once", "action %s is marked written, but no payload was seen" % act["id"])

    def final(self):
        """The end: convergence, completeness of the journal and payloads, no orphan."""
        w = self.w
        self.check_files(full=True)
        st = self.state
        if st is None:
            self.fail("converges", "no state file at the end")
        active = [j["name"] for j in st["jobs"] if j["status"] == "active"]
        if active or self.session_has_work():
            self.fail("converges", "%.1f h after the faults ended, the session still has work: %s" % (
                (w.t - w.quiet_at) / 3600.0, ", ".join("%s=%s" % (j["name"], j["status"]) for j in st["jobs"])))
        live = [j for j in w.model.order if j.logical is not None and j.state in ACTIVE and not j.forgotten
                and not j.runaway]
        if live:
            self.fail("converges", "SLURM still runs %s" % ", ".join("%s(%s)" % (j.id, j.state) for j in live))
        if any(e["seq"] > self.journal_last for e in st.get("outbox", [])):
            self.fail("journal", "the outbox holds events the journal never got")
        if self.journal_last != st["event_seq"]:
            self.fail("journal", "the journal ends at %d, event_seq is %d" % (self.journal_last, st["event_seq"]))
        recorded = set()
        folder = Api.paths(w.store, w.sid)[2]
        for j in st["jobs"]:
            for a in j["attempts"]:
                if a["job_id"]:
                    recorded.add(a["job_id"])
                for act in a["actions"]:
                    name = act["id"] + ".json"
                    if not act.get("written"):
                        self.fail("actions-once", "action %s is not marked written at the end" % act["id"])
                    if name not in self.deleted and not os.path.exists(os.path.join(folder, name)):
                        self.fail("actions-once", "payload %s was never written" % name)
                if a["outcome"] == "blocked" and a["job_id"]:
                    job = w.model.jobs.get(a["job_id"])
                    last = a is j["attempts"][-1]
                    if job is None or job.start_t is not None or job.state != "CANCELLED" or (
                            last and j["status"] not in ("stopped", "cancelled")):
                        self.fail("blocked-right", "%s attempt %d (%s) is blocked, but SLURM shows it %s%s and the "
                                  "job is %s" % (j["name"], a["attempt"], a["job_id"], job and job.state,
                                                 " (it ran)" if job and job.start_t else "", j["status"]))
                if a["outcome"] == "success" and a["job_id"]:
                    job = w.model.jobs.get(a["job_id"])
                    if job is not None and not (job.run is not None and job.run.term_written) and not (
                            w.p.termination is None and job.state == "COMPLETED"):
                        self.fail("true-success", "%s attempt %d (%s) is a success, but it never wrote the "
                                  "termination string (%s)" % (j["name"], a["attempt"], a["job_id"], job.state))
        for job in w.model.order:
            follow = job
            while follow.successor is not None and follow.id not in recorded:
                follow = w.model.jobs[follow.successor]  # it went on under a new id: that one counts
            if job.owner == "autoexp" and job.logical is not None and follow.id not in recorded:
                self.fail("no-orphan", "SLURM job %s (%s, %s) that autoexp submitted is in no attempt" % (
                    job.id, job.name, job.state))


# ============================================================================
# 8. Running, shrinking, the command line
# ============================================================================

def sim_dir():
    """tmpfs when there is one: every state write fsyncs, and fsync on tmpfs costs nothing."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="autoexp-sim-", dir=base)


def run_scenario(scenario, keep_trace=True):
    """Run one scenario to its end; returns a Result (violation None when every invariant held)."""
    root = sim_dir()
    w = World(scenario, root, keep_trace)
    violation = None
    saved_compact = os.environ.pop("AUTOEXP_COMPACT_BYTES", None)
    if scenario.params.compact is not None:
        os.environ["AUTOEXP_COMPACT_BYTES"] = str(scenario.params.compact)
    try:
        with Api.crash_hook(w.crash_point):
            w.trace("sim", "seed %d: %s" % (scenario.seed, scenario.params.describe()))
            try:
                w.setup()
                w.run_until(w.end_at + 1)
            except SimStop:
                pass
            except Violation as v:
                violation = v
            if violation is None and not w.refused:
                try:
                    w.done = True
                    w.checker.final()
                except Violation as v:
                    violation = v
    finally:
        os.environ.pop("AUTOEXP_COMPACT_BYTES", None)
        if saved_compact is not None:
            os.environ["AUTOEXP_COMPACT_BYTES"] = saved_compact
        if os.environ.get("AUTOEXP_SIM_KEEP"):
            sys.stderr.write("kept %s\n" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return Result(seed=scenario.seed, violation=None if violation is None else violation.invariant,
                  trace=w.trace_lines, sim_seconds=w.t - T0, steps=w.steps, cycles=w.cycles,
                  digest=w.digest.hexdigest(), stats={"detail": None if violation is None else violation.detail})


def run_seed(seed, scenarios=(), keep_trace=False, jobs=None, keep=None, simplify=(), mix=True):
    sc = Scenario.generate(seed, scenarios, mix)
    if jobs is not None or keep is not None or simplify:
        sc = sc.smaller(jobs=jobs, keep=keep, simplify=simplify)
    return run_scenario(sc, keep_trace)


def _run_one(args):
    seed, scenarios, mix = args
    res = run_seed(seed, scenarios, mix=mix)
    return res.seed, res.violation, (res.stats or {}).get("detail"), res.sim_seconds, res.steps, res.cycles, res.digest


def run_many(seeds, scenarios=(), workers=1, mix=True):
    """Run seeds (in `workers` processes); returns [(seed, violation, detail, sim_seconds,
    steps, cycles, digest)] in seed order."""
    jobs = [(seed, tuple(scenarios), mix) for seed in seeds]
    if workers <= 1:
        out = [_run_one(j) for j in jobs]
    else:
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            out = list(pool.imap_unordered(_run_one, jobs, chunksize=4))
    return sorted(out)


def shrink(seed, scenarios=(), log=None, mix=True):
    """Delta-debug a failing seed: fewer jobs, then fewer faults (ddmin), then simplifications,
    keeping the same broken invariant. Returns (jobs, kept fault indexes, simplify, Result)."""
    base = Scenario.generate(seed, scenarios, mix)
    first = run_scenario(base, keep_trace=False)
    if first.violation is None:
        return None
    target = first.violation
    runs = [0]

    def fails(jobs, keep, simp):
        runs[0] += 1
        res = run_scenario(base.smaller(jobs=jobs, keep=keep, simplify=simp), keep_trace=False)
        return res.violation == target

    jobs = base.params.n_jobs
    keep = list(range(len(base.faults)))
    simp = []
    for n in range(1, jobs):
        if fails(n, keep, simp):
            jobs = n
            break
    # drop faults that come after the failure first: they cannot matter
    fail_t = first.sim_seconds
    later = [i for i in keep if base.faults[i].t <= fail_t]
    if len(later) < len(keep) and fails(jobs, later, simp):
        keep = later
    n = 2
    while len(keep) >= 2:
        chunk = int(math.ceil(len(keep) / float(n)))
        reduced = False
        for start in range(0, len(keep), chunk):
            rest = keep[:start] + keep[start + chunk:]
            if fails(jobs, rest, simp):
                keep, n, reduced = rest, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(keep):
                break
            n = min(len(keep), n * 2)
    if len(keep) == 1 and fails(jobs, [], simp):
        keep = []
    for s in SIMPLIFY:
        if fails(jobs, keep, simp + [s]):
            simp.append(s)
    final = run_scenario(base.smaller(jobs=jobs, keep=keep, simplify=simp), keep_trace=True)
    if log:
        log("shrunk in %d runs" % runs[0])
    return jobs, keep, simp, final


def replay_command(seed, scenarios, jobs=None, keep=None, simplify=(), mix=True):
    cmd = ["python3", "tests/sim.py", "--seed", str(seed)]
    for s in scenarios:
        cmd += ["--scenario", s]
    if not scenarios and not mix:
        cmd += ["--no-mix"]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    if keep is not None:
        cmd += ["--faults", ",".join(str(i) for i in keep) or "none"]
    if simplify:
        cmd += ["--simplify", ",".join(simplify)]
    return " ".join(cmd + ["--replay"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--seeds", help="A:B, a range of seeds")
    ap.add_argument("--scenario", action="append", default=[], choices=list(SCENARIOS))
    ap.add_argument("--no-mix", dest="mix", action="store_false",
                    help="without --scenario: no switch at all (not the default mix)")
    ap.add_argument("--replay", action="store_true", help="print the trace")
    ap.add_argument("--shrink", action="store_true", help="shrink a failing seed, print the short trace")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--faults", help="indexes of the generated faults to keep (comma list, or none)")
    ap.add_argument("--simplify", default="", help="comma list of %s" % ", ".join(SIMPLIFY))
    ap.add_argument("--list", action="store_true", help="print the scenario's parameters and faults")
    args = ap.parse_args(argv)
    keep = None
    if args.faults is not None:
        keep = [] if args.faults == "none" else [int(x) for x in args.faults.split(",")]
    simplify = [s for s in args.simplify.split(",") if s]
    if args.seeds:
        lo, _, hi = args.seeds.partition(":")
        bad = 0
        for seed in range(int(lo), int(hi)):
            res = run_seed(seed, args.scenario, mix=args.mix)
            if res.violation:
                bad += 1
                print(res.line(), res.stats["detail"])
        print("%d failing seeds" % bad)
        return 1 if bad else 0
    if args.seed is None:
        ap.error("give --seed N or --seeds A:B")
    if args.list:
        sc = Scenario.generate(args.seed, args.scenario, args.mix).smaller(jobs=args.jobs, keep=keep,
                                                                          simplify=simplify)
        print(sc.params.describe())
        for i, f in enumerate(sc.faults):
            print("%3d %s" % (i, f.describe()))
        return 0
    if args.shrink:
        out = shrink(args.seed, args.scenario, log=print, mix=args.mix)
        if out is None:
            print("seed %d does not fail" % args.seed)
            return 0
        jobs, keep, simp, res = out
        base = Scenario.generate(args.seed, args.scenario, args.mix)
        print("\n".join(res.trace))
        print("faults kept:")
        for i in keep:
            print("  %3d %s" % (i, base.faults[i].describe()))
        print(res.line(), res.stats["detail"])
        print("replay: " + replay_command(args.seed, args.scenario, jobs, keep, simp, args.mix))
        return 1
    res = run_seed(args.seed, args.scenario, keep_trace=True, jobs=args.jobs, keep=keep, simplify=simplify,
                   mix=args.mix)
    if args.replay:
        print("\n".join(res.trace))
    print(res.line(), res.stats["detail"] or "")
    print("trace sha1 %s" % res.digest)
    return 1 if res.violation else 0


if __name__ == "__main__":
    sys.exit(main())
