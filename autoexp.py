#!/usr/bin/env python3
"""autoexp: take a sweep of SLURM experiments from a config to finished runs, unattended.

This docstring is the maintainers' map; `autoexp --help` speaks to users (USAGE below).

The module is one file so that a login node needs nothing but `python3 autoexp.pyz`. Its
sections come in dependency order (a section uses only the ones above it):

   1. Vocabulary        every word autoexp writes or compares (statuses, modes, actions,
                        submit states, origins, event kinds, SLURM states), exit codes and
                        named time constants: one home per fact, SPEC.md's tables are
                        checked against them (tests/test_spec.py)
   2. Errors, utilities AutoexpError and its subclasses (the exit code is the type's), time
                        formats, atomic_write, crash points (the crash harness's hook),
                        Reporter
   3. Config and plan   MONITORING_SCHEMA and the other key tables (notify, on, then too),
                        validation, the sweep, placeholders and quoting, build_plan
                        (config -> manifest + scripts, follow-ups' records)
   4. SLURM             SlurmClient (the only place SLURM commands run) and the parsers of
                        squeue, sacct and sbatch output: where SLURM is parsed
   5. Log tail          read_log (offsets, truncation, rotation) and LogMatcher (events and
                        the values log_events groups capture)
   6. Records           Observation, Facts, Attempt, Job, Session: what autoexp knows of a
                        job, and how it reads and writes as JSON (no I/O); an event's
                        effects (on rules, notify routing) are recorded with it here
   7. Decisions         the functional core: what happens to a job is decided here, by
                        pure functions over records (observe, classify, decide, the
                        adopt/replace/submit moves, sbatch failures, cancel resends,
                        which follow-ups a decided job gets, an effect's next move and
                        retry, who is notified and what the message says),
                        each tested from a table (tests/test_decisions.py)
   8. State store       where state is written: the session file, its lock, the event
                        journal, action payloads, cancel requests, effects' files; then notification
                        delivery (webhook POST, mail, command), each bounded in time
   9. Controller        the imperative shell: gathers observations, applies decisions,
                        performs the I/O (sbatch, scancel, log reads, saves) and reports;
                        pump_effects starts and reads the detached effect workers
  10. CLI               argparse commands; main() turns errors into "Error: ..." and an
                        exit code, by type; SLURM, the clock and sleep are injected here
                        (the hidden _effect and _notify commands are the engine's workers)

Stable (see SPEC.md): the command line, the config keys, the state file schema
(schema_version), the action payloads and the exit codes. Everything else is internal.
"""

import sys

if sys.version_info < (3, 6):  # the one version check: RHEL 8 / SLES 15 cron has 3.6
    sys.stderr.write("Error: autoexp needs Python 3.6 or newer (this is %s)\n" % sys.version.split()[0])
    sys.exit(2)

import argparse
import errno
import fcntl
import fnmatch
import functools
import itertools
import json
import os
import re
import shlex
import signal
import stat
import time
from collections import OrderedDict, namedtuple
from typing import NamedTuple, Optional
# hashlib, pwd, shutil, socket and subprocess are imported where they are used: a
# `status` from cron should not pay for what only a monitor needs (SPEC: start-up time).

__version__ = "0.1.0"

USAGE = """\
autoexp takes a sweep of SLURM experiments from a JSON config to finished runs, unattended:
it plans the sweep into SBATCH scripts, submits them, watches them (one squeue per cycle,
incremental log tails) and restarts, cancels, finalizes or stops each job by policy. A
killed monitor, or a `reconcile` run from cron, carries on exactly where SLURM is.

typical use:
  autoexp plan sweep.json                 write the scripts; prints the plan id
  autoexp submit PLAN_ID [--dry-run]      submit them (or --array)
  autoexp monitor --session PLAN_ID       watch until every job is done (Ctrl-C resumes later)
  autoexp run sweep.json                  all three at once
  autoexp status [--watch]                where every job is (--watch: a live view)
  autoexp history --session ID [NAME]     every attempt of every job
  autoexp cancel --session ID NAME|--all  scancel jobs; they are never restarted
  autoexp retry --session ID NAME...      submit a stopped or cancelled job again
  autoexp report --session ID -o r.html   one HTML page: timeline, attempts, cost, events
  autoexp archive --session ID            put a finished session out of the way
  */5 * * * * python3 autoexp.pyz --state-dir DIR reconcile      (crontab: no monitor needed)

After a job: `then` follow-up jobs (convert, eval), `on` actions (a command per event,
exactly once) and `notify` (webhook, mail, command). SPEC.md (next to autoexp.py) lists
every config key, file and exit code."""


# ============================================================================
# 1. Vocabulary
# ============================================================================

# Exit codes: the meaning of each, as SPEC section 1 states it.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another live process holds the session
EXIT_CRASH_POINT = 86  # only ever produced by the AUTOEXP_CRASH_AT test hook
EXIT_INTERRUPTED = 130
EXIT_CODES = (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_LOCKED, EXIT_CRASH_POINT, EXIT_INTERRUPTED)

STATE_SCHEMA_VERSION = 2  # 1: one JSON document per session; 2: header + job snapshot + batches
MANIFEST_SCHEMA_VERSION = 1
SESSION_KIND = "autoexp-session"
MANIFEST_KIND = "autoexp-manifest"

# A job's status: only an active job is decided about.
ACTIVE, FINALIZED, STOPPED, CANCELLED = "active", "finalized", "stopped", "cancelled"
STATUSES = (ACTIVE, FINALIZED, STOPPED, CANCELLED)

# Modes: how an attempt ended (or must end). log_events may add their own.
MODES = ("success", "incomplete", "crash", "timeout", "node_fail", "oom", "preempted",
         "cancelled", "stall", "lost", "blocked", "pending_too_long")
MODE_SUCCESS, MODE_INCOMPLETE, MODE_CANCELLED, MODE_STALL, MODE_LOST = (
    "success", "incomplete", "cancelled", "stall", "lost")
# Modes of a job still PENDING: decided while it waits, so `ignore` leaves it waiting (an
# event only) instead of stopping it, and any other action cancels it first.
MODE_BLOCKED, MODE_PENDING_TOO_LONG = "blocked", "pending_too_long"
PENDING_MODES = (MODE_BLOCKED, MODE_PENDING_TOO_LONG)
# Outcomes of an attempt that are not modes: no policy decides them.
OUTCOME_REPLACED, OUTCOME_SUBMIT_FAILED = "replaced", "submit_failed"

# How a log_events pattern is matched: a regular expression, or a plain substring.
MATCH_REGEX, MATCH_SUBSTRING = "regex", "substring"
LOG_EVENT_MATCHES = (MATCH_REGEX, MATCH_SUBSTRING)

# What a policy does with a mode; payloads also carry the user's "cancel".
RESTART, FINALIZE, STOP, IGNORE = "restart", "finalize", "stop", "ignore"
ACTIONS = (RESTART, FINALIZE, STOP, IGNORE)
ACTION_CANCEL = "cancel"

# An attempt's submission: decided (intent), done, refused, or given up after a lookup.
INTENT, SUBMITTED, SUBMIT_FAILED_STATE, ABANDONED = "intent", "submitted", "failed", "abandoned"
SUBMIT_STATES = (INTENT, SUBMITTED, SUBMIT_FAILED_STATE, ABANDONED)

# Where an attempt's SLURM job came from.
ORIGIN_SUBMITTED, ORIGIN_RECOVERED, ORIGIN_EXTERNAL = "submitted", "recovered", "external"
ORIGINS = (ORIGIN_SUBMITTED, ORIGIN_RECOVERED, ORIGIN_EXTERNAL)

# Where an observation of a SLURM job came from. MISSING: squeue and sacct both answered
# and neither knows it; UNKNOWN: a query that could have told did not answer.
SRC_SQUEUE, SRC_SACCT, SRC_MISSING, SRC_UNKNOWN = "squeue", "sacct", "missing", "unknown"
ANSWERED = (SRC_SQUEUE, SRC_SACCT)

# What `status` shows as MONITOR besides SLURM's own (lower-cased) state and the modes.
MON_UNKNOWN, MON_MISSING, MON_RUNNING = "unknown", "missing", "running"
MON_SUBMITTING, MON_SUBMITTED, MON_RESTARTING = "submitting", "submitted", "restarting"
MON_WAITING = "waiting"  # its submission (first or restart) waits for a slot under monitoring.max_running

# Where a job is, in words for the operator (`status`, its --watch progress line): worked
# out from the state file alone, never from SLURM, so that status stays cheap.
PH_DONE, PH_RUNNING, PH_PENDING, PH_RESTARTING, PH_FAILED = "done", "running", "pending", "restarting", "failed"
PH_CANCELLING, PH_CANCELLED = "cancelling", "cancelled"
PHASES = (PH_DONE, PH_RUNNING, PH_PENDING, PH_RESTARTING, PH_FAILED, PH_CANCELLING, PH_CANCELLED)
STATUS_FILTERS = STATUSES + tuple(ph for ph in PHASES if ph not in STATUSES)  # `status --status`

# What sbatch's answer means for the submission.
SB_OK, SB_UNCERTAIN, SB_THROTTLED, SB_PERMANENT = "ok", "uncertain", "throttled", "permanent"

# Event kinds of the journal (SPEC 5.3); "log:<name>" adds one per log_events name.
EV_INTENT, EV_SUBMITTED, EV_SUBMIT_ERROR = "intent", "submitted", "submit_error"
EV_STATE, EV_REQUEUED, EV_MISSING = "state", "requeued", "missing"
EV_LOG_PREFIX, EV_LOG_RESTARTED, EV_LOG_UNREADABLE = "log:", "log_restarted", "log_unreadable"
EV_OUTCOME, EV_RESTART_SCHEDULED, EV_FINALIZED, EV_STOPPED = "outcome", "restart_scheduled", "finalized", "stopped"
EV_CANCEL_REQUESTED, EV_SCANCEL, EV_SCANCEL_FAILED, EV_USER_CANCEL = (
    "cancel_requested", "scancel", "scancel_failed", "user_cancel")
EV_ADOPTED, EV_REACTIVATED = "adopted", "reactivated"
EV_RESUBMITS_AMBIGUOUS, EV_RETRIED = "resubmits_ambiguous", "retried"
EV_BLOCKED, EV_PENDING_TOO_LONG = MODE_BLOCKED, MODE_PENDING_TOO_LONG  # once per attempt, whatever the policy
EV_NODES_EXCLUDED, EV_EXCLUSION_CAPPED = "nodes_excluded", "exclusion_capped"
EV_FOLLOWUP_ADDED, EV_FOLLOWUP_FAILED = "followup_added", "followup_failed"  # on the parent (SPEC 5.7)
# What the effect engine (SPEC 5.8) reports of the `on` rules' commands and notifications.
EV_ACTION_STARTED, EV_ACTION_DONE, EV_ACTION_FAILED = "action_started", "action_done", "action_failed"
EV_ACTION_INTERRUPTED, EV_ACTION_RETRY = "action_interrupted", "action_retry"
EV_NOTIFY_SENT, EV_NOTIFY_FAILED = "notify_sent", "notify_failed"
EFFECT_EVENTS = (EV_ACTION_STARTED, EV_ACTION_DONE, EV_ACTION_FAILED, EV_ACTION_INTERRUPTED, EV_ACTION_RETRY,
                 EV_NOTIFY_SENT, EV_NOTIFY_FAILED)
EVENT_KINDS = (EV_INTENT, EV_SUBMITTED, EV_SUBMIT_ERROR, EV_STATE, EV_REQUEUED, EV_MISSING,
               EV_LOG_PREFIX + "<name>", EV_LOG_RESTARTED, EV_LOG_UNREADABLE, EV_OUTCOME, EV_RESTART_SCHEDULED,
               EV_FINALIZED, EV_STOPPED, EV_CANCEL_REQUESTED, EV_SCANCEL, EV_SCANCEL_FAILED,
               EV_USER_CANCEL, EV_ADOPTED, EV_REACTIVATED, EV_RESUBMITS_AMBIGUOUS, EV_RETRIED, EV_BLOCKED,
               EV_PENDING_TOO_LONG, EV_NODES_EXCLUDED, EV_EXCLUSION_CAPPED, EV_FOLLOWUP_ADDED,
               EV_FOLLOWUP_FAILED) + EFFECT_EVENTS

# Effects (SPEC 5.8): what an `on` rule does when its event happens, and where that stands.
# intent: recorded, not yet seen running; running: its worker holds the lock; waiting: a
# retry's backoff; done, failed, interrupted: final.
EFFECT_RUN, EFFECT_NOTIFY = "run", "notify"
EFFECT_KINDS = (EFFECT_RUN, EFFECT_NOTIFY)
EFF_INTENT, EFF_RUNNING, EFF_WAITING = "intent", "running", "waiting"
EFF_DONE, EFF_FAILED, EFF_INTERRUPTED = "done", "failed", "interrupted"
EFFECT_STATES = (EFF_INTENT, EFF_RUNNING, EFF_WAITING, EFF_DONE, EFF_FAILED, EFF_INTERRUPTED)
EFFECT_OPEN = (EFF_INTENT, EFF_RUNNING, EFF_WAITING)
# How one try of an effect ended, as the engine sees it (the retry decision's input).
TRY_OK, TRY_FAILED, TRY_RETRYABLE, TRY_INTERRUPTED, TRY_UNSTARTED = (
    "ok", "failed", "retryable", "interrupted", "unstarted")
# What a look at an effect's files says to do (section 7's effect_move).
MOVE_RECORD, MOVE_RUNNING, MOVE_START, MOVE_WAIT, MOVE_INTERRUPTED, MOVE_GIVE_UP = (
    "record", "running", "start", "wait", "interrupted", "give_up")
# Placeholders an `on` rule's command has besides the job's own (SPEC 5.8).
EFFECT_PLACEHOLDERS = ("event", "mode", "job_id", "attempt", "session", "reason")

# Node exclusion (SPEC 5.5): where an exclusion holds; sbatch's refusal when too few nodes are
# left (SLURM 22.05 and 24.11: ESLURM_REQUESTED_NODE_CONFIG_UNAVAILABLE).
NO_NODES_RE = re.compile(r"Requested node configuration is not available")
SCOPE_JOB, SCOPE_SESSION = "job", "session"
EXCLUSION_SCOPES = (SCOPE_JOB, SCOPE_SESSION)

# Follow-up jobs (SPEC 5.7): the parent statuses a `then` entry may wait for. Nesting is
# the only way to chain them, so a cycle cannot be written; the depth is bounded all the same.
FOLLOWUP_WHENS = (FINALIZED, STOPPED, CANCELLED)
MAX_FOLLOWUP_DEPTH = 4       # job.then[].then[].then[].then[]: no deeper
MAX_FOLLOWUPS = 16           # entries of one `then` list

# SLURM job states, from squeue(1) and sacct(1). Anything still able to run is active.
ACTIVE_STATES = frozenset((
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED",
    "POWER_UP_NODE", "UPDATE_DB"))
# States a job returns to when SLURM requeues it under the same id.
REQUEUE_STATES = frozenset(("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"))
TERMINAL_MODE = OrderedDict([
    ("COMPLETED", "success"), ("FAILED", "crash"), ("SPECIAL_EXIT", "crash"), ("LAUNCH_FAILED", "crash"),
    ("TIMEOUT", "timeout"), ("DEADLINE", "timeout"), ("NODE_FAIL", "node_fail"), ("BOOT_FAIL", "node_fail"),
    ("OUT_OF_MEMORY", "oom"), ("PREEMPTED", "preempted"), ("CANCELLED", "cancelled"), ("REVOKED", "cancelled")])

# squeue's pending reasons (%r) that mean the job can never start as submitted: the
# partition, its QOS or its account refuses the request itself, and only a change of the
# request (or of the cluster's configuration) lets it run. The names are SLURM's own
# (job_state_reason_string, the same in 22.05 and 24.11); a job pending with one of them
# is `blocked`. Left out on purpose: ReqNodeNotAvail (its "UnavailableNodes:..." are down,
# drained or reserved, and squeue cannot tell whether they come back), per-user and group
# limits (other jobs' ending frees them), holds, Priority, Resources and the like.
BLOCKED_REASONS = OrderedDict([
    ("PartitionTimeLimit", "the job's --time is above the partition's time limit; lower it or choose another "
     "partition"),
    ("PartitionNodeLimit", "the job asks for more (or fewer) nodes than the partition has or allows; change "
     "--nodes or the partition"),
    ("PartitionConfig", "the partition cannot give what the job asks for (CPUs or memory per node, its QOS or "
     "account); change the request or the partition"),
    ("BadConstraints", "no node can satisfy the job's request (--constraint, --mem, --cpus-per-task and the "
     "like); change it"),
    ("QOSMaxWallDurationPerJobLimit", "the job's --time is above its QOS's limit per job; lower it or choose "
     "another QOS"),
    ("QOSMaxCpuPerJobLimit", "the job asks for more CPUs than its QOS allows per job; ask for fewer"),
    ("QOSMaxNodePerJobLimit", "the job asks for more nodes than its QOS allows per job; ask for fewer"),
    ("QOSMaxMemoryPerJob", "the job asks for more memory than its QOS allows per job; ask for less"),
    ("QOSMaxGRESPerJob", "the job asks for more GPUs (GRES) than its QOS allows per job; ask for fewer"),
    ("QOSMaxCpuMinutesPerJobLimit", "the job's CPUs x --time is above its QOS's limit per job; lower either"),
    ("AssocMaxWallDurationPerJobLimit", "the job's --time is above its account's limit per job; lower it"),
    ("AssocMaxCpuPerJobLimit", "the job asks for more CPUs than its account allows per job; ask for fewer"),
    ("AssocMaxNodePerJobLimit", "the job asks for more nodes than its account allows per job; ask for fewer"),
    ("AssocMaxMemPerJob", "the job asks for more memory than its account allows per job; ask for less"),
    ("AssocMaxGRESPerJob", "the job asks for more GPUs (GRES) than its account allows per job; ask for fewer"),
    ("AssocMaxCpuMinutesPerJobLimit", "the job's CPUs x --time is above its account's limit per job; lower either"),
    ("InvalidAccount", "the job's account is not valid for this user; fix --account"),
    ("InvalidQOS", "the job's QOS is not valid for this user or account; fix --qos"),
    ("QOSNotAllowed", "the job's QOS may not be used in its partition; change --qos or the partition"),
    ("AccountNotAllowed", "the job's account may not use its partition; change --account or the partition"),
    ("DependencyNeverSatisfied", "a job it depends on ended so that its --dependency can never be met; fix or "
     "remove the dependency"),
])
# Common reasons that only say the job waits its turn, in plain words for status and events.
WAITING_REASONS = OrderedDict([
    ("Priority", "jobs of higher priority are ahead of it"),
    ("Resources", "it waits for nodes to become free"),
    ("Dependency", "it waits for the jobs it depends on"),
    ("BeginTime", "its start time (or a requeue's delay) has not come yet"),
    ("JobHeldUser", "it is held; `scontrol release` lets it run"),
    ("JobHeldAdmin", "an administrator holds it"),
    ("ReqNodeNotAvail", "nodes it needs are down, drained or reserved"),
    ("Reservation", "it waits for its reservation"),
    ("JobArrayTaskLimit", "its array already runs as many tasks as it may at once"),
    ("Licenses", "it waits for a license"),
    ("PartitionDown", "its partition is down"),
    ("PartitionInactive", "its partition is inactive"),
    ("QOSMaxJobsPerUserLimit", "the user runs as many jobs as the QOS allows"),
    ("AssocMaxJobsLimit", "the account runs as many jobs as it may"),
])
BLOCKED_LOOKS = 2   # answered squeue looks in a row showing a blocking reason before it is believed
MAX_REASON_CHARS = 200  # of squeue's reason text, what an attempt keeps (free text from slurmctld)

# Named times, in seconds.
ACCOUNTING_GRACE = 30.0      # how long a job squeue shows ended waits for sacct's record of it
FAST_FAILURE_SECONDS = 60.0  # a failure this soon after the start, twice alike: deterministic
LOST_AFTER_MIN = 300.0       # SLURM's default MinJobAge: the least default grace before "lost"
RUNAWAY_AFTER = 3 * 3600.0   # gone from squeue while sacct still calls it running: a runaway record
SACCT_WINDOW_SLACK = 86400.0  # sacct -S starts this long before the earliest intent asked about: a day
                              # of slack for a login node's clock that was wrong when it was recorded
THROTTLE_BACKOFF_MAX = 600.0  # cap of the wait after an sbatch refused for a queue limit
CANCEL_RESEND_MIN = 60.0     # a cancel SLURM took is sent again only if the job outlives this
SETTLE_MIN = 30.0            # least time a finalized job still RUNNING is watched for its end
SAVE_EVERY = 1.0             # while submitting or cancelling, results are saved this often
LOG_END_SLACK = 30.0         # a log written this long after SLURM's end of its job is still the job's (clocks differ)
CLOCK_JUMP = 5.0             # wall clock and monotonic clock disagreeing by more: the wall clock jumped
UNKNOWN_BACKOFF_DOUBLINGS = 20  # the wait between UNKNOWN cycles doubles at most this often
PAUSE_STEP = 0.5             # the monitor's sleep granularity: how soon a signal is honoured

# Sizes.
MAX_LOG_READ = 4 << 20       # per attempt and cycle: a runaway log cannot exhaust memory
MAX_ARG_BYTES = 100000       # one command-line argument (the kernel's limit is 128 KiB)
MAX_MATCH_CHARS = 4096       # of each log line, what a log_events pattern is matched against
LOG_HEAD_BYTES = 256         # a log's first bytes, hashed to see it truncated and rewritten
MAX_ARRAY_EXPANSION = 100000  # array tasks one parsed id may expand to
MAX_HOSTLIST_EXPANSION = 65536  # node names one SLURM hostlist ("gpu[001-128]") may expand to
MAX_EXCLUDED_NODES = 10000   # node_exclusion.max_nodes: --exclude stays one short argument
MAX_SWEEP_JOBS = 100000      # jobs one plan may hold: the grid's size is checked before it is expanded
MAX_CONFIG_BYTES = 16 << 20  # a config larger than this is refused before it is parsed
MAX_VALUE_CHARS = 4096       # a sweep value, a termination string, a log_events pattern
MAX_LOG_EVENTS = 100         # log_events entries
MAX_EXTRA_LOGS = 8           # monitoring.extra_logs entries (job.sbatch.error's file comes on top)
MAX_CAPTURES = 16            # distinct named groups over all log_events patterns (captured values)
MAX_CAPTURE_CHARS = 1024     # of each captured value: a longer one is cut
MAX_ATTEMPTS = 1000          # a policy's max_attempts
MAX_SECONDS = 30 * 86400.0   # any duration a user gives: backoffs, thresholds, grace periods
JOURNAL_TAIL_BYTES = 65536   # how much of the journal's end is read to find its last seq
COMPACT_BYTES = 1 << 20      # batches appended before a new generation of job files is written
FSYNC_THREADS = 16           # threads making a new plan's scripts durable together
LOAD_TRIES = 5               # times a reader racing a new generation reads again
LOG_CHECKPOINT = 900.0       # seconds a job's log progress alone may wait to be written
HEADER_EVENTS_MAX = 100      # events a header may keep in its outbox once the journal has them
STATUS_CELL_CHARS = 48       # a long value (path, sbatch error) in a `status` table; --json has it whole
WATCH_SECONDS = (1.0, 3600.0)  # `status --watch`: the bounds of its redraw interval
SUMMARY_MINUTES_DEFAULT = 30.0  # `monitor`: a quiet summary line after this long without an event
SUMMARY_MINUTES_MAX = 10080  # `monitor --summary-minutes`: at most a week between quiet summaries

# Crash points of the test hook (SPEC 11), in the order a cycle reaches them.
LOCK_TRIES = 5               # times a lock file deleted under our open is opened again

CRASH_POINTS = ("state_before_rename", "state_after_rename", "state_before_append", "state_mid_append",
                "state_after_append", "before_intent_write", "after_intent_write",
                "before_sbatch", "after_sbatch", "after_action_payload", "between_jobs",
                "before_scancel", "after_scancel", "archive_before_commit", "archive_after_commit",
                "after_followup_script", "effect_before_spawn", "effect_after_spawn", "effect_after_result")

# The effect engine (SPEC 5.8).
EFFECT_TAIL_BYTES = 2048     # of a command's output, what its history keeps (the end)
EFFECT_KILL_GRACE = 5.0      # a timed-out command's process group gets SIGTERM, then SIGKILL this much later
EFFECT_MAX_SPAWNS = 3        # workers started for one try that never said they started: then it failed
EFFECT_RETRYABLE_EXIT = 75   # a notify delivery's "try again later" (EX_TEMPFAIL; `_notify`)
MAX_ON_RULES = 100           # `on` entries
MAX_EFFECT_RETRIES = 100     # an `on` entry's retries
# The files of try N of an effect, <state_dir>/effects/<session>/<id>.<N><suffix>.
EFFECT_LOCK, EFFECT_SPEC, EFFECT_STARTED, EFFECT_OUT, EFFECT_RESULT = (
    ".lock", ".spec.json", ".started", ".out", ".result.json")
EFFECT_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); import autoexp; sys.exit(autoexp.main(sys.argv[2:]))"

# `archive` moves a finished session's files into <state_dir>/ARCHIVE_FOLDER/<id>/ (SPEC 6.4).
ARCHIVE_FOLDER = "archive"

# Notifications (SPEC 5.6): a webhook's payload formats, and what `_notify` exits with: the
# effect engine retries a NOTIFY_RETRY and reports anything else that is not NOTIFY_DELIVERED.
WEBHOOK_FORMATS = (FMT_SLACK, FMT_MATTERMOST, FMT_GENERIC) = ("slack", "mattermost", "generic")
NOTIFY_DELIVERED, NOTIFY_PERMANENT, NOTIFY_RETRY = 0, 1, 75  # 75: EX_TEMPFAIL, as sendmail says it
NOTIFY_EXITS = (NOTIFY_DELIVERED, NOTIFY_PERMANENT, NOTIFY_RETRY)
NOTIFY_DEFAULT_EVENTS = ("finalized", "stopped", "blocked")  # what a job's watcher wants to hear of
MAX_NOTIFY_TARGETS = 32
MAX_DIGEST_EVENTS = 1000     # events one digest message carries; later ones start the next
NOTIFY_START_SECONDS = 30    # a notification worker's time beyond its deliveries (starting Python)
MAX_NOTIFY_SECONDS = 300.0   # notify.timeout_seconds: one delivery, connect to last byte
MAX_NOTIFY_INPUT = 4 << 20   # the events `_notify` reads on stdin
MAX_NOTIFY_LINES = 50        # event lines in one message's text; the rest are counted
MAX_NOTIFY_EVENTS = 1000     # events in one generic payload (a digest of a huge pass is cut)
MAX_RESPONSE_BYTES = 65536   # of a webhook's answer, what is read: a chatty server cannot exhaust memory
MAX_SECRET_BYTES = 8192      # a webhook_file
MAX_EMAILS = 16              # addresses of one email target
OUTPUT_TAIL_BYTES = 2048     # of a mailer's or notify command's output, what is reported
MAILER_DIRS = ("/usr/sbin", "/usr/lib")  # where sendmail lives when it is not on a user's PATH


# ============================================================================
# 2. Errors and utilities
# ============================================================================

class AutoexpError(Exception):
    """Base of every error autoexp reports; main() prints "Error: ..." and exits with the
    exit code of the error's type."""

    exit_code = EXIT_FAILURE


class ConfigError(AutoexpError):
    """The config, an override or a command-line argument is wrong: the user must fix it."""

    exit_code = EXIT_USAGE


class SlurmError(AutoexpError):
    """A SLURM command failed in a way autoexp cannot work around."""


class SlurmMissing(SlurmError):
    """The SLURM commands are not on PATH: autoexp runs on the wrong machine."""

    exit_code = EXIT_USAGE


class SlurmUnavailable(SlurmError):
    """A query failed, timed out or printed something unparsable: the answer is UNKNOWN."""


class StateError(AutoexpError):
    """The state folder or a session/manifest file is missing, unreadable or corrupt."""

    exit_code = EXIT_USAGE


class StateWriteError(StateError):
    """A state file or folder could not be written or locked (a full disk, a lost mount)."""

    exit_code = EXIT_FAILURE


class LockedError(StateError):
    """Another live process holds the session lock."""

    exit_code = EXIT_LOCKED


class LockLostError(LockedError):
    """The lock file was deleted or replaced while this process held it."""


def iso_time(t):
    """Render an epoch time as UTC ISO-8601 with milliseconds (the state file's time format)."""
    if t is None:
        return None
    ms = int(round((t - int(t)) * 1000))
    secs = int(t)
    if ms == 1000:
        secs, ms = secs + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03dZ" % ms


def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (calendar.timegm's arithmetic,
    without its import or strptime's: a state file holds many times)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def parse_iso(text):
    """Inverse of iso_time(); None stays None; a malformed time is a ValueError."""
    if not text:
        return None
    if (len(text) < 19 or text[4] != "-" or text[7] != "-" or text[10] != "T" or text[13] != ":"
            or text[16] != ":"):
        raise ValueError("%r is not a time like 2026-11-29T08:24:33.123Z" % text)
    y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
    h, mi, se = int(text[11:13]), int(text[14:16]), int(text[17:19])
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and se <= 61):
        raise ValueError("%r is not a time" % text)
    t = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se
    frac = text[19:].rstrip("Z")
    if frac:
        if frac[0] != "." or not frac[1:].isdigit():
            raise ValueError("%r is not a time" % text)
        return t + float("0" + frac)
    return float(t)


def local_time(t):
    """Epoch -> 'YYYY-MM-DDTHH:MM:SS' in local time, the format sacct takes and prints."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def short_time(t):
    """Epoch -> compact local time for tables and event lines."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def clock_identity():
    """Which monotonic clock a reading comes from: this host, since its last boot. Two
    readings of one identity can be compared; others cannot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().decode("ascii", "replace").strip()
    except (IOError, OSError):
        boot = ""
    import socket
    return "%s %s" % (socket.gethostname(), boot)


def is_path(ref):
    """A session or plan given as a file path rather than as an id."""
    return ref.endswith(".json") or os.sep in ref


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd, data):
    """os.write until every byte landed: a short write (a quota, a file-size limit, a full
    disk) is continued, and a write that lands nothing is an error, never a silent loss."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "the write landed no bytes")
        view = view[n:]


def atomic_write(path, data, mode=0o600, crash_prefix=None):
    """Write bytes to path so that readers see the old or the new file, never a mix.

    temp file in the same folder, fsync, os.replace, fsync of the folder (the rename is
    only durable once the directory entry is on disk). Any failure is a StateWriteError
    that names the file; the temporary file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateWriteError("cannot write %s: %s" % (path, e.strerror or e))
    if crash_prefix:
        crash_point(crash_prefix + "_before_rename")
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise StateWriteError("cannot write %s: %s" % (path, e.strerror or e))
    if crash_prefix:
        crash_point(crash_prefix + "_after_rename")
    try:
        fsync_dir(folder)
    except OSError as e:
        raise StateWriteError("cannot sync folder %s: %s" % (folder, e.strerror or e))


def write_new_files(files, mode):
    """Write new files (path, bytes) in a folder nobody else writes (a claimed plan's), then
    make them durable together: written first, fsynced afterwards from a few threads, so the
    filesystem commits them in a handful of journal transactions instead of one per file
    (10,000 scripts: seconds instead of minutes on NFS). No temporary file is needed: what
    says a plan is complete is its manifest, written atomically after them."""
    folders = set()
    for path, data in files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise StateWriteError("cannot write %s: %s" % (path, e.strerror or e))
        folders.add(os.path.dirname(os.path.abspath(path)))

    def sync(path):
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            return "cannot write %s: %s" % (path, e.strerror or e)
    paths = [p for p, _ in files]
    if len(paths) > 8:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(FSYNC_THREADS) as pool:
            errors = [e for e in pool.map(sync, paths) if e]
    else:
        errors = [e for e in map(sync, paths) if e]
    if errors:
        raise StateWriteError(errors[0])
    for folder in sorted(folders):
        try:
            fsync_dir(folder)
        except OSError as e:
            raise StateWriteError("cannot sync folder %s: %s" % (folder, e.strerror or e))


def _no_constant(name):
    raise ValueError("%s is not a number JSON allows here; write a finite number" % name)


def _finite_float(text):
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("%s is too large to be a number here" % text)
    return value


def loads_json(text, object_pairs_hook=OrderedDict):
    """json.loads for every file autoexp reads: NaN, Infinity and numbers that overflow a
    float (1e999) are refused, and nesting too deep for the parser is a ValueError like
    any other bad JSON, not a RecursionError."""
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply")


def dump_json(obj):
    """The one JSON style of every file autoexp writes: sorted keys, indented, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def make_private_dir(path):
    """Create a folder and its missing parents as 0700; existing folders keep their mode."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_private_dir(os.path.dirname(path))
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        if e.errno != errno.EEXIST or not os.path.isdir(path):
            raise StateError("cannot create folder %s: %s; choose a writable place with --state-dir"
                             % (path, e.strerror or e))


_crash_counts = {}


def crash_point(name):
    """Test hook: AUTOEXP_CRASH_AT=<name>[:<nth>] makes the process die here, at once.

    It lets the crash harness stop autoexp between any two durable steps, the way
    SIGKILL or a power cut would. Inert when the variable is unset.
    """
    spec = os.environ.get("AUTOEXP_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    count = _crash_counts.get(name, 0) + 1
    _crash_counts[name] = count
    if count == int(nth or 1):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_CRASH_POINT)


TERMINAL_UNSAFE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text):
    """Text from job logs and SLURM with its escape sequences, NULs and bidi controls shown as
    \\xNN or \\uNNNN, never obeyed: by a terminal (Reporter) or a browser (report)."""
    return TERMINAL_UNSAFE_RE.sub(lambda m: "\\x%02x" % ord(m.group(0)) if ord(m.group(0)) < 256
                                  else "\\u%04x" % ord(m.group(0)), text)


class Reporter(object):
    """Where autoexp talks: results and changes on stdout, warnings on stderr.

    level 0 (-q) prints results and warnings only, 1 adds progress, 2 (-v) adds detail.
    Writes never fail on encoding: cron runs Python 3.6 with an ASCII locale.
    """

    __slots__ = ("level", "out", "err")

    def __init__(self, level=1, out=None, err=None):
        self.level = level
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    @staticmethod
    def write(stream, text):
        # text from job logs and SLURM reaches the terminal: its escape sequences, NULs and
        # bidi controls are shown as \xNN, never obeyed (JSON documents escape them already)
        text = terminal_safe(text)
        try:
            stream.write(text + "\n")
        except UnicodeEncodeError:
            enc = getattr(stream, "encoding", None) or "ascii"
            stream.write(text.encode(enc, "backslashreplace").decode(enc) + "\n")
        stream.flush()

    def quieter(self, level=0):
        """A reporter on the same streams that says less (submit's cycle inside `run`)."""
        return Reporter(min(self.level, level), self.out, self.err)

    def result(self, text):
        self.write(self.out, text)

    def info(self, text):
        if self.level >= 1:
            self.write(self.out, text)

    def detail(self, text):
        if self.level >= 2:
            self.write(self.out, text)

    def warn(self, text):
        self.write(self.err, "warning: " + text)

    def error(self, text):
        self.write(self.err, "Error: " + text)


MAX_NAME_CHARS = 128
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,%d}$" % (MAX_NAME_CHARS - 1))
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_safe_name(value, what):
    """Job names, plan ids and session ids become file names and SLURM job names."""
    if not isinstance(value, str) or not SAFE_NAME_RE.match(value) or value in (".", ".."):
        raise ConfigError("%s %r is not a safe name: use 1-128 characters from A-Z a-z 0-9 . _ + -, "
                          "starting with a letter or digit" % (what, value))
    return value


def sbatch_quote(value):
    """Quote a value for an '#SBATCH --key=value' line the way sbatch's own parser reads it.

    sbatch splits directive lines on whitespace, groups with quotes, takes a backslash as an
    escape and an unquoted '#' as the start of a comment; control characters are refused
    before we get here, because nothing can quote a newline in a directive.
    """
    if value and not re.search(r"[\s\"'\\#]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# A webhook URL is a password (whoever has it posts to the channel): only its scheme and
# host are ever shown. The pattern finds URLs in any text autoexp prints or records.
URL_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/\s@?#]*@)?([^/\s?#\"'<>]*)"
                    r"((?:[/?#](?:[^\s\"'<>]*[^\s\"'<>.,:;!?)\]])?)?)")  # a sentence's final ':' or '.' is not the URL's
REDACTED = "***"


def redact_url(url):
    """`https://hooks.example.com/***`: a webhook URL as autoexp ever shows it."""
    m = URL_RE.search(url or "")
    if not m:
        return REDACTED
    return m.group(1) + m.group(2) + ("/" + REDACTED if m.group(3) not in ("", "/") else "")


def redact(text, secrets=()):
    """text with every URL cut to its scheme and host, and every secret (a URL's path
    printed alone, say) replaced: what a message, error or output tail may say."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact_url(secret))
            tail = URL_RE.sub(lambda m: m.group(3), secret)
            if len(tail) > 8:  # a URL's path and query alone are the secret too
                text = text.replace(tail, "/" + REDACTED)
    return URL_RE.sub(lambda m: redact_url(m.group(0)), text)


# ============================================================================
# 3. Config and plan
# ============================================================================

# One table per config section: validation, defaults, --help and SPEC section 2 all come
# from these (tests/test_spec.py holds SPEC's tables against them).
TOP_KEYS = ("project", "state_dir", "sweep", "job", "monitoring", "restart", "node_exclusion", "notify",
            "description", "on")
JOB_KEYS = ("name", "command", "template", "log", "sbatch", "env", "workdir", "array_log",
            "array_max_running", "then")
LOG_EVENT_KEYS = ("name", "pattern", "mode", "match", "exclude_nodes")
LOG_EVENT_REQUIRED = ("name", "pattern")
FOLLOWUP_KEYS = ("name", "command", "when", "log", "sbatch", "env", "then")
FOLLOWUP_REQUIRED = ("name", "command")
RESERVED_PARAMS = ("project", "name", "index", "plan_id")


class Key(NamedTuple):
    """One monitoring key: its type, default and bounds, and what it means."""
    name: str
    kind: str  # "number", "integer", "string", "bool", "log_events" or "paths"
    default: object
    minimum: Optional[float] = None  # numbers: the least value allowed
    exclusive: bool = False  # numbers: 0 itself is not allowed (> 0), whatever the minimum
    maximum: Optional[float] = None  # numbers: the largest value allowed; strings: the longest
    nullable: bool = False  # null is allowed (and means "off" or "derived")
    help: str = ""


MONITORING_SCHEMA = (
    Key("interval_seconds", "number", 60, 0.1, True, 86400, help="time between cycles"),
    Key("termination_string", "string", None, maximum=MAX_VALUE_CHARS, nullable=True,
        help="a log line containing it means success"),
    Key("inactivity_threshold_seconds", "number", None, 0, True, MAX_SECONDS, nullable=True,
        help="a RUNNING job whose log has not grown for this long is a stall"),
    Key("max_pending_seconds", "number", None, 0, True, MAX_SECONDS, nullable=True,
        help="a job PENDING for this long (since this monitor first saw it so) is pending_too_long"),
    Key("log_events", "log_events", [], maximum=MAX_LOG_EVENTS,
        help="{name, pattern, mode, match}: a matching log line puts the attempt in mode"),
    Key("extra_logs", "paths", [], maximum=MAX_EXTRA_LOGS,
        help="more files to watch besides the log (templates, like job.log)"),
    Key("lost_after_seconds", "number", None, 0, False, MAX_SECONDS, nullable=True,
        help="grace before a job neither squeue nor sacct knows is lost (null: max(3 x interval, 300))"),
    Key("slurm_timeout_seconds", "number", 60, 0, True, 3600, help="timeout of each SLURM command"),
    Key("unknown_backoff_max_seconds", "number", 600, 0, True, 86400,
        help="cap of the wait between cycles while SLURM does not answer"),
    Key("submit_retries", "integer", 5, 0, False, 1000,
        help="retries of an sbatch that failed without a clear refusal"),
    Key("submit_backoff_seconds", "number", 60, 0, False, 86400,
        help="first wait before such a retry; doubles each time"),
    Key("debug_sync", "bool", False, help="print every job's status and states after each cycle"),
    Key("max_running", "integer", None, 1, False, MAX_SWEEP_JOBS, nullable=True,
        help="at most this many of the session's jobs queued or running at once; the others wait for a slot"),
    Key("action_workers", "integer", 4, 1, False, 64,
        help="at most this many `on` commands and notifications of the session run at once"),
)

# node_exclusion (SPEC 5.5): which failures keep a job off the nodes it ran on, for how long.
NODE_EXCLUSION_SCHEMA = (
    Key("on", "modes", ["node_fail"], help="modes whose attempt's nodes are excluded from later attempts"),
    Key("scope", "string", SCOPE_JOB, help="job: the failed job's later attempts; session: every job's"),
    Key("max_attempts", "integer", None, 1, False, MAX_ATTEMPTS, nullable=True,
        help="an exclusion holds for this many later attempts (null: no limit)"),
    Key("max_hours", "number", None, 0, True, MAX_SECONDS / 3600, nullable=True,
        help="an exclusion holds for this many hours (null: no limit)"),
    Key("max_nodes", "integer", 16, 0, False, MAX_EXCLUDED_NODES,
        help="at most this many nodes excluded at once (0: none); further ones are not"),
)

# notify (SPEC 5.6): where messages about a sweep go, and which events send one.
NOTIFY_SCHEMA = (
    Key("targets", "targets", {}, maximum=MAX_NOTIFY_TARGETS,
        help="name -> target (below); an `on` rule's notify names one"),
    Key("events", "events", list(NOTIFY_DEFAULT_EVENTS),
        help="event kinds that notify every target without its own events"),
    Key("digest", "bool", False, help="one message per target and pass instead of one per event"),
    Key("timeout_seconds", "number", 10, 0, True, MAX_NOTIFY_SECONDS,
        help="one delivery's bound, from connecting to the last byte of the answer"),
    Key("retries", "integer", 5, 0, False, MAX_EFFECT_RETRIES,
        help="deliveries after a first that failed and may succeed later (timeout, refused, 5xx, 429)"),
    Key("backoff_seconds", "number", 30, 0, False, 86400,
        help="wait before the first such retry; doubles each time"),
)
# One target: exactly one of the first five keys says where its messages go.
NOTIFY_TARGET_SCHEMA = (
    Key("webhook", "url", None, nullable=True, help="the webhook URL itself (kept in the plan: prefer the next two)"),
    Key("webhook_env", "string", None, nullable=True, help="an environment variable holding the webhook URL"),
    Key("webhook_file", "string", None, nullable=True,
        help="a file holding the webhook URL, readable by its owner only (chmod 600)"),
    Key("email", "emails", None, nullable=True, help="an address or a list of addresses: mailed by sendmail or mail"),
    Key("command", "string", None, maximum=MAX_VALUE_CHARS, nullable=True,
        help="a bash command given the generic JSON payload on stdin"),
    Key("format", "string", FMT_SLACK, help="a webhook's payload: slack, mattermost or generic"),
    Key("events", "events", None, nullable=True, help="event kinds for this target (null: notify.events)"),
)
NOTIFY_TARGET_KINDS = tuple(k.name for k in NOTIFY_TARGET_SCHEMA[:5])


class Policy(NamedTuple):
    """What to do when an attempt ends in a mode; the field defaults are the key defaults."""
    action: str
    max_attempts: int = 3
    backoff_seconds: float = 0.0
    backoff_max_seconds: float = 3600.0
    sbatch: Optional[dict] = None  # restarts only: sbatch options of the next attempt (SPEC 5.4)


POLICY_KEYS = Policy._fields
UNLISTED_POLICY = Policy(STOP)  # a mode with no policy (a log_events mode, a hand-edited config)
DEFAULT_POLICIES = OrderedDict([
    ("success", {"action": FINALIZE}),
    ("incomplete", {"action": RESTART, "max_attempts": 3}),
    ("crash", {"action": STOP}),
    ("timeout", {"action": RESTART, "max_attempts": 3}),
    # a minute's backoff: SLURM itself requeues such jobs (JobRequeue, PreemptMode=REQUEUE),
    # and autoexp follows a requeue it sees during the backoff instead of adding a copy
    ("node_fail", {"action": RESTART, "max_attempts": 3, "backoff_seconds": 60}),
    ("oom", {"action": STOP}),
    ("preempted", {"action": RESTART, "max_attempts": 10, "backoff_seconds": 60, "backoff_max_seconds": 60}),
    ("cancelled", {"action": STOP}),
    ("stall", {"action": RESTART, "max_attempts": 2}),
    ("lost", {"action": RESTART, "max_attempts": 3}),
    # a blocked job can never start as submitted: cancelled, and its reason said
    ("blocked", {"action": STOP}),
    # waiting long is no fault of the job: an event says so, it keeps its place in the queue
    ("pending_too_long", {"action": IGNORE}),
])


def policy_for(policies, mode):
    return policies.get(mode) or UNLISTED_POLICY


# autoexp owns these directives: the job must stay findable (name, tag) and readable (log).
OWNED_SBATCH = OrderedDict([
    ("job-name", "job.name"), ("output", "job.log"), ("comment", "nothing: autoexp tags its jobs with it"),
    ("array", "submit --array"), ("chdir", "job.workdir"), ("parsable", "nothing"),
    ("wrap", "job.command"), ("clusters", "nothing: autoexp watches the default cluster"),
    ("wait", "nothing: autoexp waits for jobs itself")])
OWNED_SHORT = {"J": "job-name", "o": "output", "D": "chdir", "a": "array", "M": "clusters", "W": "wait"}
# sbatch's short options that take an argument (the rest of a cluster like -Qa0-2 is it);
# -k takes an optional one, only attached. From sbatch(1) of SLURM 22.05 and 24.11.
SHORT_WITH_ARG = frozenset("ABCDFGJLMNSabcdeimnopqtwxk")
SBATCH_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]+$")  # long option names: two characters at least
LOG_PATTERN_RE = re.compile(r"%(\d*)(.)")


def owned_sbatch_option(option, short=OWNED_SHORT):
    """The option autoexp sets itself that `option` would set: sbatch takes any unambiguous
    prefix of a long option (--out is --output), the short forms (-J, -ofile) and clusters
    of short options as getopt reads them (-Qa0-2 is --quiet --array=0-2)."""
    if option.startswith("--"):
        name = option[2:].split("=", 1)[0]
        for owned in OWNED_SBATCH:
            if name and owned.startswith(name):
                return owned
        return None
    if option.startswith("-"):
        for ch in option[1:]:
            if ch in short:
                return short[ch]
            if ch in SHORT_WITH_ARG:
                return None  # the rest of the cluster is this option's argument
    return None


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


class _Checker(object):
    """Validation helper that names the file and the dotted key in every message."""

    __slots__ = ("source",)

    def __init__(self, source):
        self.source = source

    def fail(self, key, message):
        raise ConfigError("%s: %s: %s" % (self.source, key, message))

    def obj(self, value, key, allowed):
        if not isinstance(value, dict):
            self.fail(key, "must be an object, not %s" % _type_name(value))
        for k in value:
            if k not in allowed and not k.startswith("_"):
                self.fail(key + "." + k if key else k,
                          "unknown key (known keys: %s; keys starting with '_' are comments)"
                          % ", ".join(allowed))
        return value

    def string(self, value, key, allow_empty=False):
        if not isinstance(value, str):
            self.fail(key, "must be a string, not %s" % _type_name(value))
        if not allow_empty and not value.strip():
            self.fail(key, "must not be empty")
        return value

    def number(self, value, key, minimum=None, positive=False, integer=False, maximum=None):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.fail(key, "must be %s, not %s" % ("an integer" if integer else "a number", _type_name(value)))
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(key, "must be a finite number, not %s" % value)
        if positive and value <= 0:
            self.fail(key, "must be greater than 0, not %s" % value)
        if minimum is not None and value < minimum:
            self.fail(key, "must be at least %s, not %s" % (minimum, value))
        if maximum is not None and value > maximum:
            self.fail(key, "must be at most %s, not %s" % (maximum, _short_number(value)))
        return value

    def key(self, spec, value, key):
        """Check one value against its schema entry."""
        if value is None and spec.nullable:
            return
        if spec.kind in ("number", "integer"):
            self.number(value, key, minimum=spec.minimum, positive=spec.exclusive,
                        integer=spec.kind == "integer", maximum=spec.maximum)
        elif spec.kind == "string":
            self.string(value, key)
            if spec.maximum is not None and len(value) > spec.maximum:
                self.fail(key, "is longer than %d characters" % spec.maximum)
        elif spec.kind == "bool" and not isinstance(value, bool):
            self.fail(key, "must be true or false")


def _short_number(value):
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def _json_loads_strict(text, source):
    def no_duplicates(pairs):
        obj = OrderedDict()
        for k, v in pairs:
            if k in obj:
                raise ConfigError("%s: key %r appears twice in the same object" % (source, k))
            obj[k] = v
        return obj
    try:
        return loads_json(text, object_pairs_hook=no_duplicates)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError("%s: not valid JSON: %s" % (source, e))


def load_config_file(path):
    # A name the locale could not decode holds surrogates: refuse it here (main() says how
    # to fix the locale) rather than record a path that prints as garbage.
    path.encode("utf-8")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except (IOError, OSError) as e:
        raise ConfigError("cannot read config %s: %s" % (path, e.strerror or e))
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("%s: larger than %d MiB; a config is a few KB (list a large sweep's values "
                          "as a grid)" % (path, MAX_CONFIG_BYTES >> 20))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("%s: not UTF-8 text (byte %d)" % (path, e.start))
    data = _json_loads_strict(text, path)
    if not isinstance(data, dict):
        raise ConfigError("%s: the config must be a JSON object, not %s" % (path, _type_name(data)))
    return data


def parse_override(text):
    """'a.b.c=VALUE' -> (['a','b','c'], value); VALUE is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError("override %r: expected KEY=VALUE, e.g. -o monitoring.interval_seconds=30" % text)
    parts = key.strip().split(".")
    if not all(re.match(r"^[A-Za-z0-9_-]+$", p) for p in parts):
        raise ConfigError("override %r: %r is not a dotted key like monitoring.interval_seconds" % (text, key))
    if raw == "":
        raise ConfigError("override %r: the value is empty; write %s='\"\"' for an empty string" % (text, key))
    try:
        value = _json_loads_strict(raw, "override %r" % text)
    except ConfigError as e:
        if "appears twice" in str(e):
            raise
        value = raw
    return parts, value


def apply_overrides(config, overrides):
    """Merge dotted overrides into a config dict (in place); validation comes after."""
    for text in overrides or ():
        parts, value = parse_override(text)
        node = config
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = OrderedDict()
            if not isinstance(nxt, dict):
                raise ConfigError("override %r: %s is %s, not an object" %
                                  (text, ".".join(parts[:i + 1]), _type_name(nxt)))
            node = nxt
        node[parts[-1]] = value
    return config


class LogEvent(NamedTuple):
    name: str
    pattern: str
    mode: Optional[str]  # None: a match is an event (and its captures) only; the attempt goes on
    match: str = MATCH_REGEX
    exclude_nodes: bool = False  # a match keeps the job off its nodes (or off the one named by (?P<node>))


class NodeExclusion(namedtuple("_NodeExclusion", [k.name for k in NODE_EXCLUSION_SCHEMA])):
    """The session's node_exclusion config, typed (one field per NODE_EXCLUSION_SCHEMA key)."""

    __slots__ = ()


def validate_node_exclusion(ne, monitoring, c, key="node_exclusion"):
    """Fill defaults into a node_exclusion dict and check it against the modes there are."""
    c.obj(ne, key, [k.name for k in NODE_EXCLUSION_SCHEMA])
    out = OrderedDict()
    for spec in NODE_EXCLUSION_SCHEMA:
        out[spec.name] = ne.get(spec.name, spec.default)
        c.key(spec, out[spec.name], key + "." + spec.name)
    modes = set(MODES) | set(ev.get("mode") for ev in monitoring["log_events"]) - {None}
    if not isinstance(out["on"], list) or not all(isinstance(m, str) for m in out["on"]):
        c.fail(key + ".on", "must be a list of mode names")
    for m in out["on"]:
        if m not in modes:
            c.fail(key + ".on", "%r is not a mode (built-in modes: %s; a log_events entry may add its own)"
                   % (m, ", ".join(MODES)))
    out["on"] = list(out["on"])
    if out["scope"] not in EXCLUSION_SCOPES:
        c.fail(key + ".scope", "must be one of %s, not %r" % ("/".join(EXCLUSION_SCOPES), out["scope"]))
    return out


def make_node_exclusion(d):
    """The typed NodeExclusion of a validated dict; a session planned before node_exclusion
    existed (no such key) gets the defaults."""
    if d is None:
        d = validate_node_exclusion(OrderedDict(), {"log_events": []}, _Checker("node_exclusion"))
    return NodeExclusion(tuple(d["on"]), d["scope"],
                         None if d["max_attempts"] is None else int(d["max_attempts"]),
                         None if d["max_hours"] is None else float(d["max_hours"]), int(d["max_nodes"]))


EMAIL_RE = re.compile(r"^[A-Za-z0-9_%+][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def notify_event_kinds(monitoring):
    """The event kinds a notify list may name: the journal's, one `log:<name>` per log_events
    entry and `log:success` (the termination string's)."""
    names = ["success"] + [ev["name"] for ev in monitoring["log_events"]]
    return [k for k in EVENT_KINDS if not k.startswith(EV_LOG_PREFIX)] + [EV_LOG_PREFIX + n for n in names]


def _check_event_list(value, key, kinds, c):
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        c.fail(key, "must be a list of event kinds, like %s" % json.dumps(list(NOTIFY_DEFAULT_EVENTS)))
    for k in value:
        if k not in kinds:
            c.fail(key, "%r is not an event kind (known: %s)" % (k, ", ".join(kinds)))
        if k.startswith("notify_"):
            # a notification about a notification would set itself off without end
            c.fail(key, "%r: a notification's own events notify nobody (an `on` rule with `run` may act on "
                   "them)" % k)
    return list(value)


def check_webhook_url(url, key, c):
    """A webhook URL must be http(s) with a host; an error shows only its scheme and host."""
    shown = redact_url(url)
    m = re.match(r"^(https?)://([^/\s?#@]+@)?([^/\s?#]+)", url)
    if not m or CONTROL_RE.search(url) or re.search(r"\s", url):
        c.fail(key, "%s is not an http:// or https:// URL with a host" % shown)
    if m.group(2):
        c.fail(key, "%s: a user name or password in the URL is not supported" % shown)
    if len(url) > 2048:
        c.fail(key, "%s is longer than 2048 characters" % shown)
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname  # a bad port or an unclosed [IPv6 raises
    except ValueError as e:
        c.fail(key, "%s is not a URL autoexp can post to: %s" % (shown, e))
    if not host or (port is not None and not 0 < port < 65536):
        c.fail(key, "%s has no host, or a port outside 1-65535" % shown)
    return url


def read_webhook_file(path):
    """The URL a webhook_file holds, refused unless it is a regular file of this user that
    nobody else can read (a URL is a password): the error says how to fix it."""
    full = os.path.expanduser(path)
    try:
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ConfigError("webhook_file %s: %s; write the webhook URL into it and run: chmod 600 %s"
                          % (path, e.strerror or e, shlex.quote(full)))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("webhook_file %s is not a regular file" % path)
        if st.st_uid != os.geteuid():
            raise ConfigError("webhook_file %s belongs to another user (uid %d); it must be your own file"
                              % (path, st.st_uid))
        if st.st_mode & 0o077:
            raise ConfigError("webhook_file %s can be read by others (mode %04o); a webhook URL is a password: "
                              "run: chmod 600 %s" % (path, stat.S_IMODE(st.st_mode), shlex.quote(full)))
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    lines = [x.strip() for x in data[:MAX_SECRET_BYTES].decode("utf-8", "replace").splitlines() if x.strip()]
    if len(data) > MAX_SECRET_BYTES or len(lines) != 1:
        raise ConfigError("webhook_file %s must hold one line: the webhook URL" % path)
    return lines[0]


def validate_notify(notify, monitoring, c, key="notify"):
    """Fill defaults into a notify dict and check its targets; secrets stay where they are
    (an environment variable is read at delivery), but a webhook_file is checked now."""
    c.obj(notify, key, [k.name for k in NOTIFY_SCHEMA])
    kinds = notify_event_kinds(monitoring)
    out = OrderedDict()
    for spec in NOTIFY_SCHEMA:
        out[spec.name] = notify.get(spec.name, spec.default)
        c.key(spec, out[spec.name], key + "." + spec.name)
    out["events"] = _check_event_list(out["events"], key + ".events", kinds, c)
    targets = c.obj(out["targets"], key + ".targets", list(out["targets"]))
    names = [n for n in targets if not n.startswith("_")]
    if len(names) > MAX_NOTIFY_TARGETS:
        c.fail(key + ".targets", "has %d targets; at most %d" % (len(names), MAX_NOTIFY_TARGETS))
    out["targets"] = OrderedDict()
    for name in names:
        tkey = "%s.targets.%s" % (key, name)
        if not SAFE_NAME_RE.match(name):
            c.fail(tkey, "a target's name must be a safe name (A-Z a-z 0-9 . _ + -)")
        out["targets"][name] = _validate_target(targets[name], tkey, kinds, c)
    return out


def _validate_target(target, key, kinds, c):
    c.obj(target, key, [k.name for k in NOTIFY_TARGET_SCHEMA])
    given = [k for k in NOTIFY_TARGET_KINDS if target.get(k) is not None]
    if len(given) != 1:
        c.fail(key, "give exactly one of %s (given: %s)" % (", ".join(NOTIFY_TARGET_KINDS), ", ".join(given) or "none"))
    out = OrderedDict()
    for spec in NOTIFY_TARGET_SCHEMA:
        value = out[spec.name] = target.get(spec.name, spec.default)
        k = key + "." + spec.name
        if spec.kind == "url" and value is not None:
            check_webhook_url(c.string(value, k), k, c)
        elif spec.kind == "emails" and value is not None:
            addrs = [value] if isinstance(value, str) else value
            if not isinstance(addrs, list) or not addrs or len(addrs) > MAX_EMAILS:
                c.fail(k, "must be an address or a list of 1 to %d addresses" % MAX_EMAILS)
            for a in addrs:
                if not isinstance(a, str) or not EMAIL_RE.match(a):
                    c.fail(k, "%r is not an address autoexp mails to (name@host, no spaces or quotes)" % (a,))
            out[spec.name] = list(addrs)
        elif spec.kind == "events" and value is not None:
            out[spec.name] = _check_event_list(value, k, kinds, c)
        else:
            c.key(spec, value, k)
    if out["format"] not in WEBHOOK_FORMATS:
        c.fail(key + ".format", "must be one of %s, not %r" % ("/".join(WEBHOOK_FORMATS), out["format"]))
    if "format" in target and given[0] not in ("webhook", "webhook_env", "webhook_file"):
        c.fail(key + ".format", "applies to webhooks only")
    if out["webhook_env"] is not None and not IDENT_RE.match(out["webhook_env"]):
        c.fail(key + ".webhook_env", "is not an environment variable name")
    if out["webhook_file"] is not None:
        try:
            url = read_webhook_file(out["webhook_file"])
        except ConfigError as e:
            c.fail(key + ".webhook_file", str(e))
        check_webhook_url(url, key + ".webhook_file", c)
    return out


def make_notify(d):
    """A session's notify config with its defaults; a plan without one has no targets."""
    if d is None:
        return validate_notify(OrderedDict(), {"log_events": []}, _Checker("notify"))
    return d


def redacted_config(config):
    """A copy of a config whose inline webhook URLs show only their scheme and host (the
    report prints the plan's config)."""
    targets = ((config or {}).get("notify") or {}).get("targets") or {}
    if not any(isinstance(t, dict) and t.get("webhook") for t in targets.values()):
        return config
    out = json.loads(json.dumps(config), object_pairs_hook=OrderedDict)
    for t in out["notify"]["targets"].values():
        if isinstance(t, dict) and isinstance(t.get("webhook"), str):
            t["webhook"] = redact_url(t["webhook"])
    return out


class Monitoring(namedtuple("_Monitoring", [k.name for k in MONITORING_SCHEMA])):
    """The session's monitoring config, typed (one field per MONITORING_SCHEMA key)."""

    __slots__ = ()

    @property
    def lost_after(self):
        """Grace before a job that SLURM no longer knows is called lost: a few cycles, at
        least SLURM's default MinJobAge (300 s), so sacct's lag can never cause it."""
        if self.lost_after_seconds is not None:
            return self.lost_after_seconds
        return max(3 * self.interval_seconds, LOST_AFTER_MIN)

    @property
    def unqueued_after(self):
        """How long after an sbatch error a lookup by tag must stay empty before autoexp
        believes nothing was queued: a job that ran at once and left squeue (a short
        MinJobAge) reaches sacct only after accounting's lag."""
        return min(ACCOUNTING_GRACE, self.lost_after)


def validate_monitoring(mon, c, key="monitoring"):
    """Fill defaults into a monitoring dict and check it; returns a plain dict."""
    c.obj(mon, key, [k.name for k in MONITORING_SCHEMA])
    out = OrderedDict()
    for spec in MONITORING_SCHEMA:
        out[spec.name] = mon.get(spec.name, spec.default)
        c.key(spec, out[spec.name], key + "." + spec.name)
    term = out["termination_string"]
    if term is not None and ("\n" in term or "\r" in term):
        c.fail(key + ".termination_string", "contains a line break, so no log line can ever contain it")
    _validate_log_events(out["log_events"], c, key + ".log_events")
    _validate_extra_logs(out["extra_logs"], c, key + ".extra_logs")
    return out


try:  # the regular expression parser: re._parser since 3.11, sre_parse before
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as _sre_parse


def risky_regex(pattern):
    """Why a log_events pattern could take exponential time on a hostile line (a repetition
    inside a repetition, or an alternation under one: `(a+)+$`, `(a|a)*$`), or None. Python's
    re has no timeout, and a monitor stuck in one search holds its lock for good."""
    def walk(items, in_repeat):
        for op, av in items:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, hi, sub = av
                repeats = hi is _sre_parse.MAXREPEAT or hi > 1
                # a count that can vary (x+, x{1,3}) under another repetition gives the engine
                # exponentially many ways to split a line; a fixed one (\d{2}) or x? gives none
                if in_repeat and repeats and lo != hi:
                    return "a repetition inside a repetition"
                why = walk(sub, in_repeat or repeats)
                if why:
                    return why
            elif name == "BRANCH":
                if in_repeat:
                    return "an alternation inside a repetition"
                for sub in av[1]:
                    why = walk(sub, in_repeat)
                    if why:
                        return why
            elif name in ("SUBPATTERN", "ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
                why = walk(av[-1], in_repeat)
                if why:
                    return why
            elif name == "GROUPREF_EXISTS":
                for sub in av[1:]:
                    if sub is not None:
                        why = walk(sub, in_repeat)
                        if why:
                            return why
        return None
    return walk(_sre_parse.parse(pattern), False)


def _validate_log_events(events, c, key):
    if not isinstance(events, list):
        c.fail(key, "must be a list of {name, pattern, mode[, match]}")
    if len(events) > MAX_LOG_EVENTS:
        c.fail(key, "has %d entries; at most %d are allowed" % (len(events), MAX_LOG_EVENTS))
    seen, groups = set(), set()
    for i, ev in enumerate(events):
        k = "%s[%d]" % (key, i)
        c.obj(ev, k, LOG_EVENT_KEYS)
        for field in LOG_EVENT_REQUIRED:
            if field not in ev:
                c.fail(k, "missing %r" % field)
        name = c.string(ev["name"], k + ".name")
        if not IDENT_RE.match(name):
            c.fail(k + ".name", "%r must be an identifier (letters, digits, _)" % name)
        if name in seen:
            c.fail(k + ".name", "%r is used twice" % name)
        if name == MODE_SUCCESS:
            c.fail(k + ".name", "'success' is the termination string's event; choose another name")
        seen.add(name)
        pattern = c.string(ev["pattern"], k + ".pattern")
        if len(pattern) > MAX_VALUE_CHARS:
            c.fail(k + ".pattern", "is longer than %d characters" % MAX_VALUE_CHARS)
        match = ev.get("match", MATCH_REGEX)
        if match not in LOG_EVENT_MATCHES:
            c.fail(k + ".match", "must be %s, not %r" % (" or ".join(LOG_EVENT_MATCHES), match))
        if match == MATCH_SUBSTRING:
            if "\n" in pattern or "\r" in pattern:
                c.fail(k + ".pattern", "contains a line break, so no log line can ever contain it")
        else:
            try:
                re.compile(pattern)
                why = risky_regex(pattern)
            except (re.error, RecursionError, OverflowError) as e:
                c.fail(k + ".pattern", "invalid regular expression %r: %s (for a plain string, give "
                       "\"match\": \"substring\")" % (pattern, e))
            if why:
                c.fail(k + ".pattern", "%r has %s, which can take exponential time on some lines; write it "
                       "without nesting (e.g. 'a+' rather than '(a+)+')" % (pattern, why))
        mode = ev.get("mode")
        if mode is not None:
            mode = c.string(mode, k + ".mode")
            if not IDENT_RE.match(mode):
                c.fail(k + ".mode", "%r must be an identifier" % mode)
        if match == MATCH_REGEX:
            for group in re.compile(pattern).groupindex:
                groups.add(group)
                if group in RESERVED_PARAMS:
                    c.fail(k + ".pattern", "group (?P<%s>) has the name of a placeholder autoexp fills; choose "
                           "another name" % group)
            if len(groups) > MAX_CAPTURES:
                c.fail(key, "name %d different groups; at most %d captured values are kept" % (len(groups), MAX_CAPTURES))
        if "exclude_nodes" in ev and not isinstance(ev["exclude_nodes"], bool):
            c.fail(k + ".exclude_nodes", "must be true or false")
        if ev.get("exclude_nodes") and ev.get("match") == "substring" and "(?P<node>" in pattern:
            c.fail(k + ".pattern", "a substring has no groups: (?P<node>...) would be matched as text and "
                   "every node of the attempt blamed; use \"match\": \"regex\" to name the node")


def _validate_extra_logs(paths, c, key):
    if not isinstance(paths, list):
        c.fail(key, "must be a list of paths")
    if len(paths) > MAX_EXTRA_LOGS:
        c.fail(key, "has %d entries; at most %d are allowed" % (len(paths), MAX_EXTRA_LOGS))
    for i, path in enumerate(paths):
        k = "%s[%d]" % (key, i)
        c.string(path, k)
        if len(path) > MAX_VALUE_CHARS:
            c.fail(k, "is longer than %d characters" % MAX_VALUE_CHARS)
        check_log_template(path, k, c)


def validate_restart(restart, monitoring, c):
    """Fill the default policies in and check every entry; returns a plain dict."""
    if not isinstance(restart, dict):
        c.fail("restart", "must be an object mapping a mode to a policy")
    custom = set(ev.get("mode") for ev in monitoring["log_events"]) - {None}
    out = OrderedDict((m, dict(p)) for m, p in DEFAULT_POLICIES.items())
    for mode, pol in restart.items():
        if mode.startswith("_"):
            continue
        k = "restart." + mode
        if mode not in MODES and mode not in custom:
            c.fail(k, "unknown mode (built-in modes: %s; a log_events entry may add its own)" % ", ".join(MODES))
        c.obj(pol, k, POLICY_KEYS)
        if "action" not in pol:  # {"max_attempts": 5} refines the mode's default policy
            pol = dict(out.get(mode, {"action": UNLISTED_POLICY.action}), **pol)
        action = pol.get("action")
        if action not in ACTIONS:
            c.fail(k + ".action", "must be one of %s, not %r" % ("/".join(ACTIONS), action))
        if "max_attempts" in pol:
            c.number(pol["max_attempts"], k + ".max_attempts", positive=True, integer=True, maximum=MAX_ATTEMPTS)
        elif action == RESTART:
            pol = dict(pol, max_attempts=Policy(RESTART).max_attempts)
        for field in ("backoff_seconds", "backoff_max_seconds"):
            if field in pol:
                c.number(pol[field], k + "." + field, minimum=0, maximum=MAX_SECONDS)
        if mode in PENDING_MODES and action == FINALIZE:
            c.fail(k + ".action", "a %s job never ran: finalize would leave it queued and unwatched; use "
                   "stop, restart or ignore" % mode)
        if "sbatch" in pol:
            if pol["action"] != RESTART:
                c.fail(k + ".sbatch", "only a restart submits a next attempt; remove sbatch or use "
                       "action restart")
            pol = dict(pol, sbatch=_validate_policy_sbatch(pol["sbatch"], k + ".sbatch", c))
        out[mode] = OrderedDict((f, pol[f]) for f in POLICY_KEYS if f in pol)
    for mode in custom:
        out.setdefault(mode, {"action": UNLISTED_POLICY.action})
    return out


def _validate_policy_sbatch(sb, key, c):
    """A restart policy's per-attempt sbatch options: long option names autoexp does not own;
    each value a string or an integer, a list of them (attempt N takes the N-th, the last
    beyond the list) or true for a flag. `{attempt}` and `{attempt*K}` are the only
    placeholders: every value an attempt can take is rendered and checked here."""
    c.obj(sb, key, list(sb))
    out = OrderedDict()
    for k, v in sb.items():
        if k.startswith("_"):
            continue
        kk = key + "." + k
        if not SBATCH_KEY_RE.match(k):
            c.fail(kk, "is not a long sbatch option name like 'mem' or 'time'")
        owned = owned_sbatch_option("--" + k) or ("error" if "error".startswith(k) else None)
        if owned or k in ("array", "export"):
            c.fail(kk, "sets --%s, which autoexp sets itself (or which would change every attempt's "
                   "environment); it cannot differ per attempt" % (owned or k))
        if v is True:
            out[k] = v
            continue
        values = v if isinstance(v, list) else [v]
        if not values or len(values) > MAX_ATTEMPTS:
            c.fail(kk, "a list of values needs 1 to %d entries" % MAX_ATTEMPTS)
        for i, item in enumerate(values):
            where = kk if not isinstance(v, list) else "%s[%d]" % (kk, i)
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                c.fail(where, "must be a string or an integer (or true for a flag), not %s; an option "
                       "cannot be unset for one attempt" % _type_name(item))
            if isinstance(item, int) and not -2 ** 63 < item < 2 ** 63:
                c.fail(where, "must be below 2^63 in size, not %s" % _short_number(item))
            item = str(item)
            if len(item) > MAX_VALUE_CHARS:
                c.fail(where, "is longer than %d characters" % MAX_VALUE_CHARS)
            for m in re.finditer(r"\{([^{}]*)\}", item):
                if not ATTEMPT_PLACEHOLDER_RE.match(m.group(0)):
                    c.fail(where, "{%s}: only {attempt} and {attempt*N} (N an integer up to %d) are allowed "
                           "here" % (m.group(1), MAX_ATTEMPT_FACTOR))
            for attempt in (1, MAX_ATTEMPTS):
                check_directive_value(attempt_value(item, attempt), where, c)
        out[k] = v
    return out


ATTEMPT_PLACEHOLDER_RE = re.compile(r"^\{attempt(?:\*([1-9][0-9]{0,5}))?\}$")
MAX_ATTEMPT_FACTOR = 999999  # {attempt*N}: N x MAX_ATTEMPTS stays a plain integer SLURM reads


def attempt_value(spec, attempt):
    """One per-attempt option value for attempt number `attempt` (1, 2, ...): the list's
    N-th entry (its last beyond it), with {attempt} and {attempt*K} replaced."""
    if spec is True:
        return True
    if isinstance(spec, list):
        spec = spec[min(attempt, len(spec)) - 1]

    def repl(m):
        inner = ATTEMPT_PLACEHOLDER_RE.match(m.group(0))
        return str(attempt * int(inner.group(1) or 1)) if inner else m.group(0)
    return re.sub(r"\{[^{}]*\}", repl, str(spec))


def make_monitoring(d):
    """The typed Monitoring of a validated monitoring dict."""
    values = []
    for spec in MONITORING_SCHEMA:
        v = d.get(spec.name, spec.default)  # a session written before the key existed
        if spec.kind == "log_events":
            v = tuple(LogEvent(e["name"], e["pattern"], e.get("mode"), e.get("match", MATCH_REGEX),
                               bool(e.get("exclude_nodes"))) for e in v)
        elif spec.kind == "paths":
            v = tuple(v)
        elif v is not None and spec.kind == "number":
            v = float(v)
        elif v is not None and spec.kind == "integer":
            v = int(v)
        elif spec.kind == "bool":
            v = bool(v)
        values.append(v)
    return Monitoring(*values)


def make_policies(d):
    types = {"max_attempts": int, "backoff_seconds": float, "backoff_max_seconds": float,
             "sbatch": lambda v: v}
    merged = OrderedDict(DEFAULT_POLICIES)
    merged.update(d)  # a session an older autoexp wrote lacks the modes added since
    d = merged
    return dict((mode, Policy(**dict((k, types.get(k, str)(v)) for k, v in p.items() if k in POLICY_KEYS)))
                for mode, p in d.items())


def format_value(value):
    """How a sweep value reads in names, commands and paths: JSON spelling for non-strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


_TEMPLATE_RE = re.compile(r"\{\{|\}\}|\$\{[^{}]*\}|\{([^{}]*)\}|[{}]")


def render_template(text, values, where, quote=None):
    """Fill {placeholders}; '{{' and '}}' are literal braces; bash's ${VAR} passes through.

    quote, when given, wraps each substituted value (shell quoting for commands), so a
    sweep value can never become shell code.
    """
    def repl(m):
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if token.startswith("${"):
            return token
        key = m.group(1)
        if key is None:
            raise ConfigError("%s: a lone %r; write '%s' for a literal brace" % (where, token, token * 2))
        key = key.strip()
        if key not in values:
            raise ConfigError("%s: unknown placeholder {%s}; known: %s" %
                              (where, key, ", ".join("{%s}" % k for k in values) or "none"))
        return quote(values[key]) if quote else values[key]
    return _TEMPLATE_RE.sub(repl, text)


def check_shell_placeholders(text, where):
    """Values go into shell code as single quoted words, so a placeholder must stand where a
    word can: inside quotes the quoting would be taken literally, and in a here-document's
    body the shell would expand the value after all."""
    quote, i, arith = None, 0, 0
    heredocs = []  # delimiters of here-documents whose bodies start at the next line
    while i < len(text):
        m = _TEMPLATE_RE.match(text, i)
        if m and m.group(0) not in "{}":
            if m.group(1) is not None and quote:
                raise ConfigError("%s: placeholder %s is inside %s quotes; values are inserted as quoted shell "
                                  "words: put it outside the quotes" % (where, m.group(0),
                                                                         "single" if quote == "'" else "double"))
            i = m.end()
            continue
        ch = text[i]
        if quote == "'":
            quote = None if ch == "'" else quote
        elif ch == "\\":
            i += 1  # the next character is escaped
        elif quote == '"':
            quote = None if ch == '"' else quote
        elif ch in "'\"":
            quote = ch
        elif text.startswith("$((", i):
            arith += 1
            i += 2
        elif text.startswith("))", i) and arith:
            arith -= 1
            i += 1
        elif text.startswith("<<", i) and not text.startswith("<<<", i) and not arith:
            d = re.match(r"<<-?\s*(['\"]?)([A-Za-z0-9_]+)\1", text[i:])
            if d:
                heredocs.append(d.group(2))
                i += d.end()
                continue
        elif ch == "\n" and heredocs:
            # the bodies follow this line, one after the other, each up to its delimiter line
            for delim in heredocs:
                body_end = re.compile(r"^[ \t]*%s[ \t]*$" % re.escape(delim), re.M).search(text, i + 1)
                body = text[i + 1:body_end.start() if body_end else len(text)]
                for p in _TEMPLATE_RE.finditer(body):
                    if p.group(1) is not None:
                        raise ConfigError("%s: placeholder %s is in a here-document (<<%s); the shell would "
                                          "expand the value there: pass it as an argument or a variable instead"
                                          % (where, p.group(0), delim))
                i = body_end.end() if body_end else len(text)
            heredocs = []
            continue
        i += 1


# `on` (SPEC 5.8): what autoexp does itself when an event happens. One table for the
# validation, the defaults and SPEC's table; an entry has exactly one of run and notify.
ON_SCHEMA = (
    Key("event", "string", None, maximum=MAX_NAME_CHARS,
        help="the event kind it acts on (SPEC 5.3) or a log_events name"),
    Key("jobs", "string", "*", maximum=MAX_VALUE_CHARS, help="only for jobs whose name matches this glob"),
    Key("run", "string", None, maximum=MAX_ARG_BYTES, nullable=True,
        help="a bash command autoexp runs on the login node (placeholders as in job.command)"),
    Key("notify", "string", None, maximum=MAX_NAME_CHARS, nullable=True, help="a notify target's name"),
    Key("timeout_seconds", "number", 600, 0, True, 86400, help="one try is killed after this long"),
    Key("retries", "integer", 2, 0, False, MAX_EFFECT_RETRIES, help="tries after the first that failed"),
    Key("backoff_seconds", "number", 30, 0, False, 86400, help="wait before the first retry; doubles each time"),
    Key("idempotent", "bool", False, help="a try interrupted by a crash may run again (default: reported only)"),
)
ON_DEFAULTS = OrderedDict((k.name, k.default) for k in ON_SCHEMA)


def placeholder_names(text):
    """The {names} a template uses (without '{{', '}}' and bash's ${VAR})."""
    return [m.group(1).strip() for m in _TEMPLATE_RE.finditer(text) if m.group(1) is not None]


def log_event_groups(log_events):
    """The named groups of the log_events patterns: the values a log line may capture."""
    names = []
    for ev in log_events:
        if ev.get("match", MATCH_REGEX) == MATCH_REGEX:
            for name in sorted(re.compile(ev["pattern"]).groupindex):
                if name not in names:
                    names.append(name)
    return names


def validate_on(rules, params, log_events, c, key="on"):
    """The `on` entries, defaults filled in. params: the sweep's parameter names. A command's
    placeholder must be known now (a parameter, a job value, an event value or a log_events
    group); a group not captured yet when the event comes fails that effect, not the plan."""
    if not isinstance(rules, list):
        c.fail(key, "must be a list of {event, run or notify, ...}")
    if len(rules) > MAX_ON_RULES:
        c.fail(key, "has %d entries; at most %d are allowed" % (len(rules), MAX_ON_RULES))
    log_names = [ev["name"] for ev in log_events]
    kinds = [k for k in EVENT_KINDS if not k.startswith(EV_LOG_PREFIX)]
    known = list(params) + list(RESERVED_PARAMS) + list(EFFECT_PLACEHOLDERS) + ["parent"] + log_event_groups(log_events)
    out = []
    for i, rule in enumerate(rules):
        k = "%s[%d]" % (key, i)
        c.obj(rule, k, [s.name for s in ON_SCHEMA])
        if "event" not in rule:
            c.fail(k, "missing 'event' (an event kind such as %r, or a log_events name)" % EV_FINALIZED)
        if (rule.get("run") is None) == (rule.get("notify") is None):
            c.fail(k, "give exactly one of 'run' (a command) and 'notify' (a target)")
        for spec in ON_SCHEMA:
            if spec.name in rule:
                c.key(spec, rule[spec.name], k + "." + spec.name)
        event = rule["event"]
        name = event[len(EV_LOG_PREFIX):] if event.startswith(EV_LOG_PREFIX) else event
        if event not in kinds and name not in log_names and name != MODE_SUCCESS:
            c.fail(k + ".event", "%r is neither an event kind (%s) nor a log_events name%s"
                   % (event, ", ".join(kinds), " (%s)" % ", ".join(log_names) if log_names else ""))
        if event in EFFECT_EVENTS and (rule.get("run") is not None or event.startswith("notify_")):
            # an effect that acts on its own kind's events would trigger itself without end
            c.fail(k + ".event", "%r: only a 'notify' may act on an action's events, and nothing on a "
                   "notification's" % event)
        if rule.get("notify") is not None:
            check_safe_name(rule["notify"], "%s: %s.notify" % (c.source, k))
        if rule.get("run") is not None:
            check_shell_placeholders(rule["run"], "%s: %s.run" % (c.source, k))
            for p in placeholder_names(rule["run"]):
                if p not in known:
                    c.fail(k + ".run", "unknown placeholder {%s}; known: %s"
                           % (p, ", ".join("{%s}" % n for n in known)))
        merged = OrderedDict(ON_DEFAULTS)
        merged.update((n, v) for n, v in rule.items() if not n.startswith("_"))
        out.append(merged)
    return out


def rules_for_event(rules, kind, job_name):
    """The (index, rule) of the `on` entries an event of this kind of this job sets off: by
    kind (a log_events name stands for its "log:<name>" events) and by the job glob."""
    hits = []
    for i, rule in enumerate(rules):
        event = rule["event"]
        if kind != event and kind != EV_LOG_PREFIX + event:
            continue
        if fnmatch.fnmatchcase(job_name, rule.get("jobs") or "*"):
            hits.append((i, rule))
    return hits


def notify_targets(notify, kind):
    """The targets an event of this kind notifies by `notify.events` (or a target's own
    `events`); an `on` rule may name a target for any event besides."""
    return [name for name, t in notify["targets"].items()
            if kind in (notify["events"] if t["events"] is None else t["events"])]


def expand_sweep(sweep, c):
    """The sweep as a list of parameter dicts: a grid (cartesian product) or an explicit list."""
    if sweep is None:
        return [OrderedDict()]
    if isinstance(sweep, dict):
        keys = [k for k in sweep if not k.startswith("_")]
        if not keys:
            c.fail("sweep", "is empty; give at least one parameter with a list of values, or leave 'sweep' out for a single job")
        axes = []
        for k in keys:
            _check_param_name(k, "sweep." + k, c)
            vals = sweep[k]
            if not isinstance(vals, list) or not vals:
                c.fail("sweep." + k, "must be a non-empty list of values")
            for i, v in enumerate(vals):
                _check_param_value(v, "sweep.%s[%d]" % (k, i), c)
            axes.append(vals)
        size = 1
        for vals in axes:
            size *= len(vals)
            if size > MAX_SWEEP_JOBS:
                c.fail("sweep", "the grid has more than %d points; split the sweep into several plans"
                       % MAX_SWEEP_JOBS)
        return [OrderedDict(zip(keys, combo)) for combo in itertools.product(*axes)]
    if isinstance(sweep, list):
        if not sweep:
            c.fail("sweep", "is an empty list; give at least one parameter set")
        if len(sweep) > MAX_SWEEP_JOBS:
            c.fail("sweep", "lists %d parameter sets; at most %d fit one plan: split the sweep"
                   % (len(sweep), MAX_SWEEP_JOBS))
        points = []
        for i, point in enumerate(sweep):
            k = "sweep[%d]" % i
            if not isinstance(point, dict):
                c.fail(k, "must be an object of parameters, not %s" % _type_name(point))
            point = OrderedDict((name, v) for name, v in point.items() if not name.startswith("_"))
            for name, v in point.items():
                _check_param_name(name, k + "." + name, c)
                _check_param_value(v, k + "." + name, c)
            points.append(point)
        return points
    c.fail("sweep", "must be an object (a grid) or a list of parameter sets, not %s" % _type_name(sweep))


def _check_param_name(name, key, c):
    if not IDENT_RE.match(name):
        c.fail(key, "parameter names must be identifiers (letters, digits, _)")
    if name in RESERVED_PARAMS:
        c.fail(key, "%r is reserved (reserved: %s)" % (name, ", ".join(RESERVED_PARAMS)))


def _check_param_value(value, key, c):
    if isinstance(value, (dict, list)) or value is None:
        c.fail(key, "sweep values must be strings, numbers or true/false, not %s" % _type_name(value))
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        c.fail(key, "%r is not a number a command can take; write it as a string" % value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 63:
        c.fail(key, "%s is larger than a 64-bit integer; write it as a string" % _short_number(value))
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            c.fail(key, "is longer than %d characters" % MAX_VALUE_CHARS)
        if "[" in value and ("$(" in value or "`" in value):
            # bash evaluates array subscripts in arithmetic (`(( x ))`, `[[ $x -gt 1 ]]`, `let`,
            # `${a:x}`, even through a variable): `a[$(cmd)]` would run cmd, however quoted
            c.fail(key, "%r holds a command substitution inside [...], which bash arithmetic would run "
                   "as code; sweep values may not combine '[' with '$(' or a backquote" % value)


def arithmetic_unsafe(value):
    """A value bash arithmetic would run as code, however quoted: `a[$(cmd)]` (array
    subscripts are evaluated in `(( ))`, `[[ -gt ]]`, `let`, `declare -i`, `${a:x}`)."""
    return isinstance(value, str) and "[" in value and ("$(" in value or "`" in value)


def check_used_values(texts, values, where):
    """Values a log captured are checked when they are used, as sweep values are at plan
    time: one that arithmetic would run is never put into a command."""
    for text in texts:
        for name in placeholder_names(text):
            if arithmetic_unsafe(values.get(name)):
                raise ConfigError("%s: the value of {%s} (%r) holds a command substitution inside [...], which "
                                  "bash arithmetic would run as code: not used" % (where, name, values[name][:200]))


def check_directive_value(value, key, c):
    if CONTROL_RE.search(value):
        c.fail(key, "contains a newline or another control character, which an #SBATCH line cannot hold")
    return value


def check_log_template(path, key, c):
    """The log path goes to --output: only SLURM patterns autoexp can resolve later are allowed."""
    if CONTROL_RE.search(path):
        c.fail(key, "contains a newline or another control character")
    if "\\" in path:
        c.fail(key, "must not contain a backslash (SLURM would stop expanding %-patterns)")
    for m in LOG_PATTERN_RE.finditer(path.replace("%%", "")):
        if m.group(2) not in "jAaxu":
            c.fail(key, "uses %%%s; autoexp can follow logs that use %%j %%A %%a %%x %%u and %%%% only" % m.group(2))
    return path


def extra_log_templates(job, extra_logs, values, workdir, source):
    """The files a job writes besides its log that autoexp watches too, as absolute paths
    with SLURM's %-patterns unexpanded: job.sbatch.error's file (the job's stderr; not
    /dev/null or another device), then monitoring.extra_logs, rendered with the job's
    values as job.log is. Refused (ConfigError) like job.log when a path cannot be
    followed; plan-time and watch-time rendering give the same paths."""
    c = _Checker(source)
    out = []
    error = job.get("sbatch", {}).get("error")
    if isinstance(error, (str, int, float)) and not isinstance(error, bool):
        # rendered as its #SBATCH line is: SLURM itself expands the %-patterns of the result
        path = render_template(format_value(error), values, "%s: job.sbatch.error" % source)
        if not path.startswith("/dev/"):
            out.append(check_log_template(os.path.normpath(os.path.join(workdir, path)), "job.sbatch.error "
                                          "(autoexp watches the job's error file as well)", c))
    # autoexp expands the %-patterns of these itself, as SLURM does job.log's: a value's % is literal
    log_values = OrderedDict((k, v.replace("%", "%%")) for k, v in values.items()) if extra_logs else None
    for i, template in enumerate(extra_logs):
        key = "monitoring.extra_logs[%d]" % i
        path = render_template(template, log_values, "%s: %s" % (source, key))
        out.append(check_log_template(os.path.normpath(os.path.join(workdir, path)), key, c))
    return out


def job_values(params, project, index, plan_id, name):
    """The placeholders' values of one planned job (as build_plan gives them)."""
    values = OrderedDict((k, format_value(v)) for k, v in params.items())
    values.update(project=project, index=str(index), plan_id=plan_id, name=name)
    return values


def render_sbatch_line(key, value):
    if value is True:
        return "#SBATCH --%s" % key
    return "#SBATCH --%s=%s" % (key, sbatch_quote(value))


# The manifest's records: these fields are what manifest.json holds per job and for the array.
class PlanJob(NamedTuple):
    name: str
    index: int
    params: dict
    script_path: str
    log_template: str
    tag: str
    sbatch_args: list  # the directives autoexp owns, given again on sbatch's command line


class PlannedJob(object):
    """A job of a loaded plan. What the manifest holds of every job that follows from its
    name (script path, tag, the directives on sbatch's command line) is made again when it
    is asked for, not kept: a sweep of 100,000 jobs would hold it 100,000 times."""

    __slots__ = ("plan", "name", "index", "params", "log_template")

    def __init__(self, plan, name, index, params, log_template):
        self.plan, self.name, self.index, self.params, self.log_template = plan, name, index, params, log_template

    @property
    def script_path(self):
        return os.path.join(self.plan.plan_dir, "jobs", self.name + ".sbatch")

    @property
    def tag(self):
        return session_tag(self.plan.plan_id, self.name)

    @property
    def sbatch_args(self):
        return owned_args(self.name, self.log_template, self.plan.with_error, self.tag, self.plan.workdir)


class FollowupSpec(NamedTuple):
    """A follow-up job of the plan (SPEC 5.7): what PlanJob says, plus its parent, the parent
    statuses that start it, and where its `then` entry is in the config."""
    name: str
    index: int
    params: dict  # its root job's sweep parameters
    script_path: str  # written when its parent is decided, not at plan time
    log_template: str
    tag: str
    sbatch_args: list
    parent: str
    when: list
    path: list


def followup_when(entry):
    when = entry.get("when", FINALIZED)
    return list(when) if isinstance(when, list) else [when]


class ArraySpec(NamedTuple):
    name: str
    script_path: str
    log_template: str
    tag: str
    max_running: Optional[int]
    sbatch_args: list


MANIFEST_FIELDS = ("schema_version", "kind", "plan_id", "project", "created_at", "config_path",
                   "state_dir", "workdir", "config", "jobs", "array", "array_error", "followups")


class Plan(object):
    """A planned sweep as read back from its manifest: what a session submits and watches."""

    __slots__ = ("plan_id", "project", "manifest_path", "state_dir", "workdir", "config",
                 "jobs", "by_name", "array", "array_error", "created_at", "plan_dir", "with_error",
                 "followups_of")

    def __init__(self, data, manifest_path):
        self.plan_id = data["plan_id"]
        self.project = data["project"]
        self.manifest_path = manifest_path
        self.state_dir = data["state_dir"]
        self.workdir = data["workdir"]
        self.config = data["config"]
        self.created_at = data["created_at"]
        self.plan_dir = os.path.dirname(os.path.abspath(manifest_path))
        jobs = data["jobs"]
        self.with_error = bool(jobs) and any(a.startswith("--error=") for a in jobs[0]["sbatch_args"])
        self.jobs = []
        for j in jobs:
            job = PlannedJob(self, j["name"], j["index"], j["params"], j["log_template"])
            if j["script_path"] != job.script_path or j["sbatch_args"] != job.sbatch_args:
                job = PlanJob(**j)  # a manifest autoexp would not write today: kept as it says
            self.jobs.append(job)
        self.by_name = dict((j.name, j) for j in self.jobs)
        # follow-ups are submitted like any job (by_name), never by `submit` (not in jobs)
        self.followups_of = {}
        for f in data.get("followups") or ():
            spec = FollowupSpec(**f)
            self.by_name[spec.name] = spec
            self.followups_of.setdefault(spec.parent, []).append(spec)
        a = data.get("array")
        self.array = ArraySpec(**dict(a, max_running=a.get("max_running"))) if a else None
        self.array_error = data.get("array_error")


def session_tag(plan_id, job_name):
    """The --comment autoexp gives each job: how it finds its jobs again in squeue and sacct."""
    return "autoexp:%s:%s" % (plan_id, job_name)


ARRAY_TAG_NAME = "@array"  # '@' cannot occur in a job name, so this tag never collides


def qualify_override(text):
    """A bare monitoring key (`max_running=2`) is `monitoring.max_running=2`, in `plan` and
    `run` as in `monitor -o`: one key syntax for both. A top-level key keeps its meaning."""
    first = text.partition("=")[0].strip().split(".")[0]
    if "=" in text and first not in TOP_KEYS and first in [k.name for k in MONITORING_SCHEMA]:
        return "monitoring." + text.lstrip()
    return text


def resolve_config(raw, source, overrides):
    """Apply overrides, validate, fill defaults; returns the resolved config dict."""
    config = apply_overrides(raw, [qualify_override(o) for o in overrides or ()])
    c = _Checker(source)
    c.obj(config, "", TOP_KEYS)
    if "project" not in config:
        c.fail("project", "is required (a short name for the sweep)")
    check_safe_name(c.string(config["project"], "project"), "project")
    if "state_dir" in config:
        c.string(config["state_dir"], "state_dir")
    if "description" in config:
        c.string(config["description"], "description", allow_empty=True)
    _validate_job(config.get("job"), source, c)
    mon = validate_monitoring(config.get("monitoring", OrderedDict()), c)
    config["monitoring"] = mon
    config["restart"] = validate_restart(config.get("restart", OrderedDict()), mon, c)
    config["node_exclusion"] = validate_node_exclusion(config.get("node_exclusion", OrderedDict()), mon, c)
    if "notify" in config:  # absent: no targets (a plan's manifest says only what was given)
        config["notify"] = validate_notify(config["notify"], mon, c)
    points = expand_sweep(config.get("sweep"), c)  # fail early on a bad sweep
    params = sorted(set(k for point in points for k in point))
    # one name, one value: a captured value never stands in for a sweep parameter or for a
    # value autoexp fills in actions and follow-ups
    for group in log_event_groups(mon["log_events"]):
        if group in params or group in EFFECT_PLACEHOLDERS or group == "parent":
            c.fail("monitoring.log_events", "group (?P<%s>) has the name of a %s; choose another name" % (
                group, "sweep parameter" if group in params else "placeholder autoexp fills"))
    if "on" in config:
        config["on"] = validate_on(config["on"], params, mon["log_events"], c)
        targets = (config.get("notify") or {}).get("targets") or {}
        for i, rule in enumerate(config["on"]):
            if rule.get("notify") is not None and rule["notify"] not in targets:
                c.fail("on[%d].notify" % i, "%r is not a target of notify.targets (%s)" % (
                    rule["notify"], ", ".join(targets) or "none is defined"))
    return config


def _validate_job(job, source, c):
    if job is None:
        c.fail("job", "is required (job.name, job.command or job.template, job.log, job.sbatch)")
    c.obj(job, "job", JOB_KEYS)
    if ("command" in job) == ("template" in job):
        c.fail("job", "give exactly one of job.command and job.template")
    for k in ("name", "command", "template", "log", "workdir", "array_log"):
        if k in job:
            c.string(job[k], "job." + k)
    if "command" in job:
        check_shell_placeholders(job["command"], "%s: job.command" % source)
    if "array_max_running" in job:
        c.number(job["array_max_running"], "job.array_max_running", positive=True, integer=True,
                 maximum=MAX_ARRAY_EXPANSION)
    _validate_sbatch_table(job.get("sbatch", {}), "job.sbatch", c)
    _validate_env(job.get("env", {}), "job.env", c)
    if "then" in job:
        _validate_then(job["then"], "job.then", 1, source, c)


def _validate_sbatch_table(sb, where, c):
    c.obj(sb, where, list(sb))
    for k, v in sb.items():
        if k.startswith("_"):
            continue
        key = where + "." + k
        if not SBATCH_KEY_RE.match(k):
            c.fail(key, "is not a long sbatch option name like 'time' or 'cpus-per-task'")
        owned = owned_sbatch_option("--" + k) if len(k) > 1 else OWNED_SHORT.get(k)
        if owned:
            c.fail(key, "sets --%s, which autoexp sets itself; use %s instead" % (owned, OWNED_SBATCH[owned]))
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            continue
        check_directive_value(c.string(v, key, allow_empty=True), key, c)


def _validate_env(env, where, c):
    c.obj(env, where, list(env))
    for k, v in env.items():
        if k.startswith("_"):
            continue
        if not IDENT_RE.match(k):
            c.fail(where + "." + k, "is not a valid environment variable name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            c.fail(where + "." + k, "must be a string or a number")
        if "\x00" in str(v):
            c.fail(where + "." + k, "contains a NUL character")


def _validate_then(entries, where, depth, source, c):
    """job.then (SPEC 5.7): follow-up jobs, nested at most MAX_FOLLOWUP_DEPTH deep. The
    placeholders are checked by build_plan, which knows every parent's values."""
    if depth > MAX_FOLLOWUP_DEPTH:
        c.fail(where, "follow-ups nest at most %d deep (job.then[].then[]...); chain fewer steps"
               % MAX_FOLLOWUP_DEPTH)
    if not isinstance(entries, list):
        c.fail(where, "must be a list of {%s}, not %s" % (", ".join(FOLLOWUP_KEYS), _type_name(entries)))
    if len(entries) > MAX_FOLLOWUPS:
        c.fail(where, "has %d entries; at most %d" % (len(entries), MAX_FOLLOWUPS))
    for i, entry in enumerate(entries):
        key = "%s[%d]" % (where, i)
        c.obj(entry, key, FOLLOWUP_KEYS)
        for k in FOLLOWUP_REQUIRED:
            if k not in entry:
                c.fail(key, "needs %r (a follow-up is {%s})" % (k, ", ".join(FOLLOWUP_KEYS)))
        for k in ("name", "command", "log"):
            if k in entry:
                c.string(entry[k], "%s.%s" % (key, k))
        check_shell_placeholders(entry["command"], "%s: %s.command" % (source, key))
        when = entry.get("when", FINALIZED)
        for w in (when if isinstance(when, list) else [when]):
            if w not in FOLLOWUP_WHENS:
                c.fail(key + ".when", "must be one of %s (or a list of them), not %s"
                       % (", ".join(FOLLOWUP_WHENS), json.dumps(w)))
        if isinstance(when, list) and not when:
            c.fail(key + ".when", "must not be an empty list")
        _validate_sbatch_table(entry.get("sbatch", {}), key + ".sbatch", c)
        _validate_env(entry.get("env", {}), key + ".env", c)
        if "then" in entry:
            _validate_then(entry["then"], key + ".then", depth + 1, source, c)


def build_plan(config, source, plan_id, state_dir, workdir, created_at):
    """Expand the sweep and render everything a manifest holds (no file is written here).

    Returns (manifest dict, {script path: script text}). The steps: read the template (if
    any), then per sweep point its values, name, log path, sbatch options and script; last
    the array script, offered only when every job shares the same sbatch options.
    """
    c = _Checker(source)
    job = config["job"]
    points = expand_sweep(config.get("sweep"), c)
    workdir = os.path.abspath(os.path.join(workdir, job.get("workdir", ".")))
    plan_dir = os.path.join(state_dir, "plans", plan_id)
    name_tpl = job.get("name", "{project}-{index}" if len(points) > 1 else "{project}")
    log_tpl = job.get("log", "logs/{name}-%j.log")
    template_text = _read_template(job, source, c)
    jobs, scripts, seen, sbatch_sets, roots = [], OrderedDict(), {}, [], []
    for index, params in enumerate(points):
        values = OrderedDict((k, format_value(v)) for k, v in params.items())
        values.update(project=config["project"], index=str(index), plan_id=plan_id)
        name = _render_job_name(name_tpl, values, index, seen, source, c)
        values["name"] = name
        # SLURM expands %-patterns in --output, so a literal % from a value must be doubled.
        log_values = OrderedDict((k, v.replace("%", "%%")) for k, v in values.items())
        log = render_template(log_tpl, log_values, "%s: job.log" % source)
        log = check_log_template(os.path.normpath(os.path.join(workdir, log)), "job.log", c)
        sbatch = _render_sbatch_options(job, values, source, c)
        extra_log_templates(job, config["monitoring"]["extra_logs"], values, workdir, source)  # checked now
        sbatch_sets.append(sbatch)
        tag = session_tag(plan_id, name)
        script_path = os.path.join(plan_dir, "jobs", name + ".sbatch")
        scripts[script_path] = _render_job_script(job, template_text, values, index, log, tag, workdir,
                                                  sbatch, source)
        jobs.append(PlanJob(name, index, params, script_path, log, tag,
                            owned_args(name, log, "error" not in sbatch, tag, workdir))._asdict())
        if job.get("then"):
            roots.append((name, values, params))
    manifest = OrderedDict([
        ("schema_version", MANIFEST_SCHEMA_VERSION), ("kind", MANIFEST_KIND),
        ("plan_id", plan_id), ("project", config["project"]), ("created_at", iso_time(created_at)),
        ("config_path", os.path.abspath(source)), ("state_dir", state_dir), ("workdir", workdir),
        ("config", config), ("jobs", jobs), ("array", None), ("array_error", None),
        ("followups", _plan_followups(config, source, plan_id, plan_dir, workdir, roots, seen, c))])
    differing = [j["name"] for j, sb in zip(jobs, sbatch_sets) if sb != sbatch_sets[0]]
    if differing:
        manifest["array_error"] = ("jobs differ in their sbatch options (first: %s), so they cannot "
                                   "share one job array; submit them as single jobs" % differing[0])
    else:
        _plan_array(manifest, scripts, job, log_tpl, sbatch_sets[0], plan_dir, source, c)
    return manifest, scripts


def capture_names(log_events):
    """The names log_events patterns capture (their named groups), which follow-ups and
    actions may use as placeholders."""
    names = []
    for ev in log_events:
        if ev.get("match", MATCH_REGEX) != MATCH_REGEX:
            continue
        try:
            groups = re.compile(ev["pattern"]).groupindex
        except re.error:
            continue
        names += [g for g in groups if g not in names]
    return names


def followup_values(parent_values, name, parent):
    """A follow-up's placeholder values: its parent's (sweep parameters, {project}, {index},
    {plan_id}, captured values), with {name} its own name and {parent} its parent's."""
    values = OrderedDict(parent_values)
    values["name"], values["parent"] = name, parent
    return values


def followup_entry(config, path):
    """The `then` entry at path: job.then[path[0]].then[path[1]]..."""
    entry = config["job"]["then"][path[0]]
    for i in path[1:]:
        entry = entry["then"][i]
    return entry


def followup_key(path):
    return "job" + "".join(".then[%d]" % i for i in path)


def render_followup(entry, key, values, index, log, tag, workdir, source):
    """A follow-up's script. A placeholder without a value (a capture its parent's log
    never gave) is a ConfigError naming the entry's key."""
    c = _Checker(source)
    check_used_values([entry["command"]] + [v for v in (entry.get("env") or {}).values() if isinstance(v, str)],
                      values, "%s: %s" % (source, key))
    render_template(entry["command"], values, "%s: %s.command" % (source, key), quote=shlex.quote)
    sbatch = _render_sbatch_options(entry, values, source, c, where=key)
    return _render_job_script(entry, None, values, index, log, tag, workdir, sbatch, source, where=key)


def _plan_followups(config, source, plan_id, plan_dir, workdir, roots, seen, c):
    """The manifest's follow-up records (SPEC 5.7), depth first under each parent. Names,
    logs and sbatch options use the parent's values only, so they are known now and unique
    over the whole plan; command and env may also use captured values, checked here against
    the log_events group names and filled in when the parent is decided."""
    out = []
    if not roots:
        return out
    captures = capture_names(config["monitoring"]["log_events"])
    log_tpl = config["job"].get("log", "logs/{name}-%j.log")
    index = [len(seen)]

    def walk(parent, pvalues, params, entries, path):
        for i, entry in enumerate(entries):
            where = path + [i]
            key = followup_key(where)
            name = render_template(entry["name"], pvalues, "%s: %s.name" % (source, key))
            if not SAFE_NAME_RE.match(name):
                c.fail(key + ".name", "renders to %r for parent %s, which is not a safe name (1-128 characters "
                       "from A-Z a-z 0-9 . _ + -, starting with a letter or digit)" % (name, parent))
            if name in seen:
                c.fail(key + ".name", "renders to %r for parent %s, a name another job of the plan has; names "
                       "must be unique, so put {name} in it" % (name, parent))
            seen[name] = index[0]
            values = followup_values(pvalues, name, parent)
            log_values = OrderedDict((k, v.replace("%", "%%")) for k, v in values.items())
            log = render_template(entry.get("log", log_tpl), log_values, "%s: %s.log" % (source, key))
            log = check_log_template(os.path.normpath(os.path.join(workdir, log)), key + ".log", c)
            sbatch = _render_sbatch_options(entry, values, source, c, where=key)
            tag = session_tag(plan_id, name)
            spec = FollowupSpec(name, index[0], params, os.path.join(plan_dir, "jobs", name + ".sbatch"), log, tag,
                                owned_args(name, log, "error" not in sbatch, tag, workdir), parent,
                                followup_when(entry), where)._asdict()
            index[0] += 1
            if len(seen) > MAX_SWEEP_JOBS:
                c.fail("job.then", "makes the plan hold more than %d jobs" % MAX_SWEEP_JOBS)
            checked = OrderedDict(values)
            for cap in captures:
                checked.setdefault(cap, "x")
            try:
                render_followup(entry, key, checked, spec["index"], log, tag, workdir, source)
            except ConfigError as e:
                raise ConfigError("%s (a follow-up may use its parent's values, {parent}, and the values "
                                  "monitoring.log_events patterns capture: %s)"
                                  % (e, ", ".join("{%s}" % n for n in captures) or "none"))
            out.append(spec)
            walk(name, values, params, entry.get("then") or (), where)

    for name, values, params in roots:
        if "parent" in params:
            c.fail("sweep", "'parent' is a placeholder of follow-ups (job.then); rename the parameter")
        walk(name, values, params, config["job"]["then"], [])
    return out


def _read_template(job, source, c):
    """A user template's text (checked), or None for job.command."""
    if "template" not in job:
        return None
    tpath = os.path.join(os.path.dirname(os.path.abspath(source)), job["template"])
    try:
        with open(tpath, "rb") as f:
            text = f.read().decode("utf-8")
    except (IOError, OSError, UnicodeDecodeError) as e:
        c.fail("job.template", "cannot read %s: %s" % (tpath, getattr(e, "strerror", None) or e))
    _check_template_directives(text, tpath, c)
    check_shell_placeholders("\n".join("" if l.startswith("#SBATCH") else l for l in text.splitlines()),
                             "%s: job.template" % source)
    return text


def _render_job_name(name_tpl, values, index, seen, source, c):
    name = render_template(name_tpl, values, "%s: job.name" % source)
    if not SAFE_NAME_RE.match(name):
        c.fail("job.name", "renders to %r for sweep point %d, which is not a safe name "
               "(1-128 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit)" % (name, index))
    if name in seen:
        c.fail("job.name", "renders to %r for sweep points %d and %d; names must be unique, "
               "so use more parameters in job.name" % (name, seen[name], index))
    seen[name] = index
    return name


def _render_sbatch_options(job, values, source, c, where="job"):
    sbatch = OrderedDict()
    for k, v in job.get("sbatch", {}).items():
        if v is False or v is None or k.startswith("_"):
            continue
        if v is not True:
            v = render_template(format_value(v), values, "%s: %s.sbatch.%s" % (source, where, k))
            check_directive_value(v, "%s.sbatch.%s" % (where, k), c)
        sbatch[k] = v
    return sbatch


def _render_job_script(job, template_text, values, index, log, tag, workdir, sbatch, source, where="job"):
    name, plan_id = values["name"], values["plan_id"]
    header = ["#SBATCH --job-name=%s" % name, render_sbatch_line("output", log)]
    if "error" not in sbatch:
        header.append(render_sbatch_line("error", log))
    header += ["#SBATCH --comment=%s" % tag, render_sbatch_line("chdir", workdir)]
    header += [render_sbatch_line(k, v) for k, v in sbatch.items()]
    exports = ["export AUTOEXP_PLAN=%s AUTOEXP_JOB=%s" % (plan_id, name)]
    for k, v in job.get("env", {}).items():
        if k.startswith("_"):
            continue
        v = render_template(format_value(v), values, "%s: %s.env.%s" % (source, where, k))
        exports.append("export %s=%s" % (k, shlex.quote(v)))
    note = "# Generated by autoexp %s: plan %s, job %s (index %d). Re-plan rather than edit." % (
        __version__, plan_id, name, index)
    if template_text is None:
        body = render_template(job["command"], values, "%s: %s.command" % (source, where), quote=shlex.quote)
        return "\n".join(["#!/bin/bash", note] + header + [""] + exports + ["", body.rstrip("\n"), ""])
    return _render_template_script(template_text, values, header + [note], exports, source)


def _plan_array(manifest, scripts, job, log_tpl, sbatch, plan_dir, source, c):
    """Add the array script to the plan, or say in array_error why there is none."""
    plan_id, project, workdir, jobs = (manifest["plan_id"], manifest["project"], manifest["workdir"],
                                       manifest["jobs"])
    array_tpl = job.get("array_log", os.path.join(os.path.dirname(log_tpl) or ".", "{project}-%A_%a.log"))
    try:
        array_log = render_template(array_tpl, {"project": project, "plan_id": plan_id}, "%s: job.array_log" % source)
        array_log = check_log_template(os.path.normpath(os.path.join(workdir, array_log)), "job.array_log", c)
    except ConfigError as e:
        if "array_log" in job:  # the user asked for this array log: a mistake, not a limit
            raise
        manifest["array_error"] = "%s (set job.array_log to a path using only {project}, {plan_id} and %%A/%%a)" % e
        return
    tag = session_tag(plan_id, ARRAY_TAG_NAME)
    indexes = ",".join(str(j["index"]) for j in jobs)
    if job.get("array_max_running"):
        indexes += "%%%d" % job["array_max_running"]
    lines = ["#!/bin/bash",
             "# Generated by autoexp %s: the job array of plan %s. Task N runs job index N." % (__version__, plan_id),
             "#SBATCH --job-name=%s" % plan_id,
             render_sbatch_line("output", array_log)]
    if "error" not in sbatch:
        lines.append(render_sbatch_line("error", array_log))
    lines += ["#SBATCH --comment=%s" % tag, render_sbatch_line("chdir", workdir),
              "#SBATCH --array=%s" % indexes]
    lines += [render_sbatch_line(k, v) for k, v in sbatch.items()]
    lines += ["", 'case "${SLURM_ARRAY_TASK_ID:-}" in']
    lines += ["  %d) exec %s ;;" % (j["index"], shlex.quote(j["script_path"])) for j in jobs]
    lines += ['  *) echo "autoexp: no job for array task ${SLURM_ARRAY_TASK_ID:-unset}" >&2; exit 2 ;;',
              "esac", ""]
    script = os.path.join(plan_dir, "array.sbatch")
    scripts[script] = "\n".join(lines)
    manifest["array"] = ArraySpec(plan_id, script, array_log, tag, job.get("array_max_running"),
                                  owned_args(plan_id, array_log, "error" not in sbatch, tag, workdir))._asdict()


def owned_args(name, log, with_error, tag, workdir):
    """What autoexp needs of every submission, for sbatch's command line: it wins over the
    script's directives and over SBATCH_* variables, so the job stays findable (name, tag)
    and its log readable, whatever else says otherwise."""
    args = ["--job-name=" + name, "--output=" + log]
    if with_error:
        args.append("--error=" + log)
    return args + ["--comment=" + tag, "--chdir=" + workdir]


def script_directive(text, name, short, shortest=None):
    """The value a job script's #SBATCH lines give option --name (or -short), or None: read
    the way sbatch reads them (up to the first command; quotes; '#' starts a comment; a long
    option also by any prefix of it at least as long as `shortest`, its unambiguous one)."""
    shortest = len(shortest or name)
    names = set(name[:n] for n in range(shortest, len(name) + 1))
    value = None
    for line in text.splitlines()[1:]:
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        if not line.startswith("#SBATCH"):
            continue
        try:
            words = shlex.split(line[len("#SBATCH"):], comments=True)
        except ValueError:
            continue
        for i, w in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else None
            if w.startswith("--") and w[2:].split("=", 1)[0] in names:
                value = w.split("=", 1)[1] if "=" in w else nxt
            elif w == "-" + short:
                value = nxt
            elif w.startswith("-" + short) and not w.startswith("--"):
                value = w[len(short) + 1:]
    return value


def _check_template_directives(text, path, c):
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("#SBATCH"):
            continue
        for option in line[len("#SBATCH"):].split():
            owned = (owned_sbatch_option(option, dict(OWNED_SHORT, e="error"))
                     or ("error" if option.startswith("--er") else None))
            if owned:
                c.fail("job.template", "%s line %d sets --%s (%s), which autoexp sets itself; remove it "
                       "(use job.name, job.log and job.workdir)" % (path, lineno, owned, option))


def _render_template_script(text, values, header, exports, source):
    """A user template: its first line must be the shebang; autoexp's directives go right after
    it (sbatch reads directives only before the first command), values are sbatch-quoted in
    #SBATCH lines and shell-quoted everywhere else."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#!"):
        raise ConfigError("%s: job.template must start with a '#!' line (for example #!/bin/bash)" % source)
    out = [lines[0]] + header
    body_started = False
    for lineno, line in enumerate(lines[1:], 2):
        where = "%s: job.template line %d" % (source, lineno)
        if line.startswith("#SBATCH") and not body_started:
            rendered = render_template(line, values, where, quote=sbatch_quote)
        else:
            if line.strip() and not line.startswith("#") and not body_started:
                body_started = True
                out += exports
            rendered = render_template(line, values, where, quote=shlex.quote)
        out.append(rendered)
    if not body_started:
        out += exports
    return "\n".join(out) + "\n"


def sbatch_command(plan, tasks, options=(), max_running=None):
    """(script, args) of one submission: a single job (tasks is [(name, None)]) or the array
    tasks given as [(name, index), ...], resubmitted with --array=<their indexes>; options
    are the attempt's own (attempt_sbatch_options), after autoexp's. An array is throttled
    by SLURM: %N is the smaller of job.array_max_running and the session's
    monitoring.max_running."""
    if tasks[0][1] is None:
        pj = plan.by_name[tasks[0][0]]
        return pj.script_path, list(pj.sbatch_args) + list(options)
    array = plan.array
    spec = ",".join(str(task) for _, task in tasks)
    limits = [n for n in (array.max_running, max_running) if n]
    if limits:
        spec += "%%%d" % min(limits)
    return array.script_path, list(array.sbatch_args) + list(options) + ["--array=" + spec]


def default_plan_id(project, t, n=1):
    """PROJECT-YYYYmmdd-HHMMSS, or with -N for the n-th plan of that second; the project is
    cut short so that the id is a safe name (at most 128 characters) however long it is."""
    tail = "-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + ("-%d" % n if n > 1 else "")
    return project[:MAX_NAME_CHARS - len(tail)] + tail


def write_plan(manifest, scripts):
    """Write the scripts, then the manifest last: a manifest on disk means a complete plan."""
    # Encoded before anything is written: a path the locale could not decode fails here,
    # leaving no half-written plan behind.
    encoded = [(path, text.encode("utf-8")) for path, text in scripts.items()]
    # SLURM refuses to start a job whose --output folder is missing (JobLaunchFailure).
    for j in manifest["jobs"] + ([manifest["array"]] if manifest["array"] else []) + manifest.get("followups", []):
        folder = os.path.dirname(j["log_template"])
        if "%" not in folder:
            try:
                os.makedirs(folder)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise ConfigError("cannot create the log folder %s: %s" % (folder, e.strerror))
            if not os.path.isdir(folder):
                raise ConfigError("the log folder %s is not a folder (a file has its name); change job.log "
                                  "or move the file" % folder)
    state_dir = manifest["state_dir"]
    make_private_dir(state_dir)
    root = os.path.join(state_dir, "plans", manifest["plan_id"])
    make_private_dir(os.path.join(root, "jobs"))
    write_new_files(encoded, 0o700)
    path = os.path.join(root, "manifest.json")
    atomic_write(path, dump_json(manifest))
    return path


def load_manifest(path):
    try:
        with open(path, "rb") as f:
            data = loads_json(f.read().decode("utf-8"), dict)
    except (IOError, OSError) as e:
        raise StateError("cannot read manifest %s: %s; run `autoexp plan CONFIG` first" % (path, e.strerror or e))
    except UnicodeEncodeError:
        raise  # the path cannot be said in this locale: main() explains, the file is fine
    except ValueError as e:
        raise StateError("manifest %s is not valid JSON (%s); plan again with `autoexp plan CONFIG`" % (path, e))
    if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
        raise StateError("%s is not an autoexp manifest" % path)
    if data.get("schema_version", 0) > MANIFEST_SCHEMA_VERSION:
        raise StateError("manifest %s has schema version %s, newer than this autoexp understands (%d); "
                         "use a newer autoexp" % (path, data.get("schema_version"), MANIFEST_SCHEMA_VERSION))
    wrong = manifest_shape_error(data)
    if wrong:
        raise StateError("manifest %s is broken: %s; restore it, or plan again with `autoexp plan CONFIG`"
                         % (path, wrong))
    return Plan(data, os.path.abspath(path))


def manifest_shape_error(data):
    """What is wrong with the shape of a manifest's document (None: nothing): a file edited
    by hand or damaged must be an error naming it, never a traceback further on."""
    for key in ("plan_id", "project", "state_dir", "workdir", "created_at"):
        if not isinstance(data.get(key), str):
            return "%r is not a string" % key
    if not isinstance(data.get("config"), dict):
        return "'config' is not an object"
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        return "'jobs' is not a list"
    kinds = (("name", str), ("index", int), ("params", dict), ("log_template", str), ("script_path", str),
             ("sbatch_args", list))
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            return "jobs[%d] is not an object" % i
        for key, kind in kinds:
            if not isinstance(job.get(key), kind) or (kind is int and isinstance(job.get(key), bool)):
                return "jobs[%d].%s is not %s" % (i, key, "an object" if kind is dict else "a " + {
                    str: "string", int: "whole number", list: "list"}[kind])
        if set(job) - set(PlanJob._fields) or not all(isinstance(a, str) for a in job["sbatch_args"]):
            return "jobs[%d] is not a job autoexp planned" % i
    array = data.get("array")
    if array is not None and not (isinstance(array, dict) and set(ArraySpec._fields) - {"max_running"} <= set(array)
                                  and set(array) <= set(ArraySpec._fields)):
        return "'array' is not an array autoexp planned"
    return None

# ============================================================================
# 4. SLURM client and parsers
# ============================================================================

class Completed(NamedTuple):
    argv: list
    rc: int
    out: str
    err: str
    timed_out: bool


def communicate_bounded(proc, data, timeout):
    """proc.communicate(data) for at most timeout seconds; past it, its process group (it
    runs in a session of its own) is killed and what it wrote collected. Returns (stdout,
    stderr, timed_out)."""
    import subprocess
    try:
        out, err = proc.communicate(data, timeout=timeout)
        return out, err, False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
        return out, err, True


def run_command(argv, timeout, env=None):
    """Run a command without a shell and return its output; the default runner.

    The child gets its own session so that a timeout kills everything it started and a
    Ctrl-C in the terminal never interrupts an sbatch halfway.
    """
    import subprocess
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, close_fds=True,
                                start_new_session=True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EACCES):
            raise SlurmMissing("SLURM command %r was not found on PATH; run autoexp on a login node "
                               "where sbatch, squeue and sacct work" % argv[0])
        # fork failing for lack of processes or memory is passing: the answer is UNKNOWN
        raise SlurmUnavailable("cannot run %s: %s" % (argv[0], e.strerror or e))
    out, err, timed_out = communicate_bounded(proc, None, timeout)
    return Completed(list(argv), proc.returncode, out.decode("utf-8", "replace"),
                     err.decode("utf-8", "replace"), timed_out)


def slurm_environment(base=None):
    """The environment SLURM commands run in: a fixed locale and time format, and none of the
    variables that silently change squeue/sacct output or make scancel interactive."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith(("SQUEUE_", "SACCT_", "SCANCEL_", "SINFO_", "SCONTROL_", "LC_")) or key in (
                "SBATCH_ARRAY_INX", "SBATCH_WAIT", "SBATCH_CLUSTERS", "SLURM_CLUSTERS", "LANGUAGE"):
            del env[key]
    # SLURM_BITSTR_LEN=0: array ranges printed whole, never cut short with "..."
    env.update(LC_ALL="C", LANG="C", SLURM_TIME_FORMAT="standard", SLURM_BITSTR_LEN="0")
    return env


STATE_WORD_RE = re.compile(r"^[A-Z][A-Z_]*$")
JOB_ID_RE = re.compile(r"^(\d+)(?:_(\d+|\[[0-9,\-:%]+\])|\+(\d+))?$")


_STATE_WORDS = {}


def normalize_state(text):
    """'CANCELLED by 0' -> 'CANCELLED'; a word that is not a SLURM state raises ValueError.
    (Remembered: an answer holds a handful of distinct state texts, many times over.)"""
    word = _STATE_WORDS.get(text)
    if word is None:
        word = text.strip().split(" ", 1)[0].rstrip("+")
        if not STATE_WORD_RE.match(word):
            raise ValueError("%r is not a job state" % text)
        if len(_STATE_WORDS) < 1000:
            _STATE_WORDS[text] = word
    return word


def parse_task_ranges(text):
    """'1-3,7,9-13:2%2' -> [1, 2, 3, 7, 9, 11, 13]; the %N throttle is dropped."""
    tasks = []
    for part in text.split("%", 1)[0].split(","):
        m = re.match(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$", part)
        if not m:
            raise ValueError("bad array range %r" % text)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3) or 1)
        if hi < lo or step < 1 or (hi - lo) // step + len(tasks) >= MAX_ARRAY_EXPANSION:
            raise ValueError("bad array range %r" % text)
        tasks.extend(range(lo, hi + 1, step))
    return tasks


def expand_job_id(text):
    """A job id as squeue/sacct print it -> canonical ids: '12', '3_4', '3_[1-3]' -> 3_1 3_2 3_3."""
    if text.isdigit():
        return [text]  # most of them
    m = JOB_ID_RE.match(text.strip())
    if not m:
        raise ValueError("%r is not a job id" % text)
    base, task = m.group(1), m.group(2)
    if m.group(3) is not None:
        return [text.strip()]  # a heterogeneous job's component, 1234+0: never one of autoexp's
    if task is None:
        return [base]
    if task.startswith("["):
        return ["%s_%d" % (base, t) for t in parse_task_ranges(task[1:-1])]
    return ["%s_%s" % (base, task)]


def split_job_id(job_id):
    """'3_4' -> ('3', 4); '12' -> ('12', None)."""
    base, _, task = job_id.partition("_")
    return base, (int(task) if task else None)


def job_id_sort_key(job_id):
    base, task = split_job_id(job_id)
    return (int(re.match(r"\d+", base).group(0)), -1 if task is None else task)


class QueueRow(NamedTuple):
    job_id: str
    raw_id: str
    state: str
    reason: str
    name: str
    comment: str
    submit: Optional[str] = None  # SLURM's submit time, 'YYYY-MM-DDTHH:MM:SS' (compares as text)
    user: Optional[str] = None  # who submitted it (%u)
    workdir: Optional[str] = None  # its working directory (%Z); None when the line cannot say it
    nodes: Optional[str] = None  # the job's nodes as SLURM prints them ('gpu[01-04]'); None: none yet


class AcctRow(NamedTuple):
    job_id: str
    raw_id: str
    name: str
    state: str
    exit_code: str
    start: object  # SLURM's Start as printed (or an epoch; None: unset): slurm_epoch() reads it
    end: object
    comment: str
    submit: Optional[str] = None
    user: Optional[str] = None
    workdir: Optional[str] = None
    nodes: Optional[str] = None
    elapsed: str = ""  # ElapsedRaw (seconds SLURM ran it, as printed) and AllocTRES ('billing=2,cpu=2,
    tres: str = ""  # gres/gpu=4,mem=1G,node=1'; empty while pending), read only when used (alloc_of)


# What autoexp asks squeue and sacct for. squeue's name and comment are free text (they
# may hold '|'), so they come last; sacct is only asked about autoexp's own jobs, whose
# names are safe, and its comment comes last. The user and the working directory tell a
# job resubmitted by hand without its tag (resubmits_by_hand): a directory holding '|'
# makes its line irregular, and such a line's directory is not told (None), never guessed.
# A node list (%N, NodeList) never holds '|': before the directory, its place is fixed.
SQUEUE_FORMAT = "%i|%A|%T|%r|%V|%N|%u|%Z|%j|%k"
# ElapsedRaw and AllocTRES (an attempt's cost) hold no '|' either and sit before NodeList.
SACCT_FIELDS = ("JobID,JobIDRaw,JobName,State,ExitCode,Submit,Start,End,ElapsedRaw,AllocTRES,NodeList,User,"
                "WorkDir,Comment")
TAG_RE = re.compile(r"^autoexp:[A-Za-z0-9][A-Za-z0-9._+-]*:(?:[A-Za-z0-9][A-Za-z0-9._+-]*|@array)$")
UNSET_TIMES = ("", "Unknown", "None", "N/A")
# A job without nodes yet: squeue prints nothing, sacct "None assigned" (captures 88, NOTES).
UNSET_NODES = ("", "None assigned", "(null)", "(None)", "None", "N/A")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _node_list(text):
    text = text.strip()
    return None if text in UNSET_NODES else text


def _split_hostlist(text):
    """The items of a hostlist at its top-level commas (those outside brackets)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise ValueError("hostlist %r has unbalanced brackets" % text[:120])
    if depth:
        raise ValueError("hostlist %r has unbalanced brackets" % text[:120])
    items.append(text[start:])
    return [item for item in items if item]


def expand_hostlist(text, limit=MAX_HOSTLIST_EXPANSION):
    """SLURM's compressed node list, 'gpu[01-04,07],cpu1' -> ['gpu01', .., 'gpu07', 'cpu1'],
    in order, each once (zero padding kept; several bracket groups multiply, 'r[1-2]n[1-2]').
    ValueError on a malformed list, a name that is no plain host name, or more than `limit`
    names (a hostile or damaged list must not exhaust memory)."""
    names = []
    for item in _split_hostlist(text or ""):
        parts, rest = [""], item
        while rest:
            i = rest.find("[")
            if i < 0:
                parts = [p + rest for p in parts]
                break
            j = rest.index("]", i)
            prefix, choices = rest[:i], []
            for r in rest[i + 1:j].split(","):
                lo, sep, hi = r.partition("-")
                hi = hi if sep else lo
                if not (lo.isdigit() and hi.isdigit() and len(lo) <= 18 and len(hi) <= 18):
                    raise ValueError("hostlist %r has a bad range %r" % (text[:120], r))
                a, b = int(lo), int(hi)
                if b < a or len(choices) + b - a + 1 > limit:
                    raise ValueError("hostlist %r has a range %r that is reversed or too long" % (text[:120], r))
                choices.extend("%0*d" % (len(lo), n) for n in range(a, b + 1))
            if len(parts) * len(choices) + len(names) > limit:
                raise ValueError("hostlist %r names more than %d nodes" % (text[:120], limit))
            parts = [p + prefix + c for p in parts for c in choices]
            rest = rest[j + 1:]
        names.extend(parts)
        if len(names) > limit:
            raise ValueError("hostlist %r names more than %d nodes" % (text[:120], limit))
    for name in names:
        if not NODE_NAME_RE.match(name):
            raise ValueError("hostlist %r holds %r, which is not a node name" % (text[:120], name[:120]))
    return list(OrderedDict.fromkeys(names))


def _check_complete(text):
    if text and not text.endswith("\n"):
        raise ValueError("output ends in the middle of a line (truncated)")


def _split_free_fields(parts, line):
    """(name, comment) of the free-text fields at a line's end. autoexp's tags hold no
    '|', so a tag at the very end is the comment and the rest is the name; a line with a
    tag anywhere else has fields autoexp did not ask for (a changed squeue), which is an
    error; any other line belongs to a foreign job and keeps its text as its name."""
    if len(parts) == 2:
        return parts[0], parts[1]
    if TAG_RE.match(parts[-1]):
        return "|".join(parts[:-1]), parts[-1]
    if any(TAG_RE.match(p) for p in parts[:-1]):
        raise ValueError("line %r has a job tag followed by %d more field(s); squeue printed fields "
                         "autoexp did not ask for" % (line[:120], len(parts) - 1 - max(
                             i for i, p in enumerate(parts) if TAG_RE.match(p))))
    return "|".join(parts), ""


def parse_squeue(text, fmt=SQUEUE_FORMAT, skipped=None, known=None):
    """Parse `squeue -h -o FMT` output (FMT: fixed fields, then %j and %k last).

    A malformed line that carries autoexp's tag, or output cut short, raises ValueError:
    a partial answer must never be mistaken for "these jobs are gone". A malformed line
    without a tag is another job of the user's (a newline in its name splits it in two):
    it is skipped, and why is appended to `skipped` when given.

    known: a dict the caller keeps from one answer to the next (same fmt): a line seen in
    the last answer gives the same row objects again, unparsed, so a cycle in which little
    changed parses little and holds one copy of each row. It is replaced by this answer's
    lines only when the whole answer parsed."""
    _check_complete(text)
    fresh = {} if known is not None else None
    codes = re.findall(r"%(\w)", fmt)
    fixed = codes.index("j")
    at = dict((c, i) for i, c in enumerate(codes[:fixed]))
    i_id, i_raw, i_state = at["i"], at["A"], at["T"]
    i_reason, i_submit, i_nodes = at.get("r"), at.get("V"), at.get("N")
    i_user, i_workdir = at.get("u"), at.get("Z")
    width = fixed + 2
    rows = []
    new = tuple.__new__
    for line in text.splitlines():
        if known is not None:
            seen = known.get(line)
            if seen is not None:
                rows.extend(seen)
                fresh[line] = seen
                continue
        parts = line.split("|")
        regular = len(parts) == width
        if regular:  # the common case: name, comment (and directory) without '|'
            name, comment = parts[fixed], parts[fixed + 1]
        elif not line.strip():
            continue
        else:
            if line.startswith("CLUSTER: "):
                raise ValueError("squeue printed cluster headers (%r): it answered for several clusters" % line[:80])
            try:
                if len(parts) < width:
                    raise ValueError("line %r has %d fields, expected %d" % (line[:120], len(parts), width))
                name, comment = _split_free_fields(parts[fixed:], line)
            except ValueError as e:
                if "autoexp:" in line or skipped is None:
                    raise
                skipped.append(str(e))
                continue
        try:
            state = normalize_state(parts[i_state])
            ids = expand_job_id(parts[i_id])
            raw = parts[i_raw]
            if raw and not raw.isdigit():
                raw = raw.strip()
                if raw and not raw.isdigit():
                    raise ValueError("bad raw job id %r" % raw)
        except ValueError as e:
            if "autoexp:" in line or skipped is None:
                raise
            skipped.append(str(e))
            continue
        if comment == "(null)":
            comment = ""
        submit = parts[i_submit] if i_submit is not None else None
        if submit in UNSET_TIMES:
            submit = None
        reason = parts[i_reason] if i_reason is not None else ""
        user = parts[i_user] if i_user is not None else None
        workdir = parts[i_workdir] if i_workdir is not None and regular else None
        nodes = _node_list(parts[i_nodes]) if i_nodes is not None else None
        if len(ids) == 1:
            row = new(QueueRow, (ids[0], raw, state, reason, name, comment, submit, user, workdir, nodes))
            rows.append(row)
            if fresh is not None:
                fresh[line] = (row,)
        else:
            made = tuple(new(QueueRow, (job_id, "", state, reason, name, comment, submit, user, workdir, nodes))
                         for job_id in ids)
            rows.extend(made)
            if fresh is not None:
                fresh[line] = made
    if known is not None:
        known.clear()
        known.update(fresh)
    return rows


_HOUR_STARTS = {}


def parse_slurm_time(text):
    """sacct's local 'YYYY-MM-DDTHH:MM:SS' (SLURM_TIME_FORMAT=standard) -> epoch; unset -> None.

    time.mktime of the hour, remembered (a sweep's times share a few hundred hours), plus
    the minutes and seconds: exact, since daylight saving changes on the hour, and many
    times faster than strptime and mktime per time."""
    text = text.strip()
    if text in UNSET_TIMES:
        return None
    if len(text) != 19 or text[4] != "-" or text[7] != "-" or text[10] != "T" or text[13] != ":" or text[16] != ":":
        raise ValueError("%r is not a time like 2026-12-01T14:49:14" % text)
    hour = text[:13]
    start = _HOUR_STARTS.get(hour)
    if start is None:
        if len(_HOUR_STARTS) > 100000:
            _HOUR_STARTS.clear()
        y, mo, d, h = int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13])
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23):
            raise ValueError("%r is not a time" % text)
        start = _HOUR_STARTS[hour] = time.mktime((y, mo, d, h, 0, 0, 0, 0, -1))
    mi, se = int(text[14:16]), int(text[17:19])
    if mi > 59 or se > 61:
        raise ValueError("%r is not a time" % text)
    return start + mi * 60 + se


def parse_sacct(text, fields=SACCT_FIELDS):
    """Parse `sacct -X -P -n -o FIELDS` (Comment last); step rows (12.batch) are skipped,
    pending array ranges expanded, and a malformed line raises ValueError. sacct is only
    ever asked about autoexp's own jobs (by id or by name), whose names hold no '|'; the
    comment is last, so whatever it holds stays in it. Start and End stay text until read
    (AcctRow.start_time): most rows of an answer are never looked at."""
    _check_complete(text)
    names = fields.split(",")
    at = dict((n, i) for i, n in enumerate(names))
    i_id, i_raw, i_name, i_state, i_exit = at["JobID"], at["JobIDRaw"], at["JobName"], at["State"], at["ExitCode"]
    i_start, i_end, i_comment, i_submit = at["Start"], at["End"], at["Comment"], at.get("Submit")
    i_user, i_workdir = at.get("User"), at.get("WorkDir")
    i_nodes = at.get("NodeList")
    i_elapsed, i_tres = at.get("ElapsedRaw"), at.get("AllocTRES")
    last = len(names) - 1
    # a '|' in the directory (just before the comment) shows as one in the comment: a tag
    # holds none, so what precedes a tag there is the directory's; else the directory is
    # not told (None)
    dir_before_comment = i_workdir is not None and i_workdir == last - 1 and i_comment == last
    rows = []
    new, states, unset = tuple.__new__, _STATE_WORDS, UNSET_TIMES
    for line in text.splitlines():
        parts = line.split("|", last)
        if len(parts) <= last:
            if not line.strip():
                continue
            raise ValueError("line %r has %d fields, expected %d" % (line[:80], len(parts), len(names)))
        job_text = parts[i_id]
        if "." in job_text:
            continue
        state = states.get(parts[i_state]) or normalize_state(parts[i_state])
        ids = [job_text] if job_text.isdigit() else expand_job_id(job_text)
        raw = parts[i_raw]
        if not raw.isdigit():
            raw = raw.strip()
            if not raw.isdigit():
                raise ValueError("bad raw job id %r" % raw)
        start, end = parts[i_start], parts[i_end]
        if start in unset or len(start) != 19 or start[10] != "T":
            start = _slurm_time_text(start)
        if end in unset or len(end) != 19 or end[10] != "T":
            end = _slurm_time_text(end)
        submit = _slurm_time_text(parts[i_submit]) if i_submit is not None else None
        name, exit_code, comment = parts[i_name], parts[i_exit], parts[i_comment]
        user = parts[i_user] if i_user is not None else None
        workdir = parts[i_workdir] if i_workdir is not None else None
        if dir_before_comment and "|" in comment:
            head, _, tail = comment.rpartition("|")
            if TAG_RE.match(tail):
                workdir, comment = workdir + "|" + head, tail
            else:
                workdir = None
        nodes = _node_list(parts[i_nodes]) if i_nodes is not None else None
        elapsed = parts[i_elapsed] if i_elapsed is not None else ""
        tres = parts[i_tres] if i_tres is not None else ""
        if len(ids) == 1:
            rows.append(new(AcctRow, (ids[0], raw, name, state, exit_code, start, end, comment, submit, user,
                                      workdir, nodes, elapsed, tres)))
        else:
            rows.extend(new(AcctRow, (job_id, "", name, state, exit_code, start, end, comment, submit, user,
                                      workdir, nodes, elapsed, tres)) for job_id in ids)
    return rows


def _slurm_time_text(text):
    """A time as sacct prints it, checked for its shape (a malformed answer is caught here,
    as when it was parsed whole), or None when unset."""
    if text in UNSET_TIMES:
        return None
    if len(text) != 19 or text[10] != "T":
        text = text.strip()
        if text in UNSET_TIMES:
            return None
        if len(text) != 19 or text[10] != "T":
            raise ValueError("%r is not a time like 2026-12-01T14:49:14" % text)
    return text


# Bounds of what is believed of sacct's cost fields: a year of run time, a million CPUs or GPUs.
MAX_ELAPSED_SECONDS, MAX_ALLOC_UNITS = 366 * 86400, 10 ** 6


def alloc_of(arow):
    """(seconds, cpus, gpus) an sacct row says the job ran and held; each None when the row
    does not say it (no field, empty while pending, malformed or beyond belief). GPUs are
    the untyped total 'gres/gpu=N' (SLURM prints it beside typed 'gres/gpu:a100=N'), else
    the typed ones summed; a row with CPUs but no GPU holds 0 GPUs."""
    elapsed = arow.elapsed.strip()
    seconds = int(elapsed) if elapsed.isdigit() and int(elapsed) <= MAX_ELAPSED_SECONDS else None
    cpus = gpus = typed = None
    for item in arow.tres.strip().split(","):
        key, _, value = item.partition("=")
        if not value.isdigit() or int(value) > MAX_ALLOC_UNITS:
            continue
        if key == "cpu":
            cpus = int(value)
        elif key == "gres/gpu":
            gpus = int(value)
        elif key.startswith("gres/gpu:"):
            typed = (typed or 0) + int(value)
    if gpus is None:
        gpus = typed if typed is not None else (0 if cpus is not None else None)
    return seconds, cpus, gpus


def slurm_epoch(value):
    """AcctRow's start or end as an epoch: SLURM's text is parsed here, when it is used."""
    return parse_slurm_time(value) if isinstance(value, str) else value


def parse_sbatch_output(text):
    """`sbatch --parsable` prints 'ID' or 'ID;CLUSTER'; a site's sbatch wrapper may print
    notices around it. The one line that is an id is the answer; none, or several, is no
    answer (the job may still have been queued: it is looked up by tag)."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    ids = [m.group(1) for m in (re.match(r"^(\d+)(?:;\S+)?$", l) for l in lines) if m]
    if len(ids) != 1:
        raise ValueError("expected one job id line, got %r" % text[:200])
    return ids[0]


# sbatch errors that no retry can fix: the job is stopped with this text in its history.
PERMANENT_SBATCH_ERRORS = (
    "invalid partition", "invalid --time", "invalid time", "invalid account", "invalid qos",
    "invalid wckey", "invalid user", "batch script is empty", "does not look like a batch script",
    "requested node configuration is not available",
    "invalid generic resource", "invalid gres", "invalid feature", "unrecognized option",
    "invalid option", "memory specification can not be satisfied", "invalid job array specification",
    "more processors requested than permitted", "node count specification invalid",
    "invalid dependency", "invalid --", "is ambiguous", "invalid node name specified")
# sbatch errors that say the job was refused for now by a limit (too many jobs queued for
# the user or QOS): retried with backoff for as long as it takes, never counted as failures.
THROTTLED_SBATCH_ERRORS = ("job violates accounting/qos policy", "maxsubmitjob", "max_submit_job",
                           "qosmaxsubmitjob", "assocmaxsubmitjob")


class SubmitResult(NamedTuple):
    outcome: str  # SB_OK, SB_UNCERTAIN (the job may or may not be queued), SB_THROTTLED or SB_PERMANENT
    job_id: Optional[str]
    message: str


def classify_sbatch(res):
    """Turn an sbatch run into a SubmitResult. Only a clear refusal counts as permanent;
    every other failure may have queued the job, so it is looked up before any retry."""
    if res.timed_out:
        return SubmitResult(SB_UNCERTAIN, None, "sbatch did not answer in time")
    message = " ".join(res.err.split())[:500]
    if res.rc == 0:
        try:
            return SubmitResult(SB_OK, parse_sbatch_output(res.out), message)
        except ValueError as e:
            return SubmitResult(SB_UNCERTAIN, None, "sbatch printed no job id (%s)" % e)
    low = message.lower()
    if any(p in low for p in PERMANENT_SBATCH_ERRORS):
        return SubmitResult(SB_PERMANENT, None, message or "sbatch exit %d" % res.rc)
    if any(p in low for p in THROTTLED_SBATCH_ERRORS):
        return SubmitResult(SB_THROTTLED, None, message)
    return SubmitResult(SB_UNCERTAIN, None, message or "sbatch exit %d with no message" % res.rc)


def comma_chunks(items, limit):
    """Comma-joined lists of items, each at most limit bytes: the kernel refuses a single
    argument over 128 KiB ("Argument list too long"), and a sweep's names can be many."""
    chunk, size = [], 0
    for item in items:
        n = len(item.encode("utf-8")) + 1
        if chunk and size + n > limit:
            yield ",".join(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield ",".join(chunk)


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


class SlurmClient(object):
    """The only place that runs SLURM commands. Queries raise SlurmUnavailable when the
    answer is not trustworthy; runner(argv, timeout, env) is injectable for tests."""

    __slots__ = ("runner", "env", "timeout", "user", "skipped", "squeue_format", "sacct_fields", "_known_lines")

    def __init__(self, runner=None, env=None, timeout=60.0, user=None, squeue_format=SQUEUE_FORMAT,
                 sacct_fields=SACCT_FIELDS):
        self.skipped = []
        self._known_lines = {}  # the last squeue answer's lines and their rows (parse_squeue)
        self.squeue_format, self.sacct_fields = squeue_format, sacct_fields
        self.runner = runner or run_command
        self.env = slurm_environment(env)
        self.timeout = timeout
        self.user = user or current_user()

    def _run(self, argv, timeout=None):
        return self.runner(argv, timeout or self.timeout, self.env)

    def _query(self, argv, parser):
        res = self._run(argv)
        what = argv[0]
        if res.timed_out:
            raise SlurmUnavailable("%s did not answer within %gs" % (what, self.timeout))
        if res.rc != 0:
            raise SlurmUnavailable("%s failed (exit %d): %s" % (what, res.rc, first_line(res.err) or "no message"))
        try:
            return parser(res.out)
        except ValueError as e:
            raise SlurmUnavailable("%s printed output autoexp cannot parse: %s" % (what, e))

    def squeue(self):
        """Every job of the user that the controller still holds, finished ones included.
        Lines of other jobs that cannot be read are skipped; `skipped` says why."""
        skipped = []
        rows = self._query(["squeue", "-h", "-r", "-t", "all", "-u", self.user, "-o", self.squeue_format],
                           lambda text: parse_squeue(text, self.squeue_format, skipped, self._known_lines))
        self.skipped = skipped
        return rows

    def _sacct(self, selector, since):
        argv = ["sacct", "-X", "-P", "-n", "-o", self.sacct_fields, "-S", local_time(since)] + selector
        try:
            return self._query(argv, lambda text: parse_sacct(text, self.sacct_fields))
        except SlurmUnavailable as e:
            # Accounting switched off is an answer ("no records"), not an outage.
            if "accounting storage is disabled" in str(e).lower():
                return []
            raise

    def sacct(self, job_ids, since):
        """Final (or latest) records of the given jobs, by id."""
        rows = []
        for ids in comma_chunks(job_ids, MAX_ARG_BYTES):
            rows += self._sacct(["-j", ids], since)
        return dict((r.job_id, r) for r in rows)

    def sacct_by_name(self, names, since):
        rows = []
        for chunk in comma_chunks(names, MAX_ARG_BYTES - len("--name=")):
            rows += self._sacct(["--name=" + chunk], since)
        return rows

    def sbatch(self, script, args=(), env=None):
        """env: variables added to sbatch's environment, which the job inherits (--export's
        default, ALL)."""
        argv = ["sbatch", "--parsable"] + list(args) + [script]
        try:
            if env:
                return classify_sbatch(self.runner(argv, self.timeout, dict(self.env, **env)))
            return classify_sbatch(self._run(argv))
        except SlurmUnavailable as e:
            return SubmitResult(SB_UNCERTAIN, None, str(e))

    def scancel(self, job_id):
        """scancel exits 0 for unknown and finished ids too; non-zero means it could not ask."""
        try:
            res = self._run(["scancel", job_id])
        except SlurmUnavailable as e:
            return False, str(e)
        if res.timed_out:
            return False, "scancel did not answer in time"
        if res.rc != 0:
            return False, first_line(res.err) or "scancel exit %d" % res.rc
        return True, ""


def current_user():
    """The user to ask squeue about: from the uid, since cron sets no USER."""
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# ============================================================================
# 5. Log tail
# ============================================================================

class LogRead(NamedTuple):
    lines: list
    offset: int
    inode: Optional[int]
    head: Optional[str]
    restarted: str  # "" or why the file is read from its start: RESTART_REPLACED, RESTART_TRUNCATED
    ok: bool = True    # False: the file exists but could not be read (error says why)
    eof: bool = True   # False: more than max_bytes were waiting; read again
    size: int = 0      # the file's size: activity is its growth, whatever the lines
    error: str = ""
    mtime: float = 0.0  # when the file was last written


RESTART_REPLACED, RESTART_TRUNCATED = "replaced", "truncated"


def open_log(path):
    """Open a log for reading without ever blocking: a FIFO or a device at the log's path
    would block a plain open() until a writer comes. Returns (file, stat); raises OSError,
    or ValueError for a file that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("%s is not a regular file; autoexp reads only regular files as logs" % path)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def log_head(f, size):
    """'N:sha1' of a file's first N bytes: truncated and rewritten past its old size (same
    inode, larger), a file still changes its beginning."""
    f.seek(0)
    return _head_of(f.read(min(size, LOG_HEAD_BYTES)))


def read_log(path, offset, inode, head=None, final=False, max_bytes=MAX_LOG_READ, overlap=0, check_head=True):
    """Read the complete lines added to a log since offset, at most max_bytes at a time.

    A line ends at a newline or a carriage return (a progress bar redraws itself with \r).
    A partial last line is left for the next read (so it is matched once, whole) unless
    final is set (the job has ended and nothing more will come) and the end of the file is
    reached. A line longer than max_bytes is taken in pieces, each next one starting
    `overlap` bytes before the last one ended, so a string of overlap + 1 bytes is found
    even across a cut. A file that shrank, has another inode or another beginning was
    truncated or replaced: it is read again from its start, once. A missing file is
    simply empty; the size returned is what activity is measured by. check_head false: the
    first bytes are neither read again nor compared (a log of one job only, whose truncation
    the size shows), so the bytes read are the bytes appended; the head is still taken
    from a read that starts at 0 (it tells a rotated copy of the file, find_copy).
    """
    try:
        f, st = open_log(path)
    except ValueError as e:
        return LogRead([], offset, inode, head, "", ok=False, size=0, error=str(e))
    except OSError as e:
        return LogRead([], offset, inode, head, "", ok=e.errno == errno.ENOENT, error=e.strerror or str(e))
    try:
        with f:
            restarted = ""
            if inode is not None and st.st_ino != inode:
                restarted = RESTART_REPLACED
            elif st.st_size < offset:
                restarted = RESTART_TRUNCATED
            elif check_head and head and offset:
                n = int(head.split(":", 1)[0])
                if st.st_size < n or log_head(f, n) != head:
                    restarted = RESTART_TRUNCATED
            if restarted:
                offset, head = 0, None  # taken again from the new beginning (below)
            if check_head and (not head or restarted or int(head.split(":", 1)[0]) < LOG_HEAD_BYTES):
                head = log_head(f, st.st_size) or head
            if st.st_size == offset:
                return LogRead([], offset, st.st_ino, head, restarted, size=st.st_size, mtime=st.st_mtime)
            f.seek(offset)
            data = f.read(min(st.st_size - offset, max_bytes))
    except (IOError, OSError) as e:
        return LogRead([], offset, inode, head, "", ok=False, error=e.strerror or str(e))
    eof = offset + len(data) >= st.st_size
    end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    if final and eof:
        end = len(data)
    elif end == 0:
        if len(data) < max_bytes:
            return LogRead([], offset, st.st_ino, head, restarted, size=st.st_size, mtime=st.st_mtime)
        # one line longer than max_bytes: taken in pieces, never buffered whole
        lines = [data.decode("utf-8", "replace")]
        end = len(data) - min(overlap, len(data) // 2)
        return LogRead(lines, offset + end, st.st_ino, head, restarted, eof=False, size=st.st_size,
                       mtime=st.st_mtime)
    if not check_head and offset == 0 and head is None:
        head = _head_of(data[:LOG_HEAD_BYTES])
    lines = data[:end].decode("utf-8", "replace").splitlines()
    return LogRead(lines, offset + end, st.st_ino, head, restarted, eof=offset + end >= st.st_size,
                   size=st.st_size, mtime=st.st_mtime)


def _head_of(data):
    import hashlib
    return "%d:%s" % (len(data), hashlib.sha1(data).hexdigest()) if data else None


# The names a log rotation gives the copies of a log it truncates (logrotate's copytruncate:
# `x.log.1`, the one before it `x.log.2`; with dateext `x.log-YYYYMMDD`, of the day it ran or
# the day before).
ROTATED_COPY_SUFFIXES = (".1", ".2", "-%Y%m%d")
ROTATED_COPY_DAYS = 14  # a monitor stopped for longer misses a dated copy older than that


def find_copies(path, offset, inode, head, after, now, whole=True):
    """Copies of the log at path made by rotations that then truncated it (copytruncate)
    since the last read, oldest first, and where to start reading the first: regular files
    under the rotation's names, of another inode, written after the last read (`after`: the
    log's mtime then). The oldest holds the lines not read yet from `offset` on when it
    starts with the bytes read (`head`, when known), else it is read whole (a truncation the
    size did not show came before it: lines matched before are not matched again) if
    `whole`, else none is read (a log other jobs wrote too); each later one is a whole later
    generation of the file. A stat per name (a dated copy: each day from the one before the
    last read to the day after now, at most ROTATED_COPY_DAYS); a compressed copy, a symbolic
    link, a copy in another folder are not read. Returns ([path, ...], offset in the first)."""
    names = []
    for suffix in ROTATED_COPY_SUFFIXES:
        if "%" in suffix:
            first = max(min(after if after is not None else now, now) - 86400, now - ROTATED_COPY_DAYS * 86400)
            days, t = [], now + 86400  # a host in another time zone may date it tomorrow
            while t >= first and len(days) < ROTATED_COPY_DAYS + 2:
                days.append(time.strftime(suffix, time.localtime(t)))
                t -= 86400
            names += [path + d for d in sorted(set(days))]
        else:
            names.append(path + suffix)
    found = []
    for name in names:
        try:
            st = os.lstat(name)  # a symbolic link is not a rotation's copy
        except OSError:
            continue
        # at or after the last read: file systems that keep whole seconds (Lustre) give the
        # copy the time of the read's last write
        if (stat.S_ISREG(st.st_mode) and st.st_ino != inode and (after is None or st.st_mtime >= after)
                and all(st.st_ino != other.st_ino for _, other in found)):
            found.append((name, st))
    found.sort(key=lambda c: (c[1].st_mtime, c[0]))
    start = offset
    if found:
        name, st = found[0]
        if head and st.st_size >= int(head.split(":", 1)[0]):
            try:
                f, _ = open_log(name)
                with f:
                    same = log_head(f, int(head.split(":", 1)[0])) == head
            except (IOError, OSError, ValueError):
                same = False
        else:
            same = not head
        if not same:
            if not whole:
                return [], 0
            start = 0
        elif st.st_size <= offset:
            found, start = found[1:], 0  # nothing past what was read
    return [name for name, _ in found], start


def find_by_inode(folder, inode):
    """The path of the file with this inode in folder, or None: a log rotated away
    (renamed next to its successor) whose last lines are still to be read."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    if entry.inode() == inode and entry.is_file(follow_symlinks=False):
                        return entry.path
                except OSError:
                    continue
    except OSError:
        return None
    return None


class LogHit(NamedTuple):
    event: str
    mode: str
    line: str
    exclude: bool = False  # its log_events entry says exclude_nodes
    node: Optional[str] = None  # what the pattern's group `node` captured, when it is a node name
    captures: tuple = ()  # (group, value) of every named group the line matched, values cut


class LogMatcher(object):
    """The termination string and the log_events patterns, compiled once. The termination
    string is looked for in whole lines; a pattern, in the first MAX_MATCH_CHARS characters
    of each line, so that no line costs more than a bounded time whatever it holds."""

    __slots__ = ("termination", "patterns")

    def __init__(self, monitoring):
        self.termination = monitoring.termination_string
        # a substring is escaped into a pattern: one scan for both kinds
        self.patterns = [(e.name, re.compile(re.escape(e.pattern) if e.match == MATCH_SUBSTRING else e.pattern),
                          e.mode, e.exclude_nodes) for e in monitoring.log_events]

    @property
    def overlap(self):
        """Bytes a long line's next piece re-reads, so the termination string is found across a cut."""
        return max(len(self.termination.encode("utf-8")) - 1, 0) if self.termination else 0

    def scan(self, lines):
        hits = []
        for line in lines:
            if self.termination and self.termination in line:
                hits.append(LogHit(MODE_SUCCESS, MODE_SUCCESS, line))
            head = line[:MAX_MATCH_CHARS]
            for name, rx, mode, exclude in self.patterns:
                m = rx.search(head)
                if m:
                    groups = m.groupdict()
                    node = groups.get("node") if exclude else None
                    # a NUL can be no argument nor variable of a command: dropped
                    captures = tuple((g, v.replace("\x00", "")[:MAX_CAPTURE_CHARS])
                                     for g, v in sorted(groups.items()) if v is not None)
                    # a log line is not trusted with an sbatch argument: a plain host name or nothing
                    hits.append(LogHit(name, mode, line, exclude,
                                       node if node and NODE_NAME_RE.match(node) else None, captures))
        return hits


def resolve_log_path(template, job_id, raw_id, job_name, user):
    """Expand the %-patterns SLURM expands in --output; None while %j is not known yet
    (an array task's own job id exists only once it starts)."""
    array_id, task = split_job_id(job_id)
    values = {"A": array_id, "a": str(task) if task is not None else "4294967294",
              "x": job_name, "u": user}
    values["j"] = raw_id or (array_id if task is None else None)

    missing = []

    def repl(m):
        width, code = m.group(1), m.group(2)
        if code == "%":
            return "%"
        value = values.get(code)
        if value is None:
            missing.append(code)
            return ""
        return value.zfill(int(width)) if width and value.isdigit() else value
    path = re.sub(r"%(\d*)([%jAaxu])", repl, template)
    return None if missing else path




def log_template_of(plan, job_name, job_id=None, array_task=None):
    """The --output pattern an attempt writes to, and the job name its %x stands for: the
    array's for an array task, else the job's own script's."""
    in_array = (split_job_id(job_id)[1] if job_id else array_task) is not None
    if in_array and plan.array is not None:
        return plan.array.log_template, plan.array.name
    return plan.by_name[job_name].log_template, job_name


def shared_log_path(template, job_name, user):
    """The one path of a log template without %j/%A/%a (every attempt writes the same
    file), or None when each attempt has its own."""
    if re.search(r"%\d*[jAa]", template.replace("%%", "")):
        return None
    return resolve_log_path(template, "0", "0", job_name, user)


def log_changed(att):
    """Has the attempt's log changed size, inode or modification time since it was last
    read? One stat; an unknown path or an unreadable log counts as changed (it is looked
    at, and says why). The time catches a log truncated and written again up to its old
    size between two looks (a copytruncate rotation; simulator seed 1492)."""
    if att.resolved_log_path is None:
        return False
    try:
        st = os.stat(att.resolved_log_path)
    except OSError as e:
        return not (e.errno == errno.ENOENT and att.log_inode is None)
    return (st.st_size != att.log_size or st.st_ino != att.log_inode
            or (att.log_mtime is not None and st.st_mtime != att.log_mtime))


def extra_log_changed(rec):
    """log_changed for one record of an attempt's extra_logs: a file watched besides the
    log. One not resolved yet has not changed."""
    if rec["path"] is None:
        return False
    try:
        st = os.stat(rec["path"])
    except OSError as e:
        return not (e.errno == errno.ENOENT and rec["inode"] is None)
    return (st.st_size != rec["size"] or st.st_ino != rec["inode"]
            or (rec["mtime"] is not None and st.st_mtime != rec["mtime"]))


def extra_logs_changed(att):
    return any(extra_log_changed(rec) for rec in att.extra_logs)


def log_end(path):
    """(size, inode, head) of a log as it is now, or None if it cannot be opened: where a new
    attempt writing to a shared log starts reading."""
    try:
        f, st = open_log(path)
        with f:
            return st.st_size, st.st_ino, log_head(f, st.st_size)
    except (IOError, OSError, ValueError):
        return None


# ============================================================================
# 6. Records: what autoexp knows of a job (no I/O)
# ============================================================================

class Observation(NamedTuple):
    """What SLURM said about one job id this cycle."""
    source: str  # SRC_SQUEUE, SRC_SACCT, SRC_MISSING (both answered, neither knows it) or SRC_UNKNOWN
    state: str = ""
    reason: str = ""
    exit_code: str = ""
    raw_id: str = ""
    start: Optional[float] = None  # from sacct: when SLURM started and ended the job
    end: Optional[float] = None
    submit: Optional[str] = None  # SLURM's submit time (QueueRow.submit)
    nodes: Optional[str] = None  # SLURM's node list of the job, as printed (QueueRow.nodes)
    # from sacct's final row only (alloc_of): what the attempt cost; None: not told
    elapsed_raw: Optional[int] = None
    alloc_cpus: Optional[int] = None
    alloc_gpus: Optional[int] = None


class Facts(NamedTuple):
    """What an attempt has accumulated so far (persisted, so a restart of the monitor keeps it)."""
    success_seen: bool = False
    log_mode: Optional[str] = None
    log_reason: str = ""
    running_since: Optional[float] = None
    last_activity: Optional[float] = None
    missing_since: Optional[float] = None
    pending_reason: Optional[str] = None  # squeue's last reason while PENDING (not "None")
    pending_looks: int = 0  # answered looks in a row that showed it PENDING with that reason (at most BLOCKED_LOOKS)
    pending_since: Optional[float] = None  # when this monitor first saw it PENDING (this time)
    pending_warned: bool = False  # a pending mode was noted under an `ignore` policy


class Ended(NamedTuple):
    """How one attempt ended, as far as deciding the next one goes."""
    mode: str
    signature: str  # its exit code and the log line that decided it
    runtime: Optional[float]  # seconds SLURM ran it (None: unknown)


class Field(NamedTuple):
    """One field of a state-file record: its default, and the types a reader insists on
    (None: optional). A file edited or damaged into other valid JSON is still refused."""
    name: str
    default: object = None
    required: Optional[tuple] = None


_STR, _INT, _OPT_STR = (str,), (int,), (str, type(None))
TIME_FIELDS = frozenset(("intent_at", "submitted_at", "ended_at", "running_since", "resumed_at", "missing_since",
                         "pending_since",
                         "slurm_start", "slurm_end", "acct_wait_since",
                         "last_log_growth_at", "cancel_requested_at", "next_submit_at",
                         "last_updated", "created_at", "updated_at", "time"))


def _to_json_value(key, value):
    return iso_time(value) if key in TIME_FIELDS and isinstance(value, (int, float)) else value


def _from_json_value(key, value):
    if key in TIME_FIELDS and isinstance(value, str):
        return parse_iso(value)
    return value


def _times_to_json(d):
    return OrderedDict((k, _to_json_value(k, v)) for k, v in d.items())


def _times_from_json(d):
    return OrderedDict((k, _from_json_value(k, v)) for k, v in d.items())


def _require(d, fields, where):
    """Check the fields a reader relies on (ValueError names the first one that is wrong)."""
    if not isinstance(d, dict):
        raise ValueError("%s is not an object" % where)
    for f in fields:
        if f.required is None:
            continue
        if f.name not in d:
            raise ValueError("%s has no %r" % (where, f.name))
        value = d[f.name]
        if not isinstance(value, f.required) or (isinstance(value, bool) and bool not in f.required):
            raise ValueError("%s: %r is %s" % (where, f.name, _type_name(value)))


# Fields whose values come from a small vocabulary (states, origins, events): each value is
# kept once in memory however many jobs hold it.
INTERNED_FIELDS = frozenset(("status", "origin", "submit_state", "last_slurm_state", "last_monitor_state",
                             "last_event", "outcome", "exit_code", "log_mode", "pending_reason"))


# List fields mostly empty, and only ever replaced, never changed in place: an empty one is
# the one shared (), so a 100k-job sweep holds 300k fewer lists.
EMPTY_SHARED_FIELDS = frozenset(("log_matches", "actions", "seen_copies", "sbatch_options", "extra_logs",
                                 "resubmits_warned", "blamed_nodes", "excluded_nodes", "effects"))


class Record(object):
    """A state-file record whose FIELDS table is its one list of fields: slots, defaults,
    the JSON form and what a reader requires all follow from it."""

    __slots__ = ()
    FIELDS = ()

    def __init__(self, **fields):
        for f in self.FIELDS:
            value = fields.pop(f.name, f.default)
            if isinstance(value, tuple) and (value or f.name not in EMPTY_SHARED_FIELDS):
                value = list(value)
            elif f.name in INTERNED_FIELDS and isinstance(value, str):
                value = sys.intern(value)  # "RUNNING", "submitted": one string, not one per job
            setattr(self, f.name, value)
        if fields:
            raise TypeError("unknown %s fields: %s" % (type(self).__name__.lower(), ", ".join(fields)))

    def to_dict(self, compact=False):
        """The JSON form; compact leaves out the fields that hold their default (a reader
        fills them in), so that a job of a large sweep costs a few hundred bytes."""
        out = OrderedDict()
        for f in self.FIELDS:
            value = getattr(self, f.name)
            if compact and f.required is None and (value == f.default or (value == [] and f.default == ())):
                continue
            out[f.name] = _to_json_value(f.name, value)
        return out

    @classmethod
    def fields_from(cls, d, where):
        _require(d, cls.FIELDS, where)
        return dict((f.name, _from_json_value(f.name, d.get(f.name, f.default))) for f in cls.FIELDS)


ATTEMPT_FIELDS = (
    Field("attempt", None, _INT), Field("job_id", None, _OPT_STR), Field("raw_id"), Field("array_task"),
    Field("origin"), Field("submit_state", None, _OPT_STR), Field("submit_error"), Field("intent_at"),
    Field("submitted_at"), Field("resolved_log_path"), Field("log_offset", 0, _INT), Field("log_inode"),
    Field("log_head"), Field("log_size", 0), Field("log_mtime"), Field("log_error"), Field("last_log_growth_at"),
    Field("running_since"), Field("resumed_at"), Field("missing_since"),
    Field("acct_wait_since"), Field("slurm_submit"), Field("slurm_start"), Field("slurm_end"), Field("requeues", 0),
    Field("pending_reason"), Field("pending_looks", 0), Field("pending_since"), Field("pending_warned", False),
    Field("last_slurm_state"), Field("last_monitor_state"), Field("exit_code"), Field("live", False, (bool,)),
    Field("success_seen", False), Field("log_mode"), Field("log_reason"), Field("outcome", None, _OPT_STR),
    Field("reason"), Field("ended_at"), Field("cancel_requested_at"), Field("cancel_result"),
    Field("log_matches", ()), Field("actions", (), (list,)), Field("sbatch_options", ()), Field("extra_logs", ()),
    Field("nodes"), Field("exclude_event"), Field("blamed_nodes", ()), Field("excluded_nodes", ()),
    Field("exclusion_note"), Field("elapsed_raw"), Field("alloc_cpus"), Field("alloc_gpus"),
    Field("captured"))


# The times durations are measured from (stall, grace periods, backoffs, resends): moved
# together when the wall clock jumps.
ATTEMPT_TIMERS = ("intent_at", "running_since", "last_log_growth_at", "resumed_at", "missing_since", "pending_since",
                  "acct_wait_since", "ended_at", "cancel_requested_at")
JOB_TIMERS = ("next_submit_at", "last_updated")


# What changes whenever a job's log grows, and only then: written with the job's next other
# change, or at least every LOG_CHECKPOINT seconds (a training sweep's logs all grow every
# cycle). A new process re-reads at most that much of a log; lines that matched are never
# matched again (log_matches is written at once), and growth is seen again by the log's size.
LOG_PROGRESS_FIELDS = ("log_offset", "log_size", "log_mtime", "log_inode", "log_head", "last_log_growth_at",
                       "extra_logs")
# One record of extra_logs, a file watched besides the log: its template (%-patterns
# unexpanded), its path once known, and the same progress as the log's own fields.
EXTRA_LOG_KEYS = ("template", "path", "offset", "inode", "head", "size", "mtime", "error")


class Attempt(Record):
    """One SLURM submission of a logical job (or a SLURM job adopted for it)."""

    FIELDS = ATTEMPT_FIELDS
    __slots__ = tuple(f.name for f in ATTEMPT_FIELDS)

    def to_dict(self, compact=False):
        d = Record.to_dict(self, compact)
        d["actions"] = [_times_to_json(a) for a in self.actions]
        return d

    @classmethod
    def from_dict(cls, d):
        fields = cls.fields_from(d, "an attempt")
        fields["actions"] = [_times_from_json(a) for a in d.get("actions", ())] or ()
        extra = fields["extra_logs"]
        if not isinstance(extra, (list, tuple)) or not all(
                isinstance(r, dict) and isinstance(r.get("offset", 0), int) for r in extra):
            raise ValueError("an attempt: 'extra_logs' is not a list of {%s}" % ", ".join(EXTRA_LOG_KEYS))
        fields["extra_logs"] = [OrderedDict((k, r.get(k, 0 if k in ("offset", "size") else None))
                                            for k in EXTRA_LOG_KEYS) for r in extra] or ()
        captured = fields["captured"]
        if captured is not None and not (isinstance(captured, dict) and all(isinstance(v, str)
                                                                           for v in captured.values())):
            raise ValueError("an attempt: 'captured' is not an object of strings")
        if fields["raw_id"] == fields["job_id"]:
            fields["raw_id"] = fields["job_id"]  # one string for both
        return cls(**fields)

    @property
    def in_doubt(self):
        """Its submission was decided, but no SLURM id was ever recorded for it: a crash
        around sbatch, or an sbatch error that may have queued it all the same."""
        return self.job_id is None and self.submit_state == INTENT

    def ended(self, mode, end):
        """SLURM's own start and end times when sacct gave them; else what this monitor saw."""
        if self.slurm_start and self.slurm_end:
            runtime = self.slurm_end - self.slurm_start
        elif self.running_since:
            runtime = end - self.running_since
        else:
            runtime = None
        return Ended(mode, "%s|%s" % (self.exit_code or "", self.log_reason or ""), runtime)

    def note(self, obs, now):
        """Record what SLURM said of this attempt (ids, times, states, requeues); returns the
        events it makes, [(kind, detail)]."""
        events = []
        if obs.source in ANSWERED:
            if obs.raw_id and obs.state != "PENDING":
                self.raw_id = obs.raw_id
            if obs.submit:
                self.slurm_submit = obs.submit
            if obs.nodes:
                self.nodes = obs.nodes
            if obs.start:
                self.slurm_start = obs.start
            if obs.end:
                self.slurm_end = obs.end
            if obs.elapsed_raw is not None:
                self.elapsed_raw, self.alloc_cpus, self.alloc_gpus = obs.elapsed_raw, obs.alloc_cpus, obs.alloc_gpus
            if obs.state == "RUNNING" and self.running_since is None:
                self.running_since = now
            elif obs.state == "RUNNING" and self.last_slurm_state not in (None, "RUNNING"):
                self.resumed_at = now  # runs again (after SUSPENDED, say): the stall clock restarts
            elif obs.state in REQUEUE_STATES and self.running_since is not None:
                # Requeued by SLURM under the same id: the same attempt, not a failure.
                self.requeues += 1
                self.running_since = None
                events.append((EV_REQUEUED, "back to %s under the same id" % obs.state))
            if obs.state != self.last_slurm_state:
                events.append((EV_STATE, "%s -> %s" % (self.last_slurm_state or "new", obs.state)))
                self.last_slurm_state = obs.state
            self._note_pending(obs, now)
            if obs.exit_code:
                self.exit_code = obs.exit_code
            self.missing_since = None
        elif obs.source == SRC_MISSING and self.missing_since is None:
            self.missing_since = now
            events.append((EV_MISSING, obs.reason or "not in squeue or sacct"))
        return events

    def _note_pending(self, obs, now):
        """Keep squeue's reason while PENDING (the last one stays after the job starts),
        how many answered looks in a row showed it, and since when it pends. Only squeue
        knows the reason: sacct's rows leave all this as it was."""
        if obs.state != "PENDING":
            self.pending_since, self.pending_looks = None, 0
            return
        if obs.source != SRC_SQUEUE:
            return
        if self.pending_since is None:
            self.pending_since = now
        reason = obs.reason[:MAX_REASON_CHARS]
        if reason in ("", "None"):
            self.pending_looks = 0  # SLURM has not looked at it yet: no reason, none kept
        elif reason == self.pending_reason and self.pending_looks:
            self.pending_looks = min(self.pending_looks + 1, BLOCKED_LOOKS)  # capped: a steady job writes nothing
        else:
            self.pending_reason, self.pending_looks = reason, 1

    def absorb(self, hits, policies):
        """Record log matches: each name once per attempt; the termination string is
        success, the first other match whose policy is not `ignore` decides the mode (an
        entry without a mode decides nothing). Named groups are captured on every match,
        the last value of each kept (captured). Returns the hits seen for the first time."""
        new = []
        for hit in hits:
            if hit.captures:  # every match, not only the first: the last value is the one kept
                captured = OrderedDict(self.captured or ())
                captured.update(hit.captures)
                if captured != self.captured:
                    self.captured = captured
            if hit.event in self.log_matches:
                continue
            self.log_matches = list(self.log_matches) + [hit.event]
            new.append(hit)
            if hit.exclude:
                self.exclude_event = self.exclude_event or hit.event
                if hit.node and hit.node not in self.blamed_nodes:
                    self.blamed_nodes = list(self.blamed_nodes) + [hit.node]
            if hit.mode == MODE_SUCCESS:
                self.success_seen = True
            elif hit.mode is None:
                pass  # an event (and captures) only
            elif self.log_mode is None and policy_for(policies, hit.mode).action != IGNORE:
                self.log_mode = hit.mode
                self.log_reason = "log_events %r matched: %s" % (hit.event, hit.line.strip()[:200])
        return new

    def take(self, row, origin, now):
        """This attempt is the SLURM job of row (found by its tag)."""
        self.job_id = row.job_id
        self.raw_id = row.raw_id if row.state != "PENDING" else None
        self.array_task = split_job_id(row.job_id)[1]
        self.slurm_submit = row.submit
        self.origin = origin
        self.submit_state = SUBMITTED
        self.submitted_at = now
        self.live = True

    def facts(self):
        # Activity is what this monitor saw grow, on its own clock: a shared filesystem's
        # mtimes come from another host's clock.
        activity = [t for t in (self.running_since, self.last_log_growth_at, self.resumed_at) if t]
        return Facts(self.success_seen, self.log_mode, self.log_reason or "", self.running_since,
                     max(activity) if activity else None, self.missing_since, self.pending_reason,
                     self.pending_looks, self.pending_since, self.pending_warned)


JOB_FIELDS = (
    Field("name", None, _STR), Field("index", None, _INT), Field("status", ACTIVE, _STR),
    Field("attempts", (), (list,)), Field("array", False), Field("last_monitor_state"),
    Field("last_slurm_state"), Field("last_event"), Field("last_updated"), Field("next_submit_at"),
    Field("reason"), Field("submit_failures", 0), Field("submit_refusals", 0), Field("duplicate_warned", False),
    Field("seen_copies", ()), Field("attempts_base", 0), Field("resubmits_warned", ()), Field("effects", ()),
    Field("parent"))  # a follow-up's parent job (SPEC 5.7); None for the plan's own jobs

# One effect of an `on` rule (SPEC 5.8), as job.effects keeps it: set off by `event` (its
# journal record), run as tries 1, 2, ... of which `try` is the current one.
EFFECT_KEYS = ("id", "rule", "kind", "target", "event", "state", "try", "spawns", "next_at", "started_at",
               "ended_at", "exit", "timed_out", "tail", "error", "command", "tries", "events")
# The `rule` of a notification that notify.events (not an `on` rule) sets off.
NOTIFY_RULE = "notify"


class Job(Record):
    """A logical job of the plan, keyed by name, with its whole attempt history."""

    FIELDS = JOB_FIELDS
    __slots__ = tuple(f.name for f in JOB_FIELDS)

    @property
    def current(self):
        return self.attempts[-1] if self.attempts else None

    @property
    def job_id(self):
        """The SLURM id of the live attempt (one that may still run), or None."""
        att = self.current
        return att.job_id if att is not None and att.live else None

    def known_ids(self):
        return set(a.job_id for a in self.attempts if a.job_id)

    def new_attempt(self, **fields):
        att = Attempt(attempt=len(self.attempts) + 1, **fields)
        self.attempts.append(att)
        return att

    def unresolved_intent(self):
        """A job no longer active whose submission sbatch answered with an error: until a
        lookup by tag comes back empty, that submission may have queued it after all."""
        return self.status != ACTIVE and any(a.in_doubt for a in self.attempts)

    def to_dict(self, compact=False):
        d = Record.to_dict(self, compact)
        d["attempts"] = [a.to_dict(compact) for a in self.attempts]
        if self.job_id is not None or not compact:
            d["job_id"] = self.job_id  # derived: what a reader of the file wants first
        return d

    def line(self, volatile=True):
        """The job as one line of a snapshot or a batch (compact, keys sorted); without the
        fields that only follow its log's progress when volatile is false."""
        d = self.to_dict(compact=True)
        if not volatile:
            for a in d["attempts"]:
                for k in LOG_PROGRESS_FIELDS:
                    a.pop(k, None)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d):
        fields = cls.fields_from(d, "a job")
        if d["status"] not in STATUSES:
            raise ValueError("job %s has status %r" % (d["name"], d["status"]))
        fields["attempts"] = [Attempt.from_dict(a) for a in d.get("attempts", ())]
        effects = fields["effects"]
        if not isinstance(effects, (list, tuple)) or not all(
                isinstance(e, dict) and isinstance(e.get("id"), str) and e.get("state") in EFFECT_STATES
                and isinstance(e.get("try"), int) and isinstance(e.get("event"), dict) for e in effects):
            raise ValueError("job %s: 'effects' is not a list of {%s}" % (d["name"], ", ".join(EFFECT_KEYS)))
        fields["effects"] = [OrderedDict((k, e.get(k)) for k in EFFECT_KEYS) for e in effects] or ()
        return cls(**fields)

    def open_effects(self):
        return [e for e in self.effects if e["state"] in EFFECT_OPEN]


SESSION_FIELDS = (
    Field("schema_version", None, _INT), Field("kind", None, _STR), Field("session_id", None, _STR), Field("project", None, _STR),
    Field("manifest_path", None, _STR), Field("created_at", None, _STR), Field("updated_at"),
    Field("config", None, (dict,)), Field("monitor_overrides", ()), Field("event_seq", 0, _INT),
    Field("outbox", ()), Field("clock_ref"), Field("generation", 0), Field("batch", 0),
    Field("excluded_nodes", ()))
# A schema-2 header must say where its jobs are; a schema-1 document has them inline.
HEADER_FIELDS = (Field("generation", None, _INT), Field("batch", None, _INT))
# What a batch carries of the session besides its jobs: what changes from cycle to cycle.
BATCH_SESSION_FIELDS = ("event_seq", "outbox", "updated_at", "clock_ref", "excluded_nodes")


class Session(Record):
    """A submitted plan: the state file's content, plus the manifest it points to."""

    FIELDS = SESSION_FIELDS
    __slots__ = tuple(f.name for f in SESSION_FIELDS) + (
        "jobs", "path", "plan", "journal_seq", "_monitoring", "_policies", "_matcher", "_by_name",
        "digests", "touched", "header_dirty", "persisted_seq", "snapshot_bytes", "delta_bytes", "unwritten",
        "stable", "written_at", "snapshot_batch", "header_events", "_node_exclusion", "run_monitoring",
        "_notify", "open_digests")

    def __init__(self, path, jobs=(), **fields):
        Record.__init__(self, **fields)
        self.schema_version, self.kind = STATE_SCHEMA_VERSION, SESSION_KIND
        self.updated_at = self.updated_at or self.created_at
        self.jobs = list(jobs)
        self.path = path
        self.plan = None
        self.journal_seq = None  # what the journal file already holds; read on first sync
        self._monitoring = self._policies = self._matcher = self._by_name = self._node_exclusion = None
        self.run_monitoring = None  # `monitor -o` without --save: this process's config, never written
        # What the files hold (section 8): the line each job was last written as (by its
        # hash), the jobs this process may have changed since, whether the header changed.
        self.digests, self.touched, self.header_dirty = {}, set(), False
        self.stable, self.written_at = {}, {}  # per job: its line without log progress; when written
        self.snapshot_batch, self.header_events = self.batch, 0  # what the header on disk says
        self.persisted_seq, self.snapshot_bytes, self.delta_bytes = self.event_seq, 0, 0
        self.unwritten = None  # actions whose payload is not written yet (None: not looked for yet)
        self._notify = None
        self.open_digests = {}  # notify.digest: target -> (job, effect) still taking this pass's events

    def touch(self, job):
        """job may change: the next save compares it with what the files hold."""
        self.touched.add(job.name)

    def touch_all(self):
        self.touched.update(j.name for j in self.jobs)

    @property
    def monitoring(self):
        if self._monitoring is None:
            self._monitoring = make_monitoring(self.run_monitoring or self.config["monitoring"])
        return self._monitoring

    @property
    def policies(self):
        if self._policies is None:
            self._policies = make_policies(self.config["restart"])
        return self._policies

    @property
    def node_exclusion(self):
        if self._node_exclusion is None:
            self._node_exclusion = make_node_exclusion(self.config.get("node_exclusion"))
        return self._node_exclusion

    @property
    def matcher(self):
        if self._matcher is None:
            self._matcher = LogMatcher(self.monitoring)
        return self._matcher

    def apply_monitor_overrides(self, overrides, save=True):
        """Merge `-o` overrides into the session's monitoring config and remember them; with
        save=False (`monitor -o` without --save) they hold for this process only: the
        config and monitor_overrides written stay as they were."""
        if not overrides:
            return
        mon = OrderedDict(self.config["monitoring"] if save else (self.run_monitoring or self.config["monitoring"]))
        prefixed = [o if o.startswith("monitoring.") else "monitoring." + o for o in overrides]
        tree = apply_overrides(OrderedDict([("monitoring", mon)]), prefixed)
        c = _Checker("override")
        c.obj(tree, "", ("monitoring",))
        validated = validate_monitoring(tree["monitoring"], c)
        validate_restart(self.config["restart"], validated, c)
        self._monitoring = self._policies = self._matcher = None
        if not save:
            self.run_monitoring = validated
            return
        self.config["monitoring"] = validated
        for o in prefixed:  # the latest value of each key, once
            key = o.partition("=")[0]
            self.monitor_overrides = [x for x in self.monitor_overrides if x.partition("=")[0] != key] + [o]
        self.header_dirty = True

    def job(self, name):
        if self._by_name is None or len(self._by_name) != len(self.jobs):
            self._by_name = dict((j.name, j) for j in self.jobs)
        return self._by_name.get(name)

    def shift_timers(self, seconds):
        """The wall clock jumped by `seconds`: move every time a duration is measured from
        by as much, so that no stall, grace or backoff counts the jump."""
        self.touch_all()
        for job in self.jobs:
            for f in JOB_TIMERS:
                if getattr(job, f) is not None:
                    setattr(job, f, getattr(job, f) + seconds)
            for att in job.attempts:
                for f in ATTEMPT_TIMERS:
                    if getattr(att, f) is not None:
                        setattr(att, f, getattr(att, f) + seconds)
                if att.cancel_result and att.cancel_result.get("time"):
                    att.cancel_result["time"] = iso_time(parse_iso(att.cancel_result["time"]) + seconds)
        for entry in self.excluded_nodes:  # an exclusion's hours count from its time
            entry["time"] = iso_time(parse_iso(entry["time"]) + seconds)
        for job in self.jobs:  # a retry's backoff
            for eff in job.open_effects():
                if eff["next_at"]:
                    eff["next_at"] = iso_time(parse_iso(eff["next_at"]) + seconds)

    def add_jobs(self, jobs):
        self.jobs.extend(jobs)
        self.jobs.sort(key=lambda j: j.index)
        self._by_name = None
        for job in jobs:
            self.touch(job)

    def active(self):
        """Work is left: a job still active, a cancel SLURM has not yet carried out, a
        failed submission not yet known to have queued nothing, or an `on` rule's effect
        not yet done (cron's `reconcile` must come back for its result)."""
        return any(j.status == ACTIVE or j.unresolved_intent()
                   or any(a.live and a.cancel_requested_at for a in j.attempts) or j.open_effects()
                   for j in self.jobs)

    @property
    def on_rules(self):
        return self.config.get("on") or ()

    @property
    def notify(self):
        """notify's targets and routing; None when the plan has no targets."""
        if self._notify is None:
            self._notify = self.config.get("notify") or {}
        return self._notify if self._notify.get("targets") else None

    def add_event(self, job, att, event, now, mode=None, detail=None):
        """Record an event in the outbox; the journal gets it right after the next save."""
        self.event_seq += 1
        rec = OrderedDict([("seq", self.event_seq), ("time", now), ("session", self.session_id),
                           ("job", job.name), ("attempt", att.attempt), ("job_id", att.job_id),
                           ("event", event)])
        if mode:
            rec["mode"] = mode
        if detail:
            rec["detail"] = detail
        self.outbox.append(rec)
        if event != EV_STATE:  # status shows the SLURM state beside it; keep what autoexp saw or did
            job.last_event = event
        job.last_updated = now
        self.touch(job)
        named = set()
        if self.on_rules:
            # the effect's intent is in the same state write as its event: neither is saved without the other
            for index, rule in rules_for_event(self.on_rules, event, job.name):
                job.effects = list(job.effects) + [new_effect(job.name, rec, index, rule)]
                named.add(rule.get("notify"))
        if self.notify is not None:
            for target in notify_targets(self.notify, event):
                if target not in named:  # an `on` rule notifies it of this event already
                    self._route(job, rec, target)
        return rec

    def _route(self, job, rec, target):
        """A notification of notify.events: an effect of its own, or with notify.digest the
        event joins the one this pass opened for the target, until that one is started."""
        if self.notify.get("digest"):
            owner = self.open_digests.get(target)
            if owner is not None:
                eff = owner[1]
                if eff["state"] == EFF_INTENT and eff["spawns"] == 0 and eff["try"] == 1 \
                        and len(eff["events"]) < MAX_DIGEST_EVENTS:
                    eff["events"] = list(eff["events"]) + [_times_to_json(rec)]
                    self.touch(owner[0])
                    return
        eff = new_effect(job.name, rec, NOTIFY_RULE, {"notify": target})
        if self.notify.get("digest"):
            eff["events"] = [_times_to_json(rec)]
            self.open_digests[target] = (job, eff)
        job.effects = list(job.effects) + [eff]

    def add_action(self, job, att, action, mode, reason, now):
        stamp = iso_time(now).replace("-", "").replace(":", "")  # 20261129T082433.123Z
        rec = OrderedDict([("id", "%s_%s_%d_%s" % (stamp, job.name, att.attempt, action)),
                           ("time", now), ("action", action), ("mode", mode), ("reason", reason)])
        att.actions = list(att.actions) + [rec]
        if self.unwritten is not None:
            self.unwritten.append((job, att, rec))
        self.touch(job)
        return rec

    def to_dict(self):
        """The header (schema 2): everything but the jobs."""
        d = Record.to_dict(self)
        d["outbox"] = self.pending_events()
        return d

    def pending_events(self):
        """The outbox as written: the events the journal does not hold yet (those it holds
        would only make every reader carry them)."""
        done = self.journal_seq or 0
        return [_times_to_json(e) for e in self.outbox if e["seq"] > done]

    def batch_fields(self):
        return OrderedDict((k, self.pending_events() if k == "outbox"
                            else _to_json_value(k, getattr(self, k))) for k in BATCH_SESSION_FIELDS)

    def apply_batch_fields(self, d):
        """A batch's session fields; its outbox is kept as read (settle_outbox converts it):
        only the last batch's counts, and the journal may hold it already."""
        for k in BATCH_SESSION_FIELDS:
            if k in d:
                setattr(self, k, d[k] if k == "outbox" else _from_json_value(k, d[k]))

    def settle_outbox(self, journaled):
        """Keep of the outbox only the events the journal does not hold (seq > journaled):
        those it does hold leave the outbox anyway; a writer that queued thousands of
        events at once must not make every later reader carry them."""
        self.outbox = [_times_from_json(e) if isinstance(e.get("time"), str) else e
                       for e in self.outbox if e["seq"] > journaled]

    @classmethod
    def from_dict(cls, d, path, jobs=None):
        """A session from its header (schema 2, jobs given) or its whole document (schema 1)."""
        fields = cls.fields_from(d, "the session")
        fields["outbox"] = list(d.get("outbox", ()))  # converted by settle_outbox
        if jobs is None:
            _require(d, (Field("jobs", None, (list,)),), "the session")
            jobs = [Job.from_dict(j) for j in d["jobs"]]
        return cls(path, jobs, **fields)

    @classmethod
    def new(cls, path, plan, now, event_seq=0):
        """A session for a plan, with no job yet; the config is the plan's, copied."""
        return cls(path, session_id=plan.plan_id, project=plan.project, manifest_path=plan.manifest_path,
                   created_at=now, config=json.loads(json.dumps(plan.config), object_pairs_hook=OrderedDict),
                   event_seq=event_seq)


def new_effect(job_name, event, index, rule):
    """The intent of an `on` rule's effect for one event: its id follows from the job, the
    event's seq and the rule's index, so one event never has two of the same rule's."""
    # one id per rule, and per target for notify.events (ids name the effect's files)
    suffix = "%s.%s" % (index, rule["notify"]) if index == NOTIFY_RULE else str(index)
    return OrderedDict([
        ("id", "%s.%d.%s" % (job_name, event["seq"], suffix)), ("rule", index),
        ("kind", EFFECT_RUN if rule.get("run") is not None else EFFECT_NOTIFY), ("target", rule.get("notify")),
        ("event", _times_to_json(event)), ("state", EFF_INTENT), ("try", 1), ("spawns", 0), ("next_at", None),
        ("started_at", None), ("ended_at", None), ("exit", None), ("timed_out", False), ("tail", None),
        ("error", None), ("command", None), ("tries", []), ("events", None)])


def effect_label(eff):
    """How events and history name an effect: what it does and for which event."""
    what = "notify %s" % eff["target"] if eff["kind"] == EFFECT_NOTIFY else "run"
    return "on %s #%s %s" % (eff["event"].get("event"), eff["rule"], what)


def event_line(rec, who):
    """`YYYY-mm-dd HH:MM:SS <who> #<attempt> (<job id>) <event> <mode>: <detail>` (SPEC 5.3):
    the mode is left out when the event's name or detail already says it."""
    kind, mode, detail = rec["event"], rec.get("mode"), rec.get("detail")
    what = kind + (" " + mode if mode and mode not in kind and mode not in (detail or "") else "")
    return "%s %s #%d%s %s%s" % (short_time(rec["time"]), who, rec["attempt"],
                                 " (%s)" % rec["job_id"] if rec["job_id"] else "", what,
                                 ": " + detail if detail else "")


def count_by_status(s):
    counts = OrderedDict()
    for job in s.jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return counts


def count_summary(s):
    return ", ".join("%d %s" % (n, k) for k, n in count_by_status(s).items()) or "no jobs"


def duration_text(seconds):
    """42s, 12m05s, 3h04m, 2d03h: short enough for a table column."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    if seconds < 86400:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)


# ============================================================================
# 7. Decisions: the functional core (no I/O, no clock: `now` is an argument)
# ============================================================================
#
# What happens to a job is decided here, by pure functions over records; the Controller
# (section 9) gathers their inputs and carries out their answers. Each is tested from a
# table in tests/test_decisions.py and driven by the simulator (tests/sim.py).

def backoff(base, n, cap):
    """The wait before the n-th retry (n >= 1): base x 2^(n-1), at most cap. The exponent is
    capped before it is used, so no count of failures can overflow a float."""
    if not base or n < 1:
        return 0.0
    return min(float(base) * 2.0 ** min(n - 1, 64), cap)


class Verdict(NamedTuple):
    monitor_state: str
    mode: Optional[str]  # None: nothing to decide this cycle
    reason: str
    live: Optional[bool]  # can the SLURM job still run? None: cannot tell


def observation_live(obs):
    if obs.source in ANSWERED:
        return obs.state in ACTIVE_STATES
    return None


_MONITOR_WORDS = {}


def _monitor_word(slurm_state):
    """A SLURM state as a monitor state ("RUNNING" -> "running"): one string per state,
    not one per job and cycle."""
    word = _MONITOR_WORDS.get(slurm_state)
    if word is None:
        word = slurm_state.lower()
        if len(_MONITOR_WORDS) < 256:  # SLURM's states are few; anything else is not kept
            word = _MONITOR_WORDS[slurm_state] = sys.intern(word)
    return word


def success_reason(termination):
    """The reason of an attempt that wrote the termination string: the string named (cut
    short), so that a reader sees which line decided."""
    if not termination:
        return "termination string found in the log"
    shown = termination if len(termination) <= 80 else termination[:77] + "..."
    return "termination string %r found in the log" % shown


_REASON_NAME_RE = re.compile(r"[A-Za-z]+")


def reason_name(text):
    """The reason's name at the start of squeue's %r text: slurmctld may print a longer
    description instead ("ReqNodeNotAvail, UnavailableNodes:n[1-2]", "RaisedSignal:9(Killed)"),
    or free text ("Job is at or exceeds ..."), whose first word is then no reason's name."""
    m = _REASON_NAME_RE.match(text or "")
    return m.group(0) if m and (m.end() == len(text) or text[m.end()] in ",:(") else ""


def blocked_reason(text):
    """The plain sentence of a pending reason that means the job can never start as
    submitted (BLOCKED_REASONS), or None for any other text."""
    name = reason_name(text)
    return "%s: %s" % (name, BLOCKED_REASONS[name]) if name in BLOCKED_REASONS else None


def plain_reason(text):
    """squeue's reason with its meaning in words when autoexp knows it; else as SLURM said it."""
    name = reason_name(text)
    words = BLOCKED_REASONS.get(name) or WAITING_REASONS.get(name)
    return "%s (%s)" % (text, words) if words else text


def pending_verdict(obs, facts, now, mon):
    """A job squeue shows PENDING: blocked once its reason says it can never start and two
    answered looks in a row showed it (one could be a reason of a passing moment);
    pending_too_long once it has waited max_pending_seconds since this monitor first saw it
    pending. None: it just waits. Once a pending mode was noted under `ignore`, no other is."""
    if obs.source != SRC_SQUEUE or obs.state != "PENDING" or facts.pending_warned:
        return None
    why = blocked_reason(facts.pending_reason) if facts.pending_looks >= BLOCKED_LOOKS else None
    if why:
        return Verdict(_monitor_word(obs.state), MODE_BLOCKED, why, True)
    limit = mon.max_pending_seconds
    if limit and facts.pending_since is not None and now - facts.pending_since >= limit:
        reason = "PENDING for %ds (max_pending_seconds %g)" % (now - facts.pending_since, limit)
        if facts.pending_reason and facts.pending_looks:
            reason += "; SLURM's reason: %s" % plain_reason(facts.pending_reason)
        return Verdict(_monitor_word(obs.state), MODE_PENDING_TOO_LONG, reason, True)
    return None


def classify(obs, facts, now, mon):
    """Derive an attempt's mode from this cycle's observation and its accumulated facts.

    Level-triggered: the same inputs give the same verdict, whatever happened before.
    Precedence: UNKNOWN decides nothing; then the termination string (the run is done
    whatever SLURM says about the exit), a log_events mode, SLURM's terminal state,
    after a grace period, lost; a PENDING job blocked or pending too long
    (pending_verdict), and inactivity while RUNNING (stall).
    """
    if obs.source == SRC_UNKNOWN:
        return Verdict(MON_UNKNOWN, None, obs.reason or "SLURM did not answer", None)
    live = observation_live(obs)
    state = _monitor_word(obs.state) if obs.state else MON_MISSING
    if facts.success_seen:
        return Verdict(state, MODE_SUCCESS, success_reason(mon.termination_string), live)
    if facts.log_mode:
        return Verdict(state, facts.log_mode, facts.log_reason, live)
    if obs.source in ANSWERED and obs.state in TERMINAL_MODE:
        mode = TERMINAL_MODE[obs.state]
        reason = "SLURM state %s" % obs.state
        if obs.exit_code and obs.exit_code != "0:0":
            reason += " (exit code %s)" % obs.exit_code
        if mode == MODE_SUCCESS and mon.termination_string:
            mode, reason = MODE_INCOMPLETE, "COMPLETED without the termination string in the log"
        return Verdict(state, mode, reason, False)
    if obs.source == SRC_MISSING:
        waited = now - facts.missing_since if facts.missing_since is not None else 0.0
        if obs.state:  # sacct still calls it live: accounting lags, the job is not lost...
            if waited >= max(mon.lost_after, RUNAWAY_AFTER):  # ...unless for hours: a runaway record
                return Verdict(MODE_LOST, MODE_LOST, "gone from squeue for %ds while sacct still says %s (a "
                               "runaway accounting record)" % (waited, obs.state), None)
            return Verdict(MON_MISSING, None, "not in squeue; sacct still says %s" % obs.state, None)
        if waited >= mon.lost_after:
            return Verdict(MODE_LOST, MODE_LOST, "neither squeue nor sacct has known the job for %ds" % waited, None)
        return Verdict(MON_MISSING, None, "not in squeue or sacct (for %ds)" % waited, None)
    pending = pending_verdict(obs, facts, now, mon)
    if pending is not None:
        return pending
    if obs.state == "RUNNING" and mon.inactivity_threshold_seconds:
        quiet = now - (facts.last_activity or facts.running_since or now)
        if quiet >= mon.inactivity_threshold_seconds:
            return Verdict(MON_RUNNING, MODE_STALL, "log silent for %ds while RUNNING" % quiet, True)
    return Verdict(state, None, "", live if live is not None else True)


class Decision(NamedTuple):
    action: str  # RESTART, FINALIZE or STOP; IGNORE for a pending mode (the job keeps waiting)
    delay: float
    reason: str


# Modes that say something about the cluster or the clock, not about the job itself.
CIRCUMSTANTIAL_MODES = frozenset(("success", "incomplete", "timeout", "node_fail", "preempted",
                                  "cancelled", "stall", "lost", "pending_too_long"))


def repeats_deterministically(history):
    """The last two attempts failed the same way (mode, exit code, log line), each within a
    minute of starting: a broken command or config, not bad luck. Another restart would
    only fail again, after waiting in the queue."""
    if len(history) < 2:
        return False
    a, b = history[-2], history[-1]
    return (a.mode == b.mode and b.mode not in CIRCUMSTANTIAL_MODES and a.signature == b.signature
            and a.runtime is not None and b.runtime is not None
            and a.runtime < FAST_FAILURE_SECONDS and b.runtime < FAST_FAILURE_SECONDS)


def decide(mode, policies, history):
    """The policy's answer to an attempt that ended (or must end) in mode.

    history: how each of the job's attempts ended (Ended), this one last. A restart policy
    allows max_attempts attempts to end in its mode; the last one stops the job, and so
    does a failure that repeats deterministically. The backoff doubles with each failure
    in the mode, up to backoff_max_seconds.
    """
    policy = policy_for(policies, mode)
    if policy.action == IGNORE and mode in PENDING_MODES:
        # the job has not ended: it keeps its place in the queue, and an event says why
        return Decision(IGNORE, 0.0, "policy for %s: ignore (it keeps waiting)" % mode)
    if policy.action == FINALIZE:
        return Decision(FINALIZE, 0.0, "policy for %s: finalize" % mode)
    if policy.action in (STOP, IGNORE):
        return Decision(STOP, 0.0, "policy for %s: stop" % mode)
    used = sum(1 for h in history if h.mode == mode)
    if used >= policy.max_attempts:
        return Decision(STOP, 0.0, "%s %d of %d: stop" % (mode, used, policy.max_attempts))
    if repeats_deterministically(history):
        return Decision(STOP, 0.0, "%s repeated identically within %ds of starting: deterministic, stop"
                        % (mode, FAST_FAILURE_SECONDS))
    delay = backoff(policy.backoff_seconds, used, policy.backoff_max_seconds)
    return Decision(RESTART, delay, "%s %d of %d: restart%s" % (
        mode, used, policy.max_attempts, " in %ds" % delay if delay else ""))


def counted_attempts(job):
    """The attempts its policies count (max_attempts, deterministic repeats): all of them,
    or those since an `autoexp retry --reset-attempts` (attempts_base before it)."""
    base = job.attempts_base if 0 <= job.attempts_base <= len(job.attempts) else 0
    return job.attempts[base:]


def job_captured(job):
    """The values a job's log_events groups captured, the last of each name: an attempt's
    own over those of the attempts before it (a restart resumes from the newest checkpoint
    its predecessor named, until it names its own)."""
    out = OrderedDict()
    for att in job.attempts:
        if att.captured:
            out.update(att.captured)
    return out


def attempt_budget(job, policies):
    """(mode, used, allowed): the restart budget the job is spending, that of the mode its
    latest counted attempt ended in, as decide() counts it; None while no attempt ended in a
    mode whose policy restarts."""
    for att in reversed(counted_attempts(job)):
        if att.outcome is None or att.outcome in (OUTCOME_REPLACED, OUTCOME_SUBMIT_FAILED):
            continue
        policy = policy_for(policies, att.outcome)
        if policy.action != RESTART:
            return None
        used = sum(1 for a in counted_attempts(job) if a.outcome == att.outcome)
        return att.outcome, used, policy.max_attempts
    return None


def job_phase(job, queued_cancel=False):
    """Where the job is, in one word of PHASES (what `status` filters and counts by)."""
    att = job.current
    if att is not None and att.live and (att.cancel_requested_at or queued_cancel):
        return PH_CANCELLING
    if job.status == FINALIZED:
        return PH_DONE
    if job.status == STOPPED:
        return PH_FAILED
    if job.status == CANCELLED:
        return PH_CANCELLED
    if att is None or not att.live or att.outcome is not None:
        # between attempts, or before the first one is in SLURM
        return PH_RESTARTING if any(a.outcome for a in job.attempts) else PH_PENDING
    if att.last_slurm_state in (None, "PENDING") or att.last_slurm_state in REQUEUE_STATES:
        return PH_PENDING
    return PH_RUNNING


def followups_due(job, specs, existing):
    """The follow-ups a decided job gets now (SPEC 5.7): of its plan's `then` specs, those
    whose `when` holds its status and that the session does not hold yet (existing: a name
    -> job lookup). The name is the follow-up's identity, so a restarted, re-decided or
    re-read parent never gets a second one, and an active job gets none."""
    if job.status == ACTIVE:
        return []
    return [f for f in specs if f.parent == job.name and job.status in f.when and existing(f.name) is None]


def job_depth(job, jobs_by_name):
    """How many parents up to a plan's own job (0 for one), bounded by the nesting limit."""
    depth = 0
    while job is not None and job.parent and depth <= MAX_FOLLOWUP_DEPTH:
        job, depth = jobs_by_name(job.parent), depth + 1
    return depth


def unfinished_jobs(s):
    """The jobs that keep a session from being archived, each with why: active, an attempt
    SLURM may still run (a cancel not yet seen done), or a submission in doubt. Empty: every
    job is finalized, stopped or cancelled for good."""
    out = []
    for job in s.jobs:
        if job.status == ACTIVE:
            out.append("%s (active)" % job.name)
        elif any(a.live for a in job.attempts):
            out.append("%s (%s, an attempt SLURM may still run)" % (job.name, job.status))
        elif job.unresolved_intent():
            out.append("%s (%s, a submission in doubt)" % (job.name, job.status))
        elif job.open_effects():
            out.append("%s (%s, an action or notification not done)" % (job.name, job.status))
    return out


def phase_summary(s):
    """2 done, 1 running, 1 pending: the session's jobs by PHASES, in their order."""
    counts = dict((ph, 0) for ph in PHASES)
    for job in s.jobs:
        counts[job_phase(job)] += 1
    return ", ".join("%d %s" % (counts[ph], ph) for ph in PHASES if counts[ph]) or "no jobs"


def quiet_summary(sessions, seconds):
    return "no change in %s: %s" % (duration_text(seconds), "; ".join(
        "%s %s" % (s.session_id, phase_summary(s)) for s in sessions))


# -- node exclusion (SPEC 5.5) ----------------------------------------------------------

class Exclusion(NamedTuple):
    """What a job's next attempt is kept off."""
    nodes: tuple  # node names for --exclude (beside the user's own), oldest cause first
    notes: tuple  # why, one per node: "gpu03 (node_fail of #1)"
    capped: Optional[str] = None  # the cap's message when nodes were left out
    used: tuple = ()  # indexes of the session's exclusions applied: their `uses` go up


def blamed_nodes(att, ne):
    """(node names, why) an ended attempt lays at its nodes' door: those a log_events entry
    with exclude_nodes named in its `node` group; else all the attempt's nodes, after such
    an entry matched without naming one or after a mode of `node_exclusion.on`. No names
    when nothing is blamed, or its node list is unknown or unreadable (why then says what
    would have been blamed)."""
    if ne.max_nodes == 0:
        return [], None
    if att.exclude_event:
        if att.blamed_nodes:
            return list(att.blamed_nodes), "log:%s" % att.exclude_event
        why = "log:%s" % att.exclude_event
    elif att.outcome in ne.on:
        why = att.outcome
    else:
        return [], None
    try:
        return (expand_hostlist(att.nodes) if att.nodes else []), why
    except ValueError:
        return [], why


def exclusion_live(entry, ne, now):
    """A session-wide exclusion still holds: fewer uses than max_attempts, younger than max_hours."""
    if ne.max_attempts is not None and entry.get("uses", 0) >= ne.max_attempts:
        return False
    return ne.max_hours is None or now - parse_iso(entry["time"]) < ne.max_hours * 3600.0


def _capped(kept, dropped, ne):
    if not dropped:
        return None
    return ("node exclusion cap reached: %d node(s) excluded already (node_exclusion.max_nodes %d); "
            "not excluded: %s" % (len(kept), ne.max_nodes, ",".join(dropped)))


def node_exclusions(attempts, entries, ne, now):
    """The nodes a job's next attempt is kept off. scope job: the nodes its own ended
    attempts are blamed for (blamed_nodes), each for max_attempts later attempts and
    max_hours after that attempt ended; scope session: the session's live exclusions
    (entries, recorded by record_exclusions). Never more than max_nodes: the oldest causes
    are kept, the rest said (capped) and not excluded, so that a job is never kept off
    every node of its partition."""
    cands = []  # (node, note, index of the session entry)
    if ne.scope == SCOPE_JOB:
        n = len(attempts)
        for att in attempts:
            if att.outcome is None:
                continue
            if ne.max_attempts is not None and n - att.attempt >= ne.max_attempts:
                continue
            if ne.max_hours is not None and (att.ended_at is None or now - att.ended_at >= ne.max_hours * 3600.0):
                continue
            names, why = blamed_nodes(att, ne)
            cands.extend((name, "%s (%s of #%d)" % (name, why, att.attempt), None) for name in names)
    else:
        cands = [(e["node"], "%s (%s)" % (e["node"], e["why"]), i)
                 for i, e in enumerate(entries) if exclusion_live(e, ne, now)]
    seen, kept, dropped = set(), [], []
    for cand in cands:
        if cand[0] in seen:
            continue
        seen.add(cand[0])
        (kept if len(kept) < ne.max_nodes else dropped).append(cand)
    return Exclusion(tuple(c[0] for c in kept), tuple(c[1] for c in kept),
                     _capped(kept, [c[0] for c in dropped], ne), tuple(c[2] for c in kept if c[2] is not None))


def record_exclusions(entries, job_name, att, ne, now):
    """Scope session: the session's exclusions after att ended -> (entries, nodes added,
    capped message). Expired entries are dropped; a node already excluded keeps its entry;
    no more than max_nodes are ever held."""
    names, why = blamed_nodes(att, ne)
    live = [e for e in entries if exclusion_live(e, ne, now)]
    held = set(e["node"] for e in live)
    added, dropped = [], []
    for name in names:
        if name in held:
            continue
        held.add(name)
        if len(live) >= ne.max_nodes:
            dropped.append(name)
            continue
        live.append(OrderedDict([("node", name), ("time", iso_time(now)), ("job", job_name),
                                 ("attempt", att.attempt), ("why", "%s of %s #%d" % (why, job_name, att.attempt)),
                                 ("uses", 0)]))
        added.append(name)
    return live, added, _capped(live, dropped, ne)


# -- what SLURM shows of a job ---------------------------------------------------------

class Snapshot(object):
    """This cycle's squeue answer, indexed by job id, and on demand by autoexp tag and by
    array task. Built for 100k rows in a few tens of ms: no list per row unless a tag is
    shared (an array's tasks, a duplicate)."""

    __slots__ = ("by_id", "tagged", "_one", "_many", "_tasks", "_untagged")

    def __init__(self, rows):
        self.by_id = dict(zip([r.job_id for r in rows], rows))
        self.tagged = tagged = [r for r in rows if r.comment.startswith("autoexp:")]
        self._one = one = dict(zip([r.comment for r in tagged], tagged))
        self._many = {}
        if len(one) < len(tagged):
            counts = {}
            for r in tagged:
                counts[r.comment] = counts.get(r.comment, 0) + 1
            for r in tagged:
                if counts[r.comment] > 1:
                    self._many.setdefault(r.comment, []).append(r)
        self._tasks = None
        self._untagged = None

    def untagged(self, name=None):
        """The rows with no autoexp tag (of this name), indexed the first time: where a job
        resubmitted by hand without its tag shows (resubmits_by_hand)."""
        if self._untagged is None:
            self._untagged = {}
            for r in self.by_id.values():
                if not r.comment.startswith("autoexp:"):
                    self._untagged.setdefault(r.name, []).append(r)
        if name is None:
            return [r for rows in self._untagged.values() for r in rows]
        return self._untagged.get(name, ())

    def with_tag(self, tag):
        """The rows carrying this tag, in squeue's order."""
        rows = self._many.get(tag)
        if rows is not None:
            return rows
        row = self._one.get(tag)
        return (row,) if row is not None else ()

    def task_rows(self, tag, index):
        """The rows of the array of this tag whose task is index (indexed the first time)."""
        if self._tasks is None:
            self._tasks = {}
            for r in self.tagged:
                task = split_job_id(r.job_id)[1]
                if task is not None:
                    self._tasks.setdefault((r.comment, task), []).append(r)
        return self._tasks.get((tag, index), ())


class Lookup(object):
    """What one session learned from sacct this cycle, beyond squeue: by id (acct) and by
    name (named), and whether each query answered."""

    __slots__ = ("acct", "acct_ok", "acct_error", "named", "named_by_id", "named_by_name", "named_ok",
                 "named_error", "deferred")

    def __init__(self):
        self.acct, self.acct_ok, self.acct_error = {}, True, ""
        self.deferred = set()  # (session id, job name): waits for a slot, not looked up (max_running)
        self.named, self.named_by_id, self.named_by_name, self.named_ok, self.named_error = [], {}, {}, True, ""

    def set_named(self, rows):
        self.named = rows
        self.named_by_id = dict((r.job_id, r) for r in rows)
        self.named_by_name = {}
        for r in rows:
            self.named_by_name.setdefault((r.name, split_job_id(r.job_id)[1]), []).append(r)

    def named_for(self, name, array=None, task=None):
        """The rows sacct's lookup by name gave for a single job of this name, and for the
        task of this index of an array of that name."""
        rows = list(self.named_by_name.get((name, None), ()))
        if array is not None:
            rows += self.named_by_name.get((array, task), ())
        return rows


def acct_targets(jobs, snap):
    """The live attempts sacct is asked about by id: squeue no longer lists them, or lists
    them ended (squeue knows no exit codes)."""
    watched = [a for j in jobs for a in j.attempts if a.live and a.job_id]
    return [a for a in watched if a.job_id not in snap.by_id or snap.by_id[a.job_id].state not in ACTIVE_STATES]


def sacct_since(earliest):
    """sacct's -S for jobs whose earliest possible submission is `earliest`."""
    return earliest - SACCT_WINDOW_SLACK


def seeks_by_name(job, snap, look):
    """Does the job need sacct's lookup by name? True for a live attempt neither squeue nor
    sacct by id knows (a successor squeue can no longer show), and for a submission in
    doubt (its result may have ended already, and been replaced by a job squeue shows:
    simulator F10); None (only if squeue shows no job with its tag) for a job with no
    submission yet; False otherwise."""
    att = job.current
    if job.status != ACTIVE and not job.unresolved_intent():
        return False
    if att is not None and att.in_doubt:
        return True
    if att is None:
        return None
    return att.live and look.acct_ok and att.job_id not in snap.by_id and att.job_id not in look.acct


def restart_due(job, now):
    """A restart whose backoff is over. Before it is submitted, sacct is asked about the job
    by name: its ended attempt may have been requeued and run again meanwhile, and left
    squeue already (rerun_rows); while sacct does not answer, nothing is submitted."""
    att = job.current
    return (job.status == ACTIVE and att is not None and not att.live and att.outcome is not None
            and job.next_submit_at is not None and now >= job.next_submit_at)


def attempt_since(job, plan_created):
    """The earliest a SLURM job of this job's current attempt can have been submitted; for a
    job with no attempt yet, when its plan was made."""
    att = job.current
    if att is not None and att.intent_at:
        return att.intent_at
    return plan_created


def tagged_candidates(job, tag, array, snap, named):
    """SLURM jobs that carry this job's tag but are not in its history: a submission whose
    id was never recorded, or a resubmission made outside autoexp. Newest first.

    The tag must be seen: squeue always shows it; sacct only once the job has ended
    (with AccountingStoreFlags=job_comment). A name alone is never enough, since two
    plans of one project share their job names."""
    found = {}
    for row in snap.with_tag(tag):
        found[row.job_id] = row
    if array is not None:
        for row in snap.task_rows(array.tag, job.index):
            found[row.job_id] = row
    for row in named:
        if row.job_id in snap.by_id:
            continue  # squeue shows its current tag, which wins over sacct's
        task = split_job_id(row.job_id)[1]
        if ((task is None and row.name == job.name and row.comment == tag) or
                (array is not None and task == job.index and row.name == array.name and row.comment == array.tag)):
            found[row.job_id] = row
    for job_id in job.known_ids():
        found.pop(job_id, None)
    return sorted((r for r in found.values() if not refused_record(r)), key=functools.cmp_to_key(_newest_first))


def refused_record(row):
    """A submission sbatch refused (--exclude or a request no node can meet) still uses up a
    job id, with the tag: FAILED without ever having had a node (22.05 and 24.11; squeue's
    reason BadConstraints). Never a job of ours: nothing of it ran."""
    return row.state == "FAILED" and not row.nodes


def revived_rows(job, snap):
    """Attempts autoexp saw end that SLURM runs again (a finished job requeued by hand or
    by SLURM, a job that reappeared after it was called lost), the latest one too: during
    its restart backoff it must be followed, not submitted again. An id that a live
    attempt already follows is no copy."""
    followed = set(a.job_id for a in job.attempts if a.live)
    rows = []
    for a in job.attempts:
        row = snap.by_id.get(a.job_id) if a.job_id else None
        if (row is not None and not a.live and a.job_id not in followed
                and row.state in ACTIVE_STATES and row not in rows):
            rows.append(row)
    return rows


def submitted_after(a_submit, a_id, b_submit, b_id):
    """Job a was submitted after job b: by SLURM's own submit times when both are known
    (job ids start again from 1 after MaxJobId), else by id."""
    if a_submit and b_submit and a_submit != b_submit:
        return a_submit > b_submit  # the same fixed format: text order is time order
    return job_id_sort_key(a_id) > job_id_sort_key(b_id)


def _newest_first(a, b):
    return -1 if submitted_after(a.submit, a.job_id, b.submit, b.job_id) else 1


def rerun_rows(job, snap, acct=None):
    """Its own ended attempts that SLURM shows ran again: requeued after autoexp recorded
    the end, and finished before it looked. squeue's row shows another end state (TIMEOUT
    recorded, COMPLETED now); sacct's (asked when a restart is due: the rerun may have left
    squeue already, simulator F8) an end later than the one recorded, or, with none
    recorded, another end state; or still active with a start later than the one recorded
    (accounting has not stored the rerun's end yet: it is followed until it has, never run
    beside). An id a later attempt already follows is not one."""
    rows = []
    for i, a in enumerate(job.attempts):
        if (not a.job_id or a.live or a.last_slurm_state not in TERMINAL_MODE
                or any(b.job_id == a.job_id for b in job.attempts[i + 1:])):
            continue
        row = snap.by_id.get(a.job_id)
        if row is not None:
            if row.state in TERMINAL_MODE and row.state != a.last_slurm_state and row not in rows:
                rows.append(row)
            continue
        arow = acct.get(a.job_id) if acct else None
        if arow is not None and arow.state in ACTIVE_STATES:
            start, ref = slurm_epoch(arow.start), a.slurm_start or a.slurm_end
            if start is not None and ref is not None and start > ref:
                rows.append(arow)
            continue
        if arow is None or arow.state not in TERMINAL_MODE:
            continue
        end = slurm_epoch(arow.end)
        if (end > a.slurm_end) if (end is not None and a.slurm_end is not None) else arow.state != a.last_slurm_state:
            rows.append(arow)
    return rows


def unsure_rows(job, cands, snap):
    """Rows of its tag, or of its own attempts, in a state autoexp does not know."""
    own = [snap.by_id.get(a.job_id) for a in job.attempts if a.job_id and not a.live]
    return [r for r in list(cands) + [r for r in own if r is not None]
            if r.state not in ACTIVE_STATES and r.state not in TERMINAL_MODE]


def newer_than_history(job, rows):
    """The rows that can be the result of the job's latest submission: submitted after
    every job in its history, and not a copy already seen beside an earlier attempt (one
    started by hand, say)."""
    known = [(a.slurm_submit, a.job_id) for a in job.attempts if a.job_id]
    return [r for r in rows if r.job_id not in job.seen_copies
            and all(submitted_after(r.submit, r.job_id, sub, jid) for sub, jid in known)]


def untagged_successor(job, row, snap):
    """A sacct row of the job's name that may be its latest submission though no tag shows
    it: not in squeue, active by sacct (its comment is stored only when it ends), not in
    the history, not a copy seen before, and submitted after every job of the history."""
    return (not row.comment and row.job_id not in snap.by_id and row.state in ACTIVE_STATES
            and row.job_id not in job.known_ids() and bool(newer_than_history(job, [row])))


def resubmits_by_hand(job, rows, user, workdirs):
    """squeue rows that may be the job resubmitted by hand without its tag (`sbatch
    --job-name=NAME` of another script): of its name, with no autoexp tag (another
    session's tag is never this job), able to run (or in a state autoexp does not know,
    which may be: such a row is never adopted, by_hand_one, and makes any other one
    ambiguous), submitted by the same user from its plan's working directory (workdirs:
    the directory and its resolved path), and not in its history. A name alone is never
    enough: two plans of one project share names."""
    known = job.known_ids()
    return [r for r in rows
            if r.name == job.name and not r.comment.startswith("autoexp:")
            and (r.state in ACTIVE_STATES or r.state not in TERMINAL_MODE)
            and user and r.user == user and r.workdir and r.workdir in workdirs and r.job_id not in known]


def by_hand_one(rows):
    """The one hand resubmission among rows, or None: none, several (which cannot be told
    apart), or one in a state autoexp does not know (found by the simulator: a PENDING one
    shown so was left out, and its twin adopted as if it were the only one)."""
    return rows[0] if len(rows) == 1 and rows[0].state in ACTIVE_STATES else None


def attempt_end(att):
    """When an ended attempt ended: SLURM's end when sacct gave it, else when autoexp saw
    it end; None while it runs or was never submitted."""
    if att is None or att.live or att.outcome is None or not att.job_id:
        return None
    return att.slurm_end if att.slurm_end is not None else att.ended_at


def submitted_since(rows, end):
    """The rows SLURM says were submitted at or after `end` (an epoch; SLURM's times have
    whole seconds); none when the end, or a row's submit time, is unknown."""
    if end is None:
        return []
    out = []
    for r in rows:
        try:
            at = slurm_epoch(r.submit) if r.submit else None
        except ValueError:
            at = None
        if at is not None and at >= int(end):
            out.append(r)
    return out


def hand_resubmit(job, sight, end=None):
    """The one job resubmitted by hand after the job's latest attempt ended (end: that
    end, when the attempt has not recorded it yet), or None: none, or several, which
    cannot be told apart (the controller says which it saw, once)."""
    return by_hand_one(submitted_since(sight.by_hand, end if end is not None else attempt_end(job.current)))


def final_cost(arow):
    """(seconds, cpus, gpus) of an ended job's sacct row; (None, None, None) for no row or
    an active one: a running job's ElapsedRaw still grows, and a job decided ended without
    its final row (squeue alone, after ACCOUNTING_GRACE) has a cost nobody told: unknown,
    never guessed from this monitor's clock."""
    if arow is None or arow.state not in TERMINAL_MODE:
        return None, None, None
    return alloc_of(arow)


def observe(row, arow, look, wait_since, now):
    """One attempt's observation from its squeue row and sacct row (either may be None);
    returns (Observation, acct_wait_since). UNKNOWN whenever a query that could have told
    failed, or SLURM names a state autoexp does not know.

    A job squeue shows ended is decided only once sacct has its record (exit code, run
    time): accounting lags seconds behind, so it waits ACCOUNTING_GRACE from when it was
    first seen so (wait_since), never through an sacct outage."""
    if row is not None:
        if row.state in TERMINAL_MODE:
            if not look.acct_ok:
                return Observation(SRC_UNKNOWN, reason="sacct failed: %s" % look.acct_error), wait_since
            if arow is None or arow.state not in TERMINAL_MODE:
                if wait_since is None:
                    wait_since = now
                if now - wait_since < ACCOUNTING_GRACE:
                    return Observation(SRC_UNKNOWN, reason="ended; waiting for sacct's record of it"), wait_since
        obs = Observation(SRC_SQUEUE, row.state, row.reason, arow.exit_code if arow else "", row.raw_id,
                          slurm_epoch(arow.start) if arow else None, slurm_epoch(arow.end) if arow else None,
                          row.submit, row.nodes or (arow.nodes if arow else None), *final_cost(arow))
    elif arow is None:
        if not (look.acct_ok and look.named_ok):
            return Observation(SRC_UNKNOWN, reason="sacct failed: %s" % (look.acct_error or look.named_error)), \
                wait_since
        return Observation(SRC_MISSING), wait_since
    elif arow.state in ACTIVE_STATES:
        # squeue lists every job the controller holds; an active sacct row for a job it
        # does not list is accounting lagging behind: not lost, not ended either.
        return Observation(SRC_MISSING, arow.state, "sacct still says %s" % arow.state, arow.exit_code,
                           arow.raw_id, slurm_epoch(arow.start), slurm_epoch(arow.end), arow.submit,
                           arow.nodes), wait_since
    else:
        obs = Observation(SRC_SACCT, arow.state, "", arow.exit_code, arow.raw_id, slurm_epoch(arow.start),
                          slurm_epoch(arow.end), arow.submit, arow.nodes, *final_cost(arow))
    if obs.state not in ACTIVE_STATES and obs.state not in TERMINAL_MODE:
        return Observation(SRC_UNKNOWN, reason="SLURM reports state %s, which autoexp does not know"
                           % obs.state), wait_since
    return obs, wait_since


# -- cost: what attempts used ------------------------------------------------------

COST_KEYS = ("useful_cpu_hours", "useful_gpu_hours", "wasted_cpu_hours", "wasted_gpu_hours", "unknown_attempts")


def attempt_hours(attempt):
    """(cpu_hours, gpu_hours) an ended attempt cost, or None when unknown: SLURM's final
    ElapsedRaw times its AllocTRES. One never given a SLURM id, or that never ran (0 s),
    cost nothing."""
    if attempt.job_id is None:
        return 0.0, 0.0
    seconds = attempt.elapsed_raw
    if seconds == 0:
        return 0.0, 0.0
    if seconds is None or attempt.alloc_cpus is None:
        return None
    return seconds * attempt.alloc_cpus / 3600.0, seconds * (attempt.alloc_gpus or 0) / 3600.0


def cost_summary(attempts):
    """CPU and GPU hours of ended attempts: useful (outcome success), wasted (any other
    outcome: failed, timed out, replaced, cancelled, stalled...), and how many ended ones
    have no known cost (their hours are in neither sum). Live attempts are not counted yet,
    even one with an outcome (cancelled, or finished by its log) that SLURM still runs."""
    out = OrderedDict((k, 0.0) for k in COST_KEYS)
    out["unknown_attempts"] = 0
    for att in attempts:
        if att.outcome is None or att.live:
            continue
        hours = attempt_hours(att)
        if hours is None:
            out["unknown_attempts"] += 1
            continue
        kind = "useful" if att.outcome == MODE_SUCCESS else "wasted"
        out[kind + "_cpu_hours"] += hours[0]
        out[kind + "_gpu_hours"] += hours[1]
    for k in COST_KEYS[:4]:
        out[k] = round(out[k], 4)
    return out


def add_costs(costs):
    """The sum of cost_summary()s (a session's, from its jobs')."""
    out = OrderedDict((k, 0 if k == "unknown_attempts" else 0.0) for k in COST_KEYS)
    for c in costs:
        for k in COST_KEYS:
            out[k] += c[k]
    for k in COST_KEYS[:4]:
        out[k] = round(out[k], 4)
    return out


def cost_text(c):
    """A cost summary in words, for `status` and `report`."""
    text = "used %.1f GPU-h, %.1f CPU-h; wasted %.1f GPU-h, %.1f CPU-h" % (
        c["useful_gpu_hours"], c["useful_cpu_hours"], c["wasted_gpu_hours"], c["wasted_cpu_hours"])
    if c["unknown_attempts"]:
        text += " (+%d ended attempt(s) of unknown cost)" % c["unknown_attempts"]
    return text


# -- moves: what a job does next ---------------------------------------------------

class Sight(NamedTuple):
    """What this cycle's answers show of one job beyond the attempts it follows."""
    candidates: list  # SLURM jobs with its tag, not in its history, newest first
    running: list  # those able to run, then its own ended attempts SLURM runs again
    named_ok: bool  # sacct's lookup by name answered (or was not needed)
    named_error: str = ""
    # a job of its name that left squeue while sacct still calls it active, so its tag is
    # not shown anywhere yet (accounting stores it only at the end): it may be this job's
    untagged: bool = False
    # a job with its tag (or one of its own ended attempts) in a state autoexp does not
    # know: whether it runs cannot be told, so nothing is submitted or adopted this cycle
    unsure: bool = False
    # its own ended attempts that SLURM ran again and that ended again since (a requeue
    # after autoexp recorded the end, finished before it looked again)
    reruns: tuple = ()
    # jobs of its name, user and directory without its tag (resubmits_by_hand), whenever
    # submitted: hand_resubmit picks the one submitted after its latest attempt ended
    by_hand: tuple = ()


ADOPT, RECOVER, SUBMIT, WAIT, HOLD, REACTIVATE, CANCEL_COPY, ABANDON, RECORD = (
    "adopt", "recover", "submit", "wait", "hold", "reactivate", "cancel_copy", "abandon", "record")
BY_HAND = "resubmitted by hand without its tag (same name, user and working directory)"


class Move(NamedTuple):
    """One step for a job: adopt a SLURM job as a new attempt, recover an attempt's lost
    id, submit, wait for an answer (WAIT) or for a time (HOLD), reactivate an inactive
    job with a running copy, cancel a copy, abandon a failed submission, record an ended
    run of a submission in doubt."""
    kind: str
    row: object = None  # the SLURM row it concerns
    origin: Optional[str] = None  # for ADOPT/REACTIVATE: how the job came to be
    attempt: Optional[int] = None  # for ABANDON: which attempt
    note: str = ""


def first_move(sight):
    """A job registered but never submitted: adopt a SLURM job with its tag (a running one
    first), else submit it, unless sacct could not be asked."""
    if sight.unsure:
        return Move(WAIT)
    if sight.candidates:
        return Move(ADOPT, sight.running[0] if sight.running else sight.candidates[0], ORIGIN_EXTERNAL)
    return Move(SUBMIT) if sight.named_ok else Move(WAIT)


def intent_move(job, sight, now, unqueued_after=0.0):
    """The current attempt's submission is in doubt: a newer job with its tag is that
    submission (recover): the first of them submitted, since any later one was made beside
    or instead of it (cancelled and resubmitted by hand, simulator F10), and is seen as such
    once the attempt follows the first; else submit again once sacct could be asked and any
    backoff is over."""
    newer = newer_than_history(job, sight.candidates)
    if newer and not sight.named_ok:
        return Move(WAIT, note="a job with its tag is queued, but sacct could not be asked whether an earlier one "
                    "is this submission (%s); waiting" % sight.named_error)
    if newer:
        return Move(RECOVER, newer[-1], ORIGIN_RECOVERED)
    if sight.unsure:
        return Move(WAIT, note="a job with its tag is in a state autoexp does not know; waiting")
    if not sight.named_ok:
        return Move(WAIT, note="cannot tell whether its submission reached SLURM (%s); waiting"
                    % sight.named_error)
    if sight.untagged:
        return Move(WAIT, note="a job of its name left squeue and accounting has not recorded its end yet; "
                    "waiting to see whether it is this submission")
    att = job.current
    if job.next_submit_at is None and now - (att.intent_at or now) < unqueued_after:
        # an intent a crash left without an sbatch result: the job may have run and left
        # squeue already, and accounting shows it only after its lag
        return Move(HOLD)
    if job.next_submit_at is None or now >= job.next_submit_at:
        return Move(SUBMIT)
    return Move(HOLD)


def replacement(att, obs, sight):
    """The SLURM job that replaces a live attempt cancelled (or vanished) and resubmitted
    outside autoexp under its tag, or None."""
    c = sight.candidates
    if (att.outcome is None and c and observation_live(obs) is not True
            and (obs.source == SRC_MISSING or obs.state in ("CANCELLED", "REVOKED"))
            and submitted_after(c[0].submit, c[0].job_id, att.slurm_submit, att.job_id)):
        return c[0]
    if (att.outcome is None and not c and sight.by_hand and obs.source in ANSWERED
            and obs.state in ("CANCELLED", "REVOKED")):
        # cancelled, then resubmitted by hand without the tag after SLURM ended it
        return by_hand_one(submitted_since(sight.by_hand, obs.end if obs.end is not None else att.slurm_end))
    return None


def restart_move(job, sight, now):
    """The current attempt ended and the policy restarts it: a job with its tag already
    running again is followed (resubmitted by hand, or the ended attempt requeued); else
    submit once the backoff is over."""
    if sight.running:
        return Move(ADOPT, sight.running[0], ORIGIN_EXTERNAL)
    if sight.reruns:
        return Move(ADOPT, sight.reruns[0], ORIGIN_EXTERNAL)  # decided like any attempt (simulator F8)
    if sight.unsure:
        return Move(WAIT)
    hand = hand_resubmit(job, sight)
    if hand is not None:
        return Move(ADOPT, hand, ORIGIN_EXTERNAL, note=BY_HAND)
    if job.next_submit_at is not None and now >= job.next_submit_at:
        if not sight.named_ok:
            return Move(WAIT, note="cannot tell whether its last attempt ran again (%s); waiting"
                        % sight.named_error)
        return Move(SUBMIT)
    return Move(HOLD)


def split_node_list(text):
    """'a,gpu[01-03,7],b' -> ['a', 'gpu[01-03,7]', 'b']: commas inside brackets are SLURM's."""
    items, depth, cur = [], 0, []
    for ch in text or "":
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def attempt_sbatch_options(job, policies, exclude=(), script_exclude=None):
    """The sbatch options of the job's next attempt, beyond its script's: the `sbatch` of the
    restart policy of each of its ended attempts, rendered for the attempt that followed it,
    in order, so that a resource raised stays raised through a later restart of another
    mode and a later value of one option wins; then one --exclude that merges the script's
    own (the command line replaces a directive), the policies' and `exclude` (the nodes
    excluded for this attempt). Attempt 1 of a job with nothing excluded has none."""
    opts = OrderedDict()
    for att in job.attempts:
        pol = policy_for(policies, att.outcome) if att.outcome else None
        if pol is None or not pol.sbatch or not any(a.get("action") == RESTART for a in att.actions):
            continue  # no restart followed it (its budget was used up, say: a retry is the user's)
        for k, spec in pol.sbatch.items():
            opts.pop(k, None)  # a later value goes last, as sbatch reads the last one given
            opts[k] = attempt_value(spec, att.attempt + 1)
    policy_exclude = opts.pop("exclude", None)
    extra = split_node_list(policy_exclude if policy_exclude is not True else "") + list(exclude)
    out = ["--" + k if v is True else "--%s=%s" % (k, v) for k, v in opts.items()]
    if extra:
        merged = OrderedDict.fromkeys(split_node_list(script_exclude or "") + extra)
        out.append("--exclude=" + ",".join(merged))
    return out


def inactive_moves(job, sight, now, unqueued_after):
    """A finalized, stopped or cancelled job: a copy running under its tag reactivates a
    stopped or finalized job (its in-doubt submission recovered, if that is what it is);
    for a job the user cancelled, every such copy is cancelled; a failed submission is
    abandoned once squeue and sacct have answered without it for unqueued_after."""
    if sight.unsure:
        return []
    att = job.current
    # the result of a submission in doubt, running or already ended (found by the simulator,
    # F5: a run that ended before the lookup found it was never recorded)
    # oldest first: the first submitted after the intent is its result (intent_move)
    mine = newer_than_history(job, sight.candidates)[::-1] if att is not None and att.in_doubt else []
    if mine and not sight.named_ok:
        # which of them is the submission's result needs sacct (intent_move); a job the
        # user cancelled still has its running copies cancelled
        mine = None
    if job.status in (STOPPED, FINALIZED):
        if mine is None:
            return []
        if mine:
            return [Move(REACTIVATE, mine[0], ORIGIN_RECOVERED)]  # decided like any attempt
        if sight.running:
            return [Move(REACTIVATE, sight.running[0], ORIGIN_EXTERNAL)]
        hand = hand_resubmit(job, sight) if att is not None and not att.in_doubt else None
        if hand is not None:
            return [Move(REACTIVATE, hand, ORIGIN_EXTERNAL, note=BY_HAND)]
    moves = []
    if job.status == CANCELLED and mine and mine[0].state not in ACTIVE_STATES:
        moves.append(Move(RECORD, mine[0], ORIGIN_RECOVERED))  # cancelled meanwhile: kept on record
    if job.status == CANCELLED:
        moves += [Move(CANCEL_COPY, row) for row in sight.running
                  if not any(a.job_id == row.job_id and a.cancel_requested_at for a in job.attempts)]
    if job.unresolved_intent() and sight.named_ok and not mine:
        moves += [Move(ABANDON, attempt=a.attempt) for a in job.attempts
                  if a.in_doubt and now - (a.ended_at or a.intent_at or now) >= unqueued_after]
    return moves


# -- the session's throttle: monitoring.max_running ----------------------------------------

class Want(NamedTuple):
    """A job that wants a new submission this cycle: its first one, or a restart."""
    index: int
    restart: bool
    name: str = ""


def live_count(rows, in_doubt):
    """How many of a session's jobs may be queued or running now, counted from what SLURM
    shows this cycle, never from memory: each SLURM job with one of the session's tags that
    squeue lists in a state that can still run (or in one autoexp does not know: safety
    first), plus each job whose submission is in doubt (an intent without an id) that no such
    row shows: it may be queued where nobody has looked yet.

    rows: (job name, or None for an array task of no job, SLURM state) of the session's
    tagged squeue rows; in_doubt: the names of the jobs with a submission in doubt."""
    live = [name for name, state in rows if state not in TERMINAL_MODE]
    shown = set(live)
    return len(live) + len(set(n for n in in_doubt if n not in shown))


def slots_free(live, max_running):
    """How many new submissions max_running allows now: None without a limit; never below 0
    (a job resubmitted by hand, or requeued by SLURM, may put the session over it)."""
    if max_running is None:
        return None
    return max(0, max_running - live)


def grant_slots(wanting, live, max_running):
    """Which of the jobs wanting a new submission (Want) get their intent this cycle, and
    which wait for a slot: restarts first (a job that ran already is carried to its end
    before another starts: its checkpoint, its partial results), then by job index, so
    the order is the same in every process (a monitor, cron's reconcile). Returns (granted,
    waiting), each in that order."""
    order = sorted(wanting, key=lambda w: (not w.restart, w.index))
    free = slots_free(live, max_running)
    if free is None:
        return order, []
    return order[:free], order[free:]


def retry_refusal(job):
    """Why `autoexp retry` must not submit the job now, or None: only a job that is done
    with SLURM (stopped or cancelled, nothing of it live or in doubt) gets a new attempt;
    anything else would run it twice."""
    if job.status == ACTIVE:
        return "it is active (autoexp follows or restarts it already)"
    if job.status == FINALIZED:
        return "it is finalized (its run succeeded)"
    if job.unresolved_intent():
        return ("its last sbatch failed yet may have queued it; `autoexp reconcile` looks it up by its "
                "tag first, retry it once that lookup found nothing")
    live = [a.job_id for a in job.attempts if a.live and a.job_id]
    if live:
        return ("SLURM job %s may still run (its cancel is not carried out yet); `autoexp reconcile` "
                "sees it through, retry it then" % live[-1])
    return None


class SubmitVerdict(NamedTuple):
    """What an sbatch that did not give an id means for the job."""
    action: str  # STOP or RESTART (retry)
    delay: float
    failures: int  # uncertain sbatch failures in a row, this one included
    refusals: int  # queue-limit refusals in a row, this one included
    reason: str  # the job's (and the attempt's) reason when it stops
    detail: str  # the event's detail


def after_sbatch_failure(res, failures, refusals, mon):
    """A clear refusal stops the job; a queue limit retries for as long as it takes (its
    backoff capped), and never counts as a failure; any other failure may have queued the
    job: retried (after a lookup by tag, and never before accounting could show it) up to
    submit_retries failures in a row, then stopped."""
    if res.outcome == SB_PERMANENT:
        reason = "sbatch refused the job: %s" % res.message
        return SubmitVerdict(STOP, 0.0, failures, refusals, reason, "no retry: sbatch refused it")
    if res.outcome == SB_THROTTLED:
        refusals += 1
        delay = backoff(mon.submit_backoff_seconds, refusals, THROTTLE_BACKOFF_MAX)
        return SubmitVerdict(RESTART, delay, failures, refusals, "",
                             "%s; over a queue limit, retrying in %ds" % (res.message, delay))
    failures += 1
    if failures > mon.submit_retries:
        reason = "sbatch failed %d times: %s" % (failures, res.message)
        return SubmitVerdict(STOP, 0.0, failures, refusals, reason, reason)
    delay = max(backoff(mon.submit_backoff_seconds, failures, float("inf")), mon.unqueued_after)
    return SubmitVerdict(RESTART, delay, failures, refusals, "",
                         "%s; looking it up by tag, then retrying in %ds" % (res.message, delay))


def cancel_resend_due(result, now, interval):
    """A cancel with no recorded result (its process died before scancel returned) or a
    failed one is sent again at once; one SLURM took, only if the job outlives KillWait."""
    return (result is None or not result["ok"]
            or now - parse_iso(result["time"]) >= max(CANCEL_RESEND_MIN, 2 * interval))


def clock_skew(before, now, mono):
    """How far the wall clock jumped since `before` = (wall, monotonic) was read: 0.0 within
    CLOCK_JUMP (NTP slews, scheduling delays), else the jump (negative: backwards)."""
    if before is None:
        return 0.0
    skew = (now - before[0]) - (mono - before[1])
    return skew if abs(skew) > CLOCK_JUMP else 0.0


def ran_after_read(att):
    """Did the attempt's job run again after its log (one of this job only) was last read?
    SLURM's start of the run it ended is later than the last write autoexp read: a requeue
    under the same id ran it again between two looks, and the run truncated the log and
    may have written past the old size (which alone shows a truncation). Then the log is
    read again from its start; lines matched before are not matched again (simulator F8,
    seed 109)."""
    return (att.slurm_start is not None and att.log_mtime is not None and att.log_offset > 0
            and att.slurm_start > att.log_mtime + LOG_END_SLACK)


def own_restart(att, mtime):
    """An ended attempt whose log (shared by every attempt) started again: is the new
    content its own? Yes when the file was last written before SLURM recorded the job's
    end, give or take LOG_END_SLACK: a requeue under the same id ran it again while
    nobody watched (the run truncated the log). Written later, or with no end known, it is
    another job's: a successor's or a replacement's (simulator F6, F11)."""
    return att.slurm_end is not None and mtime <= att.slurm_end + LOG_END_SLACK


def steady_until(job, mon):
    """When a job next needs to be looked at if nothing about it changes (its squeue row,
    its log, the user): None, every cycle (something is under way: a submission, a restart,
    a cancel, a lookup, a grace period, an answer that did not come: UNKNOWN), or a time
    (a RUNNING job's stall deadline, a PENDING one's max_pending_seconds), or never (inf: a
    job SLURM runs or queues, or one
    that is done). An UNKNOWN job is due every cycle: the cycle that could not tell may
    have been the only one in which its squeue row changed (simulator seed 564)."""
    att = job.current
    if job.last_monitor_state == MON_UNKNOWN:
        return None
    if job.status != ACTIVE:
        return None if job.unresolved_intent() or any(a.live for a in job.attempts) else float("inf")
    if (att is None or not att.live or att.outcome is not None or not att.job_id or att.missing_since is not None
            or att.acct_wait_since is not None or att.cancel_requested_at is not None
            or att.last_slurm_state not in ACTIVE_STATES or any(a.live for a in job.attempts[:-1])):
        return None
    if mon.inactivity_threshold_seconds and att.last_slurm_state == "RUNNING":
        return att.facts().last_activity + mon.inactivity_threshold_seconds
    if att.last_slurm_state == "PENDING" and not att.pending_warned:
        if att.pending_looks and blocked_reason(att.pending_reason):
            return None  # the next answered look confirms it: blocked
        if mon.max_pending_seconds and att.pending_since is not None:
            return att.pending_since + mon.max_pending_seconds
    return float("inf")


def settling(s, now):
    """A job finalized on its termination string may still be RUNNING: keep watching it (no
    decisions) for a short while, so that its history ends with SLURM's final state."""
    window = max(3 * s.monitoring.interval_seconds, SETTLE_MIN)
    return any(j.status == FINALIZED and j.current is not None and j.current.live and j.current.job_id
               and now - (j.last_updated or 0) < window for j in s.jobs)


def next_wait(live_sessions, ok, unknown_failures, interval=None):
    """Seconds until the next cycle: the shortest interval of the sessions with work left;
    while SLURM does not answer, doubling per failed cycle up to unknown_backoff_max_seconds."""
    wait = interval or min(s.monitoring.interval_seconds for s in live_sessions)
    if ok:
        return wait
    cap = max(wait, min(s.monitoring.unknown_backoff_max_seconds for s in live_sessions))
    return backoff(wait, min(unknown_failures, UNKNOWN_BACKOFF_DOUBLINGS) + 1, cap)


# -- effects of `on` rules (SPEC 5.8) ---------------------------------------------------

def effect_values(values, event, session_id):
    """The placeholders of an `on` rule's command: the job's values (as its script has them,
    with the values its logs captured), then the event's own. No name is both (config
    refuses a log_events group named like a parameter or an event value)."""
    out = OrderedDict(values)
    out.update([("event", event["event"]), ("mode", event.get("mode") or ""), ("job_id", event.get("job_id") or ""),
                ("attempt", str(event.get("attempt") or "")), ("session", session_id),
                ("reason", event.get("detail") or "")])
    return out


class EffectLook(NamedTuple):
    """What the files of an effect's current try say (section 9 looks, without blocking)."""
    result: bool   # <id>.<try>.result.json exists: the try ended and said how
    locked: bool   # <id>.<try>.lock is held: its worker (or the command it runs) lives
    started: bool  # <id>.<try>.started exists: the worker started the command
    files: bool = True  # its lock or spec file exists (false: never started, or deleted by hand)


def effect_move(eff, look, now):
    """What to do with an open effect, from its files: a result is recorded whatever the
    lock says (the worker writes it before it lets go); a held lock is a try running; a
    free lock with a start but no result is a try that died; with neither, it never ran."""
    if look.result:
        return MOVE_RECORD
    if look.locked:
        return MOVE_RUNNING
    if look.started or (eff["state"] == EFF_RUNNING and not look.files):
        # a try recorded as started whose files are gone (deleted by hand) ran, or may
        # have: never started a second time as if new
        return MOVE_INTERRUPTED
    if eff["spawns"] >= EFFECT_MAX_SPAWNS:
        return MOVE_GIVE_UP
    if eff["state"] == EFF_WAITING and eff["next_at"] and now < parse_iso(eff["next_at"]):
        return MOVE_WAIT
    return MOVE_START


def try_outcome(kind, result):
    """How one try ended, from its result: a command's failure (an exit other than 0, or
    its timeout) is worth a retry; a notification only when `_notify` says it is (75) or
    timed out, since any other failure (a 4xx, a bad target) would fail again alike."""
    if result.get("exit") == 0 and not result.get("timed_out"):
        return TRY_OK
    if kind == EFFECT_RUN or result.get("timed_out") or result.get("exit") == EFFECT_RETRYABLE_EXIT:
        return TRY_RETRYABLE
    return TRY_FAILED


class EffectVerdict(NamedTuple):
    state: str
    next_at: Optional[float]
    event: str
    next_try: int


EFFECT_FINAL_EVENTS = {
    EFFECT_RUN: {EFF_DONE: EV_ACTION_DONE, EFF_FAILED: EV_ACTION_FAILED, EFF_INTERRUPTED: EV_ACTION_INTERRUPTED},
    EFFECT_NOTIFY: {EFF_DONE: EV_NOTIFY_SENT, EFF_FAILED: EV_NOTIFY_FAILED, EFF_INTERRUPTED: EV_NOTIFY_FAILED}}


def effect_verdict(kind, tried, outcome, rule, now):
    """The retry decision after try number `tried` ended with `outcome`: done; again after a
    backoff (at once for an interrupted idempotent try) while the rule's retries last;
    otherwise failed, or interrupted when a try that may not run twice died mid-way."""
    final = EFFECT_FINAL_EVENTS[kind]
    if outcome == TRY_OK:
        return EffectVerdict(EFF_DONE, None, final[EFF_DONE], tried)
    if outcome == TRY_INTERRUPTED and not rule["idempotent"]:
        return EffectVerdict(EFF_INTERRUPTED, None, final[EFF_INTERRUPTED], tried)
    if outcome in (TRY_RETRYABLE, TRY_INTERRUPTED) and tried < 1 + rule["retries"]:
        wait = backoff(rule["backoff_seconds"], tried, MAX_SECONDS) if outcome == TRY_RETRYABLE else 0.0
        return EffectVerdict(EFF_WAITING, now + wait, EV_ACTION_RETRY, tried + 1)
    state = EFF_INTERRUPTED if outcome == TRY_INTERRUPTED else EFF_FAILED
    return EffectVerdict(state, None, final[state], tried)
# -- notifications: who hears of an event, and what the message says (SPEC 5.6) ---------

def _event_key(ev):
    return (ev.get("session"), ev.get("seq")) if ev.get("seq") is not None else json.dumps(ev, sort_keys=True)


def notify_batches(items, digest):
    """One pass's notifications as messages: items are (target, event) pairs in the order
    the events happened; the answer is [(target, [events])], one message per pair, or with
    digest one per target holding all its events (targets in the order of their first
    event). An event given twice to one target (by notify.events and an `on` rule) is sent once."""
    seen, out, by_target = set(), [], {}
    for target, ev in items:
        key = (target, _event_key(ev))
        if key in seen:
            continue
        seen.add(key)
        if not digest:
            out.append((target, [ev]))
        elif target in by_target:
            by_target[target].append(ev)
        else:
            by_target[target] = [ev]
            out.append((target, by_target[target]))
    return out


def _event_text(ev):
    kind, mode, detail = str(ev.get("event") or "event"), ev.get("mode"), ev.get("detail")
    what = kind + (" %s" % mode if mode and str(mode) not in kind and str(mode) not in str(detail or "") else "")
    attempt = " #%s" % ev["attempt"] if ev.get("attempt") is not None else ""
    job_id = " (%s)" % ev["job_id"] if ev.get("job_id") else ""
    line = "%s%s%s %s%s" % (ev.get("job") or "-", attempt, job_id, what, ": %s" % detail if detail else "")
    line = CONTROL_RE.sub(" ", line)
    return line if len(line) <= 500 else line[:497] + "..."


def notify_subject(session_id, events):
    """`autoexp SESSION: JOB #N (ID) event mode` for one event, `autoexp SESSION: N events:
    2 finalized, 1 stopped` for several."""
    if len(events) == 1:
        return "autoexp %s: %s" % (session_id, _event_text(events[0]).split(": ", 1)[0])
    kinds = OrderedDict()
    for ev in events:
        kind = CONTROL_RE.sub(" ", str(ev.get("event") or "event"))
        kinds[kind] = kinds.get(kind, 0) + 1
    return "autoexp %s: %d events: %s" % (session_id, len(events),
                                          ", ".join("%d %s" % (n, k) for k, n in kinds.items()))


def notify_lines(events):
    """One line per event, at most MAX_NOTIFY_LINES of them, then how many more there were."""
    lines = [_event_text(ev) for ev in events[:MAX_NOTIFY_LINES]]
    if len(events) > MAX_NOTIFY_LINES:
        lines.append("... and %d more event(s) (autoexp history shows every attempt)"
                     % (len(events) - MAX_NOTIFY_LINES))
    return lines


def notify_payload(fmt, target, session_id, events):
    """The JSON body of a webhook: Slack's and Mattermost's `{"text": ...}` (the event lines
    in a code block, so that a job name's `_` or `*` is not markup), or the generic
    document with the events themselves."""
    subject, lines = notify_subject(session_id, events), notify_lines(events)
    if fmt == FMT_GENERIC:
        return OrderedDict([("source", "autoexp"), ("session", session_id), ("target", target),
                            ("subject", subject), ("text", "\n".join([subject] + lines)),
                            ("count", len(events)), ("events", list(events[:MAX_NOTIFY_EVENTS]))])
    block = "\n".join(lines).replace("```", "'''")
    text = "%s\n```\n%s\n```" % (subject, block)
    if fmt == FMT_SLACK:  # Slack's three control characters, escaped as its docs ask
        return OrderedDict([("text", text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))])
    return OrderedDict([("text", text), ("username", "autoexp")])


def http_verdict(status):
    """A webhook's HTTP status as _notify's exit: 2xx delivered; 408, 425, 429 and 5xx worth
    another try; anything else (4xx, a redirect autoexp does not follow) permanent."""
    if 200 <= status < 300:
        return NOTIFY_DELIVERED
    if status in (408, 425, 429) or 500 <= status < 600:
        return NOTIFY_RETRY
    return NOTIFY_PERMANENT


def exit_verdict(returncode, timed_out):
    """A mailer's or notify command's exit as _notify's: 0 delivered; a timeout or 75
    (EX_TEMPFAIL, sendmail's "try again later") worth another try; anything else permanent."""
    if timed_out or returncode == NOTIFY_RETRY:
        return NOTIFY_RETRY
    return NOTIFY_DELIVERED if returncode == 0 else NOTIFY_PERMANENT


# ============================================================================
# 8. State store: where state is written
# ============================================================================

class SessionLock(object):
    """One writer per session: a POSIX (fcntl) lock, which NFS and Lustre propagate between
    login nodes, unlike flock on some of them. The holder writes its host and pid into the
    file so that the loser can say who holds it; the kernel drops the lock when the holder
    dies, so a SIGKILLed monitor never blocks the next run."""

    __slots__ = ("path", "fd")

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self, command="autoexp", now=None):
        for _ in range(LOCK_TRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                raise StateWriteError("cannot open the lock file %s: %s" % (self.path, e.strerror or e))
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (IOError, OSError) as e:
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise StateWriteError("cannot lock %s: %s" % (self.path, e.strerror or e))
                raise LockedError("session is busy: %s" % self.describe_holder())
            self.fd = fd
            if self.intact():
                break
            # the file was deleted (or replaced) between our open and our lock: a lock on it
            # locks nothing another process can see; take the one now at the path
            self.fd = None
            os.close(fd)
        else:
            raise StateWriteError("cannot lock %s: the file keeps being deleted or replaced" % self.path)
        self.label(command, now)
        return self

    def label(self, command, now=None):
        """Say who holds the lock (the loser prints it)."""
        import socket
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                           "since": iso_time(time.time() if now is None else now)}).encode("utf-8")
        try:
            os.ftruncate(self.fd, 0)
            if os.pwrite(self.fd, info + b"\n", 0) != len(info) + 1:
                raise OSError(errno.EIO, "short write")
        except OSError:
            pass  # the label is for people; the lock itself holds

    def intact(self):
        """The file this process locked is still the one at the path. People delete "stale"
        lock files; after that, a second process would lock a new file and write too."""
        if self.fd is None:
            return False
        try:
            mine, there = os.fstat(self.fd), os.stat(self.path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def describe_holder(self):
        try:
            with open(self.path, "rb") as f:
                info = loads_json(f.read().decode("utf-8") or "{}")
            return "held by %s (pid %s on %s since %s); wait for it or stop it" % (
                info.get("command", "?"), info.get("pid", "?"), info.get("host", "?"), info.get("since", "?"))
        except (IOError, OSError, ValueError):
            return "held by another process (%s)" % self.path

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)  # closing drops the lock
            self.fd = None


class StateStore(object):
    """The state folder: <id>.json sessions, <id>.lock, <id>.events.jsonl, actions/<id>/,
    requests/<id>/ and plans/<id>/."""

    __slots__ = ("root", "held")

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.held = {}  # session id -> the SessionLock this process took for it

    def session_path(self, session_id):
        return os.path.join(self.root, session_id + ".json")

    def events_path(self, session):
        return os.path.join(self.root, session.session_id + ".events.jsonl")

    def actions_dir(self, session):
        return os.path.join(self.root, "actions", session.session_id)

    def effects_dir(self, session):
        return os.path.join(self.root, "effects", session.session_id)

    def requests_dir(self, session_id):
        return os.path.join(self.root, "requests", session_id)

    def claim_owner(self, job_id):
        """The session that claimed SLURM job job_id, adopted without a tag, or None."""
        try:
            with open(os.path.join(self.root, "claims", job_id)) as f:
                return f.read(MAX_NAME_CHARS + 1).strip() or None
        except (IOError, OSError):
            return None

    def claim_job(self, job_id, session_id):
        """Claim a SLURM job resubmitted by hand without a tag for one session, first come
        first served: the claim file is made whole and exclusively (a link), so that two
        processes watching sessions of the same job names and folder never both adopt it.
        Returns the session that holds it."""
        if not JOB_ID_RE.match(job_id):
            return None
        folder = os.path.join(self.root, "claims")
        path = os.path.join(folder, job_id)
        make_private_dir(folder)
        tmp = os.path.join(folder, ".%s.%d.tmp" % (job_id, os.getpid()))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, (session_id + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
            fsync_dir(folder)
        except (IOError, OSError) as e:
            raise StateWriteError("cannot write claim %s: %s" % (path, e.strerror or e))
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return self.claim_owner(job_id)

    def plan_dir(self, plan_id):
        return os.path.join(self.root, "plans", plan_id)

    def plan_manifest(self, plan_id):
        return os.path.join(self.plan_dir(plan_id), "manifest.json")

    def claim_plan(self, plan_id):
        """Create the plan's folder, exclusively: False if another plan has it already."""
        make_private_dir(os.path.join(self.root, "plans"))
        try:
            os.mkdir(self.plan_dir(plan_id), 0o700)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise StateWriteError("cannot create folder %s: %s" % (self.plan_dir(plan_id), e.strerror or e))
        return True

    # The archive (SPEC 6.4): a finished session's files moved into archive/<id>/, laid out
    # as in the state folder (so a StateStore of that folder reads it), out of the way of
    # status, monitor --all and reconcile. The lock file and the plan stay: the lock guards
    # the move both ways, the plan folder keeps the id taken and the manifest readable.

    def archive_dir(self, session_id):
        return os.path.join(self.root, ARCHIVE_FOLDER, session_id)

    def archived_path(self, session_id):
        return os.path.join(self.archive_dir(session_id), session_id + ".json")

    def list_archived(self):
        """The header paths of the archived sessions (a folder whose move has not reached
        its header yet holds none: that session is still the state folder's)."""
        try:
            names = sorted(os.listdir(os.path.join(self.root, ARCHIVE_FOLDER)))
        except OSError:
            return []
        return [self.archived_path(n) for n in names
                if SAFE_NAME_RE.match(n) and os.path.isfile(self.archived_path(n))]

    def move_session(self, s, dst_root):
        """Move session s (read from this store, its lock held) to the folder dst_root. The
        job files and the journal are linked there first, so that a whole session stays at
        the source; the header's rename is the commit; then the folders are moved and the
        source's links removed (finish_move: what a crash leaves, the next run finishes)."""
        src = self.root
        make_private_dir(dst_root)
        files = [os.path.basename(p) for p in self.gen_paths(s.session_id, s.generation)]
        files.append(os.path.basename(self.events_path(s)))
        for name in files:
            a, b = os.path.join(src, name), os.path.join(dst_root, name)
            if not os.path.exists(a):
                continue
            if os.path.exists(b):
                if os.path.samefile(a, b):
                    continue
                os.unlink(b)  # a copy an earlier, crashed move made: the source's is newer
            try:
                os.link(a, b)
            except OSError:  # a file system without hard links: a copy (nothing writes it: the lock)
                import shutil
                shutil.copy2(a, b + ".tmp")
                os.replace(b + ".tmp", b)
        fsync_dir(dst_root)
        crash_point("archive_before_commit")
        os.rename(s.path, os.path.join(dst_root, s.session_id + ".json"))
        fsync_dir(dst_root)
        fsync_dir(src)
        crash_point("archive_after_commit")
        return self.finish_move(s.session_id, dst_root)

    def finish_move(self, session_id, dst_root):
        """After the header's rename: the session's folders (actions, requests) follow it,
        and the source's job files and journal, now links of the destination's, go. A file
        that is not the same as its destination's is kept where it is, and returned."""
        kept = []
        for kind in ("actions", "requests"):
            a, b = os.path.join(self.root, kind, session_id), os.path.join(dst_root, kind, session_id)
            if not os.path.isdir(a):
                continue
            make_private_dir(os.path.dirname(b))
            if not os.path.exists(b):
                os.rename(a, b)
                continue
            for name in os.listdir(a):  # both there (a crash mid-move): file by file
                if not os.path.exists(os.path.join(b, name)):
                    os.rename(os.path.join(a, name), os.path.join(b, name))
            try:
                os.rmdir(a)
            except OSError:
                kept.append(a)
        gen_re = re.compile(r"^%s\.(g[0-9]+\.(jobs|delta)\.jsonl|events\.jsonl)$" % re.escape(session_id))
        for name in sorted(os.listdir(self.root)):
            if not gen_re.match(name):
                continue
            a, b = os.path.join(self.root, name), os.path.join(dst_root, name)
            same = False
            try:
                same = os.path.samefile(a, b) or filecmp_same(a, b)
            except OSError:
                pass
            if same:
                os.unlink(a)
            else:
                kept.append(a)
        fsync_dir(self.root)
        return kept

    def leftovers(self, session_id):
        """What a move cut short by a crash left here of a session whose header is gone."""
        gen_re = re.compile(r"^%s\.(g[0-9]+\.(jobs|delta)\.jsonl|events\.jsonl)$" % re.escape(session_id))
        try:
            names = os.listdir(self.root)
        except OSError:
            return False
        return (any(gen_re.match(n) for n in names)
                or any(os.path.isdir(os.path.join(self.root, k, session_id)) for k in ("actions", "requests")))

    def ensure(self):
        make_private_dir(self.root)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StateError("state folder %s is not writable; choose another with --state-dir" % self.root)

    def resolve(self, ref):
        """A session given as an id (a safe name) or as the path of a session file."""
        if is_path(ref):
            path = os.path.abspath(ref)
            if not os.path.isfile(path):
                raise StateError("no session file at %s; `autoexp status` lists the sessions of a state folder" % path)
            return path
        check_safe_name(ref, "session id")
        path = self.session_path(ref)
        if not os.path.isfile(path) and os.path.isfile(self.archived_path(ref)):
            raise StateError("session %r is archived (in %s); `autoexp unarchive --session %s` brings it back, "
                             "`autoexp status --archived` shows it" % (ref, self.archive_dir(ref), ref))
        if not os.path.isfile(path):
            raise StateError("no session %r in %s; `autoexp status --state-dir DIR` lists sessions, "
                             "or pass --state-dir where it lives" % (ref, self.root))
        return path

    def list_sessions(self):
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        return [os.path.join(self.root, n) for n in names
                if n.endswith(".json") and not n.startswith(".") and SAFE_NAME_RE.match(n[:-5])]

    # A session on disk (schema 2): <id>.json is its header (everything but the jobs, and
    # which generation of job files is current); <id>.g<G>.jobs.jsonl holds every job, one
    # JSON line each, as of generation G (written once, whole, then never changed); and
    # <id>.g<G>.delta.jsonl the batches appended since: one line {"batch": N, "jobs": K,
    # "session": {...}} and the K jobs that changed, whole. A cycle appends one batch, so
    # its cost follows what changed; when the batches outgrow half the snapshot, a new
    # generation is written (snapshot, then header: the header's rename is the commit).
    # Readers see the header's generation and every complete batch; a batch cut short by a
    # crash is not there.

    def gen_paths(self, session_id, generation):
        base = os.path.join(self.root, "%s.g%d" % (session_id, generation))
        return base + ".jobs.jsonl", base + ".delta.jsonl"

    def load(self, path, with_plan=True):
        """Read a session; anything wrong with it is a loud StateError, never a reset."""
        for _ in range(LOAD_TRIES):
            try:
                return self._load(path, with_plan)
            except _GenerationMoved:
                continue  # a writer wrote a new generation while this read the old: again
        raise StateError("session %s keeps changing while it is read; try again" % path)

    def _check_home(self, session, path, with_plan):
        # A copy of a session file (p1-backup.json, or p1.json in another folder) would be a
        # second writer of the same jobs, under another lock: refused.
        if os.path.basename(path) != "%s.json" % session.session_id:
            raise StateError("%s holds session %r, so it is a copy; keep copies outside the state folder, "
                             "and monitor %s.json" % (path, session.session_id, session.session_id))
        if with_plan:
            session.plan = load_manifest(session.manifest_path)
            home = os.path.realpath(session.plan.state_dir)
            if os.path.realpath(os.path.dirname(os.path.abspath(path))) != home:
                raise StateError("%s is a copy: session %s lives in %s (its plan's state folder); monitor "
                                 "that one, or two writers would act on the same jobs"
                                 % (path, session.session_id, home))

    def _load(self, path, with_plan):
        hint = ("the file was not changed; repair it or move it aside (the manifest is intact, "
                "and `autoexp monitor --session ID --monitor-all` re-adopts the jobs from SLURM)")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except (IOError, OSError) as e:
            raise StateError("cannot read session %s: %s" % (path, e.strerror or e))
        if not raw.strip():
            raise StateError("session file %s is empty; %s" % (path, hint))
        try:
            data = loads_json(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise StateError("session file %s is not valid JSON (%s); %s" % (path, e, hint))
        if not isinstance(data, dict) or data.get("kind") != SESSION_KIND:
            raise StateError("%s is not an autoexp session file; %s" % (path, hint))
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise StateError("session file %s has no valid schema_version; %s" % (path, hint))
        if version > STATE_SCHEMA_VERSION:
            raise StateError("session file %s has schema version %r, newer than this autoexp "
                             "(%s, schema %d) understands; use the newer autoexp that wrote it"
                             % (path, version, __version__, STATE_SCHEMA_VERSION))
        try:
            if version < 2:  # one document; written as schema 2 by the next save (a migration)
                session = Session.from_dict(data, path)
                session.generation, session.batch = 0, 0
            else:
                _require(data, HEADER_FIELDS, "the session")
                session = Session.from_dict(data, path, jobs=[])
            session.matcher, session.policies  # the config it acts by must be whole too
        except (KeyError, TypeError, ValueError, AttributeError, re.error, ConfigError) as e:
            raise StateError("session file %s is incomplete (%s: %s); %s" % (path, type(e).__name__, e, hint))
        self._check_home(session, path, with_plan)
        if version < 2:
            session.settle_outbox(last_journal_seq(self.events_path(session)))
        if version >= 2:
            try:
                self._read_generation(session, path)
            except _GenerationMoved:
                raise
            except StateError as e:
                raise StateError("session file %s is incomplete (%s); %s" % (path, e, hint))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise StateError("session file %s is incomplete (%s: %s); %s" % (path, type(e).__name__, e, hint))
        return session

    def _read_generation(self, s, path):
        """The jobs of a schema-2 session: its snapshot, then every complete batch."""
        snap, delta = self.gen_paths(s.session_id, s.generation)
        jobs, digests, stable = OrderedDict(), {}, {}

        def take(text):
            d = loads_json(text, dict)
            job = Job.from_dict(d)
            jobs[job.name], digests[job.name] = job, hash(text)
            for a in d["attempts"]:
                for k in LOG_PROGRESS_FIELDS:
                    a.pop(k, None)
            stable[job.name] = hash(json.dumps(d, sort_keys=True, separators=(",", ":")))
        try:
            f = open(snap, "rb")
        except (IOError, OSError) as e:
            if e.errno == errno.ENOENT and self._generation_of(path) != s.generation:
                raise _GenerationMoved()
            raise StateError("cannot read %s, the jobs of session %s: %s" % (snap, s.session_id, e.strerror or e))
        with f:
            for line in f:
                if not line.endswith(b"\n"):
                    raise StateError("%s ends in the middle of a line" % snap)
                take(line[:-1].decode("utf-8"))
            s.snapshot_bytes = f.tell()
        batch, size = s.batch, 0
        try:
            f = open(delta, "rb")
        except (IOError, OSError) as e:
            if e.errno != errno.ENOENT:
                raise StateError("cannot read %s: %s" % (delta, e.strerror or e))
            f = None
        if f is not None:
            with f:
                while True:
                    head = f.readline()
                    if not head.endswith(b"\n"):
                        break  # the end, or a batch cut short by a crash: not there
                    rec = loads_json(head[:-1].decode("utf-8"))
                    lines = [f.readline() for _ in range(int(rec["jobs"]))]
                    if not all(l.endswith(b"\n") for l in lines):
                        break
                    if rec["batch"] != batch + 1:
                        raise StateError("%s: batch %s follows batch %d" % (delta, rec["batch"], batch))
                    s.apply_batch_fields(rec["session"])
                    for line in lines:
                        text = line[:-1].decode("utf-8")
                        if text.startswith('{"batch":'):
                            raise StateError("%s: batch %s has fewer jobs than it says" % (delta, rec["batch"]))
                        take(text)
                    batch, size = batch + 1, f.tell()
        if self._generation_of(path) != s.generation:
            raise _GenerationMoved()  # compacted meanwhile: what was read may be behind
        s.jobs = sorted(jobs.values(), key=lambda j: j.index)
        s.snapshot_batch, s.header_events = s.batch, len(s.outbox)
        s.batch, s.digests, s.delta_bytes, s.persisted_seq = batch, digests, size, s.event_seq
        s.settle_outbox(last_journal_seq(self.events_path(s)))
        s.stable, s.written_at = stable, dict.fromkeys(jobs, s.updated_at)

    @staticmethod
    def _generation_of(path):
        try:
            with open(path, "rb") as f:
                return loads_json(f.read().decode("utf-8")).get("generation")
        except (IOError, OSError, ValueError, UnicodeDecodeError, AttributeError):
            return None

    def save(self, session, now, flush=False):
        """Write what changed: one batch of the jobs this process touched whose line is not
        what the files hold (nothing if none did, and no event is new), or, for a session
        never written as schema 2, with a new header, or whose batches outgrew half its
        snapshot, a new generation. A job whose log progress alone changed waits for its
        next other change, LOG_CHECKPOINT, or flush. True if something was written."""
        s = session
        self.check_lock(s)
        s.updated_at = now
        if s.generation == 0 or s.header_dirty:
            self.write_generation(s)
            return True
        if os.environ.get("AUTOEXP_PARANOID"):
            _check_untouched(s)
        changed, later = [], set()
        for job in sorted((s.job(n) for n in s.touched if s.job(n) is not None), key=lambda j: j.index):
            text = job.line()
            h = hash(text)
            if s.digests.get(job.name) == h:
                continue
            stable = hash(job.line(volatile=False))
            if (not flush and s.stable.get(job.name) == stable
                    and now - s.written_at.get(job.name, float("-inf")) < LOG_CHECKPOINT):
                later.add(job.name)  # only its log's progress: kept touched, written later
                continue
            changed.append((job.name, text, h, stable))
        if not changed and s.event_seq == s.persisted_seq:
            s.touched = later
            return False
        head = json.dumps(OrderedDict([("batch", s.batch + 1), ("jobs", len(changed)),
                                       ("session", s.batch_fields())]), sort_keys=True, separators=(",", ":"))
        data = (head + "\n" + "".join(c[1] + "\n" for c in changed)).encode("utf-8")
        self._append_batch(self.gen_paths(s.session_id, s.generation)[1], data, s.delta_bytes)
        s.batch += 1
        s.delta_bytes += len(data)
        s.persisted_seq = s.event_seq
        for name, _, h, stable in changed:
            s.digests[name], s.stable[name], s.written_at[name] = h, stable, now
        s.touched = later
        if s.delta_bytes > max(compact_bytes(), s.snapshot_bytes // 2):
            self.write_generation(s)
        return True

    def write_generation(self, s):
        """Write every job as a new generation: the snapshot, then the header that names it
        (its atomic rename is the commit), then remove the old generation's files."""
        old = s.generation
        gen = old + 1
        snap, delta = self.gen_paths(s.session_id, gen)
        lines = [job.line() for job in s.jobs]
        data = "".join(text + "\n" for text in lines).encode("utf-8")
        atomic_write(snap, data, crash_prefix="state")
        try:  # a delta left by a writer that crashed before its header named this generation
            os.unlink(delta)
        except OSError:
            pass
        s.generation = gen
        s.persisted_seq = s.event_seq
        header = s.to_dict()
        try:
            atomic_write(s.path, dump_json(header), crash_prefix="state")
        except BaseException:
            s.generation = old
            raise
        s.snapshot_batch, s.header_events = s.batch, len(header["outbox"])
        s.digests = dict((job.name, hash(text)) for job, text in zip(s.jobs, lines))
        s.stable = dict((job.name, hash(job.line(volatile=False))) for job in s.jobs)
        s.written_at = dict((job.name, s.updated_at) for job in s.jobs)
        s.touched.clear()
        s.header_dirty = False
        s.snapshot_bytes, s.delta_bytes = len(data), 0
        if old:
            for path in self.gen_paths(s.session_id, old):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _append_batch(self, path, data, whole):
        """Append one batch, whole. `whole` is where the last complete batch ends (what this
        writer read under its lock): anything after it is a batch a crashed writer left cut
        short, even one cut right after a line, and is cut off first."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise StateWriteError("cannot open %s: %s" % (path, e.strerror or e))
        try:
            size = os.fstat(fd).st_size
            try:
                if size != whole:
                    size = min(size, whole)
                    os.ftruncate(fd, size)
                half = len(data) // 2
                crash_point("state_before_append")
                write_all(fd, data[:half])
                crash_point("state_mid_append")
                write_all(fd, data[half:])
                os.fsync(fd)
                crash_point("state_after_append")
            except OSError as e:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise StateWriteError("cannot append to %s: %s" % (path, e.strerror or e))
        finally:
            os.close(fd)
        if size == 0:
            fsync_dir(os.path.dirname(path))

    def lock(self, session_id, command, now=None):
        lock = SessionLock(os.path.join(self.root, session_id + ".lock")).acquire(command, now)
        self.held[session_id] = lock
        self._remove_leftovers(session_id)
        return lock

    def check_lock(self, session):
        """Before a write or an sbatch: the lock this process took for the session must still
        be the lock file at its path, or a second writer may be at work: stop at once."""
        lock = self.held.get(session.session_id)
        if lock is not None and lock.fd is not None and not lock.intact():
            raise LockLostError("lost the lock of session %s: %s was deleted or replaced while this process "
                                "held it, so another autoexp may be writing the session now; this one stops "
                                "without writing. Never delete a .lock file: the lock of a dead process is "
                                "released by the kernel, the file itself is harmless" % (session.session_id, lock.path))

    def open_for_write(self, path, command, now):
        """Lock a session and read it afresh (the previous holder may have written since it
        was read), then bring its journal and payloads up to date: returns (session, lock)."""
        session_id = os.path.basename(path)[:-len(".json")]
        lock = self.lock(session_id, command, now)
        try:
            s = self.load(path)
            self.remove_other_generations(s)
            self.save_and_sync(s, now, changed=False)
        except BaseException:
            lock.release()
            raise
        return s, lock

    def open_or_create(self, plan, command, now):
        """Lock the plan's session and open it for writing, or create it (not yet written)
        if it does not exist: returns (session, lock, created)."""
        if os.path.isfile(self.archived_path(plan.plan_id)):
            # a new session of an archived plan would be a second record of the same jobs
            raise StateError("session %s is archived (in %s); `autoexp unarchive --session %s` brings it back "
                             "first" % (plan.plan_id, self.archive_dir(plan.plan_id), plan.plan_id))
        lock = self.lock(plan.plan_id, command, now)
        try:
            path = self.session_path(plan.plan_id)
            try:
                os.stat(path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise StateError("cannot read session %s: %s" % (path, e.strerror))
                return self.create_session(plan, now), lock, True
            s = self.load(path)
            self.remove_other_generations(s)
            self.save_and_sync(s, now, changed=False)
            return s, lock, False
        except BaseException:
            lock.release()
            raise

    def create_session(self, plan, now):
        """A new session for a plan, not yet written. One rebuilt after its state file was
        lost continues its journal's numbering: events numbered from 1 again would be taken
        for ones already written, and dropped."""
        s = Session.new(self.session_path(plan.plan_id), plan, now)
        s.event_seq = last_journal_seq(self.events_path(s))
        s.plan = plan
        return s

    # Cancel requests: `autoexp cancel` queues one when a monitor holds the session; the
    # holder carries it out, and removes it once the cancels it asked for are on disk.

    def queue_cancel(self, session_id, names, now):
        folder = self.requests_dir(session_id)
        make_private_dir(folder)
        path = os.path.join(folder, "%d-%d.json" % (int(now * 1000), os.getpid()))
        atomic_write(path, dump_json({"action": ACTION_CANCEL, "jobs": list(names), "created_at": iso_time(now)}))
        return path

    def cancel_requests(self, session_id):
        """[(path, job names)] of the queued requests, oldest first; an unreadable one is left."""
        folder = self.requests_dir(session_id)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return []
        out = []
        for name in names:
            if name.startswith("."):
                continue  # a request still being written (atomic_write's temporary file)
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    req = loads_json(f.read().decode("utf-8"))
            except (IOError, OSError, ValueError):
                continue
            out.append((path, req.get("jobs") or []))
        return out

    @staticmethod
    def remove_requests(paths):
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    def remove_other_generations(self, s):
        """Job files of generations the header does not name: a writer died between writing
        a new snapshot and naming it, or before removing the old one. Only a lock holder may."""
        # the whole name: a session may be named "<id>.g1" (its own files "<id>.g1.g1....")
        own = re.compile(r"^%s\.g[0-9]+\.(jobs|delta)\.jsonl$" % re.escape(s.session_id))
        keep = set(os.path.basename(p) for p in self.gen_paths(s.session_id, s.generation))
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            if own.match(name) and name not in keep:
                try:
                    os.unlink(os.path.join(self.root, name))
                except OSError:
                    pass

    def _remove_leftovers(self, session_id):
        """Temporary files of a writer of this session that died between creating and
        renaming them: only a lock holder may remove them, none can be in use then."""
        # whole names (atomic_write's ".<name>.<pid>.tmp"): another session's id may begin with this one's
        sid = re.escape(session_id)
        folders = [(self.root, re.compile(r"^\.%s\.(json|g[0-9]+\.(jobs|delta)\.jsonl)\.[0-9]+\.tmp$" % sid)),
                   (os.path.join(self.root, "actions", session_id), re.compile(r"^\..*\.tmp$"))]
        for folder, own in folders:
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if own.match(name):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    # The journal (events.jsonl) and the action payloads are derived from the state file,
    # written after it: a crash in between leaves them behind, never ahead, and the next
    # writer fills the gap (events wait in the state's outbox until the journal has them;
    # the journal's last seq says which it has), so each appears exactly once.

    def needs_sync(self, s):
        """Events the journal misses, or payloads not written: a writer killed right after the
        state write that recorded them left them behind. Such a session has work left even
        with every job done (cron's `reconcile` is then the only one to catch up)."""
        if any(not act.get("written") for job in s.jobs for att in job.attempts for act in att.actions):
            return True
        return bool(s.outbox) and max(e["seq"] for e in s.outbox) > last_journal_seq(self.events_path(s))

    def save_and_sync(self, session, now, changed=True):
        """Write the state (when it changed), then the journal and payloads it announces; a
        payload just written is marked so by one more state write, or a payload a consumer
        deleted would come back."""
        if changed:
            self.save(session, now)
        if self.sync_outputs(session):
            self.save(session, now)
        if session.header_events > HEADER_EVENTS_MAX and session.generation and not session.pending_events():
            self.rewrite_header(session)

    def rewrite_header(self, s):
        """The header again, its outbox empty: a header written while thousands of events
        waited for the journal (a whole sweep submitted in one cycle) would make every later
        reader parse them all. Same generation and snapshot batch: nothing else changes."""
        current = s.batch
        s.batch = s.snapshot_batch
        try:
            header = s.to_dict()
        finally:
            s.batch = current
        atomic_write(s.path, dump_json(header), crash_prefix="state")
        s.header_events = len(header["outbox"])

    def sync_outputs(self, session):
        """Append the outbox to the journal, write missing payloads; True if any payload was."""
        path = self.events_path(session)
        if session.journal_seq is None:
            session.journal_seq = last_journal_seq(path)
        events = [e for e in session.outbox if e["seq"] > session.journal_seq]
        if session.unwritten is None:  # read from disk: look once for actions whose payload is missing
            session.unwritten = [(job, att, act) for job in session.jobs for att in job.attempts
                                 for act in att.actions if not act.get("written")]
        actions, session.unwritten = session.unwritten, []
        if events:
            lines = [json.dumps(OrderedDict((k, iso_time(v) if k == "time" else v) for k, v in e.items()),
                                sort_keys=True) for e in events]
            data = ("\n".join(lines) + "\n").encode("utf-8")
            append_journal(path, data)
            session.journal_seq = events[-1]["seq"]
        session.outbox = []  # all in the journal now; the next save drops them from the state
        if not actions:
            return False
        folder = self.actions_dir(session)
        for job, att, act in actions:
            target = os.path.join(folder, act["id"] + ".json")
            if os.path.exists(target):
                act["written"] = True
                session.touch(job)
                continue
            make_private_dir(folder)
            payload = OrderedDict([
                ("session", session.session_id), ("job", job.name), ("attempt", att.attempt),
                ("job_id", att.job_id), ("array_task", att.array_task), ("action", act["action"]),
                ("mode", act["mode"]), ("event", act["mode"]), ("reason", act["reason"]),
                ("slurm_state", att.last_slurm_state), ("log_path", att.resolved_log_path),
                ("created_at", iso_time(act["time"]))])
            atomic_write(target, dump_json(payload))
            act["written"] = True  # saved with the next state write: a consumer may delete it
            session.touch(job)
            crash_point("after_action_payload")
        return True


def look_at_effect(base):
    """What the files of one try say, without waiting: the lock is tried, never waited for
    (and let go at once), and the result is looked for after the lock (a worker writes it
    before it lets go, so a free lock and no result means there will be none)."""
    locked = False
    try:
        fd = os.open(base + EFFECT_LOCK, os.O_RDWR)
    except OSError:
        fd = None  # never started: no lock file yet
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            locked = True
        finally:
            os.close(fd)
    return EffectLook(os.path.exists(base + EFFECT_RESULT), locked, os.path.exists(base + EFFECT_STARTED),
                      fd is not None or os.path.exists(base + EFFECT_SPEC))


def module_home():
    """Where this module is (its folder, or the .pyz): what an effect's worker imports."""
    return os.path.dirname(os.path.abspath(__file__))


def _check_untouched(s):
    """Test hook (AUTOEXP_PARANOID=1): a job this process did not touch must be what the
    files hold, or a change would never be written. Costs a serialisation of every job."""
    for job in s.jobs:
        if job.name not in s.touched and job.name in s.digests and hash(job.line()) != s.digests[job.name]:
            raise AssertionError("job %s of session %s changed but was not touched: the change would be "
                                 "lost" % (job.name, s.session_id))


class _GenerationMoved(Exception):
    """A reader raced a writer's new generation: read again."""


def filecmp_same(a, b):
    """Two files of the same content (a copy made where hard links are not to be had)."""
    import filecmp
    return filecmp.cmp(a, b, shallow=False)


def compact_bytes():
    """How large the batches may grow before a new generation is written (at least; also
    half the snapshot). AUTOEXP_COMPACT_BYTES lets the tests make it small."""
    try:
        return max(0, int(os.environ.get("AUTOEXP_COMPACT_BYTES", COMPACT_BYTES)))
    except ValueError:
        return COMPACT_BYTES


def append_journal(path, data):
    """Append whole lines to the journal, or nothing: a write cut short (a quota, a file
    size limit) is undone and raised, so the events stay in the outbox for the next try."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as e:
        raise StateWriteError("cannot open the event journal %s: %s" % (path, e.strerror or e))
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a crash cut the last line short: keep ours whole
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise StateWriteError("cannot append to the event journal %s: %s; its events stay in the "
                                  "state file's outbox and are appended by the next run" % (path, e.strerror or e))
    finally:
        os.close(fd)


def last_journal_seq(path):
    """The seq of the journal's last complete line (0 when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - JOURNAL_TAIL_BYTES))
            tail = f.read()
    except (IOError, OSError):
        return 0
    for line in reversed(tail.split(b"\n")):
        try:
            return int(loads_json(line.decode("utf-8"))["seq"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
    return 0




# -- notification delivery: the one place autoexp talks to the network (SPEC 5.6) -------
# One delivery of one message, bounded in time, for `_notify` (which the effect engine
# runs in its worker: retries, backoff and exactly-once are the engine's).

class Delivery(NamedTuple):
    code: int  # NOTIFY_DELIVERED, NOTIFY_RETRY or NOTIFY_PERMANENT
    message: str  # what happened, redacted: it ends up in the job's history


def webhook_url(target, env):
    """The URL of a webhook target: given, or read from its environment variable or file."""
    if target.get("webhook"):
        return target["webhook"]
    if target.get("webhook_env"):
        url = env.get(target["webhook_env"], "").strip()
        if not url:
            raise ConfigError("environment variable %s (webhook_env) is not set here; a cron job has only "
                              "what the crontab sets: set it there, or use webhook_file" % target["webhook_env"])
    else:
        url = read_webhook_file(target["webhook_file"])
    check_webhook_url(url, "webhook", _Checker("notify target"))
    return url


def _post(url, body, timeout):
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # a redirect is answered as the HTTPError it is: data never goes elsewhere

    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "autoexp/" + __version__})
    where = "POST to %s" % redact_url(url)
    try:
        resp = urllib.request.build_opener(NoRedirect).open(req, timeout=timeout)
        try:
            status, answer = resp.getcode(), resp.read(MAX_RESPONSE_BYTES)
        finally:
            resp.close()
    except urllib.error.HTTPError as e:
        status, answer = e.code, b""
        try:
            answer = e.read(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException):
            pass
        e.close()
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(reason):
            return Delivery(NOTIFY_PERMANENT, "%s: the server's certificate is not trusted: %s" % (where, reason))
        if isinstance(reason, OSError):
            return Delivery(NOTIFY_RETRY, "%s: cannot connect: %s" % (where, getattr(reason, "strerror", None) or reason))
        return Delivery(NOTIFY_PERMANENT, "%s: %s" % (where, reason))
    except (OSError, http.client.HTTPException) as e:  # a read timing out, a connection cut
        return Delivery(NOTIFY_RETRY, "%s: %s" % (where, str(e) or type(e).__name__))
    except ValueError as e:
        return Delivery(NOTIFY_PERMANENT, "%s: %s" % (where, e))
    said = first_line(answer.decode("utf-8", "replace"))[:200]
    return Delivery(http_verdict(status), "%s: HTTP %d%s" % (where, status, ": " + said if said else ""))


def post_webhook(url, body, timeout):
    """POST body to url; never longer than timeout. urllib's timeout bounds each connect and
    read, not a name lookup nor a server that answers a byte at a time, so the request runs
    in a daemon thread given up after timeout (`_notify` then exits: the thread ends with it)."""
    import threading
    box = []

    def send():
        try:
            box.append(_post(url, body, timeout))
        except Exception as e:  # never a traceback from the thread: an answer, retryable
            box.append(Delivery(NOTIFY_RETRY, "POST to %s: %s" % (redact_url(url), type(e).__name__)))

    thread = threading.Thread(target=send, name="autoexp-webhook")
    thread.daemon = True
    thread.start()
    thread.join(timeout)
    if not box:
        return Delivery(NOTIFY_RETRY, "POST to %s: no answer within %gs" % (redact_url(url), timeout))
    return box[0]


def run_bounded(argv, data, timeout, env=None):
    """Run argv (no shell) with data on stdin for at most timeout seconds (its process group
    killed then); returns (returncode or None, timed_out, the last bytes of its output)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: any amount of output, no deadlock
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    close_fds=True, start_new_session=True)
        except OSError as e:
            return None, False, "cannot run %s: %s" % (argv[0], e.strerror or e)
        timed_out = communicate_bounded(proc, data, timeout)[2]
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_TAIL_BYTES))
        return proc.returncode, timed_out, out.read().decode("utf-8", "replace").strip()


def find_mailer(path_env):
    """("sendmail" or "mail", its path): sendmail on PATH or in /usr/sbin, /usr/lib, else mail."""
    dirs = [d for d in (path_env or "").split(os.pathsep) if d] + list(MAILER_DIRS)
    for name in ("sendmail", "mail"):
        for d in dirs:
            path = os.path.join(d, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return name, path
    return None, None


def _ran(what, rc, timed_out, tail, timeout):
    if rc is None:
        return Delivery(NOTIFY_PERMANENT, tail)
    code = exit_verdict(rc, timed_out)
    said = "timed out after %gs" % timeout if timed_out else "exit %d" % rc
    return Delivery(code, "%s: %s%s" % (what, said, "; output: " + tail[-OUTPUT_TAIL_BYTES:] if tail else ""))


def deliver(name, target, session_id, events, timeout, env=None):
    """Send events to one target as one message; a Delivery whose message shows no URL whole."""
    env = dict(os.environ if env is None else env)
    subject = notify_subject(session_id, events)
    secrets = []
    try:
        if target.get("email"):
            kind, path = find_mailer(env.get("PATH"))
            if path is None:
                return Delivery(NOTIFY_PERMANENT, "target %s: neither sendmail nor mail is installed here (looked on "
                                "PATH and in %s); use a webhook or command target" % (name, ", ".join(MAILER_DIRS)))
            text = "\n".join([subject, ""] + notify_lines(events)) + "\n"
            if kind == "sendmail":
                import email.message
                msg = email.message.EmailMessage()
                msg["To"], msg["Subject"], msg["Auto-Submitted"] = ", ".join(target["email"]), subject, "auto-generated"
                msg.set_content(text)
                argv, data = [path, "-t", "-oi"], msg.as_bytes()
            else:
                argv, data = [path, "-s", subject] + list(target["email"]), text.encode("utf-8")
            d = _ran("%s to %s" % (kind, ", ".join(target["email"])), *run_bounded(argv, data, timeout, env),
                     timeout=timeout)
        elif target.get("command"):
            payload = notify_payload(FMT_GENERIC, name, session_id, events)
            env.update(AUTOEXP_SESSION=session_id, AUTOEXP_NOTIFY_TARGET=name, AUTOEXP_NOTIFY_SUBJECT=subject,
                       AUTOEXP_NOTIFY_COUNT=str(len(events)))
            d = _ran("command of target %s" % name,
                     *run_bounded(["bash", "-c", target["command"]], json.dumps(payload).encode("utf-8"), timeout, env),
                     timeout=timeout)
        else:
            url = webhook_url(target, env)
            secrets.append(url)
            body = json.dumps(notify_payload(target.get("format") or FMT_SLACK, name, session_id, events),
                              ensure_ascii=True).encode("ascii")
            d = post_webhook(url, body, timeout)
    except ConfigError as e:
        d = Delivery(NOTIFY_PERMANENT, "target %s: %s" % (name, e))
    return Delivery(d.code, redact(d.message, secrets))


# ============================================================================
# 9. Controller: the imperative shell
# ============================================================================

class StopFlag(object):
    """Set by the first SIGINT or SIGTERM: the current step finishes, the state is saved."""

    __slots__ = ("requested",)

    def __init__(self):
        self.requested = False


class Todo(object):
    """Side effects decided in a cycle; they run only after the state that announces them
    (the intent) is on disk."""

    __slots__ = ("submit", "cancel", "requests_done", "_cancelling", "want")

    def __init__(self):
        self.submit, self.cancel, self.requests_done, self._cancelling = [], [], [], set()
        self.want = []  # (Want, job, array): new submissions that wait for max_running's verdict

    def add_cancel(self, job, att):
        # One attempt can be asked for twice in a cycle (a user's cancel request taken,
        # then the same attempt's unanswered cancel seen): scancel it once.
        if id(att) not in self._cancelling:
            self._cancelling.add(id(att))
            self.cancel.append((job, att))


class Controller(object):
    """Observe, decide (section 7), act, persist. The clock, sleep and SLURM client are
    injected; every decision is a call into the pure core, every side effect is here."""

    __slots__ = ("store", "slurm", "report", "clock", "mono", "sleep", "dry_run", "stop", "ticks", "cycle_mono",
                 "due", "prev_rows", "workers",
                 "unknown_since", "unknown_failures", "sacct_down_since", "sacct_failed", "changes",
                 "json_changes", "name_sessions", "skipped_said", "cycle_sessions")

    def __init__(self, store, slurm, report, clock=time.time, sleep=time.sleep, dry_run=False, stop=None,
                 mono=None):
        self.store = store
        self.slurm = slurm
        self.report = report
        self.clock = clock
        # intervals and timeouts run on a monotonic clock (an injected wall clock serves as
        # both); the wall clock only dates things, and its jumps are measured against it
        self.mono = mono or (time.monotonic if clock is time.time else clock)
        self.ticks = {}  # session id -> (wall, monotonic) when this process last looked
        self.cycle_mono = None
        # What a cycle may skip (section 7's steady_until): per session, per job, when it next
        # needs a look if nothing about it changes; and last cycle's squeue rows, to see what did.
        self.due = {}
        self.prev_rows = {}
        self.sleep = sleep
        self.dry_run = dry_run
        self.stop = stop or StopFlag()
        self.unknown_since = None
        self.unknown_failures = 0
        self.sacct_down_since = None
        self.sacct_failed = False  # in the last cycle: what depended on it waits
        self.changes = 0
        self.json_changes = None  # a list when `--json` wants every change as a document
        self.name_sessions = False  # event lines say SESSION/JOB when several sessions are watched
        self.skipped_said = False
        self.cycle_sessions = ()  # the sessions of this cycle: a job one of them has is no other's
        self.workers = []  # effect workers this process started: polled, so that none stays a zombie

    @property
    def stop_requested(self):
        return self.stop.requested

    @stop_requested.setter
    def stop_requested(self, value):
        self.stop.requested = value

    # -- the loop ----------------------------------------------------------------------

    def run(self, sessions, once=False, interval=None, summary_seconds=None):
        """Cycle until every job is finalized, stopped or cancelled; returns an exit code.
        summary_seconds: after that long without an event, one line says where the jobs are
        (a quiet monitor is not mistaken for a hung one)."""
        quiet_since, seen, said = self.mono(), self.changes, 0
        while True:
            ok = self.cycle(sessions)
            if summary_seconds and not once:
                if self.changes != seen:
                    quiet_since, seen, said = self.mono(), self.changes, 0
                elif self.mono() - quiet_since >= (said + 1) * summary_seconds:
                    said += 1  # the whole quiet stretch so far, not the time since the last line
                    self.report.info(quiet_summary(sessions, said * summary_seconds))
            live = [s for s in sessions if s.active() or settling(s, self.clock())]
            if not live:
                self.flush(sessions)
                for s in sessions:
                    self.report.info("session %s done: %s" % (s.session_id, count_summary(s)))
                return EXIT_OK
            if once:  # as reconcile: the pass failed if squeue or sacct did not answer
                self.flush(sessions)
                return EXIT_OK if ok and not self.sacct_failed else EXIT_FAILURE
            if self._pause(next_wait(live, ok, self.unknown_failures, interval)):
                self.flush(sessions)
                return EXIT_INTERRUPTED

    def flush(self, sessions):
        """Before the process ends: write what waited (the log progress of jobs nothing else
        changed, LOG_PROGRESS_FIELDS), so the next process starts reading where this one stopped."""
        if not self.dry_run:
            for s in sessions:
                self.store.save(s, self.clock(), flush=True)

    def _pause(self, seconds):
        end = self.mono() + seconds
        while not self.stop_requested:
            left = end - self.mono()
            if left <= 0:
                return False
            self.sleep(min(left, PAUSE_STEP))
        return True

    def cycle(self, sessions):
        """One observe-decide-act-persist pass over the sessions; False if SLURM was UNKNOWN."""
        now, self.cycle_mono = self.clock(), self.mono()
        self.name_sessions = len(sessions) > 1
        self.cycle_sessions = sessions
        try:
            rows = self.slurm.squeue()
        except SlurmUnavailable as e:
            self.unknown_failures += 1
            if self.unknown_since is None:
                self.unknown_since = now
                self.report.warn("SLURM did not answer (%s); nothing is decided until it does, "
                                 "retrying with backoff" % e)
            else:
                self.report.detail("SLURM still not answering: %s" % e)
            for s in sessions:  # effects need no SLURM: they go on while it does not answer
                self.pump_effects(s, now)
            return False
        if self.unknown_since is not None:
            self.report.info("SLURM answers again after %ds" % (now - self.unknown_since))
            self.unknown_since, self.unknown_failures = None, 0
        skipped = getattr(self.slurm, "skipped", None)
        if skipped:
            # other jobs of the user whose lines cannot be read (a newline in a job name):
            # not autoexp's, so they do not make the whole answer UNKNOWN
            say = self.report.detail if self.skipped_said else self.report.warn
            self.skipped_said = True
            say("squeue listed %d line(s) that are not autoexp's jobs and cannot be read; skipped "
                "(first: %s)" % (len(skipped), skipped[0]))
        snap = Snapshot(rows)
        self.sacct_failed = False
        work = []
        for s in sessions:
            self._mind_the_clock(s, now)
            todo = Todo()
            for path, names in self.store.cancel_requests(s.session_id):
                self.cancel_jobs(s, names, now, todo)
                todo.requests_done.append(path)
            work.append((s, todo, self._focus(s, snap, now)))
        look = self._lookup(work, snap, now)
        for s, todo, focus in work:
            self.session_cycle(s, snap, look, focus, todo, now)
        self.prev_rows = snap.by_id  # a row that differs in any field is a change
        if self.sacct_down_since is not None and not self.sacct_failed:
            self.report.info("sacct answers again after %ds" % (self.clock() - self.sacct_down_since))
            self.sacct_down_since = None
        return True

    def _sacct_down(self, error):
        self.sacct_failed = True
        if self.sacct_down_since is None:
            self.sacct_down_since = self.clock()
            self.report.warn("sacct did not answer (%s); the jobs it was asked about wait until it does" % error)

    def session_cycle(self, s, snap, look, focus, todo, now):
        """Step the jobs in focus (the others have not changed and have nothing due), then
        write what changed and carry out what was decided."""
        due = self.due.setdefault(s.session_id, {})
        mon = s.monitoring
        for job in focus:
            self._step(s, job, snap, look, now, todo)
            if job.status != ACTIVE:  # decided by an older autoexp, or re-read: none is added twice
                self._followups(s, job, now)
            due[job.name] = steady_until(job, mon)
            crash_point("between_jobs")
        if todo.want:
            self._grant(s, self._live(s, snap), now, todo)
        if mon.debug_sync:
            for job in s.jobs:
                self.report.result("debug %s %s: status=%s slurm=%s monitor=%s attempts=%d" % (
                    s.session_id, job.name, job.status, job.last_slurm_state, job.last_monitor_state,
                    len(job.attempts)))
        s.clock_ref = [now, self.cycle_mono, clock_identity()]  # written with the cycle's batch, if any
        self.commit(s, now, todo)
        self.pump_effects(s, self.clock())  # after commit: every effect's intent is on disk

    def _focus(self, s, snap, now):
        """The jobs to step this cycle, in plan order: all of them the first time this process
        sees the session; then those with something due (a job that is not steady is due
        every cycle), whose squeue row changed, whose log changed size or inode (a stat, no
        read), that the user just cancelled, or that a new SLURM job with their tag concerns."""
        due = self.due.get(s.session_id)
        if due is None:
            return list(s.jobs)
        prev, by_id = self.prev_rows, snap.by_id
        names = set(s.touched)
        for job in s.jobs:
            when = due.get(job.name)
            if when is None or when <= now:
                names.add(job.name)
                continue
            att = job.current
            if att is None or not att.live or not att.job_id:
                continue
            if by_id.get(att.job_id) != prev.get(att.job_id) or log_changed(att) or extra_logs_changed(att):
                names.add(job.name)
        for name, row in self._session_rows(s, snap):
            if name is not None and row != prev.get(row.job_id):
                names.add(name)
        for row in snap.untagged():  # a job resubmitted by hand without its tag
            if row != prev.get(row.job_id) and s.job(row.name) is not None:
                names.add(row.name)
        return [job for job in s.jobs if job.name in names]

    def _mind_the_clock(self, s, now):
        """Measure the wall clock against the monotonic one since this process (or, on this
        host since its boot, the one that last saved the session) last looked; if it jumped,
        every timer moves with it."""
        before = self.ticks.get(s.session_id)
        ref = s.clock_ref
        if before is None and ref and len(ref) == 3 and ref[2] == clock_identity():
            before = (ref[0], ref[1])
        skew = clock_skew(before, now, self.cycle_mono)
        if skew:
            s.shift_timers(skew)
            self.due.pop(s.session_id, None)  # every timer moved: every job is looked at again
            self.report.warn("the clock jumped %s by %ds (%s); stall, grace and backoff timers moved with it"
                             % ("forward" if skew > 0 else "back", abs(skew), s.session_id))
        self.ticks[s.session_id] = (now, self.cycle_mono)

    # -- observing -----------------------------------------------------------------

    def _lookup(self, work, snap, now):
        """One sacct for every session of the cycle (in pieces only when its names would be
        too long for one argument): by name, for the jobs in focus whose live attempt squeue
        no longer lists or lists as ended (squeue knows no exit codes), whose submission is
        in doubt or who have none yet, or whose attempt vanished (a successor squeue cannot
        show). The rows answer both: an attempt's own record (by its id) and its successors."""
        look = Lookup()
        names, since, own = set(), None, []
        for s, _, focus in work:
            array = s.plan.array
            self._defer(s, focus, snap, look, now)
            for job in focus:
                if (s.session_id, job.name) in look.deferred:
                    continue
                gone = acct_targets([job], snap)
                own.extend((a.job_id, (job.name, array.name if array is not None else job.name)) for a in gone)
                need = bool(gone) or restart_due(job, now) or seeks_by_name(job, snap, look)
                if need is None:
                    need = not self._candidates(s, job, snap, look)
                if not need:
                    continue
                names.add(job.name)
                if array is not None:
                    names.add(array.name)
                earliest = min([a.intent_at or a.submitted_at or now for a in gone] + [self._since(s, job)])
                since = earliest if since is None else min(since, earliest)
        if names:
            try:
                look.set_named(self.slurm.sacct_by_name(sorted(names), sacct_since(since)))
                look.acct = look.named_by_id
            except SlurmUnavailable as e:
                look.acct_ok = look.named_ok = False
                look.acct_error = look.named_error = str(e)
                self._sacct_down(str(e))
                return look
            # sacct lists a job cancelled before it was ever eligible (held, or waiting on a
            # dependency) by its id only, never by name (22.05 and 24.11 alike): the attempts
            # the names did not answer for are asked about by id
            unanswered = dict((i, n) for i, n in own if i not in look.named_by_id)
            if unanswered:
                try:
                    by_id = self.slurm.sacct(sorted(unanswered), sacct_since(since))
                except SlurmUnavailable as e:
                    look.acct_ok, look.acct_error = False, str(e)
                    self._sacct_down(str(e))
                else:
                    look.acct = dict(look.named_by_id)
                    # under its own name only: an id SLURM reused after MaxJobId is another job
                    look.acct.update((i, r) for i, r in by_id.items() if r.name in unanswered.get(i, ()))
        return look

    def _defer(self, s, focus, snap, look, now):
        """max_running: the jobs that would ask sacct by name only before a submission (never
        submitted, or a restart due; nothing live, nothing with their tag in squeue) and get
        no slot this cycle, in the order slots are granted, wait without a lookup: thousands
        of jobs waiting for a few slots cost sacct nothing. Those looked up are the ones that
        can be granted; one that then does not want its slot (it adopts a rerun) leaves it
        free until the next cycle."""
        limit = s.monitoring.max_running
        if limit is None:
            return
        wants = []
        for job in focus:
            att = job.current
            if job.status != ACTIVE or any(a.live for a in job.attempts) or self._candidates(s, job, snap, look):
                continue
            if att is None and not job.array:
                wants.append(Want(job.index, False, job.name))
            elif att is not None and not att.in_doubt and restart_due(job, now):
                wants.append(Want(job.index, True, job.name))
        if wants:
            look.deferred.update((s.session_id, w.name) for w in grant_slots(wants, self._live(s, snap), limit)[1])

    @staticmethod
    def _candidates(s, job, snap, look):
        array = s.plan.array
        named = look.named_for(job.name, array.name if array is not None else None, job.index)
        return tagged_candidates(job, session_tag(s.session_id, job.name), array, snap, named)

    @staticmethod
    def _since(s, job):
        return attempt_since(job, parse_iso(s.plan.created_at) if s.plan is not None else s.created_at)

    def _sight(self, s, job, snap, look):
        cands = self._candidates(s, job, snap, look)
        if not (job.current is not None and job.current.in_doubt):
            # while no submission of its own is in doubt, any other job with its tag is a copy
            # that a later intent must never take for its own
            copies = [c.job_id for c in cands if c.job_id not in job.seen_copies]
            if copies:
                job.seen_copies = list(job.seen_copies) + copies
        running = [r for r in cands if r.state in ACTIVE_STATES] + revived_rows(job, snap)
        untagged = False
        if job.current is not None and job.current.in_doubt:
            array = s.plan.array
            untagged = any(untagged_successor(job, row, snap) for row in
                           look.named_for(job.name, array.name if array is not None else None, job.index))
        by_hand = ()
        named = snap.untagged(job.name)
        if named and job.status in (ACTIVE, STOPPED, FINALIZED):
            by_hand = tuple(r for r in resubmits_by_hand(job, named, self.slurm.user, self._workdirs(s))
                            if not self._claimed_elsewhere(s, r.job_id)
                            and self.store.claim_owner(r.job_id) in (None, s.session_id))
            if len(by_hand) == 1 and not self.dry_run and self.store.claim_owner(by_hand[0].job_id) is None:
                # the one it may adopt: claimed first, so another process's session of the
                # same names never adopts it too (first come, first served)
                if self.store.claim_job(by_hand[0].job_id, s.session_id) != s.session_id:
                    by_hand = ()
        return Sight(cands, running, look.named_ok, look.named_error, untagged,
                     bool(unsure_rows(job, cands, snap)), tuple(rerun_rows(job, snap, look.acct)), by_hand)

    @staticmethod
    def _workdirs(s):
        wd = s.plan.workdir if s.plan is not None else None
        return (wd, os.path.realpath(wd)) if wd else ()

    def _claimed_elsewhere(self, s, job_id):
        """An attempt of another session watched by this process has this SLURM job."""
        return any(job_id in j.known_ids() for o in self.cycle_sessions if o is not s for j in o.jobs)

    def _say_ambiguous(self, s, job, sight):
        """Several jobs resubmitted by hand after the latest attempt ended, none adopted:
        said once for each set of them, not every cycle."""
        rows = submitted_since(sight.by_hand, attempt_end(job.current)) if job.status != CANCELLED else []
        ids = sorted(r.job_id for r in rows) if len(rows) > 1 else []
        if ids and ids != list(job.resubmits_warned):
            job.resubmits_warned = ids
            text = ("SLURM jobs %s are all of its name, user and working directory, submitted by hand "
                    "without its tag after its last attempt ended; autoexp cannot tell which is its next "
                    "attempt and adopts none (cancel all but one, or use `autoexp retry`)" % ", ".join(ids))
            self.report.warn("%s: %s" % (job.name, text))
            self._event(s, job, job.current, EV_RESUBMITS_AMBIGUOUS, self.clock(),
                        detail="SLURM jobs %s resubmitted by hand; none adopted" % ", ".join(ids))

    @staticmethod
    def _observe(att, snap, look, now):
        obs, att.acct_wait_since = observe(snap.by_id.get(att.job_id),
                                           look.acct.get(att.job_id) or look.named_by_id.get(att.job_id),
                                           look, att.acct_wait_since, now)
        return obs

    # -- applying decisions ------------------------------------------------------------

    def _step(self, s, job, snap, look, now, todo):
        s.touch(job)
        if (s.session_id, job.name) in look.deferred:
            self._waiting(s, job)
            return
        sight = self._sight(s, job, snap, look)
        if job.status == ACTIVE:
            self._step_active(s, job, sight, snap, look, now, todo)
        else:
            self._step_inactive(s, job, sight, snap, look, now, todo)
        if sight.by_hand:
            self._say_ambiguous(s, job, sight)
        for att in job.attempts[:-1]:  # an earlier attempt whose cancel SLURM has not carried out
            if att.live and att.job_id and att.cancel_requested_at:
                self._watch(s, job, att, self._observe(att, snap, look, now), now, todo)

    def _step_active(self, s, job, sight, snap, look, now, todo):
        att = job.current
        if att is None:  # registered, never submitted: adopt it from SLURM, else submit it
            move = first_move(sight)
            if move.kind == ADOPT:
                self._adopt(s, job, move.row, move.origin, now)
            elif move.kind == SUBMIT:
                self._want(s, job, now, todo, job.array, restart=False)
            return
        if att.job_id is None:
            if not att.in_doubt:
                return
            move = intent_move(job, sight, now, s.monitoring.unqueued_after)
            if move.kind == WAIT:
                self.report.detail("%s: %s" % (job.name, move.note))
            if move.kind == SUBMIT:
                todo.submit.append(job)
            if move.kind != RECOVER:
                return
            self._adopt(s, job, move.row, move.origin, now, att=att)
            # in the history now: not a stranger to replace it with, nor a copy beside it
            cands = [c for c in sight.candidates if c.job_id != move.row.job_id]
            sight = sight._replace(candidates=cands, running=[r for r in sight.running if r.job_id != move.row.job_id])
        if att.live:
            obs = self._observe(att, snap, look, now)
            row = replacement(att, obs, sight)
            if row is not None:
                # cancelled (or vanished) and resubmitted outside autoexp: follow the new job
                self._note(s, job, att, obs, now)
                att.live = False
                hand = row in sight.by_hand
                self._finish(s, job, att, now, OUTCOME_REPLACED, "replaced by SLURM job %s, submitted outside "
                             "autoexp%s" % (row.job_id, " (%s)" % BY_HAND if hand else ""))
                att = self._adopt(s, job, row, ORIGIN_EXTERNAL, now, how=BY_HAND if hand else "")
                sight = sight._replace(by_hand=())
                obs = self._observe(att, snap, look, now)
                sight = sight._replace(running=[r for r in sight.running if r.job_id != att.job_id])
            elif sight.running and observation_live(obs) and not job.duplicate_warned:
                job.duplicate_warned = True
                self.report.warn("%s: SLURM job %s also carries its tag while %s runs; autoexp keeps "
                                 "watching %s only" % (job.name, sight.running[0].job_id, att.job_id, att.job_id))
            self._watch(s, job, att, obs, now, todo)
        if job.status == ACTIVE and att.outcome is not None and not att.live:
            move = restart_move(job, sight, now)
            if move.kind == ADOPT:
                self._adopt(s, job, move.row, move.origin, now, how=move.note)
            elif move.kind == WAIT and move.note:
                self.report.detail("%s: %s" % (job.name, move.note))
            elif move.kind == SUBMIT:
                self._want(s, job, now, todo, att.array_task is not None, restart=True)

    def _step_inactive(self, s, job, sight, snap, look, now, todo):
        """Finalized, stopped or cancelled: no decisions, but a pending cancel is seen through,
        and a copy started under its tag is either followed or cancelled."""
        att = job.current
        for move in inactive_moves(job, sight, now, s.monitoring.unqueued_after):
            if move.kind == REACTIVATE:
                if move.origin == ORIGIN_RECOVERED:
                    # sbatch failed until autoexp gave up, yet one of the tries queued it
                    att.outcome = att.reason = None
                    att = self._adopt(s, job, move.row, move.origin, now, att=att)
                else:
                    att = self._adopt(s, job, move.row, move.origin, now, how=move.note)
                job.status, job.reason = ACTIVE, None
                self._event(s, job, att, EV_REACTIVATED, now, detail="SLURM job %s %s" % (
                    move.row.job_id, move.note or "carries its tag"))
                return
            if move.kind == CANCEL_COPY:
                self._cancel_copy(s, job, move.row, now, todo)
            elif move.kind == RECORD:
                att.take(move.row, move.origin, now)
                att.live, att.last_slurm_state = False, move.row.state
                self._event(s, job, att, EV_ADOPTED, now, detail="SLURM job %s (%s, found by its tag; the job was "
                            "cancelled meanwhile)" % (move.row.job_id, move.row.state))
            elif move.kind == ABANDON:
                job.attempts[move.attempt - 1].submit_state = ABANDONED
        if att is not None and att.live and att.job_id:
            self._watch(s, job, att, self._observe(att, snap, look, now), now, todo)

    def _watch(self, s, job, att, obs, now, todo):
        """Bring an attempt up to date with its observation; while its job is active and it
        is undecided, read its log and decide; see a requested cancel through in any case."""
        deciding = job.status == ACTIVE and att.outcome is None
        self._note(s, job, att, obs, now)
        # while SLURM's answer is UNKNOWN the log is not read: whose lines they are (this
        # job's, or a successor's writing the same path) cannot be told (simulator F6)
        log_ok = True
        if deciding and obs.source != SRC_UNKNOWN:
            log_ok = self._read_log(s, job, att, obs, now)
            log_ok = self._read_extra_logs(s, job, att, obs, now) and log_ok
        facts = att.facts()
        if not log_ok:
            facts = facts._replace(last_activity=now)  # an unreadable log is no evidence of a stall
        verdict = classify(obs, facts, now, s.monitoring)
        if (verdict.live is False or verdict.mode == MODE_LOST) and att.live:
            att.live = False
            att.ended_at = now
        if deciding:
            att.last_monitor_state = job.last_monitor_state = verdict.monitor_state
            if verdict.mode:
                self._conclude(s, job, att, verdict, now, todo)
        elif (att.live and att.cancel_requested_at and observation_live(obs)
              and cancel_resend_due(att.cancel_result, now, s.monitoring.interval_seconds)):
            todo.add_cancel(job, att)

    def _note(self, s, job, att, obs, now):
        for kind, detail in att.note(obs, now):
            self._event(s, job, att, kind, now, detail=detail)
        if att is job.current and att.last_slurm_state:
            job.last_slurm_state = att.last_slurm_state

    # -- logs --------------------------------------------------------------------------

    def _log_baseline(self, s, job, att):
        """Where a new attempt's log reading starts. A log shared by all attempts: the new
        one must not read the lines of the ones before it. (SLURM truncates the file when
        the job starts, unless --open-mode=append: a file that shrinks is then read from
        its start.)"""
        self._extra_baseline(s, job, att)
        template, name = log_template_of(s.plan, job.name, att.job_id, att.array_task)
        path = shared_log_path(template, name, self.slurm.user)
        if path is None:
            # a log of one SLURM job: an attempt adopted under an id an earlier attempt had
            # (that job requeued after autoexp recorded its end) shares that attempt's log,
            # appended to with --open-mode=append (outside review: the rerun inherited its
            # earlier run's lines)
            same = [a for a in job.attempts if a is not att and att.job_id and a.job_id == att.job_id
                    and a.resolved_log_path]
            if same:
                att.resolved_log_path = same[-1].resolved_log_path
                self._continue_log(att, same[-1])
            return
        att.resolved_log_path = path
        earlier = [a for a in job.attempts if a is not att and a.resolved_log_path == path]
        if att.origin == ORIGIN_SUBMITTED:
            end = log_end(path)
            if end is not None:
                att.log_offset, att.log_inode, att.log_head = end
        elif earlier:  # adopted: it may have written already; start where the last one stopped
            self._continue_log(att, earlier[-1])

    @staticmethod
    def _continue_log(att, last):
        att.log_offset, att.log_inode, att.log_head = last.log_offset, last.log_inode, last.log_head
        att.log_size, att.log_mtime = last.log_size, last.log_mtime

    def _read_log(self, s, job, att, obs, now):
        """Read the attempt's new log lines and record what they say; False if the log exists
        but could not be read."""
        if att.resolved_log_path is None:
            template, name = log_template_of(s.plan, job.name, att.job_id)
            att.resolved_log_path = resolve_log_path(template, att.job_id, att.raw_id, name, self.slurm.user)
            if att.resolved_log_path is None:
                return True
        final = obs.source in ANSWERED and obs.state not in ACTIVE_STATES
        if not final and not log_changed(att):
            return True  # same size, same file: nothing to read, and it is not opened
        overlap = s.matcher.overlap
        shared = self._shared_log(s, job, att)
        if final and not shared and ran_after_read(att):
            att.log_offset = att.log_size = 0
            self._event(s, job, att, EV_LOG_RESTARTED, now,
                        detail="the job ran again after its log was last read; reading it from its start")
        self._read_copy(s, job, att, final, shared, now, overlap)
        while True:
            read = read_log(att.resolved_log_path, att.log_offset, att.log_inode, att.log_head, final,
                            overlap=overlap, check_head=shared)
            if not read.ok:
                if read.error and att.log_error != read.error:
                    att.log_error = read.error
                    self._event(s, job, att, EV_LOG_UNREADABLE, now, detail=read.error)
                return False
            att.log_error = None
            if final and read.restarted and shared and not own_restart(att, read.mtime):
                # this attempt's job has ended; a log shared by every attempt that starts
                # again after that is another job's (a successor, a replacement)
                return True
            if read.restarted == RESTART_REPLACED and att.log_inode is not None:
                self._read_rotated(s, job, att, now, overlap)
            if read.restarted and att.last_log_growth_at is not None:
                self._event(s, job, att, EV_LOG_RESTARTED, now,
                            detail="log truncated or replaced; reading it from its start")
            if (read.size != att.log_size or read.offset != att.log_offset or read.restarted
                    or (att.log_mtime is not None and read.mtime != att.log_mtime)):
                # growth of the file, whatever its line structure; or a write that left its
                # size as it was (truncated and written again meanwhile)
                att.last_log_growth_at = now
            att.log_offset, att.log_inode, att.log_head, att.log_size = read.offset, read.inode, read.head, read.size
            att.log_mtime = read.mtime or None  # None: no file yet
            self._match_lines(s, job, att, read.lines, now)
            if read.eof or not final:
                return True  # an ended job is read to its end before it is decided

    def _shared_log(self, s, job, att):
        template, name = log_template_of(s.plan, job.name, att.job_id, att.array_task)
        return shared_log_path(template, name, self.slurm.user) is not None

    def _read_copy(self, s, job, att, final, shared, now, overlap):
        """The log was truncated (same inode, shorter than what was read, or written without
        growing), or its job ended: if a rotation copied it before truncating it
        (copytruncate), the lines written between the last read and the copy are read there
        first, to the copy's end."""
        path = att.resolved_log_path
        try:
            st = os.stat(path)
        except OSError:
            st = None
        # shorter than what was read; or written (its time changed) yet no longer: truncated
        # and written again up to its old size; or first seen empty: perhaps copied and
        # truncated before the first look
        truncated = st is not None and ((st.st_ino == att.log_inode and (
            st.st_size < max(att.log_offset, att.log_size)
            or (st.st_size == att.log_size and att.log_mtime is not None and st.st_mtime != att.log_mtime)))
            or (att.log_inode is None and st.st_size == 0))
        if not (truncated or final):
            return
        after = att.log_mtime
        if after is None:  # never read: a copy made before the job was submitted is not its own
            try:
                since = slurm_epoch(att.slurm_submit) if att.slurm_submit else None
            except ValueError:
                since = None
            since = since or att.intent_at or att.submitted_at
            after = since - LOG_END_SLACK if since is not None else None
        # a log other attempts wrote too is not read whole from a copy while the job runs:
        # the copy's beginning may be theirs (a rotation while this one was pending). Once
        # the job has ended, a copy of a log shared by every attempt written before that end
        # is its own (own_restart, below); one an earlier attempt had under the same id never is.
        same_id = any(a is not att and a.resolved_log_path == path for a in job.attempts) and not shared
        whole = not same_id and (not shared or final)
        copies, offset = find_copies(path, att.log_offset, att.log_inode, att.log_head, after, now, whole=whole)
        if shared and final:
            # a log of every attempt, copied after this one's job ended: its own lines only
            # if written before that end (own_restart), else a successor's
            try:
                copies = [c for c in copies if own_restart(att, os.stat(c).st_mtime)]
            except OSError:
                return
        for copy in copies:
            self._event(s, job, att, EV_LOG_RESTARTED, now,
                        detail="log copied to %s and truncated; reading its lines there" % os.path.basename(copy))
            while True:
                read = read_log(copy, offset, None, None, True, overlap=overlap, check_head=False)
                if not read.ok:
                    return
                self._match_lines(s, job, att, read.lines, now)
                if read.offset == offset or read.eof:
                    break
                offset = read.offset
            offset = 0  # a later copy is a whole later generation of the file
            if read.mtime:
                att.log_mtime = max(att.log_mtime or 0.0, read.mtime)  # read up to this copy: not again

    def _read_rotated(self, s, job, att, now, overlap):
        """The log was replaced: if the old file is still in its folder (renamed by a log
        rotation), its lines written since the last read are read first, to its end."""
        old = find_by_inode(os.path.dirname(att.resolved_log_path), att.log_inode)
        offset = att.log_offset
        while old is not None:
            read = read_log(old, offset, att.log_inode, att.log_head, True, overlap=overlap)
            if not read.ok or read.restarted:
                return
            self._match_lines(s, job, att, read.lines, now)
            offset = read.offset
            if read.eof:
                return

    # -- the files watched besides the log (job.sbatch.error's, monitoring.extra_logs) ---

    @staticmethod
    def _has_extra_logs(s):
        error = s.plan.config["job"].get("sbatch", {}).get("error")
        return bool(s.monitoring.extra_logs) or (
            isinstance(error, (str, int, float)) and not isinstance(error, bool) and not str(error).startswith("/dev/"))

    def _extra_baseline(self, s, job, att, lazily=False):
        """The attempt's extra_logs records, made once per attempt (a change of
        monitoring.extra_logs applies from the next attempt on). Where each starts, as for
        the log: a file every attempt writes (no %j/%A/%a) from its end when the attempt's
        submission is decided, or where an earlier attempt on it stopped when the job was
        adopted; a file of one SLURM job once its id is known (_read_extra_logs)."""
        if att.extra_logs or not self._has_extra_logs(s):
            return
        pj = s.plan.by_name.get(job.name)
        if pj is None:
            return
        log_template, name = log_template_of(s.plan, job.name, att.job_id, att.array_task)
        try:
            templates = extra_log_templates(s.plan.config["job"], s.monitoring.extra_logs,
                                            job_values(pj.params, s.plan.project, pj.index, s.plan.plan_id, pj.name),
                                            s.plan.workdir, "session %s" % s.session_id)
        except ConfigError as e:  # an extra_logs override naming a placeholder this job lacks
            att.extra_logs = [OrderedDict((k, 0 if k in ("offset", "size") else None) for k in EXTRA_LOG_KEYS)]
            att.extra_logs[0]["error"] = str(e)
            self._event(s, job, att, EV_LOG_UNREADABLE, self.clock(), detail=str(e))
            return
        fresh = att.origin == ORIGIN_SUBMITTED and att.job_id is None and not lazily
        records = []
        for template in templates:
            if template == log_template or any(r["template"] == template for r in records):
                continue
            rec = OrderedDict((k, 0 if k in ("offset", "size") else None) for k in EXTRA_LOG_KEYS)
            rec["template"] = template
            path = shared_log_path(template, name, self.slurm.user)
            if path is not None:
                rec["path"] = path
                earlier = self._earlier_extra(job, att, path)
                if fresh or (earlier is None and att is not job.attempts[0]):
                    # its lines so far are earlier attempts' (or cannot be told from theirs)
                    end = log_end(path)
                    if end is not None:
                        rec["offset"], rec["inode"], rec["head"] = end
                        rec["size"] = end[0]
                elif earlier is not None:
                    self._continue_extra(rec, earlier)
            records.append(rec)
        att.extra_logs = records

    @staticmethod
    def _earlier_extra(job, att, path):
        for a in reversed(job.attempts):
            if a is att:
                continue
            for rec in a.extra_logs:
                if rec.get("path") == path:
                    return rec
        return None

    @staticmethod
    def _continue_extra(rec, last):
        for k in ("offset", "inode", "head", "size", "mtime"):
            rec[k] = last.get(k)

    def _read_extra_logs(self, s, job, att, obs, now):
        """Read the attempt's other watched files (extra_logs) and record what they say, as
        for the log: each log_events name fires once per attempt whichever file has it, and
        any file's growth is activity. Simpler than the log's: a file truncated or replaced
        is read from its start, without looking for a rotation's copy. False if one exists
        but could not be read (no evidence of a stall)."""
        if not att.extra_logs:
            self._extra_baseline(s, job, att, lazily=True)
        final = obs.source in ANSWERED and obs.state not in ACTIVE_STATES
        ok = True
        for rec in att.extra_logs:
            if rec["path"] is None:
                if rec["template"] is None:
                    continue
                name = log_template_of(s.plan, job.name, att.job_id, att.array_task)[1]
                rec["path"] = resolve_log_path(rec["template"], att.job_id, att.raw_id, name, self.slurm.user)
                if rec["path"] is None:
                    continue
                earlier = self._earlier_extra(job, att, rec["path"])
                if earlier is not None:  # the same SLURM job run again (requeued): go on where it stopped
                    self._continue_extra(rec, earlier)
            if not final and not extra_log_changed(rec):
                continue  # same size, same file: not opened
            # a file of one job only is not compared by its first bytes (as the log)
            shared = shared_log_path(rec["template"], job.name, self.slurm.user) is not None
            while True:
                read = read_log(rec["path"], rec["offset"], rec["inode"], rec["head"], final,
                                overlap=s.matcher.overlap, check_head=shared)
                if not read.ok:
                    if read.error and rec["error"] != read.error:
                        rec["error"] = read.error
                        self._event(s, job, att, EV_LOG_UNREADABLE, now,
                                    detail="%s: %s" % (rec["path"], read.error))
                    ok = False
                    break
                rec["error"] = None
                if read.restarted and rec["offset"]:
                    self._event(s, job, att, EV_LOG_RESTARTED, now, detail="%s truncated or replaced; reading it "
                                "from its start" % os.path.basename(rec["path"]))
                if (read.size != rec["size"] or read.offset != rec["offset"] or read.restarted
                        or (rec["mtime"] is not None and read.mtime != rec["mtime"])):
                    att.last_log_growth_at = now
                rec["offset"], rec["inode"], rec["head"], rec["size"] = read.offset, read.inode, read.head, read.size
                rec["mtime"] = read.mtime or None
                self._match_lines(s, job, att, read.lines, now)
                if read.eof or not final:
                    break
        return ok

    def _match_lines(self, s, job, att, lines, now):
        captured = att.captured
        new = att.absorb(s.matcher.scan(lines), s.policies)
        if att.captured is not captured:
            s.touch(job)  # a new checkpoint path is a change of the job, written with this cycle
        for hit in new:
            self._event(s, job, att, EV_LOG_PREFIX + hit.event, now, mode=hit.mode, detail=hit.line.strip()[:300])

    # -- recording what was decided ------------------------------------------------------

    def _conclude(self, s, job, att, verdict, now, todo):
        """The attempt reached a mode: record its outcome and apply the policy for it."""
        mode = verdict.mode
        history = [a.ended(a.outcome, a.ended_at or now) for a in counted_attempts(job)[:-1] if a.outcome]
        decision = decide(mode, s.policies, history + [att.ended(mode, now)])
        if mode in PENDING_MODES:
            # said once per attempt, whatever the policy; any action but `ignore` goes on
            # below and cancels the job first, since it may still start: a restart waits
            # until SLURM shows it ended (never two live attempts)
            kind = EV_BLOCKED if mode == MODE_BLOCKED else EV_PENDING_TOO_LONG
            self._event(s, job, att, kind, now, detail="%s; %s" % (verdict.reason, decision.reason))
            if decision.action == IGNORE:
                att.pending_warned = True
                return
        self._finish(s, job, att, now, mode, verdict.reason)
        if s.node_exclusion.scope == SCOPE_SESSION:
            self._exclude_session_wide(s, job, att, now)
        s.add_action(job, att, decision.action, mode, decision.reason, now)
        if decision.action == RESTART:
            job.next_submit_at = now + decision.delay
            job.last_monitor_state = MON_RESTARTING
            self._event(s, job, att, EV_RESTART_SCHEDULED, now, mode=mode, detail=decision.reason)
            if att.live or mode == MODE_LOST:
                # a lost job may yet exist where SLURM could not show it: scancel is harmless
                # when it is gone, and it never runs beside its restart
                self._request_cancel(s, job, att, now, todo, "%s: cancelled before the restart" % mode)
        elif decision.action == FINALIZE:
            job.status, job.reason = FINALIZED, verdict.reason
            job.last_monitor_state = FINALIZED
            self._event(s, job, att, EV_FINALIZED, now, mode=mode, detail=decision.reason)
            self._followups(s, job, now)
        else:
            self._stop(s, job, att, now, mode, "%s (%s)" % (decision.reason, verdict.reason), decision.reason)
            if att.live and mode != MODE_SUCCESS:
                self._request_cancel(s, job, att, now, todo, "%s: the job is stopped" % mode)

    def _finish(self, s, job, att, now, outcome, reason):
        att.outcome, att.reason = outcome, reason
        if not att.live and att.ended_at is None:
            att.ended_at = now
        att.last_monitor_state = outcome
        self._event(s, job, att, EV_OUTCOME, now, mode=outcome, detail=reason)

    def _stop(self, s, job, att, now, mode, reason, detail):
        """The job stops: it keeps its record and is never restarted."""
        job.status, job.reason = STOPPED, reason
        job.last_monitor_state = STOPPED
        self._event(s, job, att, EV_STOPPED, now, mode=mode, detail=detail)
        self._followups(s, job, now)

    # -- follow-ups (SPEC 5.7) ----------------------------------------------------------

    def _followups(self, s, job, now):
        """Add the follow-ups job's new status starts (section 7's followups_due). Each
        script is written into the plan folder first; its Job is added to the session now,
        so the state write that records the parent's decision records the child too: a
        crash never keeps one without the other. The child is then submitted like any
        job with no attempt (looked up by its tag first, intent, sbatch)."""
        specs = s.plan.followups_of.get(job.name) if s.plan is not None else None
        if not specs:
            return
        due = followups_due(job, specs, s.job)
        if not due:
            return
        values = self._values(s, job)
        att = job.current
        added = []
        for spec in due:
            child = Job(name=spec.name, index=spec.index, parent=job.name)
            try:
                self._write_followup(s, spec, values)
            except (ConfigError, StateError) as e:
                child.status, child.reason = STOPPED, "not submitted: %s" % e
                child.last_monitor_state = STOPPED
                (self._event(s, job, att, EV_FOLLOWUP_FAILED, now, detail="%s: %s" % (spec.name, e)) if att
                 else self.report.warn("%s: follow-up %s not submitted: %s" % (job.name, spec.name, e)))
            else:
                detail = "%s (when %s)" % (spec.name, job.status)
                (self._event(s, job, att, EV_FOLLOWUP_ADDED, now, detail=detail) if att
                 else self.report.info("%s: follow-up %s" % (job.name, detail)))
            added.append(child)
        s.add_jobs(added)
        crash_point("after_followup_script")

    def _write_followup(self, s, spec, values):
        """Render a follow-up's script with its parent's values (and captured values) and
        write it where the plan's scripts are."""
        script = render_followup(followup_entry(s.config, spec.path), followup_key(spec.path),
                                 followup_values(values, spec.name, spec.parent), spec.index, spec.log_template,
                                 spec.tag, s.plan.workdir, "session %s" % s.session_id)
        if not self.dry_run:
            atomic_write(spec.script_path, script.encode("utf-8"), mode=0o700)

    @staticmethod
    def _values(s, job):
        """The placeholder values job's follow-ups start from: its root's sweep values, then
        each follow-up's {name} and {parent} down to job, then the values captured by the
        chain's logs (the nearest job's winning) where no such value has the name."""
        chain = [job]
        while chain[-1].parent and len(chain) <= MAX_FOLLOWUP_DEPTH and s.job(chain[-1].parent) is not None:
            chain.append(s.job(chain[-1].parent))
        root = chain[-1]
        pj = s.plan.by_name[root.name]
        values = job_values(pj.params, s.plan.project, pj.index, s.plan.plan_id, root.name)
        for j in reversed(chain[:-1]):
            values = followup_values(values, j.name, j.parent)
        captured = OrderedDict()
        for j in reversed(chain):
            captured.update(job_captured(j))
        for k, v in captured.items():
            values.setdefault(k, v)
        return values

    def _request_cancel(self, s, job, att, now, todo, why):
        att.cancel_requested_at = now
        self._event(s, job, att, EV_CANCEL_REQUESTED, now, detail=why)
        todo.add_cancel(job, att)

    def _adopt(self, s, job, row, origin, now, att=None, how=""):
        """Take a SLURM job found by tag (or resubmitted by hand: how says so) as this job's
        attempt (a new one unless att is given)."""
        if att is None:
            # not ours to date: it can be as old as the attempt before it (or the plan), and
            # sacct's -S window starts from here
            att = job.new_attempt(intent_at=self._since(s, job))
        att.take(row, origin, now)
        job.next_submit_at, job.submit_failures, job.submit_refusals = None, 0, 0
        self._log_baseline(s, job, att)
        self._event(s, job, att, EV_ADOPTED, now, detail="SLURM job %s (%s, %s)" % (
            row.job_id, row.state, how or "found by its tag"))
        return att

    def _new_intent(self, s, job, now, todo, array):
        # the nodes its earlier attempts (or, scope session, any job's) are blamed for
        ex = node_exclusions(job.attempts, s.excluded_nodes, s.node_exclusion, now)
        options = self._options(s, job, ex.nodes)
        att = job.new_attempt(origin=ORIGIN_SUBMITTED, submit_state=INTENT, intent_at=now, sbatch_options=options,
                              array_task=job.index if array and s.plan.array is not None else None)
        self._log_baseline(s, job, att)
        job.next_submit_at = None
        job.last_monitor_state = MON_SUBMITTING
        self._event(s, job, att, EV_INTENT, now, detail="submission %d decided" % att.attempt)
        if ex.nodes:
            att.excluded_nodes, att.exclusion_note = list(ex.nodes), "; ".join(ex.notes)
            self._event(s, job, att, EV_NODES_EXCLUDED, now, detail="--exclude=%s: %s" % (
                ",".join(ex.nodes), att.exclusion_note))
        if ex.capped:
            self._event(s, job, att, EV_EXCLUSION_CAPPED, now, detail=ex.capped)
        if ex.used:
            s.excluded_nodes = [OrderedDict(e, uses=e.get("uses", 0) + 1) if i in ex.used else e
                                for i, e in enumerate(s.excluded_nodes)]
        todo.submit.append(job)
        return att

    def _options(self, s, job, exclude):
        options = attempt_sbatch_options(job, s.policies, exclude)
        if any(o.startswith("--exclude=") for o in options):
            # the command line's --exclude replaces the script's: merge what it excludes
            options = attempt_sbatch_options(job, s.policies, exclude, self._script_exclude(s, job))
        return options

    def _drop_exclusion(self, s, job, att, now, message):
        """sbatch refused the submission because no node is left that can run it once
        autoexp's exclusions are added (SLURM knows the partition, autoexp does not): the
        same intent is submitted again without them at the next cycle, never stopped for
        it. (Nothing was queued: the refusal is permanent.)"""
        nodes = ",".join(att.excluded_nodes)
        att.sbatch_options = self._options(s, job, ())
        att.excluded_nodes, att.submit_error = (), message
        att.exclusion_note = "not excluded: %s would leave no node that can run it" % nodes
        job.next_submit_at = now
        self._event(s, job, att, EV_EXCLUSION_CAPPED, now, detail="excluding %s leaves no node that can run it "
                    "(%s); submitting again without autoexp's exclusions" % (nodes, message))

    def running_copies(self, s, jobs):
        """What `retry` must never run beside: per job, the SLURM jobs this squeue shows
        queued or running under its tag, or resubmitted by hand as its next attempt (section
        8), [(name, [ids])]. A squeue that does not answer refuses the retry: UNKNOWN is no
        "nothing runs"."""
        try:
            snap = Snapshot(self.slurm.squeue())
        except SlurmUnavailable as e:
            raise SlurmUnavailable("cannot tell whether it runs already (%s); nothing was submitted, try "
                                   "again" % e)
        out = []
        for job in jobs:
            sight = self._sight(s, job, snap, Lookup())
            ids = [r.job_id for r in sight.running] + [r.job_id for r in sight.by_hand
                                                        if r.state in ACTIVE_STATES and r not in sight.running]
            if ids:
                out.append((job.name, ids))
        return out

    def retry(self, s, job, now, todo, reset):
        """`autoexp retry`: a stopped or cancelled job (retry_refusal said none) is active
        again with a new attempt, submitted like every other (intent first); with reset,
        its policies count attempts from this one."""
        if job.parent and s.job(job.parent) is not None:
            # rendered again (first: a value still missing changes nothing): a value its
            # parent's log had not captured when it was decided may be there now
            self._write_followup(s, s.plan.by_name[job.name], self._values(s, s.job(job.parent)))
        last = job.current
        array = last.array_task is not None if last is not None else job.array
        job.status, job.reason = ACTIVE, None
        job.next_submit_at, job.submit_failures, job.submit_refusals = None, 0, 0
        if reset:
            job.attempts_base = len(job.attempts)
        s.touch(job)
        self.due.get(s.session_id, {}).pop(job.name, None)
        att = self._new_intent(s, job, now, todo, array=array)
        counted = len(counted_attempts(job))
        self._event(s, job, att, EV_RETRIED, now, detail="autoexp retry%s: attempt %d (%s)" % (
            " --reset-attempts" if reset else "", att.attempt,
            "max_attempts counted from this one" if reset else
            "max_attempts counted from attempt %d: %d attempt(s) so far" % (job.attempts_base + 1, counted)))

    @staticmethod
    def _script_exclude(s, job):
        script = s.plan.array.script_path if job.array and s.plan.array else s.plan.by_name[job.name].script_path
        try:
            with open(script) as f:
                # (sbatch's long options starting 'exclu': exclude and exclusive)
                return script_directive(f.read(MAX_CONFIG_BYTES), "exclude", "x", "exclud")
        except (IOError, OSError, UnicodeDecodeError):
            return None  # sbatch cannot read it either: its error is what the user sees

    def _want(self, s, job, now, todo, array, restart):
        """A new submission: decided at once without max_running, and for the first
        submission of an array's tasks (one sbatch, throttled by SLURM with %N); else once
        every job in focus was stepped, if a slot is free (_grant)."""
        if s.monitoring.max_running is None or (array and not restart):
            self._new_intent(s, job, now, todo, array=array)
        else:
            todo.want.append((Want(job.index, restart, job.name), job, array))

    def _grant(self, s, live, now, todo):
        """max_running: intents for as many of the waiting submissions as there are free
        slots, live being counted from this cycle's squeue and the intents in doubt
        (section 7). Returns the jobs that wait."""
        limit = s.monitoring.max_running
        wants = dict((w.name, (job, array)) for w, job, array in todo.want)
        granted, waiting = grant_slots([w for w, _, _ in todo.want], live, limit)
        for w in granted:
            job, array = wants[w.name]
            self._new_intent(s, job, now, todo, array=array)
        for w in waiting:
            self._waiting(s, wants[w.name][0])
        return [wants[w.name][0] for w in waiting]

    def _waiting(self, s, job):
        if job.last_monitor_state != MON_WAITING:
            job.last_monitor_state = MON_WAITING
            self.report.detail("%s: waits for a slot (max_running %d)" % (job.name, s.monitoring.max_running))

    @staticmethod
    def _live(s, snap):
        """The session's live count (section 7's live_count) from this cycle's squeue."""
        prefix = "autoexp:%s:" % s.session_id
        rows = [(name, row.state) for name, row in Controller._session_rows(s, snap)]
        for job in s.jobs:  # a job resubmitted by hand without the tag, adopted: live all the same
            att = job.current
            row = snap.by_id.get(att.job_id) if att is not None and att.live and att.job_id else None
            if row is not None and not row.comment.startswith(prefix):
                rows.append((job.name, row.state))
        return live_count(rows, [j.name for j in s.jobs if any(a.in_doubt for a in j.attempts)])

    def _exclude_session_wide(self, s, job, att, now):
        """Scope session: the nodes att is blamed for are kept off every job's next attempts."""
        entries, added, capped = record_exclusions(s.excluded_nodes, job.name, att, s.node_exclusion, now)
        if entries != list(s.excluded_nodes):
            s.excluded_nodes = entries
        if added:
            self._event(s, job, att, EV_NODES_EXCLUDED, now, detail="session-wide: %s" % "; ".join(
                "%s (%s)" % (e["node"], e["why"]) for e in entries if e["node"] in added))
        if capped:
            self._event(s, job, att, EV_EXCLUSION_CAPPED, now, detail=capped)

    @staticmethod
    def _session_rows(s, snap):
        """(job name, row) of each squeue row with one of the session's tags; the name of an
        array task is its index's job's, None for an index the session has no job of."""
        prefix = "autoexp:%s:" % s.session_id
        array_tag = s.plan.array.tag if s.plan is not None and s.plan.array is not None else None
        by_index = None
        for row in snap.tagged:
            tag = row.comment
            if not tag.startswith(prefix):
                continue
            if tag == array_tag:
                if by_index is None:
                    by_index = dict((j.index, j.name) for j in s.jobs)
                yield by_index.get(split_job_id(row.job_id)[1]), row
            else:
                yield tag[len(prefix):], row

    def _cancel_copy(self, s, job, row, now, todo):
        """A live SLURM job under the tag of a job the user cancelled: recorded as an
        attempt of its own, and cancelled like the others."""
        att = job.new_attempt(intent_at=self._since(s, job))
        att.take(row, ORIGIN_EXTERNAL, now)
        self._finish(s, job, att, now, MODE_CANCELLED, "SLURM job %s carries the tag of a job cancelled with "
                     "autoexp" % row.job_id)
        self._request_cancel(s, job, att, now, todo, "the job was cancelled with autoexp")

    def cancel_jobs(self, s, names, now, todo):
        """Mark jobs cancelled by the user and queue scancel for their live attempts."""
        for job in s.jobs:
            if names and job.name not in names:
                continue
            if job.status != ACTIVE:
                continue
            s.touch(job)
            self.due.get(s.session_id, {}).pop(job.name, None)  # looked at next cycle, whatever it was
            att = job.current
            job.status, job.reason = CANCELLED, "cancelled by the user"
            job.last_monitor_state = CANCELLED
            self._followups(s, job, now)
            if att is None:
                continue
            self._event(s, job, att, EV_USER_CANCEL, now, detail="autoexp cancel")
            if att.outcome is None:
                self._finish(s, job, att, now, MODE_CANCELLED, "cancelled by the user (autoexp cancel)")
            s.add_action(job, att, ACTION_CANCEL, MODE_CANCELLED, "cancelled by the user", now)
            if att.live and att.job_id:
                self._request_cancel(s, job, att, now, todo, "cancelled by the user")

    # -- acting (only after the intent is on disk) -------------------------------------

    def commit(self, s, now, todo, changed=True):
        """Persist the cycle's decisions (the intents), then carry out what they announce:
        queued cancel requests done, scancel, sbatch. A dry run only says what it would do.
        (The store writes only what changed; `changed` is kept for the callers that force
        nothing more than that.)"""
        if self.dry_run:
            for job, att in todo.cancel:
                self.report.result("would run: scancel %s   # %s" % (att.job_id, job.name))
            for group in submit_groups(todo.submit):
                self.report.result("would submit: %s" % describe_submit(s.plan, group, s.monitoring.max_running))
            return
        intents = bool(todo.submit or todo.cancel)
        if intents:
            crash_point("before_intent_write")
        self.store.save(s, now)
        if intents:
            crash_point("after_intent_write")
        self.store.save_and_sync(s, now, changed=False)
        self.store.remove_requests(todo.requests_done)  # the cancels they asked for are on disk now
        if todo.cancel:
            self._each_saved(s, todo.cancel, lambda item: self._cancel(s, *item))
        if todo.submit:
            self.submit_now(s, todo.submit)

    def _each_saved(self, s, items, act, stoppable=False):
        """act on each item; results are saved every SAVE_EVERY seconds and at the end, not
        after each (a sweep of thousands would rewrite the state thousands of times): a
        crash in between loses results the next cycle finds again (by tag, or by sending a
        cancel again, which is harmless)."""
        saved = self.clock()
        for item in items:
            if stoppable and self.stop.requested:
                break  # the rest keep their intents: the next run looks them up, then submits
            act(item)
            if self.clock() - saved >= SAVE_EVERY:
                saved = self.clock()
                self.store.save_and_sync(s, saved)
        self.store.save_and_sync(s, self.clock())

    def _cancel(self, s, job, att):
        self.store.check_lock(s)
        crash_point("before_scancel")
        ok, message = self.slurm.scancel(att.job_id)
        crash_point("after_scancel")
        now = self.clock()
        att.cancel_result = OrderedDict([("time", iso_time(now)), ("ok", ok), ("message", message)])
        self._event(s, job, att, EV_SCANCEL if ok else EV_SCANCEL_FAILED, now,
                    detail="scancel %s%s" % (att.job_id, ": " + message if message else ""))

    def submit_now(self, s, jobs):
        """sbatch every job whose intent is on disk: one call per single job, one for all the
        array tasks."""
        self._each_saved(s, submit_groups(jobs), lambda group: self._sbatch(s, group), stoppable=True)

    def _sbatch(self, s, jobs):
        first = jobs[0].current
        script, args = sbatch_command(s.plan, [(j.name, j.current.array_task) for j in jobs], first.sbatch_options,
                                      s.monitoring.max_running)
        self.store.check_lock(s)
        crash_point("before_sbatch")
        res = self.slurm.sbatch(script, args, job_environment(s, first))
        crash_point("after_sbatch")
        now = self.clock()
        for job in jobs:
            att = job.current
            if res.outcome == SB_OK:
                att.job_id = res.job_id if att.array_task is None else "%s_%d" % (res.job_id, att.array_task)
                att.submit_state, att.submitted_at, att.live, att.submit_error = SUBMITTED, now, True, None
                job.submit_failures, job.submit_refusals, job.next_submit_at = 0, 0, None
                job.last_monitor_state = MON_SUBMITTED
                self._event(s, job, att, EV_SUBMITTED, now, detail="SLURM job %s" % att.job_id)
                continue
            if res.outcome == SB_PERMANENT and att.excluded_nodes and NO_NODES_RE.search(res.message or ""):
                self._drop_exclusion(s, job, att, now, res.message)
                continue
            verdict = after_sbatch_failure(res, job.submit_failures, job.submit_refusals, s.monitoring)
            job.submit_failures, job.submit_refusals = verdict.failures, verdict.refusals
            att.submit_error = res.message
            if verdict.action == STOP:
                # an uncertain failure keeps its intent: if one of the tries did queue the
                # job, a later cycle finds it by tag and follows it
                if res.outcome == SB_PERMANENT:
                    att.submit_state = SUBMIT_FAILED_STATE
                self._finish(s, job, att, now, OUTCOME_SUBMIT_FAILED, verdict.reason)
                s.add_action(job, att, STOP, OUTCOME_SUBMIT_FAILED, verdict.reason, now)
                self._stop(s, job, att, now, OUTCOME_SUBMIT_FAILED, verdict.reason, verdict.detail)
            else:
                job.next_submit_at = now + verdict.delay
                self._event(s, job, att, EV_SUBMIT_ERROR, now, detail=verdict.detail)

    def register(self, s, plan_jobs, array):
        """Add plan jobs to a session. They have no attempt yet: the next cycle looks for
        each in SLURM by its tag (a state file moved aside, a second `submit`) and submits
        only what SLURM does not have."""
        s.add_jobs([Job(name=pj.name, index=pj.index, array=bool(array and s.plan.array is not None))
                    for pj in plan_jobs])

    def preview(self, s, jobs, now, live=0):
        """The sbatch lines a first submission of these jobs would run now (dry run): under
        max_running, as many as the live count (from the state: no SLURM is asked) leaves."""
        todo = Todo()
        for job in jobs:
            self._want(s, job, now, todo, job.array, restart=False)
        waiting = self._grant(s, live, now, todo) if todo.want else []
        self.commit(s, now, todo, False)
        if waiting:
            self.report.result("would wait for a slot (max_running %d, %d live): %s" % (
                s.monitoring.max_running, live, ", ".join(j.name for j in waiting)))

    # -- effects of `on` rules (SPEC 5.8) --------------------------------------------------

    def pump_effects(self, s, now):
        """Look at every open effect's files (never waiting for one): record the tries that
        ended, note the ones running, start those due, at most monitoring.action_workers at
        once. Called only when the state holding the effects' intents is on disk; effects
        that what it records sets off (a notify on action_failed) start at the next look."""
        self.workers = [w for w in self.workers if w.poll() is None]
        if self.dry_run:
            return
        work = [(job, eff) for job in s.jobs if job.effects for eff in job.open_effects()]
        if not work:
            return
        folder = self.store.effects_dir(s)
        running, due, changed = 0, [], False
        for job, eff in work:
            base = os.path.join(folder, "%s.%d" % (eff["id"], eff["try"]))
            move = effect_move(eff, look_at_effect(base), now)
            if move == MOVE_RECORD:
                self._effect_result(s, job, eff, base, now)
                changed = True
            elif move == MOVE_RUNNING:
                running += 1
                if eff["state"] != EFF_RUNNING:  # started by a process that died before saying so
                    self._effect_running(s, job, eff, now)
                    changed = True
            elif move == MOVE_INTERRUPTED:
                self._effect_ended(s, job, eff, TRY_INTERRUPTED, now,
                                   "try %d was interrupted: its worker ended without a result" % eff["try"])
                changed = True
            elif move == MOVE_GIVE_UP:
                self._effect_ended(s, job, eff, TRY_FAILED, now,
                                   "its worker did not start %d times%s" % (
                                       eff["spawns"], ": " + eff["error"] if eff["error"] else ""))
                changed = True
            elif move == MOVE_START:
                due.append((job, eff))
        for job, eff in due:
            if running >= s.monitoring.action_workers:
                break  # the rest start at a later look
            if self._effect_start(s, job, eff, folder, now):
                running += 1
            changed = True
        if changed:
            self.store.save_and_sync(s, self.clock())

    def _effect_event(self, s, job, eff, kind, now, detail):
        event = eff["event"]
        n = event.get("attempt") or 0
        att = job.attempts[n - 1] if 0 < n <= len(job.attempts) else job.current
        if att is None:
            att = Attempt(attempt=0)
        self._event(s, job, att, kind, now, detail="%s: %s" % (effect_label(eff), detail))

    def _effect_running(self, s, job, eff, now):
        eff["state"] = EFF_RUNNING
        eff["started_at"] = eff["started_at"] or iso_time(now)
        s.touch(job)
        if eff["kind"] == EFFECT_RUN:
            self._effect_event(s, job, eff, EV_ACTION_STARTED, now, "try %d started" % eff["try"])

    def _effect_ended(self, s, job, eff, outcome, now, detail, result=None):
        """Apply the retry decision (section 7) to a try that ended, and report it."""
        rule = self._effect_rule(s, eff)
        result = result or {}
        eff["tries"] = list(eff["tries"] or ()) + [OrderedDict([
            ("try", eff["try"]), ("outcome", outcome), ("exit", result.get("exit")),
            ("timed_out", bool(result.get("timed_out"))), ("ended_at", iso_time(now))])]
        verdict = effect_verdict(eff["kind"], eff["try"], outcome, rule or ON_DEFAULTS, now)
        eff["state"], eff["try"] = verdict.state, verdict.next_try
        eff["next_at"] = iso_time(verdict.next_at) if verdict.next_at is not None else None
        if verdict.state == EFF_WAITING:
            eff["spawns"] = 0
            detail += "; try %d %s" % (verdict.next_try, "now" if verdict.next_at <= now else
                                       "in %s" % duration_text(verdict.next_at - now))
        else:
            eff["ended_at"] = iso_time(now)
        s.touch(job)
        self._effect_event(s, job, eff, verdict.event, now, detail)

    def _effect_result(self, s, job, eff, base, now):
        try:
            with open(base + EFFECT_RESULT, "rb") as f:
                result = loads_json(f.read(MAX_CONFIG_BYTES).decode("utf-8", "replace"))
            if not isinstance(result, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            result = {"exit": None, "error": "its result file is unreadable: %s" % e}
        eff["exit"] = result.get("exit") if isinstance(result.get("exit"), int) else None
        eff["timed_out"] = result.get("timed_out") is True
        eff["tail"] = str(result.get("tail") or "")[-EFFECT_TAIL_BYTES:] or None
        eff["error"] = str(result["error"])[:MAX_REASON_CHARS] if result.get("error") else None
        outcome = try_outcome(eff["kind"], {"exit": eff["exit"], "timed_out": eff["timed_out"]})
        if eff["timed_out"]:
            detail = "try %d timed out" % eff["try"]
        elif eff["exit"] is None:
            detail = "try %d ended by signal %s" % (eff["try"], result.get("signal") or eff["error"] or "?")
        else:
            detail = "try %d exited %d" % (eff["try"], eff["exit"])
        last = [ln for ln in (eff["tail"] or "").splitlines() if ln.strip()]
        if outcome != TRY_OK and (eff["error"] or last):
            detail += " (%s)" % (eff["error"] or last[-1].strip()[:MAX_REASON_CHARS])
        self._effect_ended(s, job, eff, outcome, now, detail, {"exit": eff["exit"], "timed_out": eff["timed_out"]})
        crash_point("effect_after_result")  # read and recorded, not yet saved: the next look reads it again

    @staticmethod
    def _effect_rule(s, eff):
        if eff["rule"] == NOTIFY_RULE:
            if s.notify is None or eff["target"] not in s.notify["targets"]:
                return None
            # one delivery is bounded by notify.timeout_seconds; the worker also starts Python
            rule = OrderedDict(ON_DEFAULTS)
            rule.update(notify=eff["target"], timeout_seconds=2 * s.notify["timeout_seconds"] + NOTIFY_START_SECONDS,
                        retries=s.notify.get("retries", 5), backoff_seconds=s.notify.get("backoff_seconds", 30))
            return rule
        rules = s.on_rules
        return rules[eff["rule"]] if isinstance(eff["rule"], int) and 0 <= eff["rule"] < len(rules) else None

    def _effect_spec(self, s, job, eff, rule):
        """What the worker runs: argv, folder, environment, timeout and stdin. Raises
        ConfigError when the command names a value not captured (yet)."""
        event = eff["event"]
        captured = job_captured(job)
        planned = s.plan.by_name.get(job.name) if s.plan is not None else None
        params = planned.params if planned is not None else OrderedDict()
        if planned is not None:
            values = self._values(s, job)  # a follow-up's as its script has them, with {parent}
        else:
            values = job_values(params, s.project, job.index, s.session_id, job.name)
            values.update((k, v) for k, v in captured.items() if k not in values)
        values.setdefault("parent", job.parent or "")
        env = OrderedDict([("AUTOEXP_SESSION", s.session_id), ("AUTOEXP_JOB", job.name),
                           ("AUTOEXP_EVENT", event["event"]), ("AUTOEXP_SEQ", str(event["seq"])),
                           ("AUTOEXP_ATTEMPT", str(event.get("attempt") or "")),
                           ("AUTOEXP_JOB_ID", event.get("job_id") or ""), ("AUTOEXP_MODE", event.get("mode") or ""),
                           ("AUTOEXP_REASON", event.get("detail") or ""), ("AUTOEXP_EFFECT", eff["id"]),
                           ("AUTOEXP_TRY", str(eff["try"]))])
        env.update(("AUTOEXP_CAPTURED_" + k, v) for k, v in captured.items())
        env = OrderedDict((k, str(v).replace("\x00", "")) for k, v in env.items())
        if eff["kind"] == EFFECT_RUN:
            where = "%s: on[%d].run" % (s.session_id, eff["rule"])
            check_used_values([rule["run"]], values, where)
            command = render_template(rule["run"], effect_values(values, event, s.session_id), where,
                                      quote=shlex.quote)
            eff["command"] = command[:MAX_VALUE_CHARS]
            argv = ["bash", "-c", command]
            stdin = OrderedDict(event)
            stdin["captured"], stdin["params"] = captured, OrderedDict((k, format_value(v)) for k, v in params.items())
        else:
            argv = [sys.executable or "python3", "-c", EFFECT_BOOT, module_home(), "_notify",
                    "--state-dir", os.path.abspath(self.store.root), "--session", s.session_id,
                    "--target", eff["target"]]
            stdin = list(eff["events"] or [event])
        workdir = getattr(s.plan, "workdir", None) or self.store.root
        return OrderedDict([("argv", argv), ("cwd", workdir), ("env", env), ("timeout", rule["timeout_seconds"]),
                            ("stdin", json.dumps(stdin, sort_keys=True))])

    def _effect_start(self, s, job, eff, folder, now):
        """Start the effect's current try in a worker of its own: the lock is taken here
        and handed to the worker (an flock belongs to the open file, which the worker
        inherits), so it is held from before the spawn until the worker and its command
        are gone, with no moment in between. True if a worker now runs it."""
        rule = self._effect_rule(s, eff)
        try:
            if rule is None:
                raise ConfigError("its `on` rule %s (or notify target %s) is no longer in the session's config"
                                  % (eff["rule"], eff["target"]))
            spec = self._effect_spec(s, job, eff, rule)
        except ConfigError as e:
            eff["error"] = str(e)[:MAX_REASON_CHARS * 2]
            self._effect_ended(s, job, eff, TRY_FAILED, now, str(e))
            return False
        make_private_dir(folder)
        base = os.path.join(folder, "%s.%d" % (eff["id"], eff["try"]))
        fd = os.open(base + EFFECT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True  # a worker took it since the look: it runs
            if os.path.exists(base + EFFECT_STARTED) or os.path.exists(base + EFFECT_RESULT):
                return False  # it ran after all: the next look says how
            atomic_write(base + EFFECT_SPEC, dump_json(spec))
            crash_point("effect_before_spawn")
            import subprocess
            out = os.open(base + EFFECT_OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                self.workers.append(subprocess.Popen(
                    [sys.executable or "python3", "-c", EFFECT_BOOT, module_home(), "_effect", base, str(fd)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(fd,), close_fds=True,
                    start_new_session=True, cwd=folder))
            except OSError as e:
                eff["spawns"] += 1
                eff["error"] = "cannot start a worker: %s" % (e.strerror or e)
                s.touch(job)
                self.report.warn("%s %s: %s" % (job.name, effect_label(eff), eff["error"]))
                return False
            finally:
                os.close(out)
        finally:
            os.close(fd)  # the worker holds its own copy of the lock
        crash_point("effect_after_spawn")
        eff["spawns"] += 1
        self._effect_running(s, job, eff, now)
        return True

    def _event(self, s, job, att, kind, now, mode=None, detail=None):
        rec = s.add_event(job, att, kind, now, mode, detail)
        self.changes += 1
        if self.json_changes is not None:
            self.json_changes.append(_times_to_json(rec))
        else:
            line = event_line(rec, "%s/%s" % (s.session_id, job.name) if self.name_sessions else job.name)
            (self.report.detail if kind == EV_STATE else self.report.info)(line)


def submit_groups(jobs):
    """One sbatch per single job, and one for the array tasks of each attempt number and
    set of options (the job learns its attempt number from sbatch's environment)."""
    singles = [[j] for j in jobs if j.current.array_task is None]
    groups = OrderedDict()
    for j in sorted((j for j in jobs if j.current.array_task is not None), key=lambda j: j.index):
        groups.setdefault((j.current.attempt, tuple(j.current.sbatch_options)), []).append(j)
    return singles + [groups[k] for k in sorted(groups)]


def job_environment(s, att):
    """What a job learns of its place in the sweep, beside the AUTOEXP_PLAN and AUTOEXP_JOB
    its script exports: through sbatch's environment, since the script is the same for
    every attempt."""
    return {"AUTOEXP_SESSION": s.session_id, "AUTOEXP_ATTEMPT": str(att.attempt)}


def run_effect_try(base, lock_fd):
    """The worker of one try of an effect (`autoexp _effect BASE FD`, started detached by
    the engine with the try's lock as FD): say it started, run the command with its timeout
    (its process group killed at the end of it), then write how it ended. The command
    inherits the lock too, so the lock is free only once neither is alive."""
    import subprocess
    with open(base + EFFECT_SPEC, "rb") as f:
        spec = loads_json(f.read().decode("utf-8"))
    atomic_write(base + EFFECT_STARTED, dump_json(OrderedDict([("pid", os.getpid()),
                                                               ("time", iso_time(time.time()))])))
    env = dict(os.environ)
    env.pop("AUTOEXP_CRASH_AT", None)  # the test hook is the engine's, never the command's
    env.update(spec["env"])
    import tempfile
    code, timed_out, error, started = None, False, None, time.monotonic()
    out = os.open(base + EFFECT_OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    # stdin from a file, not a pipe: writing more than a pipe holds to a command that never
    # reads it would block here, and its timeout would never come
    stdin = tempfile.TemporaryFile()
    try:
        stdin.write(spec["stdin"].encode("utf-8"))
        stdin.seek(0)
        proc = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=env, stdin=stdin, stdout=out, stderr=out,
                                pass_fds=(lock_fd,), start_new_session=True)
    except OSError as e:
        code, error = 127, "cannot start %s: %s" % (spec["argv"][0], e.strerror or e)
    else:
        try:
            code = proc.wait(timeout=spec["timeout"])
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGTERM, EFFECT_KILL_GRACE), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except OSError:
                    pass
                try:
                    code = proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    finally:
        os.close(out)
        stdin.close()
    with open(base + EFFECT_OUT, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - EFFECT_TAIL_BYTES))
        tail = f.read(EFFECT_TAIL_BYTES).decode("utf-8", "replace")
    result = OrderedDict([("exit", code if code is None or code >= 0 else None),
                          ("signal", -code if code is not None and code < 0 else None), ("timed_out", timed_out),
                          ("seconds", round(time.monotonic() - started, 3)), ("tail", tail), ("error", error)])
    atomic_write(base + EFFECT_RESULT, dump_json(result))
    return EXIT_OK


def describe_submit(plan, jobs, max_running=None):
    script, args = sbatch_command(plan, [(j.name, j.current.array_task) for j in jobs],
                                  jobs[0].current.sbatch_options, max_running)
    line = " ".join(shlex.quote(a) for a in ["sbatch", "--parsable"] + args + [script])
    n = jobs[0].current.attempt
    return line + ("   # attempt %d (AUTOEXP_ATTEMPT=%d)" % (n, n) if n > 1 else "")


# ============================================================================
# 10. CLI
# ============================================================================

class Runtime(object):
    """What the commands act through: the reporter, the clock, sleep and SLURM. main()
    builds the real ones; tests inject theirs (main(argv, slurm=..., clock=..., sleep=...))."""

    __slots__ = ("report", "clock", "mono", "sleep", "slurm", "stop", "hint")

    def __init__(self, report, clock=None, sleep=None, slurm=None, mono=None):
        self.report = report
        self.mono = mono or (clock if clock else time.monotonic)
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.slurm = slurm
        self.stop = StopFlag()
        self.hint = None  # the resume command, once there is a session to resume

    def slurm_for(self, sessions=()):
        """The SLURM client, its timeout the longest of the sessions'."""
        if self.slurm is not None:
            return self.slurm
        timeouts = [s.monitoring.slurm_timeout_seconds for s in sessions]
        default = dict((k.name, k.default) for k in MONITORING_SCHEMA)["slurm_timeout_seconds"]
        return SlurmClient(timeout=max(timeouts) if timeouts else float(default))

    def controller(self, store, sessions=(), report=None, dry_run=False):
        return Controller(store, self.slurm_for(sessions), report or self.report, clock=self.clock,
                          sleep=self.sleep, dry_run=dry_run, stop=self.stop, mono=self.mono)


def store_for(args, ref=None, config=None):
    """--state-dir, else $AUTOEXP_STATE_DIR, else the folder of a session file given by path,
    else the config's state_dir, else ./autoexp-state."""
    if ref and is_path(ref):
        if not ref.endswith(".json"):
            raise StateError("%r is neither a session id nor a session file (<id>.json)" % ref)
        return StateStore(os.path.dirname(os.path.abspath(ref)))
    explicit = getattr(args, "state_dir", None) or os.environ.get("AUTOEXP_STATE_DIR") or None
    if explicit:
        return StateStore(explicit)
    if config and config.get("state_dir"):
        return StateStore(config["state_dir"])
    return StateStore("autoexp-state")


def open_plan(args, ref):
    """A plan given by id (in the state folder) or by the path of its manifest."""
    if is_path(ref):
        plan = load_manifest(ref)
        return StateStore(plan.state_dir), plan  # its session lives beside its plan, always
    store = store_for(args)
    check_safe_name(ref, "plan id")
    path = store.plan_manifest(ref)
    if not os.path.isfile(path):
        raise StateError("no plan %r in %s; `autoexp plan CONFIG` prints the plan id, or pass "
                         "--state-dir or the manifest's path" % (ref, store.root))
    return store, load_manifest(path)


def _flatten(lists):
    return [x for group in (lists or ()) for x in group]


class SessionSet(object):
    """Sessions opened for writing: each one locked, its journal caught up; released at exit.
    Sweeping a whole state folder, a locked session is skipped, and so is a broken one (with
    its error said), so that one bad file does not stop the work on all the others."""

    __slots__ = ("store", "report", "sessions", "locks", "skipped", "broken")

    def __init__(self, store, report):
        self.store, self.report = store, report
        self.sessions, self.locks, self.skipped, self.broken = [], [], [], []

    def candidates(self, wanted):
        """The session files of the folder for which wanted(session) is true; broken ones said."""
        for path in self.store.list_sessions():
            try:
                s = self.store.load(path, with_plan=False)
            except StateError as e:
                self.broken.append(path)
                self.report.error(str(e))
                continue
            if wanted(s):
                yield path

    def open(self, path, command, now, lock=True, quiet_skip=False):
        """quiet_skip (a sweep): a locked session is skipped, a broken one said and skipped."""
        try:
            s = self.store.load(path)
        except StateError as e:
            if not quiet_skip:
                raise
            self.broken.append(path)
            self.report.error(str(e))
            return None
        if lock:
            try:
                s, held = self.store.open_for_write(path, command, now)
            except LockedError as e:
                if not quiet_skip:
                    raise
                self.skipped.append((s.session_id, str(e)))
                return None
            self.locks.append(held)
        self.sessions.append(s)
        return s

    def adopt(self, s, lock):
        """A session opened and locked elsewhere (run's submission), kept to the end."""
        self.sessions.append(s)
        self.locks.append(lock)

    def close(self):
        for lock in self.locks:
            lock.release()
        self.locks = []


def install_stop_handlers(stop):
    """SIGINT/SIGTERM finish the current step (a cycle, an sbatch) and save; a second one
    stops at once (everything written is consistent: section 6.2 of SPEC)."""
    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def resume_hint(sessions, store, all_sessions=False):
    which = "--all" if all_sessions else "--session %s" % sessions[0].session_id
    # the file the user ran, by its absolute path, so the hint works from any folder
    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith((".py", ".pyz")) else "autoexp.pyz"
    return "resume with: python3 %s monitor %s --state-dir %s" % (
        shlex.quote(os.path.abspath(prog)), which, shlex.quote(store.root))


def register_untracked(controller, s, now):
    """--monitor-all: every manifest job the session does not track yet is adopted from SLURM
    (by tag) or submitted; the cycle that follows does both, lookup first."""
    added = [Job(name=pj.name, index=pj.index) for pj in s.plan.jobs if s.job(pj.name) is None]
    if added:
        s.add_jobs(added)
        controller.report.info("registering %d untracked job(s) of %s: %s" % (
            len(added), s.session_id, ", ".join(j.name for j in added)))
    return added


# -- plan, submit, run -------------------------------------------------------------

def cmd_plan(args, rt):
    plan_id, _ = do_plan(args, rt)
    rt.report.result(plan_id)
    return EXIT_OK


def do_plan(args, rt):
    """Validate the config, build the plan under a fresh id and write it. The id is claimed
    by creating its plan folder (create-exclusive), so two `plan`s of one project in the
    same second never get the same id; a plan that fails to build claims nothing."""
    raw = load_config_file(args.config)
    config = resolve_config(raw, args.config, args.override)
    store = store_for(args, config=config)
    now = rt.clock()
    dry_run = getattr(args, "dry_run", False)
    if not dry_run:
        store.ensure()
    for plan_id in _plan_ids(args, store, config, now):
        manifest, scripts = build_plan(config, args.config, plan_id, store.root, os.getcwd(), now)
        for path, text in scripts.items():  # a path the locale cannot say fails here: nothing claimed
            path.encode("utf-8"), text.encode("utf-8")
        if dry_run or store.claim_plan(plan_id):
            break
        if args.plan_id:
            raise ConfigError("plan %r already exists in %s; choose another --plan-id" % (plan_id, store.root))
    if not dry_run:
        try:
            write_plan(manifest, scripts)
        except BaseException:
            import shutil
            shutil.rmtree(store.plan_dir(plan_id), ignore_errors=True)  # ours: claimed just now
            raise
    return plan_id, Plan(manifest, store.plan_manifest(plan_id))


def _plan_ids(args, store, config, now):
    """The ids to try, in order: --plan-id, or PROJECT-YYYYmmdd-HHMMSS then -2, -3, ...
    (the project cut short so that every id fits a safe name), skipping ids in use."""
    def taken(plan_id):
        return (os.path.exists(store.plan_dir(plan_id)) or os.path.exists(store.session_path(plan_id))
                or os.path.exists(store.archive_dir(plan_id)))
    if args.plan_id:
        plan_id = check_safe_name(args.plan_id, "plan id")
        if taken(plan_id):
            raise ConfigError("plan %r already exists in %s; choose another --plan-id" % (plan_id, store.root))
        yield plan_id
        return
    for n in itertools.count(1):
        plan_id = default_plan_id(config["project"], now, n)
        if not taken(plan_id):
            yield plan_id


def cmd_submit(args, rt):
    install_stop_handlers(rt.stop)
    store, plan = open_plan(args, args.plan)
    code, _ = submit_plan(args, rt, store, plan)
    return code


def submit_plan(args, rt, store, plan, keep_lock=False, command="submit"):
    """Register the plan's jobs in its session and run one cycle: each is looked up by its
    tag, and what SLURM does not have is submitted. Returns (exit code, held), held being
    (session, lock) when keep_lock asks to go on watching under the same lock (`run`)."""
    names = _jobs_to_submit(args, plan)
    if args.dry_run:
        return preview_submit(args, rt, store, plan, names), None
    import shutil
    if shutil.which("sbatch", path=slurm_environment().get("PATH")) is None:
        # before the session exists: a submission that cannot start leaves nothing behind
        raise SlurmMissing("SLURM command 'sbatch' was not found on PATH; run autoexp on a login node "
                           "where sbatch, squeue and sacct work")
    store.ensure()
    s, lock, created = store.open_or_create(plan, command, rt.clock())
    try:
        rt.hint = resume_hint([s], store)
        if _max_running_override(args):
            s.apply_monitor_overrides(_max_running_override(args))
            store.save(s, rt.clock())
        if not created:
            names = _untracked(args, s, names)
        if not names:
            rt.report.info("every job of %s is already submitted; watch them with `autoexp monitor "
                           "--session %s`" % (plan.plan_id, plan.plan_id))
            code = EXIT_OK
        else:
            code = _submit_and_say(rt, store, s, plan, names, args.array)
        if rt.stop.requested:
            rt.report.result("stopped; the state is saved. " + rt.hint)
            return EXIT_INTERRUPTED, None
        if keep_lock:
            held, lock = (s, lock), None
            return code, held
        return code, None
    finally:
        if lock is not None:
            lock.release()


def _jobs_to_submit(args, plan):
    names = _flatten(args.only) or [j.name for j in plan.jobs]
    unknown = [n for n in names if n not in plan.by_name or isinstance(plan.by_name[n], FollowupSpec)]
    if unknown:
        raise ConfigError("--only: no job %s in plan %s (jobs: %s)" % (
            ", ".join(unknown), plan.plan_id, ", ".join(j.name for j in plan.jobs[:10]) +
            (", ..." if len(plan.jobs) > 10 else "")))
    if args.array and plan.array is None:
        raise ConfigError("cannot submit plan %s as an array: %s" % (plan.plan_id, plan.array_error))
    return names


def _untracked(args, s, names):
    """The names the session does not track yet; naming a tracked one with --only is an error."""
    tracked = [n for n in names if s.job(n) is not None]
    if tracked and _flatten(args.only):
        raise ConfigError("already submitted in session %s: %s; `autoexp monitor --session %s` "
                          "watches them" % (s.session_id, ", ".join(tracked), s.session_id))
    return [n for n in names if s.job(n) is None]


def preview_submit(args, rt, store, plan, names):
    """--dry-run: the sbatch lines a submission would run; nothing is written."""
    path = store.session_path(plan.plan_id)
    s = Session.new(path, plan, rt.clock())
    live = 0
    if os.path.exists(path):
        tracked = store.load(path, with_plan=False)
        already = [n for n in names if tracked.job(n) is not None]
        if already and _flatten(args.only):
            raise ConfigError("already submitted in session %s: %s" % (plan.plan_id, ", ".join(already)))
        names = [n for n in names if tracked.job(n) is None]
        s.apply_monitor_overrides(tracked.monitor_overrides)
        live = sum(1 for j in tracked.jobs if any(a.live or a.in_doubt for a in j.attempts))
    s.apply_monitor_overrides(_max_running_override(args))
    s.plan = plan
    controller = rt.controller(store, report=rt.report.quieter(), dry_run=True)
    controller.register(s, [plan.by_name[n] for n in names], args.array)
    controller.preview(s, s.jobs, rt.clock(), live)
    return EXIT_OK


def _max_running_override(args):
    """`submit --max-running N` as a monitoring override: kept in the session, so that every
    later monitor and reconcile honours it."""
    n = getattr(args, "max_running", None)
    return ["max_running=%d" % n] if n is not None else []


def _submit_and_say(rt, store, s, plan, names, array):
    controller = rt.controller(store, [s], report=rt.report.quieter())
    controller.register(s, [plan.by_name[n] for n in names], array)
    store.save(s, rt.clock())  # registered: a monitor or reconcile submits them if this stops here
    answered = controller.cycle([s])
    controller.flush([s])
    failed = waiting = 0
    width = max(len(n) for n in names)
    for n in names:
        job = s.job(n)
        att = job.current
        if att is not None and att.job_id:
            found = "" if att.origin == ORIGIN_SUBMITTED else "   (already in SLURM: %s)" % att.origin
            rt.report.result("%-*s %s%s" % (width, n, att.job_id, found))
        elif att is None and job.last_monitor_state == MON_WAITING:
            waiting += 1
            rt.report.result("%-*s %s" % (width, n, waiting_reason(s)))
        else:
            failed += 1
            why = (job.reason or (att.submit_error if att else None) or
                   ("SLURM did not answer" if not answered else "SLURM could not say whether it has it yet"))
            rt.report.result("%-*s not submitted: %s" % (width, n, why))
    if failed:
        rt.report.warn("%d of %d job(s) not submitted; `autoexp monitor --session %s` (or reconcile) submits "
                       "them, after looking each up by its tag" % (failed, len(names), s.session_id))
    if waiting:
        rt.report.info("%d job(s) wait for a slot; `autoexp monitor --session %s` (or reconcile) submits each "
                       "when one frees" % (waiting, s.session_id))
    return EXIT_FAILURE if failed == len(names) else EXIT_OK


def cmd_run(args, rt):
    install_stop_handlers(rt.stop)  # from the start: a SIGTERM while submitting still says how to resume
    plan_id, plan = do_plan(args, rt)
    rt.report.info("%s %s" % ("would plan" if args.dry_run else "planned", plan_id))
    store = StateStore(plan.state_dir)
    code, held = submit_plan(args, rt, store, plan, keep_lock=True, command="run")
    if held is None:
        return code
    sessions = SessionSet(store, rt.report)
    sessions.adopt(*held)
    try:
        return monitor_sessions(args, rt, sessions)
    finally:
        sessions.close()


# -- monitor, reconcile --------------------------------------------------------------

def cmd_monitor(args, rt):
    if bool(args.session) == bool(args.all):
        raise ConfigError("give --session ID (or the session file's path) or --all")
    store = store_for(args, args.session)
    sessions = SessionSet(store, rt.report)
    try:
        if args.session:
            sessions.open(resolve_or_recreate(store, args, "monitor", rt), "monitor", rt.clock())
        else:
            for path in sessions.candidates(lambda s: s.active() or args.include_completed or args.monitor_all
                                            or store.needs_sync(s)):
                sessions.open(path, "monitor --all", rt.clock(), quiet_skip=True)
            for sid, why in sessions.skipped:
                rt.report.warn("skipping session %s: %s" % (sid, why))
            if not sessions.sessions:
                rt.report.info("no session to monitor in %s" % store.root)
                return EXIT_LOCKED if sessions.skipped else EXIT_OK
        return monitor_sessions(args, rt, sessions)
    finally:
        sessions.close()


def resolve_or_recreate(store, args, command, rt):
    """The session file of --session; with --monitor-all, a session whose file is gone (moved
    aside after corruption) but whose plan exists is started afresh from the manifest: every
    job is then adopted from SLURM by its tag, or submitted."""
    ref = args.session
    if not (args.monitor_all and not is_path(ref) and SAFE_NAME_RE.match(ref)
            and not os.path.exists(store.session_path(ref)) and os.path.isfile(store.plan_manifest(ref))):
        return store.resolve(ref)
    if getattr(args, "dry_run", False):
        raise StateError("session %s has no state file; run without --dry-run to start it afresh from "
                         "its plan" % ref)
    s, lock, created = store.open_or_create(load_manifest(store.plan_manifest(ref)), command, rt.clock())
    try:
        if created:
            store.save(s, s.created_at)
    finally:
        lock.release()
    return store.session_path(ref)


def monitor_sessions(args, rt, sessions):
    now = rt.clock()
    controller = rt.controller(sessions.store, sessions.sessions)
    overrides = getattr(args, "monitor_override", None)  # `run`'s -o went into its plan
    for s in sessions.sessions:
        if overrides and getattr(args, "save", False):
            s.apply_monitor_overrides(overrides)
            sessions.store.save(s, now)
        elif overrides:
            s.apply_monitor_overrides(overrides, save=False)  # this run only
        if getattr(args, "monitor_all", False):
            register_untracked(controller, s, now)
    install_stop_handlers(rt.stop)
    rt.hint = resume_hint(sessions.sessions, sessions.store, getattr(args, "all", False))
    minutes = getattr(args, "summary_minutes", None)
    minutes = SUMMARY_MINUTES_DEFAULT if minutes is None else minutes
    rt.report.info(monitor_start_line(sessions.sessions, args, minutes))
    code = controller.run(sessions.sessions, once=args.once, interval=args.interval,
                          summary_seconds=minutes * 60.0 if minutes and rt.report.level >= 1 else None)
    if code == EXIT_INTERRUPTED:
        rt.report.result("stopped; the state is saved. " + rt.hint)
    return code


def monitor_start_line(sessions, args, minutes):
    """What the monitor is about to do: which sessions, how many jobs, how often, and for
    each session whether it resumes (jobs seen before, by some process) or starts new."""
    interval = args.interval or min(s.monitoring.interval_seconds for s in sessions)
    parts = []
    for s in sessions:
        seen = any(a.last_slurm_state or a.outcome for j in s.jobs for a in j.attempts)
        parts.append("%s (%s: %s)" % (s.session_id, "resumed, last updated %s" % short_time(s.updated_at)
                                      if seen else "new", phase_summary(s)))
    return "monitoring %d session(s), %d job(s), every %gs%s%s: %s" % (
        len(sessions), sum(len(s.jobs) for s in sessions), interval, " (one cycle)" if args.once else "",
        "; a summary after %g min without change" % minutes if minutes and not args.once else "",
        "; ".join(parts))


def summary_minutes(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value == 0 or 0.01 <= value <= SUMMARY_MINUTES_MAX):
        raise argparse.ArgumentTypeError("%r is not 0 (off) nor a number of minutes from 0.01 to %d"
                                         % (text, SUMMARY_MINUTES_MAX))
    return value


def cmd_reconcile(args, rt):
    if args.session and args.all:
        raise ConfigError("give --session ID or --all, not both")
    report = rt.report
    store = store_for(args, args.session)
    sessions = SessionSet(store, report)
    try:
        if args.session:
            paths = [resolve_or_recreate(store, args, "reconcile", rt)]
        else:
            paths = list(sessions.candidates(lambda s: s.active() or args.monitor_all or store.needs_sync(s)))
        for path in paths:
            sessions.open(path, "reconcile", rt.clock(), lock=not args.dry_run, quiet_skip=not args.session)
        for sid, why in sessions.skipped:
            # asked about this session: say who holds it; sweeping them all from cron: exit
            # 75 says it, quietly (cron mails every line printed)
            (report.warn if args.session else report.detail)("skipped %s: %s" % (sid, why))
        controller = rt.controller(store, sessions.sessions, dry_run=args.dry_run)
        if args.json:
            controller.json_changes = []
        now = controller.clock()
        for s in sessions.sessions:
            if args.monitor_all:
                register_untracked(controller, s, now)
        ok = controller.cycle(sessions.sessions) if sessions.sessions else True
        controller.flush(sessions.sessions)
        if args.json:
            report.result(json.dumps({"ok": ok, "changes": controller.json_changes,
                                      "skipped": [sid for sid, _ in sessions.skipped]}, indent=2, sort_keys=True))
        elif controller.changes == 0:
            report.detail("no changes")
        if sessions.broken:
            return EXIT_USAGE
        if not ok or controller.sacct_failed:
            return EXIT_FAILURE
        return EXIT_LOCKED if sessions.skipped else EXIT_OK
    finally:
        sessions.close()


# -- status, history, cancel ---------------------------------------------------------

def _status_doc(s, now=None, params=None, queued=()):
    """The session as `status --json` prints it. now: the clock, for the live attempt's
    elapsed time; params: the sweep parameters by job name (from the manifest); queued: the
    jobs a queued cancel request names (None in it: every active job)."""
    jobs = []
    for job in s.jobs:
        att = job.current
        phase = job_phase(job, job.status == ACTIVE and (job.name in queued or None in queued))
        since, kind = live_since(att)
        budget = attempt_budget(job, s.policies)
        jobs.append(OrderedDict([
            ("name", job.name), ("parent", job.parent), ("depth", job_depth(job, s.job) if job.parent else 0),
            ("status", job.status), ("attempts", len(job.attempts)),
            ("job_id", job.job_id), ("last_job_id", att.job_id if att else None), ("live", bool(att and att.live)),
            ("slurm_state", att.last_slurm_state if att else None),
            ("pending_reason", plain_reason(att.pending_reason) if att and att.pending_reason else None),
            ("monitor_state", job.last_monitor_state), ("last_event", job.last_event),
            ("log_path", att.resolved_log_path if att else None),
            ("reason", job.reason or (waiting_reason(s) if job.last_monitor_state == MON_WAITING else None)),
            ("nodes", att.nodes if att else None),
            ("excluded_nodes", list(att.excluded_nodes) if att else []),
            ("exclusion_note", att.exclusion_note if att else None),
            ("phase", phase), ("cancelling", phase == PH_CANCELLING),
            ("elapsed_seconds", int(max(0.0, now - since)) if since is not None and now is not None else None),
            ("elapsed_kind", kind if since is not None else None),
            ("params", (params or {}).get(job.name)),
            ("budget", OrderedDict([("mode", budget[0]), ("used", budget[1]), ("allowed", budget[2])])
             if budget else None),
            ("submit_error", att.submit_error if att else None),
            ("captured", job_captured(job)),
            ("cost", cost_summary(job.attempts))]))
    counts = count_by_status(s)
    return OrderedDict([("session_id", s.session_id), ("project", s.project),
                        ("updated_at", iso_time(s.updated_at)), ("counts", counts), ("jobs", jobs),
                        ("excluded_nodes", [dict(e) for e in s.excluded_nodes]),
                        ("active", s.active()), ("phase_counts", _tally(j["phase"] for j in jobs)),
                        ("slurm_counts", _tally(j["slurm_state"] for j in jobs if j["live"] and j["slurm_state"])),
                        ("cost", add_costs(j["cost"] for j in jobs))])


def _tally(words):
    counts = OrderedDict()
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return counts


def live_since(att):
    """(since when, "running" or "pending") of a live attempt: the time `status` shows."""
    if att is None or not att.live:
        return None, None
    if att.running_since is not None and att.last_slurm_state not in REQUEUE_STATES:
        return att.running_since, PH_RUNNING
    return att.pending_since or att.submitted_at, PH_PENDING


def sweep_params(s):
    """The sweep parameters by job name, from the session's manifest; {} if it cannot be read
    (status shows what it can, and stays one file read per session)."""
    try:
        with open(s.manifest_path, "rb") as f:
            data = loads_json(f.read().decode("utf-8"))
    except (IOError, OSError, ValueError):
        return {}
    jobs, followups = (data.get("jobs"), data.get("followups")) if isinstance(data, dict) else (None, None)
    # a follow-up shows its root job's parameters; a manifest damaged by hand: the jobs whose
    # params are still an object, the rest shown without
    return dict((j["name"], j["params"]) for j in itertools.chain(jobs if isinstance(jobs, list) else (),
                                                                   followups if isinstance(followups, list) else ())
                if isinstance(j, dict) and isinstance(j.get("name"), str) and isinstance(j.get("params"), dict))


def compact_params(params):
    """k=v,... with a nested value (a list or an object) spelled as JSON, as in the manifest."""
    def text(v):
        return json.dumps(v, sort_keys=True, separators=(",", ":")) if isinstance(v, (dict, list)) else format_value(v)
    return ",".join("%s=%s" % (k, text(v)) for k, v in sorted(params.items())) if params else "-"


def shorten(text, width=STATUS_CELL_CHARS):
    """A long cell cut to width: a path keeps its end (the file's name), anything else its start."""
    text = str(text)
    if len(text) <= width:
        return text
    if "/" in text and " " not in text:
        return "..." + text[-(width - 3):]
    return text[:width - 3] + "..."


def waiting_reason(s):
    return "queued by autoexp (max_running %s)" % s.monitoring.max_running


def _state_cell(j):
    """SLURM_STATE as `status` shows it: a PENDING job's reason with it, in words; a job
    whose cancel is asked but not yet confirmed by SLURM, as cancelling."""
    if j.get("cancelling"):
        return "cancelling (was %s)" % (j["slurm_state"] or "submitted")
    if j["slurm_state"] == "PENDING" and j["pending_reason"]:
        return "PENDING: %s" % j["pending_reason"]
    return j["slurm_state"] or "-"


def _table(rows, header):
    # escaped before measured: a control character takes 4 columns as \xNN, not 0 or 1
    rows = [[terminal_safe(str(c)) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def read_sessions(args, ref, report):
    """Sessions for read-only commands: no lock (the atomic rename means never a torn file);
    the broken ones of a whole folder are said and counted, not fatal."""
    store = store_for(args, ref)
    if getattr(args, "archived", False):
        return read_archived(store, ref, report)
    if ref:
        return [store.load(store.resolve(ref), with_plan=False)], 0
    found = SessionSet(store, report)
    sessions = [store.load(p, with_plan=False) for p in found.candidates(lambda s: True)]
    if not sessions and not found.broken:
        archived = len(store.list_archived())
        if archived:
            raise StateError("no sessions in %s, only %d archived one(s): `autoexp status --archived` shows them"
                             % (store.root, archived))
        raise StateError("no sessions in %s; pass --state-dir, or submit a plan first" % store.root)
    return sessions, len(found.broken)


def read_archived(store, ref, report):
    """`status --archived`: the sessions of archive/<id>/, each read from its own folder."""
    if ref:
        sid = _session_id(ref)
        if not os.path.isfile(store.archived_path(sid)):
            raise StateError("no archived session %r in %s; `autoexp status --archived` lists them"
                             % (sid, os.path.join(store.root, ARCHIVE_FOLDER)))
        paths = [store.archived_path(sid)]
    else:
        paths = store.list_archived()
    sessions, broken = [], 0
    for path in paths:
        try:
            sessions.append(StateStore(os.path.dirname(path)).load(path, with_plan=False))
        except StateError as e:
            broken += 1
            report.error(str(e))
    if not sessions and not broken:
        raise StateError("no archived sessions in %s" % os.path.join(store.root, ARCHIVE_FOLDER))
    return sessions, broken


def status_view(args, rt, sessions):
    """(session documents shown, lines of the sessions left out): --active, the job globs
    and --status applied. --active is the default over several sessions, --all shows all."""
    store = store_for(args, args.session)
    only_active = args.active or (not args.session and not args.all and not getattr(args, "archived", False)
                                  and len(sessions) > 1)
    shown = [s for s in sessions if s.active()] if only_active else list(sessions)
    notes = []
    if len(shown) < len(sessions):
        notes.append("%d other session(s) with no active job: `status --all` shows them" % (len(sessions) - len(shown)))
    now = rt.clock()
    docs = []
    for s in shown:
        queued = set()
        for _, names in store.cancel_requests(s.session_id):
            queued.update(names or [None])
        doc = _status_doc(s, now, sweep_params(s), queued)
        picked = [j for j in doc["jobs"] if (not args.names or any(fnmatch.fnmatchcase(j["name"], g) for g in args.names))
                  and (not args.status or args.status in (j["status"], j["phase"]))]
        doc["jobs_total"] = len(doc["jobs"])
        doc["jobs"] = picked
        docs.append(doc)
    return docs, notes


def session_line(doc):
    """A session's summary: counts by status, by phase and by SLURM state."""
    counts = ", ".join("%d %s" % (n, k) for k, n in doc["counts"].items()) or "no jobs"
    phases = ", ".join("%d %s" % (n, k) for k, n in doc["phase_counts"].items())
    slurm = ", ".join("%d %s" % (n, k) for k, n in doc["slurm_counts"].items())
    return "session %s (project %s), updated %s: %s%s%s" % (
        doc["session_id"], doc["project"], short_time(parse_iso(doc["updated_at"])), counts,
        " (%s)" % phases if phases else "", "; in SLURM: %s" % slurm if slurm else "")


def status_lines(s, doc):
    lines = [session_line(doc)]
    waiting = sum(1 for j in s.jobs if j.status == ACTIVE and j.last_monitor_state == MON_WAITING)
    if waiting:
        lines[0] += "; %d %s" % (waiting, waiting_reason(s))
    lines[0] += "; " + cost_text(doc["cost"])
    if len(doc["jobs"]) < doc["jobs_total"]:
        lines.append("%d of %d job(s) match" % (len(doc["jobs"]), doc["jobs_total"]))
    rows = []
    for j in followup_tree(doc["jobs"]):
        b = j["budget"]
        elapsed = "-" if j["elapsed_seconds"] is None else "%s %s" % (
            "run" if j["elapsed_kind"] == PH_RUNNING else "wait", duration_text(j["elapsed_seconds"]))
        rows.append(("  " * j["depth"] + j["name"], j["status"], j["attempts"], "%s %d/%d" % (b["mode"], b["used"], b["allowed"]) if b else "-",
                     j["last_job_id"] or "-", shorten(_state_cell(j), 2 * STATUS_CELL_CHARS), elapsed, j["monitor_state"] or "-",
                     j["last_event"] or "-", shorten(compact_params(j["params"])), shorten(j["log_path"] or "-"),
                     shorten(j["reason"] or j["submit_error"] or "-")))
    lines.extend(_table(rows, ("JOB", "STATUS", "ATT", "BUDGET", "SLURM_ID", "SLURM_STATE", "ELAPSED", "MONITOR",
                               "LAST_EVENT", "PARAMS", "LOG", "REASON")))
    for e in doc["excluded_nodes"]:
        lines.append("excluded from every job: %s since %s (%s; used by %d attempt(s))" % (
            e["node"], short_time(parse_iso(e["time"])), e["why"], e.get("uses", 0)))
    for j in doc["jobs"]:
        if j["excluded_nodes"]:
            lines.append("%s: attempt %d excludes %s" % (j["name"], j["attempts"], j["exclusion_note"]))
    return lines


def followup_tree(jobs):
    """The status rows in tree order: each follow-up right under its parent (its name
    indented by depth), the plan's own jobs in plan order."""
    children, shown = {}, set(j["name"] for j in jobs)
    for j in jobs:
        if j.get("parent") in shown:
            children.setdefault(j["parent"], []).append(j)
    out = []

    def add(j):
        out.append(j)
        for child in children.get(j["name"], ()):
            add(child)
    for j in jobs:
        if j.get("parent") not in shown:
            add(j)
    return out


def cmd_status(args, rt):
    if args.watch is not None:
        return watch_status(args, rt)
    report = rt.report
    sessions, broken = read_sessions(args, args.session, report)
    code = EXIT_USAGE if broken else EXIT_OK
    docs, notes = status_view(args, rt, sessions)
    if args.json:
        report.result(json.dumps({"sessions": docs}, indent=2, sort_keys=True))
        return code
    by_id = dict((s.session_id, s) for s in sessions)
    for n, doc in enumerate(docs):
        if n:
            report.result("")
        for line in status_lines(by_id[doc["session_id"]], doc):
            report.result(line)
    for line in notes:
        report.result(line)
    return code


def progress_line(s, doc, now):
    """One line per session for --watch: how many jobs are where, and an ETA from the
    runtimes of its finished runs (None until one finished)."""
    ph = doc["phase_counts"]
    total = len(s.jobs)
    runtimes = [a.ended(a.outcome, a.ended_at or now).runtime for j in s.jobs if j.status == FINALIZED
                for a in j.attempts[-1:]]
    runtimes = [r for r in runtimes if r is not None and r >= 0]
    eta = "-"
    if runtimes and s.active():
        mean = sum(runtimes) / len(runtimes)
        running = [j for j in doc["jobs"] if j["phase"] == PH_RUNNING]
        waiting = sum(1 for j in doc["jobs"] if j["phase"] in (PH_PENDING, PH_RESTARTING))
        left = sum(max(0.0, mean - (j["elapsed_seconds"] or 0)) for j in running) + waiting * mean
        eta = duration_text(left / max(1, len(running)))
    done = ph.get(PH_DONE, 0)
    width = 20
    bar = "#" * (width * done // total if total else 0)
    return "%s [%s] %d/%d done, %d running, %d pending, %d restarting, %d failed%s, ETA %s" % (
        s.session_id, bar.ljust(width, "."), done, total, ph.get(PH_RUNNING, 0), ph.get(PH_PENDING, 0),
        ph.get(PH_RESTARTING, 0), ph.get(PH_FAILED, 0),
        "".join(", %d %s" % (ph[k], k) for k in (PH_CANCELLING, PH_CANCELLED) if ph.get(k)), eta)


def watch_status(args, rt):
    """A live view: it only reads the state files (never the lock, never SLURM), so it runs
    beside a monitor or cron. On a terminal each frame replaces the last; else plain lines."""
    out = rt.report.out
    tty = hasattr(out, "isatty") and out.isatty()
    try:
        while True:
            now = rt.clock()
            try:
                sessions, broken = read_sessions(args, args.session, rt.report)
                docs, notes = status_view(args, rt, sessions)
            except StateError as e:  # a session moved aside while watched: said, the view goes on
                sessions, broken, docs, notes = [], 0, [], ["Error: %s" % e]
            by_id = dict((s.session_id, s) for s in sessions)
            lines = ["autoexp status --watch, %s (every %gs; Ctrl-C ends)" % (short_time(now), args.watch)]
            for doc in docs:
                s = by_id[doc["session_id"]]
                lines.append("")
                lines.append(progress_line(s, doc, now))
                lines.extend(status_lines(s, doc))
            lines.extend(notes)
            if broken:
                lines.append("%d broken session file(s): `autoexp status` says which" % broken)
            if tty:
                out.write("\x1b[H\x1b[2J")
            # one write per frame, its text made safe like every line autoexp prints
            Reporter.write(out, "\n".join(lines) + ("" if tty else "\n"))
            rt.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def watch_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not WATCH_SECONDS[0] <= value <= WATCH_SECONDS[1]:
        raise argparse.ArgumentTypeError("%r is not a number of seconds from %g to %g" % ((text,) + WATCH_SECONDS))
    return value


def _history_doc(s, name):
    jobs = []
    for job in s.jobs:
        if name and job.name != name:
            continue
        live_id = job.job_id
        attempts = []
        for att in job.attempts:
            live = att is job.current and att.live
            attempts.append(OrderedDict([
                ("attempt", att.attempt), ("job_id", att.job_id), ("array_task", att.array_task),
                ("origin", att.origin), ("submitted_at", iso_time(att.submitted_at)),
                ("ended_at", iso_time(att.ended_at)), ("log_path", att.resolved_log_path),
                ("slurm_state", att.last_slurm_state), ("exit_code", att.exit_code),
                ("pending_reason", plain_reason(att.pending_reason) if att.pending_reason else None),
                ("outcome", att.outcome), ("reason", att.reason or att.submit_error),
                ("live", live), ("nodes", att.nodes), ("excluded_nodes", list(att.excluded_nodes)),
                ("exclusion_note", att.exclusion_note), ("elapsed_raw", att.elapsed_raw),
                ("alloc_cpus", att.alloc_cpus), ("alloc_gpus", att.alloc_gpus)]))
            hours = attempt_hours(att) if att.outcome is not None else None
            attempts[-1]["cpu_hours"], attempts[-1]["gpu_hours"] = hours or (None, None)
            attempts[-1]["sbatch_options"] = list(att.sbatch_options)
            attempts[-1]["captured"] = OrderedDict(att.captured or ())
        jobs.append(OrderedDict([("name", job.name), ("parent", job.parent), ("status", job.status), ("job_id", live_id),
                                 ("captured", job_captured(job)), ("attempts", attempts),
                                 ("effects", [effect_doc(e) for e in job.effects])]))
    if name and not jobs:
        raise ConfigError("no job %r in session %s" % (name, s.session_id))
    return OrderedDict([("session_id", s.session_id), ("jobs", jobs)])


def effect_doc(eff):
    """An effect as history shows it: its record, the event that set it off by kind and seq."""
    doc = OrderedDict((k, eff[k]) for k in EFFECT_KEYS if k != "event")
    doc["event"], doc["seq"] = eff["event"].get("event"), eff["event"].get("seq")
    doc["tries"] = list(eff["tries"] or ())
    return doc


def cmd_history(args, rt):
    s = read_sessions(args, args.session, rt.report)[0][0]
    doc = _history_doc(s, args.name)
    if args.json:
        rt.report.result(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    for job in doc["jobs"]:
        rt.report.result("%s: %s, %d attempt(s)%s%s" % (job["name"], job["status"], len(job["attempts"]),
                                                        ", live: %s" % job["job_id"] if job["job_id"] else "",
                                                        ", follow-up of %s" % job["parent"] if job["parent"] else ""))
        rows = [("*" if a["live"] else " ", a["attempt"], a["job_id"] or "-",
                 "-" if a["array_task"] is None else a["array_task"], a["origin"] or "-",
                 short_time(parse_iso(a["submitted_at"])), short_time(parse_iso(a["ended_at"])),
                 a["slurm_state"] or "-", a["pending_reason"] or "-", a["nodes"] or "-", a["outcome"] or "-",
                 a["reason"] or "-", a["log_path"] or "-")
                for a in job["attempts"]]
        for line in _table(rows, (" ", "ATT", "SLURM_ID", "TASK", "ORIGIN", "SUBMITTED", "ENDED",
                                  "SLURM_STATE", "PENDING_REASON", "NODES", "OUTCOME", "REASON", "LOG")):
            rt.report.result("  " + line)
        for a in job["attempts"]:
            if a["sbatch_options"]:
                rt.report.result("  attempt %d was submitted with %s" % (a["attempt"], " ".join(a["sbatch_options"])))
            if a["excluded_nodes"]:
                rt.report.result("  #%d excluded: %s" % (a["attempt"], a["exclusion_note"]))
        for key, value in job["captured"].items():
            rt.report.result("  captured %s = %s" % (key, shorten(value, 120)))
        for e in job["effects"]:
            last = [ln for ln in (e["tail"] or "").splitlines() if ln.strip()]
            rt.report.result("  on %s (seq %s) #%s %s: %s, try %d%s%s%s" % (
                e["event"], e["seq"], e["rule"], "notify " + e["target"] if e["kind"] == EFFECT_NOTIFY else "run",
                e["state"], e["try"], ", exit %s" % e["exit"] if e["exit"] is not None else "",
                ", timed out" if e["timed_out"] else "", ": " + (e["error"] or last[-1]) if (e["error"] or last) else ""))
    return EXIT_OK


def cmd_cancel(args, rt):
    if bool(args.names) == bool(args.all):
        # a forgotten NAME must not cancel a whole sweep
        raise ConfigError("name the jobs to cancel, or give --all to cancel every active job of session %s"
                          % args.session if not args.names else "give job names or --all, not both")
    store = store_for(args, args.session)
    path = store.resolve(args.session)
    s = store.load(path)
    unknown = [n for n in args.names if s.job(n) is None]
    if unknown:
        raise ConfigError("no job %s in session %s" % (", ".join(unknown), s.session_id))
    try:
        s, lock = store.open_for_write(path, "cancel", rt.clock())
    except LockedError as e:
        store.queue_cancel(s.session_id, args.names, rt.clock())
        rt.report.result("the session is busy (%s); the cancel request is queued and the monitor "
                         "carries it out within one cycle" % e)
        return EXIT_OK
    try:
        controller = rt.controller(store, [s])
        todo = Todo()
        now = controller.clock()
        done = [j.name for j in s.jobs if j.status == ACTIVE and (not args.names or j.name in args.names)]
        controller.cancel_jobs(s, args.names, now, todo)
        controller.commit(s, now, todo, True)
        left = [n for n in args.names if n not in done]
        rt.report.result("cancelled: %s" % (", ".join(done) or "nothing"))
        if left:
            rt.report.info("not active, left as they are: %s" % ", ".join(
                "%s (%s)" % (n, s.job(n).status) for n in left))
        return EXIT_OK
    finally:
        lock.release()


def cmd_retry(args, rt):
    """A stopped or cancelled job gets a new attempt: under the session lock, its intent
    written before the sbatch, like every submission."""
    store = store_for(args, args.session)
    path = store.resolve(args.session)
    s = store.load(path)
    names = list(OrderedDict.fromkeys(args.names))
    unknown = [n for n in names if s.job(n) is None]
    if unknown:
        raise ConfigError("no job %s in session %s" % (", ".join(unknown), s.session_id))
    lock = None
    if not args.dry_run:
        s, lock = store.open_for_write(path, "retry", rt.clock())
    try:
        refused = [(n, retry_refusal(s.job(n))) for n in names]
        refused = [(n, why) for n, why in refused if why]
        if refused:
            raise ConfigError("cannot retry %s; nothing was submitted" % "; ".join(
                "%s: %s" % (n, why) for n, why in refused))
        controller = rt.controller(store, [s], report=rt.report.quieter(), dry_run=args.dry_run)
        running = controller.running_copies(s, [s.job(n) for n in names])
        if running:
            raise ConfigError("cannot retry %s; nothing was submitted: `autoexp monitor --session %s` (or "
                              "reconcile --session) follows what runs" % ("; ".join(
                                  "%s: SLURM job %s runs it already" % (n, ", ".join(ids)) for n, ids in running),
                                  s.session_id))
        todo = Todo()
        now = controller.clock()
        for n in names:
            controller.retry(s, s.job(n), now, todo, args.reset_attempts)
        controller.commit(s, now, todo)
        if args.dry_run:
            return EXIT_OK
        failed = 0
        for n in names:
            job = s.job(n)
            att = job.current
            if att.job_id:
                rt.report.result("%s %s" % (n, att.job_id))
            else:
                failed += 1
                rt.report.result("%s not submitted: %s" % (n, job.reason or att.submit_error or "unknown"))
        if failed < len(names):
            rt.report.info("`autoexp monitor --session %s` (or reconcile) follows them" % s.session_id)
        return EXIT_FAILURE if failed == len(names) else EXIT_OK
    finally:
        if lock is not None:
            lock.release()


# -- archive, unarchive ------------------------------------------------------------

def _session_id(ref):
    """The id of --session ID|PATH."""
    if is_path(ref):
        return check_safe_name(os.path.basename(ref)[:-len(".json")], "session id")
    return check_safe_name(ref, "session id")


def archive_session(store, sid, now):
    """Move a finished session into archive/<id>/ under its lock: returns (what was done,
    paths kept where they were). A move a crash cut short after its commit is finished."""
    root = os.path.realpath(store.root)
    if os.path.basename(os.path.dirname(root)) == ARCHIVE_FOLDER:
        # archive/<id>/ read as a state folder: archived again, it would nest out of unarchive's reach
        raise StateError("%s is already archived; `autoexp unarchive --session %s --state-dir %s` brings it "
                         "back first" % (os.path.join(store.root, sid + ".json"), sid,
                                         os.path.dirname(os.path.dirname(root))))
    path, archived = store.session_path(sid), store.archived_path(sid)
    if not os.path.isfile(path):
        if not os.path.isfile(archived):
            store.resolve(sid)  # its error: no such session
        lock = store.lock(sid, "archive", now)
        try:
            if not store.leftovers(sid):
                return "already archived", []
            return "finished archiving", store.finish_move(sid, store.archive_dir(sid))
        finally:
            lock.release()
    if os.path.isfile(archived):
        raise StateError("session %s is both in %s and archived in %s; keep one of them (move the other "
                         "out of the state folder)" % (sid, path, store.archive_dir(sid)))
    lock = store.lock(sid, "archive", now)
    try:
        s = store.load(path, with_plan=False)
        store.remove_other_generations(s)
        store.save_and_sync(s, now, changed=False)  # its journal and payloads whole before they move
        left = unfinished_jobs(s)
        if left:
            raise StateError("session %s has work left, so it is not archived: %s; let its monitor finish "
                             "them (or `autoexp cancel --session %s --all`, then a monitor or reconcile) and "
                             "archive it then" % (sid, ", ".join(left), sid))
        return "archived", store.move_session(s, store.archive_dir(sid))
    finally:
        lock.release()


def unarchive_session(store, sid, now):
    """Move an archived session back into the state folder, under its lock (the lock file
    stays in the state folder): returns (what was done, paths kept where they were)."""
    folder = store.archive_dir(sid)
    arch = StateStore(folder)
    path, archived = store.session_path(sid), store.archived_path(sid)
    lock = store.lock(sid, "unarchive", now)
    try:
        if os.path.isfile(path):
            if os.path.isfile(archived):
                raise StateError("session %s is both in %s and archived in %s; keep one of them (move the "
                                 "other out of the state folder)" % (sid, path, folder))
            if not arch.leftovers(sid):
                raise StateError("session %s is not archived: it is in %s" % (sid, path))
            what, kept = "finished unarchiving", arch.finish_move(sid, store.root)
        else:
            if not os.path.isfile(archived):
                raise StateError("no archived session %r in %s; `autoexp status --archived` lists them"
                                 % (sid, os.path.join(store.root, ARCHIVE_FOLDER)))
            s = arch.load(archived, with_plan=False)
            what, kept = "unarchived", arch.move_session(s, store.root)
        for sub in (os.path.join(folder, "actions"), os.path.join(folder, "requests"), folder):
            try:
                os.rmdir(sub)  # only when empty: whatever else is there stays
            except OSError:
                pass
        return what, kept
    finally:
        lock.release()


def _say_moved(rt, sid, what, where, kept):
    rt.report.result("%s %s: %s" % (what, sid, where))
    for p in kept:
        rt.report.warn("kept %s: it differs from the copy in %s; compare them and remove it by hand" % (p, where))


def cmd_archive(args, rt):
    if args.session and args.finished:
        raise ConfigError("give --session ID (the session to archive) or --finished (every finished one), not both")
    if not args.session and not args.finished:
        raise ConfigError("give --session ID (the session to archive) or --finished (every finished one)")
    store = store_for(args, args.session)
    if args.session:
        sid = _session_id(args.session)
        what, kept = archive_session(store, sid, rt.clock())
        _say_moved(rt, sid, what, store.archive_dir(sid), kept)
        return EXIT_OK
    found = SessionSet(store, rt.report)
    ids = [os.path.basename(p)[:-len(".json")] for p in found.candidates(lambda s: not unfinished_jobs(s))]
    # archives a crash cut short after their commit: finished too
    ids += [os.path.basename(p)[:-len(".json")] for p in store.list_archived()
            if store.leftovers(os.path.basename(p)[:-len(".json")])]
    skipped = failed = 0
    for sid in ids:
        try:
            what, kept = archive_session(store, sid, rt.clock())
        except LockedError as e:
            skipped += 1
            rt.report.warn("skipping session %s: %s" % (sid, e))
            continue
        except StateError as e:  # work left since it was read (a retry), or unreadable now
            failed += 1
            rt.report.error(str(e))
            continue
        _say_moved(rt, sid, what, store.archive_dir(sid), kept)
    if not ids:
        rt.report.info("no finished session to archive in %s" % store.root)
    if found.broken or failed:
        return EXIT_USAGE
    return EXIT_LOCKED if skipped else EXIT_OK


def cmd_unarchive(args, rt):
    store = store_for(args)
    sid = _session_id(args.session)
    what, kept = unarchive_session(store, sid, rt.clock())
    _say_moved(rt, sid, what, store.root, kept)
    return EXIT_OK


# -- report: one self-contained HTML file --------------------------------------------

# A report reads at most this many of the journal's last events and draws at most this
# many jobs (a 100k-job sweep would make a file no browser opens); it says what it left out.
MAX_REPORT_EVENTS, MAX_REPORT_JOBS = 5000, 2000
REPORT_COLOURS = (("success", "#2e9d4e"), ("timeout", "#e69b00"), ("replaced", "#8c8c8c"),
                  ("cancelled", "#555555"), ("live", "#2f6fd6"))
REPORT_FAILED_COLOUR = "#d23c3c"  # every other outcome: a mode that failed
# How a report begins: `report -o` replaces an existing file only if its first bytes say it is one.
REPORT_TITLE, REPORT_HEAD_BYTES = "autoexp report: ", 256
REPORT_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left;vertical-align:top}
th{background:#eee}.tl{position:relative;height:18px;background:#f6f6f6;min-width:600px}
.bar{position:absolute;top:2px;height:14px;font-size:10px;color:#fff;overflow:hidden;white-space:nowrap}
.wait{position:absolute;top:7px;height:4px;background:#bbb}.key span{display:inline-block;padding:0 6px;color:#fff;
margin-right:4px}pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px}
"""


def report_colour(outcome, live):
    if live:
        return dict(REPORT_COLOURS)["live"]
    return dict(REPORT_COLOURS).get(outcome, REPORT_FAILED_COLOUR)


def read_journal_tail(path, limit=MAX_REPORT_EVENTS):
    """The journal's last `limit` events (a line that is not JSON is skipped) and how many
    there are in all; ([], 0) when it cannot be read."""
    import collections
    tail, total = collections.deque(maxlen=limit), 0
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    event = json.loads(line.decode("utf-8", "replace"))
                except ValueError:
                    continue
                if isinstance(event, dict):
                    tail.append(event)
                    total += 1
    except (IOError, OSError):
        return [], 0
    return list(tail), total


def _attempt_span(att, now):
    """(queued, started, ended) of an attempt as epochs (None: not known): the monitor's
    times, SLURM's own start and end when sacct gave them."""
    queued = att.submitted_at or att.intent_at
    started = att.slurm_start or att.running_since
    ended = att.slurm_end or att.ended_at or (now if att.live else None)
    return queued, started, ended


def render_report(s, plan, events, events_total, now):
    """The report of session s as one HTML document (a str): no script, no external file;
    every user-given text (names, params, reasons, log lines in events) is escaped."""
    import html

    def e(v):  # as status shows it: control characters as \xNN, never raw in the page
        return html.escape(terminal_safe("" if v is None else str(v)), quote=True)

    jobs = s.jobs[:MAX_REPORT_JOBS]
    spans = [(job, att, _attempt_span(att, now)) for job in jobs for att in job.attempts]
    times = [t for _, _, sp in spans for t in sp if t]
    t0, t1 = (min(times), max(times)) if times else (now, now)
    width = max(t1 - t0, 1.0)

    def pct(t):
        return "%.3f%%" % (100.0 * (t - t0) / width)

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>%s%s</title>" % (REPORT_TITLE, e(s.session_id)), "<style>%s</style></head><body>" % REPORT_CSS,
           "<h1>Session %s</h1>" % e(s.session_id),
           "<p>Project %s; updated %s; report made %s. %s.</p>" % (
               e(s.project), e(short_time(s.updated_at)), e(short_time(now)), e(count_summary(s))),
           "<p>Cost: %s.</p>" % e(cost_text(add_costs(cost_summary(j.attempts) for j in s.jobs)))]
    if len(s.jobs) > len(jobs):
        out.append("<p>Only the first %d of %d jobs are shown.</p>" % (len(jobs), len(s.jobs)))
    out.append('<h2>Timeline</h2><p class="key">%s <span style="background:%s">failed</span> '
               'grey line: queued</p><p>%s to %s</p>' % (
                   " ".join('<span style="background:%s">%s</span>' % (c, e(k)) for k, c in REPORT_COLOURS),
                   REPORT_FAILED_COLOUR, e(short_time(t0)), e(short_time(t1))))
    out.append('<table class="timeline"><tr><th>job</th><th>attempts</th></tr>')
    for job in jobs:
        cells = []
        for att in job.attempts:
            queued, started, ended = _attempt_span(att, now)
            tip = "#%d %s %s: %s" % (att.attempt, att.job_id or "-", att.outcome or ("live" if att.live else "-"),
                                     att.reason or att.submit_error or att.last_slurm_state or "")
            # SLURM's start is in whole seconds, the monitor's submission time is not: a
            # start a moment "before" the submission is no wait
            if queued and (started or ended) and (started or ended) > queued:
                cells.append('<div class="wait" style="left:%s;width:%s"></div>' % (
                    pct(queued), pct(t0 + (started or ended) - queued)))
            begin = started or queued
            if begin:
                cells.append('<div class="bar" data-attempt="%d" title="%s" style="left:%s;width:%s;'
                             'min-width:3px;background:%s">#%d</div>' % (
                                 att.attempt, e(tip), pct(begin), pct(t0 + max((ended or begin) - begin, 0)),
                                 report_colour(att.outcome, att.live), att.attempt))
        out.append('<tr><td>%s</td><td><div class="tl">%s</div></td></tr>' % (e(job.name), "".join(cells)))
    out.append("</table>")

    by_name = plan.by_name if plan is not None else {}
    out.append("<h2>Jobs</h2><table class=\"jobs\"><tr><th>job</th><th>status</th><th>attempt</th><th>SLURM id</th>"
               "<th>submitted</th><th>started</th><th>ended</th><th>run</th><th>outcome</th><th>reason</th>"
               "<th>nodes</th><th>CPU-h</th><th>GPU-h</th><th>parameters</th></tr>")
    for job in jobs:
        pj = by_name.get(job.name)
        params = json.dumps(pj.params, sort_keys=True) if pj is not None else "-"
        for att in job.attempts or [None]:
            if att is None:
                out.append("<tr><td>%s</td><td>%s</td><td colspan=\"11\">no attempt</td><td>%s</td></tr>" % (
                    e(job.name), e(job.status), e(params)))
                continue
            queued, started, ended = _attempt_span(att, now)
            hours = attempt_hours(att) if att.outcome is not None else None
            run = "%.0f s" % (ended - started) if started and ended else "-"
            out.append("<tr data-job=\"%s\" data-attempt=\"%d\"><td>%s</td><td>%s</td><td>#%d</td><td>%s</td>"
                       "<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td style=\"color:%s\">%s</td><td>%s</td>"
                       "<td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                           e(job.name), att.attempt, e(job.name), e(job.status), att.attempt, e(att.job_id or "-"),
                           e(short_time(queued)), e(short_time(started)), e(short_time(ended)), e(run),
                           report_colour(att.outcome, att.live), e(att.outcome or ("live" if att.live else "-")),
                           e(att.reason or att.submit_error or ""), e(att.nodes or "-"),
                           "%.3f" % hours[0] if hours else ("?" if att.outcome else "-"),
                           "%.3f" % hours[1] if hours else ("?" if att.outcome else "-"), e(params)))
    out.append("</table><p>CPU-h and GPU-h: sacct's ElapsedRaw times AllocTRES of the ended attempt; "
               "? when sacct never gave its final record.</p>")

    out.append("<h2>Events</h2>")
    if events_total > len(events):
        out.append("<p>The last %d of %d events.</p>" % (len(events), events_total))
    out.append('<table class="events"><tr><th>seq</th><th>time</th><th>job</th><th>attempt</th><th>SLURM id</th>'
               "<th>event</th><th>mode</th><th>detail</th></tr>")
    for ev in events:
        out.append("<tr>%s</tr>" % "".join("<td>%s</td>" % e(ev.get(k)) for k in (
            "seq", "time", "job", "attempt", "job_id", "event", "mode", "detail")))
    out.append("</table><h2>Parameters</h2>")
    if plan is None:
        out.append("<p>The plan's manifest could not be read: %s</p>" % e(s.manifest_path))
    else:
        out.append("<p>Plan %s, manifest %s</p><pre>%s</pre>" % (
            e(plan.plan_id), e(plan.manifest_path), e(json.dumps(redacted_config(plan.config), indent=2, sort_keys=True))))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def cmd_report(args, rt):
    store = store_for(args, args.session)
    s = store.load(store.resolve(args.session), with_plan=False)
    try:
        plan = load_manifest(s.manifest_path)
    except StateError as e:
        rt.report.warn("the report has no parameters: %s" % e)
        plan = None
    events, total = read_journal_tail(store.events_path(s))
    text = render_report(s, plan, events, total, rt.clock())
    target = report_target(args.output, state_roots(args, store))
    try:
        atomic_write(target, text.encode("utf-8"), mode=0o644)
    except StateWriteError as e:
        raise StateError("cannot write the report: %s; give -o a path in a folder you can write" % e)
    rt.report.result(os.path.abspath(args.output))
    return EXIT_OK


def state_roots(args, store):
    """The state folders a command's files live in: the store's, the one it is archived in
    (a session read from archive/<id>/), and the --state-dir / $AUTOEXP_STATE_DIR given."""
    roots = [store.root]
    parent = os.path.dirname(os.path.abspath(store.root))
    if os.path.basename(parent) == ARCHIVE_FOLDER:
        roots.append(os.path.dirname(parent))
    explicit = getattr(args, "state_dir", None) or os.environ.get("AUTOEXP_STATE_DIR")
    if explicit:
        roots.append(explicit)
    return [os.path.realpath(r) for r in roots]


def report_target(output, roots):
    """The file `report -o OUTPUT` may replace (a symlink's target: it is written through),
    or a StateError: the report is renamed over it, so it must be a new file or a report
    autoexp wrote, never a file of a state folder, a device, a fifo or a folder."""
    target = os.path.realpath(output)
    for root in roots:
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            raise StateError("-o %s is inside the state folder %s, whose files are autoexp's; give -o a path "
                             "outside it" % (output, root))
    try:
        st = os.stat(target)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return target
        raise StateError("cannot write the report at %s: %s; give -o another path" % (output, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise StateError("-o %s exists and is not a regular file (a folder, a device or a fifo); give -o the "
                         "path of a new file" % output)
    try:
        with open(target, "rb") as f:
            head = f.read(REPORT_HEAD_BYTES)
    except (IOError, OSError) as e:
        raise StateError("cannot read %s: %s; give -o another path" % (output, e.strerror))
    if not (head.startswith(b"<!DOCTYPE html>") and REPORT_TITLE.encode("ascii") in head):
        raise StateError("-o %s exists and is not a report autoexp wrote, so it is left as it is; remove it "
                         "or give -o the path of a new file" % output)
    return target


# -- _notify: one delivery, for the effect engine's worker ---------------------------------

def read_notify_events(stream):
    """The JSON list of events on stdin (one object is a list of one), bounded."""
    raw = stream.read(MAX_NOTIFY_INPUT + 1)
    if len(raw) > MAX_NOTIFY_INPUT:
        raise ConfigError("more than %d MiB of events on stdin" % (MAX_NOTIFY_INPUT >> 20))
    try:
        events = loads_json(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except ValueError as e:
        raise ConfigError("stdin is not a JSON list of events: %s" % e)
    events = [events] if isinstance(events, dict) else events
    if not isinstance(events, list) or not all(isinstance(ev, dict) for ev in events):
        raise ConfigError("stdin must be a JSON list of event objects")
    return events


def session_notify(store, ref):
    """A session's notify config, read from its header alone (no lock, no jobs)."""
    path = store.resolve(ref)
    try:
        with open(path, "rb") as f:
            doc = loads_json(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise StateError("cannot read session %s: %s" % (path, getattr(e, "strerror", None) or e))
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise StateError("%s is not a session file" % path)
    return doc.get("session_id") or ref, make_notify(doc["config"].get("notify"))


def cmd_notify(args, rt, stdin=None):
    """`_notify` (hidden): deliver the events on stdin to one target as one message. Exit 0
    delivered, 75 worth another try, 1 not (SPEC 5.6); what it says is redacted."""
    try:
        session_id, notify = session_notify(store_for(args, args.session), args.session)
        target = notify["targets"].get(args.target)
        if target is None:
            raise ConfigError("session %s has no notify target %r (targets: %s)" % (
                session_id, args.target, ", ".join(notify["targets"]) or "none"))
        events = read_notify_events(stdin or getattr(sys.stdin, "buffer", sys.stdin))
    except AutoexpError as e:
        rt.report.error(redact(str(e)))
        return NOTIFY_PERMANENT
    if not events:
        rt.report.info("nothing to send to %s: no events" % args.target)
        return NOTIFY_DELIVERED
    d = deliver(args.target, target, session_id, events, float(notify["timeout_seconds"]))
    if d.code == NOTIFY_DELIVERED:
        rt.report.result("delivered %d event(s) to %s: %s" % (len(events), args.target, d.message))
    else:
        rt.report.error("%s %d event(s) to %s: %s" % (
            "could not deliver (will be retried)" if d.code == NOTIFY_RETRY else "could not deliver",
            len(events), args.target, d.message))
    return d.code


# -- the parser and main -----------------------------------------------------------

def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError("%r is not a number of seconds greater than 0" % text)
    spec = [k for k in MONITORING_SCHEMA if k.name == "interval_seconds"][0]
    if not spec.minimum <= value <= spec.maximum:
        raise argparse.ArgumentTypeError("%r is not between %s and %s seconds" % (text, spec.minimum, spec.maximum))
    return value


def max_running_count(text):
    spec = [k for k in MONITORING_SCHEMA if k.name == "max_running"][0]
    # ASCII digits only: int() also reads other scripts' digits, which no config would
    value = int(text) if re.match(r"^[0-9]{1,9}$", text) else 0
    if not spec.minimum <= value <= spec.maximum:
        raise argparse.ArgumentTypeError("%r is not a whole number from %d to %d" % (text, spec.minimum, spec.maximum))
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse, whose usage errors go through main() like every other error: one line, exit 2."""

    def error(self, message):
        raise ConfigError("%s (see: %s --help)" % (message, self.prog))


def build_parser():
    common = ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="state folder (default: $AUTOEXP_STATE_DIR, the config's state_dir, ./autoexp-state)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="say more")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="say only results and warnings")
    common.add_argument("--version", action="version", version="autoexp %s" % __version__)
    parser = ArgumentParser(prog="autoexp", description=USAGE, parents=[common],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def plan_options(p):
        p.add_argument("config", help="the sweep's JSON config")
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override with a JSON value, e.g. -o monitoring.interval_seconds=30 (repeatable)")
        p.add_argument("--plan-id", help="plan id (default: PROJECT-YYYYmmdd-HHMMSS)")

    def submit_options(p):
        p.add_argument("--array", action="store_true", help="submit the jobs as one job array")
        p.add_argument("--dry-run", action="store_true", help="print the sbatch command lines, submit nothing")
        p.add_argument("--only", nargs="+", action="append", metavar="NAME", help="submit only these jobs")
        p.add_argument("--max-running", type=max_running_count, metavar="N",
                       help="at most N of the session's jobs queued or running at once, the rest submitted as "
                       "slots free up (kept in the session: monitoring.max_running); with --array: SLURM's %%N")

    def monitor_options(p, overrides=True):
        p.add_argument("--once", action="store_true", help="run one cycle and exit")
        p.add_argument("--interval", type=positive_seconds, metavar="S",
                       help="seconds between cycles (default: the config's)")
        p.add_argument("--summary-minutes", type=summary_minutes, metavar="N",
                       help="after N minutes without a change, one line says where the jobs are (default %g; "
                       "0 or -q: never)" % SUMMARY_MINUTES_DEFAULT)
        if overrides:
            p.add_argument("-o", "--override", "--monitor-override", dest="monitor_override", action="append",
                           default=[], metavar="KEY=VALUE",
                           help="override a monitoring key, e.g. -o interval_seconds=10 (repeatable; keys: %s)"
                           % ", ".join(k.name for k in MONITORING_SCHEMA))

    p = add("plan", cmd_plan, "expand a config into SBATCH scripts and a manifest; prints the plan id")
    plan_options(p)
    p = add("submit", cmd_submit, "submit a plan's jobs (or one array) and create its session")
    p.add_argument("plan", help="plan id or manifest path")
    submit_options(p)
    p = add("monitor", cmd_monitor, "watch a session until every job is finalized, stopped or cancelled")
    p.add_argument("--session", metavar="ID|PATH", help="session id or session file")
    p.add_argument("--all", action="store_true", help="every session of the state folder, one squeue per cycle")
    p.add_argument("--include-completed", action="store_true", help="with --all: also sessions with no active job")
    p.add_argument("--monitor-all", action="store_true", help="also adopt or submit manifest jobs the session does not track")
    monitor_options(p)
    p.add_argument("--save", action="store_true",
                   help="keep the -o overrides in the session for every later monitor and reconcile "
                   "(default: this run only)")
    p = add("run", cmd_run, "plan, submit and monitor in one go")
    plan_options(p)
    submit_options(p)
    monitor_options(p, overrides=False)
    p = add("reconcile", cmd_reconcile, "one observe-classify-act pass, then exit (for cron)")
    p.add_argument("--session", metavar="ID|PATH", help="session id or session file (default: every active session)")
    p.add_argument("--all", action="store_true", help="every active session (the default)")
    p.add_argument("--monitor-all", action="store_true", help="also adopt or submit manifest jobs the session does not track")
    p.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    p.add_argument("--json", action="store_true", help="print the changes as one JSON document")
    p = add("status", cmd_status, "a table of every job of a session (or of every session)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--session", metavar="ID|PATH")
    p.add_argument("--json", action="store_true")
    p.add_argument("names", nargs="*", metavar="NAME", help="only jobs whose name matches one of these globs")
    which.add_argument("--active", action="store_true",
                       help="only sessions with active jobs (the default when there are several)")
    which.add_argument("--all", action="store_true", help="every session, active or not")
    p.add_argument("--status", metavar="STATUS", choices=STATUS_FILTERS,
                   help="only jobs with this status or phase (%s)" % ", ".join(STATUS_FILTERS))
    p.add_argument("--archived", action="store_true",
                   help="the archived sessions (archive/ of the state folder) instead; read only")
    p.add_argument("--watch", nargs="?", type=watch_seconds, const=10.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 10, %g to %g) until Ctrl-C; reads only the state files"
                   % WATCH_SECONDS)
    p = add("history", cmd_history, "every attempt of every job, with the live one marked")
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("name", nargs="?", help="only this job")
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report, "write one self-contained HTML file: timeline, jobs, events, parameters, cost")
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the HTML file to write")
    p = add("cancel", cmd_cancel, "scancel the live attempts and mark the jobs cancelled (not restarted)")
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("names", nargs="*", metavar="NAME", help="jobs to cancel")
    p.add_argument("--all", action="store_true", help="every active job of the session (never the default)")
    p = add("retry", cmd_retry, "submit a new attempt of stopped or cancelled jobs (then monitor or reconcile "
            "follows them)")
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("names", nargs="+", metavar="NAME", help="the stopped or cancelled jobs to submit again")
    p.add_argument("--reset-attempts", action="store_true",
                   help="count max_attempts from this attempt (default: from the job's first; a retried "
                   "job whose attempts are used up then stops at its next failure)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch command lines, submit nothing")
    p = add("archive", cmd_archive, "move a finished session's files into archive/ of the state folder "
            "(kept; status --archived shows them)")
    p.add_argument("--session", metavar="ID|PATH", help="the session to archive")
    p.add_argument("--finished", action="store_true", help="every session whose jobs are all finalized, "
                   "stopped or cancelled")
    p = add("unarchive", cmd_unarchive, "move an archived session back into the state folder")
    p.add_argument("--session", metavar="ID", required=True)
    # hidden (no help= in the list): what the effect engine's worker runs for a notification
    p = sub.add_parser("_notify", parents=[common], description="deliver the JSON events on stdin to one "
                       "notify target as one message; exit 0 delivered, 75 try again, 1 not deliverable")
    p.set_defaults(func=cmd_notify)
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("--target", metavar="NAME", required=True)
    return parser


def main(argv=None, slurm=None, clock=None, sleep=None, out=None, err=None, mono=None):
    """The command line; returns the exit code (0 ok, 1 failure, 2 usage, 75 locked, 130 stopped).

    slurm, clock (wall), mono (monotonic; defaults to clock when a clock is given), sleep and
    the output streams are injectable: a test runs any command in-process against a
    scripted SLURM and a fake clock."""
    err = err or sys.stderr
    rt = None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_effect"] and len(argv) == 3:  # the engine's worker (SPEC 5.8); not for users
        return run_effect_try(argv[1], int(argv[2]))
    try:
        args = build_parser().parse_args(argv)
        level = 0 if getattr(args, "quiet", False) else 1 + (getattr(args, "verbose", 0) or 0)
        rt = Runtime(Reporter(level, out, err), clock, sleep, slurm, mono)
        return args.func(args, rt)
    except SystemExit as e:  # only argparse exits, after printing --help or --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except AutoexpError as e:
        Reporter.write(err, "Error: %s" % e)
        return e.exit_code
    except KeyboardInterrupt:
        hint = rt.hint if rt is not None else None
        Reporter.write(err, "Error: interrupted" + ("; everything written is consistent. " + hint if hint else ""))
        return EXIT_INTERRUPTED
    except UnicodeError as e:  # raised by the OS layer, before any file is touched
        Reporter.write(err, "Error: a path or value is not ASCII, but Python runs with an ASCII "
                       "locale here (encoding %s: LANG and LC_ALL unset or C, as in cron; %s): set "
                       "LANG=C.UTF-8 (or another UTF-8 locale), e.g. at the top of the crontab"
                       % (sys.getfilesystemencoding(), e.reason))
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except EnvironmentError as e:
        where = " (%s)" % e.filename if getattr(e, "filename", None) else ""
        Reporter.write(err, "Error: %s%s" % (e.strerror or e, where))
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
