#!/usr/bin/env python3
"""autoexp: take a sweep of SLURM experiments from a config to finished runs, unattended.

autoexp plans a sweep (a grid or a list of parameter sets) into SBATCH scripts and a
manifest, submits them as single jobs or one job array, and then watches them: one
batched squeue per cycle (sacct only for jobs squeue no longer lists) plus incremental
log tails, turned into events (success, crash, timeout, node failure, OOM, preemption,
stall, lost, ...). Restart policies act on those events (resubmit with bounded attempts
and backoff, cancel a stalled job, finalize, stop), and every job's attempt history is
kept in an atomic, versioned JSON state file, so that a killed monitor, or a `reconcile`
run from cron, carries on exactly where reality is.

Sections, in dependency order:
  1. Errors and utilities          error classes, clock and ISO times, atomic files, crash points
  2. Config and plan               load, override and validate the config; expand the sweep;
                                   render SBATCH scripts and the manifest
  3. SLURM client and parsers      the subprocess runner, squeue/sacct/sbatch/scancel, parsing
  4. Log tail                      offset-persisted, line-exact reads of job logs
  5. Classification and policies   the pure core: observation + log facts -> mode -> action
  6. State store                   session file, single-writer lock, event journal, action payloads
  7. Controller                    observe, classify, act, persist; submit, resume, reconcile
  8. CLI                           argparse commands; errors become "Error: ..." and an exit code here

Stable (see SPEC.md): the command line, the config keys, the state file schema
(schema_version), the action payloads and the exit codes. Everything else is internal.
"""

import sys

if sys.version_info < (3, 6):  # the one version check: RHEL 8 / SLES 15 cron has 3.6
    sys.stderr.write("Error: autoexp needs Python 3.6 or newer (this is %s)\n" % sys.version.split()[0])
    sys.exit(2)

import argparse
import calendar
import errno
import fcntl
import hashlib
import itertools
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections import OrderedDict
from typing import NamedTuple, Optional

__version__ = "0.1.0"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another live process holds the session
EXIT_INTERRUPTED = 130
EXIT_CRASH_POINT = 86  # only ever produced by the AUTOEXP_CRASH_AT test hook

STATE_SCHEMA_VERSION = 1
MANIFEST_SCHEMA_VERSION = 1


# ============================================================================
# 1. Errors and utilities
# ============================================================================

class AutoexpError(Exception):
    """Base of every error autoexp reports; main() turns it into "Error: ..." and exit_code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message, exit_code=None):
        Exception.__init__(self, message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(AutoexpError):
    """The config, an override or a command-line argument is wrong: the user must fix it."""

    exit_code = EXIT_USAGE


class SlurmError(AutoexpError):
    """A SLURM command failed in a way autoexp cannot work around."""


class SlurmUnavailable(SlurmError):
    """A query failed, timed out or printed something unparsable: the answer is UNKNOWN."""


class StateError(AutoexpError):
    """The state folder or a session/manifest file is missing, unreadable or corrupt."""

    exit_code = EXIT_USAGE


class LockedError(StateError):
    """Another live process holds the session lock."""

    exit_code = EXIT_LOCKED


def iso_time(t):
    """Render an epoch time as UTC ISO-8601 with milliseconds (the state file's time format)."""
    if t is None:
        return None
    ms = int(round((t - int(t)) * 1000))
    secs = int(t)
    if ms == 1000:
        secs, ms = secs + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03dZ" % ms


def parse_iso(text):
    """Inverse of iso_time(); None stays None."""
    if not text:
        return None
    base, _, frac = text.rstrip("Z").partition(".")
    t = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return t + (float("0." + frac) if frac else 0.0)


def local_time(t):
    """Epoch -> 'YYYY-MM-DDTHH:MM:SS' in local time, the format sacct takes and prints."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def short_time(t):
    """Epoch -> compact local time for tables and event lines."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def is_path(ref):
    """A session or plan given as a file path rather than as an id."""
    return ref.endswith(".json") or os.sep in ref


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o600, crash_prefix=None):
    """Write bytes to path so that readers see the old or the new file, never a mix.

    temp file in the same folder, fsync, os.replace, fsync of the folder (the rename is
    only durable once the directory entry is on disk).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if crash_prefix:
        crash_point(crash_prefix + "_before_rename")
    os.replace(tmp, path)
    if crash_prefix:
        crash_point(crash_prefix + "_after_rename")
    fsync_dir(folder)


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
    def _write(stream, text):
        try:
            stream.write(text + "\n")
        except UnicodeEncodeError:
            enc = getattr(stream, "encoding", None) or "ascii"
            stream.write(text.encode(enc, "backslashreplace").decode(enc) + "\n")
        stream.flush()

    def result(self, text):
        self._write(self.out, text)

    def info(self, text):
        if self.level >= 1:
            self._write(self.out, text)

    def detail(self, text):
        if self.level >= 2:
            self._write(self.out, text)

    def warn(self, text):
        self._write(self.err, "warning: " + text)


SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
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


# ============================================================================
# 2. Config and plan
# ============================================================================

MODES = ("success", "incomplete", "crash", "timeout", "node_fail", "oom", "preempted",
         "cancelled", "stall", "lost")
ACTIONS = ("restart", "finalize", "stop", "ignore")

DEFAULT_POLICIES = OrderedDict([
    ("success", {"action": "finalize"}),
    ("incomplete", {"action": "restart", "max_attempts": 3}),
    ("crash", {"action": "stop"}),
    ("timeout", {"action": "restart", "max_attempts": 3}),
    # a minute's backoff: SLURM itself requeues such jobs (JobRequeue, PreemptMode=REQUEUE),
    # and autoexp follows a requeue it sees during the backoff instead of adding a copy
    ("node_fail", {"action": "restart", "max_attempts": 3, "backoff_seconds": 60}),
    ("oom", {"action": "stop"}),
    ("preempted", {"action": "restart", "max_attempts": 10, "backoff_seconds": 60, "backoff_max_seconds": 60}),
    ("cancelled", {"action": "stop"}),
    ("stall", {"action": "restart", "max_attempts": 2}),
    ("lost", {"action": "restart", "max_attempts": 3}),
])

DEFAULT_MONITORING = OrderedDict([
    ("interval_seconds", 60),
    ("termination_string", None),
    ("inactivity_threshold_seconds", None),
    ("log_events", []),
    ("lost_after_seconds", None),  # None: max(3 cycles, 300 s), see Monitoring.lost_after
    ("slurm_timeout_seconds", 60),
    ("unknown_backoff_max_seconds", 600),
    ("submit_retries", 5),
    ("submit_backoff_seconds", 60),
    ("debug_sync", False),
])

TOP_KEYS = ("project", "state_dir", "sweep", "job", "monitoring", "restart", "description")
JOB_KEYS = ("name", "command", "template", "log", "sbatch", "env", "workdir", "array_log",
            "array_max_running")
POLICY_KEYS = ("action", "max_attempts", "backoff_seconds", "backoff_max_seconds")
LOG_EVENT_KEYS = ("name", "pattern", "mode")
RESERVED_PARAMS = ("project", "name", "index", "plan_id")
# autoexp owns these directives: the job must stay findable (name, tag) and readable (log).
OWNED_SBATCH = OrderedDict([
    ("job-name", "job.name"), ("output", "job.log"), ("comment", "nothing: autoexp tags its jobs with it"),
    ("array", "submit --array"), ("chdir", "job.workdir"), ("parsable", "nothing"),
    ("wrap", "job.command"), ("clusters", "nothing: autoexp watches the default cluster"),
    ("wait", "nothing: autoexp waits for jobs itself")])
OWNED_SHORT = {"J": "job-name", "o": "output", "D": "chdir", "a": "array", "M": "clusters", "W": "wait"}


def owned_sbatch_option(option):
    """The option autoexp sets itself that `option` would set: sbatch takes any unambiguous
    prefix of a long option (--out is --output) and the short forms (-J, -ofile)."""
    if option.startswith("--"):
        name = option[2:].split("=", 1)[0]
        for owned in OWNED_SBATCH:
            if name and owned.startswith(name):
                return owned
        return None
    if option.startswith("-") and len(option) > 1:
        return OWNED_SHORT.get(option[1])
    return None
SBATCH_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]+$")  # long option names: two characters at least
LOG_PATTERN_RE = re.compile(r"%(\d*)(.)")


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

    def number(self, value, key, minimum=None, positive=False, integer=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.fail(key, "must be %s, not %s" % ("an integer" if integer else "a number", _type_name(value)))
        if positive and value <= 0:
            self.fail(key, "must be greater than 0, not %s" % value)
        if minimum is not None and value < minimum:
            self.fail(key, "must be at least %s, not %s" % (minimum, value))
        return value


def _json_loads_strict(text, source):
    def no_duplicates(pairs):
        obj = OrderedDict()
        for k, v in pairs:
            if k in obj:
                raise ConfigError("%s: key %r appears twice in the same object" % (source, k))
            obj[k] = v
        return obj
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
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
            raw = f.read()
    except (IOError, OSError) as e:
        raise ConfigError("cannot read config %s: %s" % (path, e.strerror or e))
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


class Policy(NamedTuple):
    action: str
    max_attempts: int = 3
    backoff_seconds: float = 0.0
    backoff_max_seconds: float = 3600.0


class LogEvent(NamedTuple):
    name: str
    pattern: str
    mode: str


ACCOUNTING_GRACE = 30.0  # how long a job squeue shows ended waits for sacct's record of it


class Monitoring(NamedTuple):
    interval_seconds: float
    termination_string: Optional[str]
    inactivity_threshold_seconds: Optional[float]
    log_events: tuple
    lost_after_seconds: Optional[float]
    slurm_timeout_seconds: float
    unknown_backoff_max_seconds: float
    submit_retries: int
    submit_backoff_seconds: float
    debug_sync: bool

    @property
    def lost_after(self):
        """Grace before a job that SLURM no longer knows is called lost: a few cycles, at
        least SLURM's default MinJobAge (300 s), so sacct's lag can never cause it."""
        if self.lost_after_seconds is not None:
            return self.lost_after_seconds
        return max(3 * self.interval_seconds, 300.0)

    @property
    def unqueued_after(self):
        """How long after an sbatch error a lookup by tag must stay empty before autoexp
        believes nothing was queued: a job that ran at once and left squeue (a short
        MinJobAge) reaches sacct only after accounting's lag."""
        return min(ACCOUNTING_GRACE, self.lost_after)


def validate_monitoring(mon, c, key="monitoring"):
    """Fill defaults into a monitoring dict and check it; returns a plain dict."""
    c.obj(mon, key, list(DEFAULT_MONITORING))
    out = OrderedDict()
    for k, default in DEFAULT_MONITORING.items():
        out[k] = mon.get(k, default)
    c.number(out["interval_seconds"], key + ".interval_seconds", positive=True)
    if out["termination_string"] is not None:
        c.string(out["termination_string"], key + ".termination_string")
    if out["inactivity_threshold_seconds"] is not None:
        c.number(out["inactivity_threshold_seconds"], key + ".inactivity_threshold_seconds", positive=True)
    if out["lost_after_seconds"] is not None:
        c.number(out["lost_after_seconds"], key + ".lost_after_seconds", minimum=0)
    c.number(out["slurm_timeout_seconds"], key + ".slurm_timeout_seconds", positive=True)
    c.number(out["unknown_backoff_max_seconds"], key + ".unknown_backoff_max_seconds", positive=True)
    c.number(out["submit_retries"], key + ".submit_retries", minimum=0, integer=True)
    c.number(out["submit_backoff_seconds"], key + ".submit_backoff_seconds", minimum=0)
    if not isinstance(out["debug_sync"], bool):
        c.fail(key + ".debug_sync", "must be true or false")
    events = out["log_events"]
    if not isinstance(events, list):
        c.fail(key + ".log_events", "must be a list of {name, pattern, mode}")
    seen = set()
    for i, ev in enumerate(events):
        k = "%s.log_events[%d]" % (key, i)
        c.obj(ev, k, LOG_EVENT_KEYS)
        for field in LOG_EVENT_KEYS:
            if field not in ev:
                c.fail(k, "missing %r" % field)
        name = c.string(ev["name"], k + ".name")
        if not IDENT_RE.match(name):
            c.fail(k + ".name", "%r must be an identifier (letters, digits, _)" % name)
        if name in seen:
            c.fail(k + ".name", "%r is used twice" % name)
        if name == "success":
            c.fail(k + ".name", "'success' is the termination string's event; choose another name")
        seen.add(name)
        try:
            re.compile(c.string(ev["pattern"], k + ".pattern"))
        except re.error as e:
            c.fail(k + ".pattern", "invalid regular expression %r: %s" % (ev["pattern"], e))
        mode = c.string(ev["mode"], k + ".mode")
        if not IDENT_RE.match(mode):
            c.fail(k + ".mode", "%r must be an identifier" % mode)
    return out


def validate_restart(restart, monitoring, c):
    """Fill the default policies in and check every entry; returns a plain dict."""
    if not isinstance(restart, dict):
        c.fail("restart", "must be an object mapping a mode to a policy")
    custom = set(ev["mode"] for ev in monitoring["log_events"])
    out = OrderedDict((m, dict(p)) for m, p in DEFAULT_POLICIES.items())
    for mode, pol in restart.items():
        if mode.startswith("_"):
            continue
        k = "restart." + mode
        if mode not in MODES and mode not in custom:
            c.fail(k, "unknown mode (built-in modes: %s; a log_events entry may add its own)" % ", ".join(MODES))
        c.obj(pol, k, POLICY_KEYS)
        if "action" not in pol:  # {"max_attempts": 5} refines the mode's default policy
            pol = dict(out.get(mode, {"action": "stop"}), **pol)
        action = pol.get("action")
        if action not in ACTIONS:
            c.fail(k + ".action", "must be one of %s, not %r" % ("/".join(ACTIONS), action))
        if "max_attempts" in pol:
            c.number(pol["max_attempts"], k + ".max_attempts", positive=True, integer=True)
        elif action == "restart":
            pol = dict(pol, max_attempts=3)
        for field in ("backoff_seconds", "backoff_max_seconds"):
            if field in pol:
                c.number(pol[field], k + "." + field, minimum=0)
        out[mode] = OrderedDict((f, pol[f]) for f in POLICY_KEYS if f in pol)
    for mode in custom:
        out.setdefault(mode, {"action": "stop"})
    return out


def make_monitoring(d):
    return Monitoring(
        interval_seconds=float(d["interval_seconds"]),
        termination_string=d["termination_string"],
        inactivity_threshold_seconds=d["inactivity_threshold_seconds"],
        log_events=tuple(LogEvent(e["name"], e["pattern"], e["mode"]) for e in d["log_events"]),
        lost_after_seconds=d["lost_after_seconds"],
        slurm_timeout_seconds=float(d["slurm_timeout_seconds"]),
        unknown_backoff_max_seconds=float(d["unknown_backoff_max_seconds"]),
        submit_retries=int(d["submit_retries"]),
        submit_backoff_seconds=float(d["submit_backoff_seconds"]),
        debug_sync=bool(d["debug_sync"]))


def make_policies(d):
    return dict((mode, Policy(p["action"], int(p.get("max_attempts", 1)),
                              float(p.get("backoff_seconds", 0)),
                              float(p.get("backoff_max_seconds", 3600))))
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
    quote, i, arith, line_start = None, 0, 0, 0
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
        return [OrderedDict(zip(keys, combo)) for combo in itertools.product(*axes)]
    if isinstance(sweep, list):
        if not sweep:
            c.fail("sweep", "is an empty list; give at least one parameter set")
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


def render_sbatch_line(key, value):
    if value is True:
        return "#SBATCH --%s" % key
    return "#SBATCH --%s=%s" % (key, sbatch_quote(value))


class PlanJob(NamedTuple):
    name: str
    index: int
    params: dict
    script_path: str
    log_template: str
    tag: str
    sbatch_args: list  # the directives autoexp owns, given again on sbatch's command line


class ArraySpec(NamedTuple):
    name: str
    script_path: str
    log_template: str
    tag: str
    max_running: Optional[int]
    sbatch_args: list


class Plan(object):
    """A planned sweep as read back from its manifest: what a session submits and watches."""

    __slots__ = ("plan_id", "project", "manifest_path", "state_dir", "workdir", "config",
                 "jobs", "by_name", "array", "array_error", "created_at")

    def __init__(self, data, manifest_path):
        self.plan_id = data["plan_id"]
        self.project = data["project"]
        self.manifest_path = manifest_path
        self.state_dir = data["state_dir"]
        self.workdir = data["workdir"]
        self.config = data["config"]
        self.created_at = data["created_at"]
        self.jobs = [PlanJob(j["name"], j["index"], j["params"], j["script_path"], j["log_template"], j["tag"],
                             j["sbatch_args"]) for j in data["jobs"]]
        self.by_name = dict((j.name, j) for j in self.jobs)
        a = data.get("array")
        self.array = ArraySpec(a["name"], a["script_path"], a["log_template"], a["tag"],
                               a.get("max_running"), a["sbatch_args"]) if a else None
        self.array_error = data.get("array_error")


def session_tag(plan_id, job_name):
    """The --comment autoexp gives each job: how it finds its jobs again in squeue and sacct."""
    return "autoexp:%s:%s" % (plan_id, job_name)


ARRAY_TAG_NAME = "@array"  # '@' cannot occur in a job name, so this tag never collides


def resolve_config(raw, source, overrides):
    """Apply overrides, validate, fill defaults; returns the resolved config dict."""
    config = apply_overrides(raw, overrides)
    c = _Checker(source)
    c.obj(config, "", TOP_KEYS)
    if "project" not in config:
        c.fail("project", "is required (a short name for the sweep)")
    check_safe_name(c.string(config["project"], "project"), "project")
    if "state_dir" in config:
        c.string(config["state_dir"], "state_dir")
    if "description" in config:
        c.string(config["description"], "description", allow_empty=True)
    job = config.get("job")
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
        c.number(job["array_max_running"], "job.array_max_running", positive=True, integer=True)
    sb = job.get("sbatch", {})
    c.obj(sb, "job.sbatch", list(sb))
    for k, v in sb.items():
        if k.startswith("_"):
            continue
        key = "job.sbatch." + k
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
    env = job.get("env", {})
    c.obj(env, "job.env", list(env))
    for k, v in env.items():
        if k.startswith("_"):
            continue
        if not IDENT_RE.match(k):
            c.fail("job.env." + k, "is not a valid environment variable name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            c.fail("job.env." + k, "must be a string or a number")
        if "\x00" in str(v):
            c.fail("job.env." + k, "contains a NUL character")
    mon = validate_monitoring(config.get("monitoring", OrderedDict()), c)
    config["monitoring"] = mon
    config["restart"] = validate_restart(config.get("restart", OrderedDict()), mon, c)
    expand_sweep(config.get("sweep"), c)  # fail early on a bad sweep
    return config


def build_plan(config, source, plan_id, state_dir, workdir, created_at):
    """Expand the sweep and render everything a manifest holds (no file is written here).

    Returns (manifest dict, {script path: script text}).
    """
    c = _Checker(source)
    job = config["job"]
    project = config["project"]
    points = expand_sweep(config.get("sweep"), c)
    workdir = os.path.abspath(os.path.join(workdir, job.get("workdir", ".")))
    plan_dir = os.path.join(state_dir, "plans", plan_id)
    name_tpl = job.get("name", "{project}-{index}" if len(points) > 1 else "{project}")
    log_tpl = job.get("log", "logs/{name}-%j.log")
    template_text = None
    if "template" in job:
        tpath = os.path.join(os.path.dirname(os.path.abspath(source)), job["template"])
        try:
            with open(tpath, "rb") as f:
                template_text = f.read().decode("utf-8")
        except (IOError, OSError, UnicodeDecodeError) as e:
            c.fail("job.template", "cannot read %s: %s" % (tpath, getattr(e, "strerror", None) or e))
        _check_template_directives(template_text, tpath, c)
        check_shell_placeholders("\n".join("" if l.startswith("#SBATCH") else l
                                           for l in template_text.splitlines()), "%s: job.template" % source)
    jobs, scripts, seen = [], OrderedDict(), {}
    sbatch_sets = []
    for index, params in enumerate(points):
        values = OrderedDict((k, format_value(v)) for k, v in params.items())
        values["project"] = project
        values["index"] = str(index)
        values["plan_id"] = plan_id
        name = render_template(name_tpl, values, "%s: job.name" % source)
        if not SAFE_NAME_RE.match(name):
            c.fail("job.name", "renders to %r for sweep point %d, which is not a safe name "
                   "(1-128 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit)" % (name, index))
        if name in seen:
            c.fail("job.name", "renders to %r for sweep points %d and %d; names must be unique, "
                   "so use more parameters in job.name" % (name, seen[name], index))
        seen[name] = index
        values["name"] = name
        # SLURM expands %-patterns in --output, so a literal % from a value must be doubled.
        log_values = OrderedDict((k, v.replace("%", "%%")) for k, v in values.items())
        log = render_template(log_tpl, log_values, "%s: job.log" % source)
        log = check_log_template(os.path.normpath(os.path.join(workdir, log)), "job.log", c)
        sbatch = OrderedDict()
        for k, v in job.get("sbatch", {}).items():
            if v is False or v is None or k.startswith("_"):
                continue
            if v is not True:
                v = render_template(format_value(v), values, "%s: job.sbatch.%s" % (source, k))
                check_directive_value(v, "job.sbatch." + k, c)
            sbatch[k] = v
        sbatch_sets.append(sbatch)
        tag = session_tag(plan_id, name)
        header = ["#SBATCH --job-name=%s" % name,
                  render_sbatch_line("output", log)]
        if "error" not in sbatch:
            header.append(render_sbatch_line("error", log))
        header += ["#SBATCH --comment=%s" % tag, render_sbatch_line("chdir", workdir)]
        header += [render_sbatch_line(k, v) for k, v in sbatch.items()]
        exports = ["export AUTOEXP_PLAN=%s AUTOEXP_JOB=%s" % (plan_id, name)]
        for k, v in job.get("env", {}).items():
            if k.startswith("_"):
                continue
            v = render_template(format_value(v), values, "%s: job.env.%s" % (source, k))
            exports.append("export %s=%s" % (k, shlex.quote(v)))
        note = "# Generated by autoexp %s: plan %s, job %s (index %d). Re-plan rather than edit." % (
            __version__, plan_id, name, index)
        if template_text is None:
            body = render_template(job["command"], values, "%s: job.command" % source, quote=shlex.quote)
            text = "\n".join(["#!/bin/bash", note] + header + [""] + exports + ["", body.rstrip("\n"), ""])
        else:
            text = _render_template_script(template_text, values, header + [note], exports, source)
        script_path = os.path.join(plan_dir, "jobs", name + ".sbatch")
        scripts[script_path] = text
        jobs.append(OrderedDict([("name", name), ("index", index), ("params", params),
                                 ("script_path", script_path), ("log_template", log), ("tag", tag),
                                 ("sbatch_args", owned_args(name, log, "error" not in sbatch, tag, workdir))]))
    manifest = OrderedDict([
        ("schema_version", MANIFEST_SCHEMA_VERSION), ("kind", "autoexp-manifest"),
        ("plan_id", plan_id), ("project", project), ("created_at", iso_time(created_at)),
        ("config_path", os.path.abspath(source)), ("state_dir", state_dir), ("workdir", workdir),
        ("config", config), ("jobs", jobs), ("array", None), ("array_error", None)])
    # An array shares one set of directives: offer it only when every job agrees.
    differing = [j["name"] for j, sb in zip(jobs, sbatch_sets) if sb != sbatch_sets[0]]
    if differing:
        manifest["array_error"] = ("jobs differ in their sbatch options (first: %s), so they cannot "
                                   "share one job array; submit them as single jobs" % differing[0])
    else:
        array_tpl = job.get("array_log", os.path.join(os.path.dirname(log_tpl) or ".", "{project}-%A_%a.log"))
        try:
            array_log = render_template(array_tpl, {"project": project, "plan_id": plan_id}, "%s: job.array_log" % source)
            array_log = check_log_template(os.path.normpath(os.path.join(workdir, array_log)), "job.array_log", c)
        except ConfigError as e:
            if "array_log" in job:  # the user asked for this array log: a mistake, not a limit
                raise
            manifest["array_error"] = "%s (set job.array_log to a path using only {project}, {plan_id} and %%A/%%a)" % e
        else:
            tag = session_tag(plan_id, ARRAY_TAG_NAME)
            indexes = ",".join(str(j["index"]) for j in jobs)
            if job.get("array_max_running"):
                indexes += "%%%d" % job["array_max_running"]
            lines = ["#!/bin/bash",
                     "# Generated by autoexp %s: the job array of plan %s. Task N runs job index N." % (__version__, plan_id),
                     "#SBATCH --job-name=%s" % plan_id,
                     render_sbatch_line("output", array_log)]
            if "error" not in sbatch_sets[0]:
                lines.append(render_sbatch_line("error", array_log))
            lines += ["#SBATCH --comment=%s" % tag, render_sbatch_line("chdir", workdir),
                      "#SBATCH --array=%s" % indexes]
            lines += [render_sbatch_line(k, v) for k, v in sbatch_sets[0].items()]
            lines += ["", 'case "${SLURM_ARRAY_TASK_ID:-}" in']
            lines += ["  %d) exec %s ;;" % (j["index"], shlex.quote(j["script_path"])) for j in jobs]
            lines += ['  *) echo "autoexp: no job for array task ${SLURM_ARRAY_TASK_ID:-unset}" >&2; exit 2 ;;',
                      "esac", ""]
            script = os.path.join(plan_dir, "array.sbatch")
            scripts[script] = "\n".join(lines)
            manifest["array"] = OrderedDict([("name", plan_id), ("script_path", script),
                                             ("log_template", array_log), ("tag", tag),
                                             ("max_running", job.get("array_max_running")),
                                             ("sbatch_args", owned_args(plan_id, array_log, "error" not in sbatch_sets[0],
                                                                        tag, workdir))])
    return manifest, scripts


def owned_args(name, log, with_error, tag, workdir):
    """What autoexp needs of every submission, for sbatch's command line: it wins over the
    script's directives and over SBATCH_* variables, so the job stays findable (name, tag)
    and its log readable, whatever else says otherwise."""
    args = ["--job-name=" + name, "--output=" + log]
    if with_error:
        args.append("--error=" + log)
    return args + ["--comment=" + tag, "--chdir=" + workdir]


def _check_template_directives(text, path, c):
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("#SBATCH"):
            continue
        for option in line[len("#SBATCH"):].split():
            owned = owned_sbatch_option(option) or ("error" if option.startswith(("-e", "--er")) else None)
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


def default_plan_id(project, t):
    return "%s-%s" % (project, time.strftime("%Y%m%d-%H%M%S", time.localtime(t)))


def write_plan(manifest, scripts):
    """Write the scripts, then the manifest last: a manifest on disk means a complete plan."""
    # Encoded before anything is written: a path the locale could not decode fails here,
    # leaving no half-written plan behind.
    encoded = [(path, text.encode("utf-8")) for path, text in scripts.items()]
    state_dir = manifest["state_dir"]
    make_private_dir(state_dir)
    root = os.path.join(state_dir, "plans", manifest["plan_id"])
    make_private_dir(os.path.join(root, "jobs"))
    for path, data in encoded:
        atomic_write(path, data, mode=0o700)
    # SLURM refuses to start a job whose --output folder is missing (JobLaunchFailure).
    for j in manifest["jobs"] + ([manifest["array"]] if manifest["array"] else []):
        folder = os.path.dirname(j["log_template"])
        if "%" not in folder:
            try:
                os.makedirs(folder)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise ConfigError("cannot create the log folder %s: %s" % (folder, e.strerror))
    path = os.path.join(root, "manifest.json")
    atomic_write(path, dump_json(manifest))
    return path


def load_manifest(path):
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"), object_pairs_hook=OrderedDict)
    except (IOError, OSError) as e:
        raise StateError("cannot read manifest %s: %s; run `autoexp plan CONFIG` first" % (path, e.strerror or e))
    except UnicodeEncodeError:
        raise  # the path cannot be said in this locale: main() explains, the file is fine
    except ValueError as e:
        raise StateError("manifest %s is not valid JSON (%s); plan again with `autoexp plan CONFIG`" % (path, e))
    if not isinstance(data, dict) or data.get("kind") != "autoexp-manifest":
        raise StateError("%s is not an autoexp manifest" % path)
    if data.get("schema_version", 0) > MANIFEST_SCHEMA_VERSION:
        raise StateError("manifest %s has schema version %s, newer than this autoexp understands (%d); "
                         "use a newer autoexp" % (path, data.get("schema_version"), MANIFEST_SCHEMA_VERSION))
    return Plan(data, os.path.abspath(path))


# ============================================================================
# 3. SLURM client and parsers
# ============================================================================

class Completed(NamedTuple):
    argv: list
    rc: int
    out: str
    err: str
    timed_out: bool


def run_command(argv, timeout, env=None):
    """Run a command without a shell and return its output; the default runner.

    The child gets its own session so that a timeout kills everything it started and a
    Ctrl-C in the terminal never interrupts an sbatch halfway.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, close_fds=True,
                                start_new_session=True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EACCES):
            raise SlurmError("SLURM command %r was not found on PATH; run autoexp on a login node "
                             "where sbatch, squeue and sacct work" % argv[0], exit_code=EXIT_USAGE)
        # fork failing for lack of processes or memory is passing: the answer is UNKNOWN
        raise SlurmUnavailable("cannot run %s: %s" % (argv[0], e.strerror or e))
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
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


# Job states, from squeue(1) and sacct(1). Anything still able to run is ACTIVE.
ACTIVE_STATES = frozenset((
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED",
    "POWER_UP_NODE", "UPDATE_DB"))
TERMINAL_MODE = {
    "COMPLETED": "success", "FAILED": "crash", "OUT_OF_MEMORY": "oom", "TIMEOUT": "timeout",
    "DEADLINE": "timeout", "NODE_FAIL": "node_fail", "BOOT_FAIL": "node_fail",
    "PREEMPTED": "preempted", "CANCELLED": "cancelled", "REVOKED": "cancelled",
    "SPECIAL_EXIT": "crash", "LAUNCH_FAILED": "crash"}
STATE_WORD_RE = re.compile(r"^[A-Z][A-Z_]*$")
JOB_ID_RE = re.compile(r"^(\d+)(?:_(\d+|\[[0-9,\-:%]+\])|\+(\d+))?$")
MAX_ARRAY_EXPANSION = 100000


def normalize_state(text):
    """'CANCELLED by 0' -> 'CANCELLED'; a word that is not a SLURM state raises ValueError."""
    word = text.strip().split(" ", 1)[0].rstrip("+")
    if not STATE_WORD_RE.match(word):
        raise ValueError("%r is not a job state" % text)
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


class AcctRow(NamedTuple):
    job_id: str
    raw_id: str
    name: str
    state: str
    exit_code: str
    start: Optional[float]
    end: Optional[float]
    comment: str


SQUEUE_FORMAT = "%i|%A|%T|%r|%j|%k"
SACCT_FIELDS = "JobID,JobIDRaw,JobName,State,ExitCode,Start,End,Comment"
_TAG_TAIL_RE = re.compile(r"\|(autoexp:[^|]*)$")


def _split_free_fields(parts):
    """The last two fields (name, comment) are free text and may hold '|'. autoexp's own
    tags never do, so a tag at the very end is the comment and the rest is the name; a
    foreign job whose fields hold '|' keeps its text as name and is ignored."""
    if len(parts) == 2:
        return parts[0], parts[1]
    joined = "|".join(parts)
    m = _TAG_TAIL_RE.search(joined)
    if m:
        return joined[:m.start()], m.group(1)
    return joined, ""


def _check_complete(text):
    if text and not text.endswith("\n"):
        raise ValueError("output ends in the middle of a line (truncated)")


def parse_squeue(text):
    """Parse `squeue -h -o SQUEUE_FORMAT` output; any malformed line raises ValueError,
    because a partial answer must not be mistaken for "these jobs are gone"."""
    _check_complete(text)
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 6:
            raise ValueError("line %r has %d fields, expected 6" % (line[:80], len(parts)))
        state = normalize_state(parts[2])
        name, comment = _split_free_fields(parts[4:])
        if comment == "(null)":
            comment = ""
        ids = expand_job_id(parts[0])
        raw = parts[1].strip()
        if raw and not raw.isdigit():
            raise ValueError("bad raw job id %r" % raw)
        for job_id in ids:
            rows.append(QueueRow(job_id, raw if len(ids) == 1 else "", state, parts[3], name, comment))
    return rows


def parse_slurm_time(text):
    """sacct's local 'YYYY-MM-DDTHH:MM:SS' (SLURM_TIME_FORMAT=standard) -> epoch; unset -> None."""
    text = text.strip()
    if text in ("", "Unknown", "None", "N/A"):
        return None
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def parse_sacct(text):
    """Parse `sacct -X -P -n -o SACCT_FIELDS`; step rows (12.batch) are skipped, pending
    array ranges expanded, and a malformed line raises ValueError. sacct is only ever asked
    about autoexp's own jobs (by id or by name), whose names hold no '|'; the comment is
    last, so whatever it holds stays in it."""
    _check_complete(text)
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 7)
        if len(parts) < 8:
            raise ValueError("line %r has %d fields, expected 8" % (line[:80], len(parts)))
        if "." in parts[0]:
            continue
        state = normalize_state(parts[3])
        ids = expand_job_id(parts[0])
        raw = parts[1].strip()
        if not raw.isdigit():
            raise ValueError("bad raw job id %r" % raw)
        start, end = parse_slurm_time(parts[5]), parse_slurm_time(parts[6])
        for job_id in ids:
            rows.append(AcctRow(job_id, raw if len(ids) == 1 else "", parts[2], state, parts[4],
                                start, end, parts[7]))
    return rows


def parse_sbatch_output(text):
    """`sbatch --parsable` prints 'ID' or 'ID;CLUSTER'."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
    if len(lines) != 1:
        raise ValueError("expected one line, got %r" % text[:200])
    m = re.match(r"^(\d+)(?:;\S+)?$", lines[0].strip())
    if not m:
        raise ValueError("%r is not a job id" % lines[0][:200])
    return m.group(1)


# sbatch errors that no retry can fix: the job is stopped with this text in its history.
PERMANENT_SBATCH_ERRORS = (
    "invalid partition", "invalid --time", "invalid time", "invalid account", "invalid qos",
    "invalid wckey", "invalid user", "batch script is empty", "does not look like a batch script",
    "requested node configuration is not available",
    "invalid generic resource", "invalid gres", "invalid feature", "unrecognized option",
    "invalid option", "memory specification can not be satisfied", "invalid job array specification",
    "more processors requested than permitted", "node count specification invalid",
    "invalid dependency", "invalid --", "is ambiguous")
# sbatch errors that say the job was refused for now by a limit (too many jobs queued for
# the user or QOS): retried with backoff for as long as it takes, never counted as failures.
THROTTLED_SBATCH_ERRORS = ("job violates accounting/qos policy", "maxsubmitjob", "max_submit_job",
                           "qosmaxsubmitjob", "assocmaxsubmitjob")


class SubmitResult(NamedTuple):
    outcome: str  # "ok", "uncertain" (the job may or may not be queued), "throttled" or "permanent"
    job_id: Optional[str]
    message: str


def classify_sbatch(res):
    """Turn an sbatch run into a SubmitResult. Only a clear refusal counts as permanent;
    every other failure may have queued the job, so it is looked up before any retry."""
    if res.timed_out:
        return SubmitResult("uncertain", None, "sbatch did not answer in time")
    message = " ".join(res.err.split())[:500]
    if res.rc == 0:
        try:
            return SubmitResult("ok", parse_sbatch_output(res.out), message)
        except ValueError as e:
            return SubmitResult("uncertain", None, "sbatch printed no job id (%s)" % e)
    low = message.lower()
    if any(p in low for p in PERMANENT_SBATCH_ERRORS):
        return SubmitResult("permanent", None, message or "sbatch exit %d" % res.rc)
    if any(p in low for p in THROTTLED_SBATCH_ERRORS):
        return SubmitResult("throttled", None, message)
    return SubmitResult("uncertain", None, message or "sbatch exit %d with no message" % res.rc)


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


class SlurmClient(object):
    """The only place that runs SLURM commands. Queries raise SlurmUnavailable when the
    answer is not trustworthy; runner(argv, timeout, env) is injectable for tests."""

    __slots__ = ("runner", "env", "timeout", "user")

    def __init__(self, runner=None, env=None, timeout=60.0, user=None):
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
        """Every job of the user that the controller still holds, finished ones included."""
        return self._query(["squeue", "-h", "-r", "-t", "all", "-u", self.user, "-o", SQUEUE_FORMAT],
                           parse_squeue)

    def _sacct(self, selector, since):
        argv = ["sacct", "-X", "-P", "-n", "-o", SACCT_FIELDS, "-S", local_time(since)] + selector
        try:
            return self._query(argv, parse_sacct)
        except SlurmUnavailable as e:
            # Accounting switched off is an answer ("no records"), not an outage.
            if "accounting storage is disabled" in str(e).lower():
                return []
            raise

    def sacct(self, job_ids, since):
        """Final (or latest) records of the given jobs, by id."""
        rows = self._sacct(["-j", ",".join(job_ids)], since)
        return dict((r.job_id, r) for r in rows)

    def sacct_by_name(self, names, since):
        return self._sacct(["--name=" + ",".join(names)], since)

    def sbatch(self, script, args=()):
        try:
            return classify_sbatch(self._run(["sbatch", "--parsable"] + list(args) + [script]))
        except SlurmUnavailable as e:
            return SubmitResult("uncertain", None, str(e))

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
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# ============================================================================
# 4. Log tail
# ============================================================================

MAX_LOG_READ = 4 << 20  # per attempt and cycle: a runaway log cannot exhaust memory


class LogRead(NamedTuple):
    lines: list
    offset: int
    inode: Optional[int]
    head: Optional[str]
    restarted: bool
    ok: bool = True    # False: the file exists but could not be read (an NFS hiccup)
    eof: bool = True   # False: more than max_bytes were waiting; read again


LOG_HEAD_BYTES = 256


def log_head(f, size):
    """'N:sha1' of a file's first N bytes: truncated and rewritten past its old size (same
    inode, larger), a file still changes its beginning."""
    f.seek(0)
    data = f.read(min(size, LOG_HEAD_BYTES))
    return "%d:%s" % (len(data), hashlib.sha1(data).hexdigest()) if data else None


def read_log(path, offset, inode, head=None, final=False, max_bytes=MAX_LOG_READ):
    """Read the complete lines added to a log since offset, at most max_bytes at a time.

    A partial last line is left for the next read (so it is matched once, whole) unless
    final is set (the job has ended and nothing more will come) and the end of the file is
    reached. A file that shrank, has another inode or another beginning was truncated or
    replaced: it is read again from its start, once. A missing file is simply empty.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        return LogRead([], offset, inode, head, False, ok=e.errno == errno.ENOENT)
    try:
        with open(path, "rb") as f:
            restarted = (inode is not None and st.st_ino != inode) or st.st_size < offset
            if not restarted and head and offset:
                n = int(head.split(":", 1)[0])
                restarted = st.st_size < n or log_head(f, n) != head
            if restarted:
                offset = 0
            if not head or restarted or int(head.split(":", 1)[0]) < LOG_HEAD_BYTES:
                head = log_head(f, st.st_size) or head
            if st.st_size == offset:
                return LogRead([], offset, st.st_ino, head, restarted)
            f.seek(offset)
            data = f.read(min(st.st_size - offset, max_bytes))
    except (IOError, OSError):
        return LogRead([], offset, inode, head, False, ok=False)
    eof = offset + len(data) >= st.st_size
    end = data.rfind(b"\n") + 1
    if final and eof:
        end = len(data)
    elif end == 0:
        if len(data) < max_bytes:
            return LogRead([], offset, st.st_ino, head, restarted)
        end = len(data)  # one line longer than max_bytes: taken in pieces, never buffered whole
    lines = data[:end].decode("utf-8", "replace").splitlines()
    return LogRead(lines, offset + end, st.st_ino, head, restarted, eof=offset + end >= st.st_size)


class LogHit(NamedTuple):
    event: str
    mode: str
    line: str


class LogMatcher(object):
    """The termination string and the log_events patterns, compiled once."""

    __slots__ = ("termination", "patterns")

    def __init__(self, monitoring):
        self.termination = monitoring.termination_string
        self.patterns = [(e.name, re.compile(e.pattern), e.mode) for e in monitoring.log_events]

    def scan(self, lines):
        hits = []
        for line in lines:
            if self.termination and self.termination in line:
                hits.append(LogHit("success", "success", line))
            for name, rx, mode in self.patterns:
                if rx.search(line):
                    hits.append(LogHit(name, mode, line))
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


# ============================================================================
# 5. Classification and policies (the pure core: no I/O, no clock)
# ============================================================================

class Observation(NamedTuple):
    """What SLURM said about one job id this cycle."""
    source: str  # "squeue", "sacct", "missing" (both answered, neither knows it) or "unknown"
    state: str = ""
    reason: str = ""
    exit_code: str = ""
    raw_id: str = ""
    start: Optional[float] = None  # from sacct: when SLURM started and ended the job
    end: Optional[float] = None


class Facts(NamedTuple):
    """What an attempt has accumulated so far (persisted, so a restart of the monitor keeps it)."""
    success_seen: bool = False
    log_mode: Optional[str] = None
    log_reason: str = ""
    running_since: Optional[float] = None
    last_activity: Optional[float] = None
    missing_since: Optional[float] = None


class Verdict(NamedTuple):
    monitor_state: str
    mode: Optional[str]  # None: nothing to decide this cycle
    reason: str
    live: Optional[bool]  # can the SLURM job still run? None: cannot tell


def observation_live(obs):
    if obs.source in ("squeue", "sacct"):
        return obs.state in ACTIVE_STATES
    return None


def classify(obs, facts, now, mon):
    """Derive an attempt's mode from this cycle's observation and its accumulated facts.

    Level-triggered: the same inputs give the same verdict, whatever happened before.
    Precedence: UNKNOWN decides nothing; then the termination string (the run is done
    whatever SLURM says about the exit), a log_events mode, SLURM's terminal state,
    inactivity while RUNNING (stall) and, after a grace period, lost.
    """
    if obs.source == "unknown":
        return Verdict("unknown", None, obs.reason or "SLURM did not answer", None)
    live = observation_live(obs)
    state = obs.state.lower() if obs.state else "missing"
    if facts.success_seen:
        return Verdict(state, "success", "termination string found in the log", live)
    if facts.log_mode:
        return Verdict(state, facts.log_mode, facts.log_reason, live)
    if obs.source in ("squeue", "sacct") and obs.state in TERMINAL_MODE:
        mode = TERMINAL_MODE[obs.state]
        reason = "SLURM state %s" % obs.state
        if obs.exit_code and obs.exit_code != "0:0":
            reason += " (exit code %s)" % obs.exit_code
        if mode == "success" and mon.termination_string:
            mode, reason = "incomplete", "COMPLETED without the termination string in the log"
        return Verdict(state, mode, reason, False)
    if obs.source == "missing":
        waited = now - facts.missing_since if facts.missing_since is not None else 0.0
        if obs.state:  # sacct still calls it live: accounting lags, the job is not lost
            return Verdict("missing", None, "not in squeue; sacct still says %s" % obs.state, None)
        if waited >= mon.lost_after:
            return Verdict("lost", "lost", "neither squeue nor sacct has known the job for %ds" % waited, None)
        return Verdict("missing", None, "not in squeue or sacct (for %ds)" % waited, None)
    if obs.state == "RUNNING" and mon.inactivity_threshold_seconds:
        quiet = now - (facts.last_activity or facts.running_since or now)
        if quiet >= mon.inactivity_threshold_seconds:
            return Verdict("running", "stall", "log silent for %ds while RUNNING" % quiet, True)
    return Verdict(state, None, "", live if live is not None else True)


class Decision(NamedTuple):
    action: str  # restart / finalize / stop
    delay: float
    reason: str


class Ended(NamedTuple):
    """How one attempt ended, as far as deciding the next one goes."""
    mode: str
    signature: str  # its exit code and the log line that decided it
    runtime: Optional[float]  # seconds SLURM ran it (None: unknown)


FAST_FAILURE_SECONDS = 60.0
# Modes that say something about the cluster or the clock, not about the job itself.
CIRCUMSTANTIAL_MODES = frozenset(("success", "incomplete", "timeout", "node_fail", "preempted",
                                  "cancelled", "stall", "lost"))


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
    policy = policies.get(mode) or Policy("stop")
    if policy.action == "finalize":
        return Decision("finalize", 0.0, "policy for %s: finalize" % mode)
    if policy.action in ("stop", "ignore"):
        return Decision("stop", 0.0, "policy for %s: stop" % mode)
    used = sum(1 for h in history if h.mode == mode)
    if used >= policy.max_attempts:
        return Decision("stop", 0.0, "%s %d of %d: stop" % (mode, used, policy.max_attempts))
    if repeats_deterministically(history):
        return Decision("stop", 0.0, "%s repeated identically within %ds of starting: deterministic, stop"
                        % (mode, FAST_FAILURE_SECONDS))
    delay = min(policy.backoff_seconds * (2 ** (used - 1)), policy.backoff_max_seconds) if policy.backoff_seconds else 0.0
    return Decision("restart", delay, "%s %d of %d: restart%s" % (
        mode, used, policy.max_attempts, " in %ds" % delay if delay else ""))


# ============================================================================
# 6. State store
# ============================================================================

ACTIVE, FINALIZED, STOPPED, CANCELLED = "active", "finalized", "stopped", "cancelled"
TIME_FIELDS = frozenset(("intent_at", "submitted_at", "ended_at", "running_since", "missing_since",
                         "slurm_start", "slurm_end", "acct_wait_since",
                         "last_log_growth_at", "cancel_requested_at", "next_submit_at",
                         "last_updated", "created_at", "updated_at", "time"))


def _to_json_value(key, value):
    return iso_time(value) if key in TIME_FIELDS and isinstance(value, (int, float)) else value


def _from_json_value(key, value):
    if key in TIME_FIELDS and isinstance(value, str):
        return parse_iso(value)
    return value


_STR, _INT, _OPT_STR = (str,), (int,), (str, type(None))


def _require(d, fields, where):
    """A state file edited or damaged into valid JSON must still be refused: check the
    fields a reader relies on (ValueError names the first one that is wrong)."""
    if not isinstance(d, dict):
        raise ValueError("%s is not an object" % where)
    for key, types in fields:
        if key not in d:
            raise ValueError("%s has no %r" % (where, key))
        value = d[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError("%s: %r is %s" % (where, key, _type_name(value)))


class Attempt(object):
    """One SLURM submission of a logical job (or a SLURM job adopted for it)."""

    __slots__ = (
        "attempt", "job_id", "raw_id", "array_task", "origin", "submit_state", "submit_error",
        "intent_at", "submitted_at", "resolved_log_path", "log_offset", "log_inode", "log_head",
        "last_log_growth_at", "running_since", "missing_since", "acct_wait_since", "slurm_start", "slurm_end",
        "requeues", "last_slurm_state",
        "last_monitor_state", "exit_code", "live", "success_seen", "log_mode", "log_reason",
        "outcome", "reason", "ended_at", "cancel_requested_at", "cancel_result", "log_matches", "actions")
    DEFAULTS = {"log_offset": 0, "requeues": 0, "live": False, "success_seen": False,
                "log_matches": (), "actions": ()}

    def __init__(self, **fields):
        for name in self.__slots__:
            value = fields.pop(name, self.DEFAULTS.get(name))
            setattr(self, name, list(value) if isinstance(value, tuple) else value)
        if fields:
            raise TypeError("unknown attempt fields: %s" % ", ".join(fields))

    def to_dict(self):
        d = OrderedDict((k, _to_json_value(k, getattr(self, k))) for k in self.__slots__)
        d["actions"] = [OrderedDict((k, _to_json_value(k, v)) for k, v in a.items()) for a in self.actions]
        return d

    REQUIRED = (("attempt", _INT), ("job_id", _OPT_STR), ("live", (bool,)), ("log_offset", _INT),
                ("outcome", _OPT_STR), ("submit_state", _OPT_STR), ("actions", (list,)))

    @classmethod
    def from_dict(cls, d):
        _require(d, cls.REQUIRED, "an attempt")
        fields = dict((k, _from_json_value(k, d.get(k, cls.DEFAULTS.get(k)))) for k in cls.__slots__)
        fields["actions"] = [dict((k, _from_json_value(k, v)) for k, v in a.items()) for a in d.get("actions", ())]
        return cls(**fields)

    def ended(self, mode, end):
        """SLURM's own start and end times when sacct gave them; else what this monitor saw."""
        if self.slurm_start and self.slurm_end:
            runtime = self.slurm_end - self.slurm_start
        elif self.running_since:
            runtime = end - self.running_since
        else:
            runtime = None
        return Ended(mode, "%s|%s" % (self.exit_code or "", self.log_reason or ""), runtime)

    def facts(self):
        # Activity is what this monitor saw grow, on its own clock: a shared filesystem's
        # mtimes come from another host's clock.
        activity = [t for t in (self.running_since, self.last_log_growth_at) if t]
        return Facts(self.success_seen, self.log_mode, self.log_reason or "", self.running_since,
                     max(activity) if activity else None, self.missing_since)


class Job(object):
    """A logical job of the plan, keyed by name, with its whole attempt history."""

    __slots__ = ("name", "index", "status", "attempts", "array", "last_monitor_state", "last_slurm_state",
                 "last_event", "last_updated", "next_submit_at", "reason", "submit_failures",
                 "duplicate_warned", "seen_copies")
    DEFAULTS = {"status": ACTIVE, "array": False, "submit_failures": 0, "duplicate_warned": False,
                "seen_copies": ()}

    def __init__(self, name, index, **fields):
        self.name = name
        self.index = index
        for key in self.__slots__[2:]:
            setattr(self, key, fields.pop(key, self.DEFAULTS.get(key)))
        if self.attempts is None:
            self.attempts = []
        self.seen_copies = list(self.seen_copies)
        if fields:
            raise TypeError("unknown job fields: %s" % ", ".join(fields))

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

    def unresolved_intent(self):
        """A job no longer active whose submission sbatch answered with an error: until a
        lookup by tag comes back empty, that submission may have queued it after all."""
        return self.status != ACTIVE and any(a.job_id is None and a.submit_state == "intent"
                                             for a in self.attempts)

    def to_dict(self):
        d = OrderedDict((k, _to_json_value(k, getattr(self, k))) for k in self.__slots__)
        d["attempts"] = [a.to_dict() for a in self.attempts]
        d["job_id"] = self.job_id
        return d

    REQUIRED = (("name", _STR), ("index", _INT), ("status", _STR), ("attempts", (list,)))

    @classmethod
    def from_dict(cls, d):
        _require(d, cls.REQUIRED, "a job")
        if d["status"] not in (ACTIVE, FINALIZED, STOPPED, CANCELLED):
            raise ValueError("job %s has status %r" % (d["name"], d["status"]))
        fields = dict((k, _from_json_value(k, d.get(k, cls.DEFAULTS.get(k)))) for k in cls.__slots__[2:])
        fields["attempts"] = [Attempt.from_dict(a) for a in d.get("attempts", ())]
        return cls(d["name"], d["index"], **fields)


class Session(object):
    """A submitted plan: the state file's content, plus the manifest it points to."""

    __slots__ = ("path", "session_id", "project", "manifest_path", "created_at", "updated_at",
                 "config", "monitor_overrides", "event_seq", "outbox", "jobs", "plan", "_monitoring",
                 "_policies", "_matcher", "journal_seq")

    def __init__(self, path, session_id, project, manifest_path, created_at, config,
                 monitor_overrides=(), event_seq=0, jobs=(), updated_at=None, outbox=()):
        self.path = path
        self.session_id = session_id
        self.project = project
        self.manifest_path = manifest_path
        self.created_at = created_at
        self.updated_at = updated_at or created_at
        self.config = config
        self.monitor_overrides = list(monitor_overrides)
        self.event_seq = event_seq
        self.outbox = list(outbox)  # events recorded but not yet appended to the journal
        self.jobs = list(jobs)
        self.plan = None
        self._monitoring = self._policies = self._matcher = None
        self.journal_seq = None  # what the journal file already holds; read on first sync

    @property
    def monitoring(self):
        if self._monitoring is None:
            self._monitoring = make_monitoring(self.config["monitoring"])
        return self._monitoring

    @property
    def policies(self):
        if self._policies is None:
            self._policies = make_policies(self.config["restart"])
        return self._policies

    @property
    def matcher(self):
        if self._matcher is None:
            self._matcher = LogMatcher(self.monitoring)
        return self._matcher

    def apply_monitor_overrides(self, overrides):
        """Merge `-o` overrides into the session's monitoring config and remember them."""
        if not overrides:
            return
        mon = OrderedDict(self.config["monitoring"])
        prefixed = [o if o.startswith("monitoring.") else "monitoring." + o for o in overrides]
        tree = apply_overrides(OrderedDict([("monitoring", mon)]), prefixed)
        c = _Checker("override")
        c.obj(tree, "", ("monitoring",))
        self.config["monitoring"] = validate_monitoring(tree["monitoring"], c)
        validate_restart(self.config["restart"], self.config["monitoring"], c)
        for o in prefixed:  # the latest value of each key, once
            key = o.partition("=")[0]
            self.monitor_overrides = [x for x in self.monitor_overrides if x.partition("=")[0] != key] + [o]
        self._monitoring = self._policies = self._matcher = None

    def job(self, name):
        for j in self.jobs:
            if j.name == name:
                return j
        return None

    def active(self):
        """Work is left: a job still active, a cancel SLURM has not yet carried out, or a
        failed submission not yet known to have queued nothing."""
        return any(j.status == ACTIVE or j.unresolved_intent()
                   or any(a.live and a.cancel_requested_at for a in j.attempts) for j in self.jobs)

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
        if event != "state":  # status shows the SLURM state beside it; keep what autoexp saw or did
            job.last_event = event
        job.last_updated = now
        return rec

    def add_action(self, job, att, action, mode, reason, now):
        stamp = iso_time(now).replace("-", "").replace(":", "")  # 20261129T082433.123Z
        rec = OrderedDict([("id", "%s_%s_%d_%s" % (stamp, job.name, att.attempt, action)),
                           ("time", now), ("action", action), ("mode", mode), ("reason", reason)])
        att.actions.append(rec)
        return rec

    def to_dict(self):
        return OrderedDict([
            ("schema_version", STATE_SCHEMA_VERSION), ("kind", "autoexp-session"),
            ("session_id", self.session_id), ("project", self.project),
            ("manifest_path", self.manifest_path), ("created_at", iso_time(self.created_at)),
            ("updated_at", iso_time(self.updated_at)), ("config", self.config),
            ("monitor_overrides", self.monitor_overrides), ("event_seq", self.event_seq),
            ("outbox", [OrderedDict((k, _to_json_value(k, v)) for k, v in e.items()) for e in self.outbox]),
            ("jobs", [j.to_dict() for j in self.jobs])])

    REQUIRED = (("session_id", _STR), ("project", _STR), ("manifest_path", _STR), ("created_at", _STR),
                ("config", (dict,)), ("event_seq", _INT), ("jobs", (list,)))

    @classmethod
    def from_dict(cls, d, path):
        _require(d, cls.REQUIRED, "the session")
        outbox = [OrderedDict((k, _from_json_value(k, v)) for k, v in e.items()) for e in d.get("outbox", ())]
        return cls(path, d["session_id"], d["project"], d["manifest_path"], parse_iso(d["created_at"]),
                   d["config"], d.get("monitor_overrides", ()), d.get("event_seq", 0),
                   [Job.from_dict(j) for j in d["jobs"]], parse_iso(d.get("updated_at")), outbox)


class SessionLock(object):
    """One writer per session: a POSIX (fcntl) lock, which NFS and Lustre propagate between
    login nodes, unlike flock on some of them. The holder writes its host and pid into the
    file so that the loser can say who holds it; the kernel drops the lock when the holder
    dies, so a SIGKILLed monitor never blocks the next run."""

    __slots__ = ("path", "fd")

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self, command="autoexp"):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (IOError, OSError) as e:
            os.close(fd)
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise StateError("cannot lock %s: %s" % (self.path, e.strerror or e), exit_code=EXIT_FAILURE)
            raise LockedError("session is busy: %s" % self.describe_holder())
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                           "since": iso_time(time.time())}).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info + b"\n", 0)
        self.fd = fd
        return self

    def describe_holder(self):
        try:
            with open(self.path, "rb") as f:
                info = json.loads(f.read().decode("utf-8") or "{}")
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

    __slots__ = ("root",)

    def __init__(self, root):
        self.root = os.path.abspath(root)

    def session_path(self, session_id):
        return os.path.join(self.root, session_id + ".json")

    def events_path(self, session):
        return os.path.join(self.root, session.session_id + ".events.jsonl")

    def actions_dir(self, session):
        return os.path.join(self.root, "actions", session.session_id)

    def requests_dir(self, session_id):
        return os.path.join(self.root, "requests", session_id)

    def plan_manifest(self, plan_id):
        return os.path.join(self.root, "plans", plan_id, "manifest.json")

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

    def load(self, path, with_plan=True):
        """Read a session file; anything wrong with it is a loud StateError, never a reset."""
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
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=OrderedDict)
        except (ValueError, UnicodeDecodeError) as e:
            raise StateError("session file %s is not valid JSON (%s); %s" % (path, e, hint))
        if not isinstance(data, dict) or data.get("kind") != "autoexp-session":
            raise StateError("%s is not an autoexp session file; %s" % (path, hint))
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise StateError("session file %s has no valid schema_version; %s" % (path, hint))
        if version > STATE_SCHEMA_VERSION:
            raise StateError("session file %s has schema version %r, newer than this autoexp "
                             "(%s, schema %d) understands; use the newer autoexp that wrote it"
                             % (path, version, __version__, STATE_SCHEMA_VERSION))
        try:
            session = Session.from_dict(data, path)
            session.matcher, session.policies  # the config it acts by must be whole too
        except (KeyError, TypeError, ValueError, AttributeError, re.error, ConfigError) as e:
            raise StateError("session file %s is incomplete (%s: %s); %s" % (path, type(e).__name__, e, hint))
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
        return session

    def save(self, session, now):
        session.updated_at = now
        try:
            atomic_write(session.path, dump_json(session.to_dict()), crash_prefix="state")
        except (IOError, OSError) as e:
            raise StateError("cannot write %s: %s" % (session.path, e.strerror or e), exit_code=EXIT_FAILURE)

    def lock(self, session_id, command):
        lock = SessionLock(os.path.join(self.root, session_id + ".lock")).acquire(command)
        self._remove_leftovers(session_id)
        return lock

    def _remove_leftovers(self, session_id):
        """Temporary files of a writer of this session that died between creating and
        renaming them: only a lock holder may remove them, none can be in use then."""
        folders = [(self.root, "." + session_id + ".json."), (os.path.join(self.root, "actions", session_id), ".")]
        for folder, prefix in folders:
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if name.startswith(prefix) and name.endswith(".tmp"):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    # The journal (events.jsonl) and the action payloads are derived from the state file,
    # written after it: a crash in between leaves them behind, never ahead, and the next
    # writer fills the gap (events wait in the state's outbox until the journal has them;
    # the journal's last seq says which it has), so each appears exactly once.

    def save_and_sync(self, session, now, changed=True):
        """Write the state (when it changed), then the journal and payloads it announces; a
        payload just written is marked so by one more state write, or a payload a consumer
        deleted would come back."""
        if changed:
            self.save(session, now)
        if self.sync_outputs(session):
            self.save(session, now)

    def sync_outputs(self, session):
        """Append the outbox to the journal, write missing payloads; True if any payload was."""
        path = self.events_path(session)
        if session.journal_seq is None:
            session.journal_seq = _last_journal_seq(path)
        events = [e for e in session.outbox if e["seq"] > session.journal_seq]
        actions = [(job, att, act) for job in session.jobs for att in job.attempts
                   for act in att.actions if not act.get("written")]
        if events:
            lines = [json.dumps(OrderedDict((k, iso_time(v) if k == "time" else v) for k, v in e.items()),
                                sort_keys=True) for e in events]
            data = ("\n".join(lines) + "\n").encode("utf-8")
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a crash cut the last line short: keep ours whole
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            session.journal_seq = events[-1]["seq"]
        session.outbox = []  # all in the journal now; the next save drops them from the state
        if not actions:
            return False
        folder = self.actions_dir(session)
        for job, att, act in actions:
            target = os.path.join(folder, act["id"] + ".json")
            if os.path.exists(target):
                act["written"] = True
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
            crash_point("after_action_payload")
        return True


def _last_journal_seq(path):
    """The seq of the journal's last complete line (0 when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read()
    except (IOError, OSError):
        return 0
    for line in reversed(tail.split(b"\n")):
        try:
            return int(json.loads(line.decode("utf-8"))["seq"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
    return 0


# ============================================================================
# 7. Controller
# ============================================================================

class Snapshot(object):
    """This cycle's squeue answer, indexed by job id and by autoexp tag."""

    __slots__ = ("by_id", "by_tag")

    def __init__(self, rows):
        self.by_id = {}
        self.by_tag = {}
        for row in rows:
            self.by_id[row.job_id] = row
            if row.comment.startswith("autoexp:"):
                self.by_tag.setdefault(row.comment, []).append(row)


class Lookup(object):
    """What one session learned from sacct this cycle, beyond squeue."""

    __slots__ = ("acct", "acct_ok", "acct_error", "named", "named_by_id", "named_ok", "named_error")

    def __init__(self):
        self.acct, self.acct_ok, self.acct_error = {}, True, ""
        self.named, self.named_by_id, self.named_ok, self.named_error = [], {}, True, ""


class Todo(object):
    """Side effects decided in a cycle; they run only after the state that announces them
    (the intent) is on disk."""

    __slots__ = ("submit", "cancel", "requests_done")

    def __init__(self):
        self.submit, self.cancel, self.requests_done = [], [], []

    def add_cancel(self, job, att):
        # One attempt can be asked for twice in a cycle (a user's cancel request taken,
        # then the same attempt's unanswered cancel seen): scancel it once.
        if not any(a is att for _, a in self.cancel):
            self.cancel.append((job, att))


class Controller(object):
    """Observe, classify, act, persist. The clock, sleep and SLURM client are injected."""

    __slots__ = ("store", "slurm", "report", "clock", "sleep", "dry_run", "stop_requested",
                 "unknown_since", "unknown_failures", "sacct_down_since", "sacct_failed", "changes",
                 "json_changes", "name_sessions")

    def __init__(self, store, slurm, report, clock=time.time, sleep=time.sleep, dry_run=False):
        self.store = store
        self.slurm = slurm
        self.report = report
        self.clock = clock
        self.sleep = sleep
        self.dry_run = dry_run
        self.stop_requested = False
        self.unknown_since = None
        self.unknown_failures = 0
        self.sacct_down_since = None
        self.sacct_failed = False  # in the last cycle: what depended on it waits
        self.changes = 0
        self.json_changes = None  # a list when `--json` wants every change as a document
        self.name_sessions = False  # event lines say SESSION/JOB when several sessions are watched

    # -- the loop ----------------------------------------------------------------------

    def run(self, sessions, once=False, interval=None):
        """Cycle until every job is finalized, stopped or cancelled; returns an exit code."""
        while True:
            ok = self.cycle(sessions)
            live = [s for s in sessions if s.active() or settling(s, self.clock())]
            if not live:
                for s in sessions:
                    self.report.info("session %s done: %s" % (s.session_id, count_summary(s)))
                return EXIT_OK
            if once:  # as reconcile: the pass failed if squeue or sacct did not answer
                return EXIT_OK if ok and not self.sacct_failed else EXIT_FAILURE
            wait = interval or min(s.monitoring.interval_seconds for s in live)
            if not ok:
                cap = max(wait, min(s.monitoring.unknown_backoff_max_seconds for s in live))
                wait = min(wait * (2 ** min(self.unknown_failures, 20)), cap)
            if self._pause(wait):
                return EXIT_INTERRUPTED

    def _pause(self, seconds):
        end = self.clock() + seconds
        while not self.stop_requested:
            left = end - self.clock()
            if left <= 0:
                return False
            self.sleep(min(left, 0.5))
        return True

    def cycle(self, sessions):
        """One observe-classify-act-persist pass over the sessions; False if SLURM was UNKNOWN."""
        now = self.clock()
        self.name_sessions = len(sessions) > 1
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
            return False
        if self.unknown_since is not None:
            self.report.info("SLURM answers again after %ds" % (now - self.unknown_since))
            self.unknown_since, self.unknown_failures = None, 0
        snap = Snapshot(rows)
        self.sacct_failed = False
        for s in sessions:
            self.session_cycle(s, snap, now)
        if self.sacct_down_since is not None and not self.sacct_failed:
            self.report.info("sacct answers again after %ds" % (self.clock() - self.sacct_down_since))
            self.sacct_down_since = None
        return True

    def _sacct_down(self, error):
        self.sacct_failed = True
        if self.sacct_down_since is None:
            self.sacct_down_since = self.clock()
            self.report.warn("sacct did not answer (%s); the jobs it was asked about wait until it does" % error)

    def session_cycle(self, s, snap, now):
        before = fingerprint(s)
        todo = Todo()
        self._take_requests(s, now, todo)
        look = self._lookups(s, snap, now)
        for job in s.jobs:
            self._step(s, job, snap, look, now, todo)
            crash_point("between_jobs")
        if s.monitoring.debug_sync:
            for job in s.jobs:
                self.report.result("debug %s %s: status=%s slurm=%s monitor=%s attempts=%d" % (
                    s.session_id, job.name, job.status, job.last_slurm_state, job.last_monitor_state,
                    len(job.attempts)))
        self.commit(s, now, todo, fingerprint(s) != before)

    # -- observing -----------------------------------------------------------------

    def _lookups(self, s, snap, now):
        """At most one sacct by id (for tracked jobs squeue no longer lists) and one by name
        (for intents and vanished jobs that may have a successor squeue cannot show)."""
        look = Lookup()
        watched = [a for j in s.jobs for a in j.attempts if a.live and a.job_id]
        # squeue knows no exit codes: a job it shows ended is asked about too, in the same call
        gone = [a for a in watched if a.job_id not in snap.by_id or snap.by_id[a.job_id].state not in ACTIVE_STATES]
        if gone:
            since = min(a.intent_at or a.submitted_at or now for a in gone) - 3600
            try:
                look.acct = self.slurm.sacct(sorted(a.job_id for a in gone), since)
            except SlurmUnavailable as e:
                look.acct_ok, look.acct_error = False, str(e)
                self._sacct_down(look.acct_error)
        seekers = []
        for job in s.jobs:
            att = job.current
            if job.status != ACTIVE and not job.unresolved_intent():
                continue
            if att is None or (att.job_id is None and att.submit_state == "intent"):
                if not self._candidates(s, job, snap, look):
                    seekers.append(job)
            elif att.live and look.acct_ok and att.job_id not in snap.by_id and att.job_id not in look.acct:
                seekers.append(job)
        if seekers:
            names = set()
            for job in seekers:
                names.add(job.name)
                if s.plan.array is not None:
                    names.add(s.plan.array.name)
            since = min(self._since(s, j) for j in seekers) - 3600
            try:
                look.named = self.slurm.sacct_by_name(sorted(names), since)
            except SlurmUnavailable as e:
                look.named_ok, look.named_error = False, str(e)
                self._sacct_down(look.named_error)
            look.named_by_id = dict((r.job_id, r) for r in look.named)
        return look

    def _candidates(self, s, job, snap, look):
        """SLURM jobs that carry this job's tag but are not in its history: a submission whose
        id was never recorded, or a resubmission made outside autoexp. Newest first.

        The tag must be seen: squeue always shows it; sacct only once the job has ended
        (with AccountingStoreFlags=job_comment). A name alone is never enough, since two
        plans of one project share their job names."""
        known = job.known_ids()
        tag = session_tag(s.session_id, job.name)
        array = s.plan.array
        found = {}
        for row in snap.by_tag.get(tag, ()):
            found[row.job_id] = row
        if array is not None:
            for row in snap.by_tag.get(array.tag, ()):
                if split_job_id(row.job_id)[1] == job.index:
                    found[row.job_id] = row
        for row in look.named:
            if row.job_id in snap.by_id:
                continue  # squeue shows its current tag, which wins over sacct's
            task = split_job_id(row.job_id)[1]
            if ((task is None and row.name == job.name and row.comment == tag) or
                    (array is not None and task == job.index and row.name == array.name and row.comment == array.tag)):
                found[row.job_id] = row
        for job_id in known:
            found.pop(job_id, None)
        return sorted(found.values(), key=lambda r: job_id_sort_key(r.job_id), reverse=True)

    @staticmethod
    def _revived(job, snap):
        """Attempts autoexp saw end that SLURM runs again (a finished job requeued by hand
        or by SLURM, a job that reappeared after it was called lost), the latest one too:
        during its restart backoff it must be followed, not submitted again. An id that a
        live attempt already follows is no copy."""
        followed = set(a.job_id for a in job.attempts if a.live)
        rows = []
        for a in job.attempts:
            row = snap.by_id.get(a.job_id) if a.job_id else None
            if (row is not None and not a.live and a.job_id not in followed
                    and row.state in ACTIVE_STATES and row not in rows):
                rows.append(row)
        return rows

    @staticmethod
    def _since(s, job):
        """The earliest a SLURM job of this job's current attempt can have been submitted;
        for a job with no attempt yet, when its plan was made."""
        att = job.current
        if att is not None and att.intent_at:
            return att.intent_at
        return parse_iso(s.plan.created_at) if s.plan is not None else s.created_at

    def _observe(self, att, snap, look, now):
        """squeue first; sacct for what it no longer lists. UNKNOWN whenever a query that
        could have told failed, or SLURM names a state autoexp does not know."""
        row = snap.by_id.get(att.job_id)
        arow = look.acct.get(att.job_id) or look.named_by_id.get(att.job_id)
        if row is not None:
            if row.state in TERMINAL_MODE:
                # squeue says that it ended, only sacct how (exit code, run time), and
                # accounting lags seconds behind: wait for it a little, never through an outage
                if not look.acct_ok:
                    return Observation("unknown", reason="sacct failed: %s" % look.acct_error)
                if arow is None or arow.state not in TERMINAL_MODE:
                    if att.acct_wait_since is None:
                        att.acct_wait_since = now
                    if now - att.acct_wait_since < ACCOUNTING_GRACE:
                        return Observation("unknown", reason="ended; waiting for sacct's record of it")
            obs = Observation("squeue", row.state, row.reason, arow.exit_code if arow else "", row.raw_id,
                              arow.start if arow else None, arow.end if arow else None)
        elif arow is None:
            if not (look.acct_ok and look.named_ok):
                return Observation("unknown", reason="sacct failed: %s" % (look.acct_error or look.named_error))
            return Observation("missing")
        elif arow.state in ACTIVE_STATES:
            # squeue lists every job the controller holds; an active sacct row for a job it
            # does not list is accounting lagging behind: not lost, not ended either.
            return Observation("missing", arow.state, "sacct still says %s" % arow.state, arow.exit_code,
                               arow.raw_id, arow.start, arow.end)
        else:
            obs = Observation("sacct", arow.state, "", arow.exit_code, arow.raw_id, arow.start, arow.end)
        if obs.state not in ACTIVE_STATES and obs.state not in TERMINAL_MODE:
            return Observation("unknown", reason="SLURM reports state %s, which autoexp does not know" % obs.state)
        return obs

    # -- deciding --------------------------------------------------------------------

    def _step(self, s, job, snap, look, now, todo):
        self._step_current(s, job, snap, look, now, todo)
        for att in job.attempts[:-1]:  # an earlier attempt whose cancel SLURM has not carried out
            if att.live and att.job_id and att.cancel_requested_at:
                self._watch(s, job, att, self._observe(att, snap, look, now), now, todo)

    def _step_current(self, s, job, snap, look, now, todo):
        cands = self._candidates(s, job, snap, look)
        att = job.current
        if not (att is not None and att.job_id is None and att.submit_state == "intent"):
            # while no submission of its own is in doubt, any other job with its tag is a copy
            # that a later intent must never take for its own
            job.seen_copies.extend(c.job_id for c in cands if c.job_id not in job.seen_copies)
        revived = self._revived(job, snap)
        running_copies = [r for r in cands if r.state in ACTIVE_STATES] + revived
        att = job.current
        if job.status != ACTIVE:
            self._step_inactive(s, job, att, running_copies, snap, look, now, todo)
            return
        if att is None:  # registered, never submitted: adopt it from SLURM, else submit it
            if cands:
                self._adopt(s, job, running_copies[0] if running_copies else cands[0], "external", now)
            elif look.named_ok:
                self._new_intent(s, job, now, todo, array=job.array)
            return
        if att.job_id is None:
            if att.submit_state != "intent":
                return
            newer = newer_than_history(job, cands)
            if newer:
                self._adopt(s, job, newer[0], "recovered", now, att=att)
                cands = cands[1:]  # in the history now: not a stranger to replace it with
                running_copies = [r for r in cands if r.state in ACTIVE_STATES] + revived
            elif not look.named_ok:
                self.report.detail("%s: cannot tell whether its submission reached SLURM (%s); waiting"
                                   % (job.name, look.named_error))
                return
            elif job.next_submit_at is None or now >= job.next_submit_at:
                todo.submit.append(job)
                return
            else:
                return
        if att.live:
            obs = self._observe(att, snap, look, now)
            if (att.outcome is None and cands and observation_live(obs) is not True
                    and (obs.source == "missing" or obs.state == "CANCELLED")
                    and job_id_sort_key(cands[0].job_id) > job_id_sort_key(att.job_id)):
                # cancelled (or vanished) and resubmitted outside autoexp: follow the new job
                self._note(s, job, att, obs, now)
                att.live = False
                self._finish(s, job, att, now, "replaced", "replaced by SLURM job %s, submitted outside autoexp"
                             % cands[0].job_id)
                att = self._adopt(s, job, cands[0], "external", now)
                obs = self._observe(att, snap, look, now)
                running_copies = [r for r in running_copies if r.job_id != att.job_id]
            elif running_copies and observation_live(obs) and not job.duplicate_warned:
                job.duplicate_warned = True
                self.report.warn("%s: SLURM job %s also carries its tag while %s runs; autoexp keeps "
                                 "watching %s only" % (job.name, running_copies[0].job_id, att.job_id, att.job_id))
            self._watch(s, job, att, obs, now, todo)
        if job.status == ACTIVE and att.outcome is not None and not att.live:
            if running_copies:
                # it already runs again (resubmitted by hand during the backoff, or an ended
                # attempt requeued): follow that job rather than submit a second one
                self._adopt(s, job, running_copies[0], "external", now)
            elif job.next_submit_at is not None and now >= job.next_submit_at:
                self._new_intent(s, job, now, todo, array=att.array_task is not None)

    def _step_inactive(self, s, job, att, running_copies, snap, look, now, todo):
        """Finalized, stopped or cancelled: no decisions, but a pending cancel is seen through,
        and a copy started under its tag is either followed or cancelled."""
        if running_copies and job.status in (STOPPED, FINALIZED):
            row = running_copies[0]
            if (att is not None and att.job_id is None and att.submit_state == "intent"
                    and newer_than_history(job, [row])):
                # sbatch failed until autoexp gave up, yet one of the tries queued it
                att.outcome = att.reason = None
                att = self._adopt(s, job, row, "recovered", now, att=att)
            else:
                att = self._adopt(s, job, row, "external", now)
            job.status, job.reason = ACTIVE, None
            self._event(s, job, att, "reactivated", now, detail="SLURM job %s carries its tag" % row.job_id)
            return
        if job.status == CANCELLED:
            # the user cancelled this job: a straggler of an uncertain submission, or a copy
            # started by hand, must not run either
            for row in running_copies:
                self._cancel_copy(s, job, row, now, todo)
        if job.unresolved_intent() and look.named_ok:
            # squeue and sacct both answered, for long enough, and hold no job of this
            # failed submission
            for a in job.attempts:
                if (a.job_id is None and a.submit_state == "intent"
                        and now - (a.ended_at or a.intent_at or now) >= s.monitoring.unqueued_after):
                    a.submit_state = "abandoned"
        if att is not None and att.live and att.job_id:
            self._watch(s, job, att, self._observe(att, snap, look, now), now, todo)

    def _cancel_copy(self, s, job, row, now, todo):
        """A live SLURM job under the tag of a job the user cancelled: recorded as an
        attempt of its own, and cancelled like the others."""
        if any(a.job_id == row.job_id and a.cancel_requested_at for a in job.attempts):
            return
        att = Attempt(attempt=len(job.attempts) + 1, job_id=row.job_id, origin="external",
                      submit_state="submitted", intent_at=self._since(s, job), submitted_at=now, live=True,
                      array_task=split_job_id(row.job_id)[1])
        job.attempts.append(att)
        self._finish(s, job, att, now, "cancelled", "SLURM job %s carries the tag of a job cancelled with "
                     "autoexp" % row.job_id)
        self._request_cancel(s, job, att, now, todo, "the job was cancelled with autoexp")

    def _watch(self, s, job, att, obs, now, todo):
        """Bring an attempt up to date with its observation; while its job is active and it
        is undecided, read its log and decide; see a requested cancel through in any case."""
        mon = s.monitoring
        deciding = job.status == ACTIVE and att.outcome is None
        self._note(s, job, att, obs, now)
        log_ok = self._read_log(s, job, att, obs, now) if deciding else True
        facts = att.facts()
        if not log_ok:
            facts = facts._replace(last_activity=now)  # an unreadable log is no evidence of a stall
        verdict = classify(obs, facts, now, mon)
        if (verdict.live is False or verdict.mode == "lost") and att.live:
            att.live = False
            att.ended_at = now
        if deciding:
            att.last_monitor_state = job.last_monitor_state = verdict.monitor_state
            if verdict.mode:
                self._conclude(s, job, att, verdict, now, todo)
        elif att.live and att.cancel_requested_at and observation_live(obs):
            # No result: the process that decided the cancel died before scancel returned;
            # a failed scancel: SLURM did not take it. Both are asked again at once. A
            # cancel SLURM took is repeated only if the job outlives SLURM's KillWait.
            result = att.cancel_result
            if (result is None or not result["ok"]
                    or now - parse_iso(result["time"]) >= max(60.0, 2 * mon.interval_seconds)):
                todo.add_cancel(job, att)

    def _note(self, s, job, att, obs, now):
        """Record what SLURM said about the attempt: ids, times, state changes, requeues."""
        if obs.source in ("squeue", "sacct"):
            if obs.raw_id and obs.state != "PENDING":
                att.raw_id = obs.raw_id
            if obs.start:
                att.slurm_start = obs.start
            if obs.end:
                att.slurm_end = obs.end
            if obs.state == "RUNNING" and att.running_since is None:
                att.running_since = now
            elif obs.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED") and att.running_since is not None:
                # Requeued by SLURM under the same id: the same attempt, not a failure.
                att.requeues += 1
                att.running_since = None
                self._event(s, job, att, "requeued", now, detail="back to %s under the same id" % obs.state)
            if obs.state != att.last_slurm_state:
                self._event(s, job, att, "state", now, detail="%s -> %s" % (att.last_slurm_state or "new", obs.state))
                att.last_slurm_state = obs.state
                if att is job.current:
                    job.last_slurm_state = obs.state
            if obs.exit_code:
                att.exit_code = obs.exit_code
            att.missing_since = None
        elif obs.source == "missing" and att.missing_since is None:
            att.missing_since = now
            self._event(s, job, att, "missing", now, detail=obs.reason or "not in squeue or sacct")

    def _log_template(self, s, job, job_id=None, array_task=None):
        """The --output pattern an attempt writes to: its array's, or its own script's."""
        in_array = (split_job_id(job_id)[1] if job_id else array_task) is not None
        if in_array and s.plan.array is not None:
            return s.plan.array.log_template, s.plan.array.name
        return s.plan.by_name[job.name].log_template, job.name

    def _log_baseline(self, s, job, att):
        """Where a new attempt's log reading starts. A log path without %j/%A/%a is shared
        by all attempts: the new one must not read the lines of the ones before it. (SLURM
        truncates the file when the job starts, unless --open-mode=append: a file that
        shrinks is then read from its start.)"""
        template, name = self._log_template(s, job, att.job_id, att.array_task)
        if re.search(r"%\d*[jAa]", template.replace("%%", "")):
            return
        path = resolve_log_path(template, "0", "0", name, self.slurm.user)
        att.resolved_log_path = path
        earlier = [a for a in job.attempts if a is not att and a.resolved_log_path == path]
        if att.origin == "submitted":
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    att.log_head = log_head(f, st.st_size)
            except (IOError, OSError):
                return
            att.log_offset, att.log_inode = st.st_size, st.st_ino
        elif earlier:  # adopted: it may have written already; start where the last one stopped
            last = earlier[-1]
            att.log_offset, att.log_inode, att.log_head = last.log_offset, last.log_inode, last.log_head

    def _read_log(self, s, job, att, obs, now):
        """Read the attempt's new log lines and record what they say; False if the log exists
        but could not be read."""
        if att.resolved_log_path is None:
            template, name = self._log_template(s, job, att.job_id)
            att.resolved_log_path = resolve_log_path(template, att.job_id, att.raw_id, name, self.slurm.user)
            if att.resolved_log_path is None:
                return True
        final = obs.source in ("squeue", "sacct") and obs.state not in ACTIVE_STATES
        while True:
            read = read_log(att.resolved_log_path, att.log_offset, att.log_inode, att.log_head, final)
            if not read.ok:
                return False
            if read.restarted and att.last_log_growth_at is not None:
                self._event(s, job, att, "log_restarted", now, detail="log truncated or replaced; reading it from its start")
            if read.offset != att.log_offset or read.restarted:
                att.last_log_growth_at = now
            att.log_offset, att.log_inode, att.log_head = read.offset, read.inode, read.head
            self._match_lines(s, job, att, read.lines, now)
            if read.eof or not final:
                return True  # an ended job is read to its end before it is decided

    def _match_lines(self, s, job, att, lines, now):
        for hit in s.matcher.scan(lines):
            if hit.event in att.log_matches:
                continue
            att.log_matches.append(hit.event)
            self._event(s, job, att, "log:" + hit.event, now, mode=hit.mode, detail=hit.line.strip()[:300])
            if hit.mode == "success":
                att.success_seen = True
            elif att.log_mode is None and s.policies.get(hit.mode, Policy("stop")).action != "ignore":
                att.log_mode = hit.mode
                att.log_reason = "log matched %s: %s" % (hit.event, hit.line.strip()[:200])

    def _conclude(self, s, job, att, verdict, now, todo):
        """The attempt reached a mode: record its outcome and apply the policy for it."""
        mode = verdict.mode
        history = [a.ended(a.outcome, a.ended_at or now) for a in job.attempts[:-1] if a.outcome]
        decision = decide(mode, s.policies, history + [att.ended(mode, now)])
        self._finish(s, job, att, now, mode, verdict.reason)
        s.add_action(job, att, decision.action, mode, decision.reason, now)
        if decision.action == "restart":
            job.next_submit_at = now + decision.delay
            job.last_monitor_state = "restarting"
            self._event(s, job, att, "restart_scheduled", now, mode=mode, detail=decision.reason)
            if att.live or mode == "lost":
                # a lost job may yet exist where SLURM could not show it: scancel is harmless
                # when it is gone, and it never runs beside its restart
                self._request_cancel(s, job, att, now, todo, "%s: cancelled before the restart" % mode)
        elif decision.action == "finalize":
            job.status, job.reason = FINALIZED, verdict.reason
            job.last_monitor_state = "finalized"
            self._event(s, job, att, "finalized", now, mode=mode, detail=decision.reason)
        else:
            job.status, job.reason = STOPPED, "%s (%s)" % (decision.reason, verdict.reason)
            job.last_monitor_state = "stopped"
            self._event(s, job, att, "stopped", now, mode=mode, detail=decision.reason)
            if att.live and mode != "success":
                self._request_cancel(s, job, att, now, todo, "%s: the job is stopped" % mode)

    def _finish(self, s, job, att, now, outcome, reason):
        att.outcome, att.reason = outcome, reason
        if not att.live and att.ended_at is None:
            att.ended_at = now
        att.last_monitor_state = outcome
        self._event(s, job, att, "outcome", now, mode=outcome, detail=reason)

    def _request_cancel(self, s, job, att, now, todo, why):
        att.cancel_requested_at = now
        self._event(s, job, att, "cancel_requested", now, detail=why)
        todo.add_cancel(job, att)

    def _adopt(self, s, job, row, origin, now, att=None):
        """Take a SLURM job found by tag as this job's attempt (a new one unless att is given)."""
        if att is None:
            # not ours to date: it can be as old as the attempt before it (or the plan), and
            # sacct's -S window starts from here
            att = Attempt(attempt=len(job.attempts) + 1, intent_at=self._since(s, job))
            job.attempts.append(att)
        att.job_id = row.job_id
        att.raw_id = row.raw_id if row.state != "PENDING" else None
        att.array_task = split_job_id(row.job_id)[1]
        att.origin = origin
        att.submit_state = "submitted"
        att.submitted_at = now
        att.live = True
        job.next_submit_at, job.submit_failures = None, 0
        self._log_baseline(s, job, att)
        self._event(s, job, att, "adopted", now, detail="SLURM job %s (%s, found by its tag)" % (row.job_id, row.state))
        return att

    def _new_intent(self, s, job, now, todo, array):
        att = Attempt(attempt=len(job.attempts) + 1, origin="submitted", submit_state="intent", intent_at=now,
                      array_task=job.index if array and s.plan.array is not None else None)
        job.attempts.append(att)
        self._log_baseline(s, job, att)
        job.next_submit_at = None
        job.last_monitor_state = "submitting"
        self._event(s, job, att, "intent", now, detail="submission %d decided" % att.attempt)
        todo.submit.append(job)

    def _take_requests(self, s, now, todo):
        """Cancel requests queued by `autoexp cancel` while this process held the lock."""
        folder = self.store.requests_dir(s.session_id)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        for name in names:
            if name.startswith("."):
                continue  # a request still being written (atomic_write's temporary file)
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    req = json.loads(f.read().decode("utf-8"))
            except (IOError, OSError, ValueError):
                continue
            self.cancel_jobs(s, req.get("jobs") or [], now, todo)
            todo.requests_done.append(path)

    def cancel_jobs(self, s, names, now, todo):
        """Mark jobs cancelled by the user and queue scancel for their live attempts."""
        for job in s.jobs:
            if names and job.name not in names:
                continue
            if job.status != ACTIVE:
                continue
            att = job.current
            job.status, job.reason = CANCELLED, "cancelled by the user"
            job.last_monitor_state = "cancelled"
            if att is None:
                continue
            self._event(s, job, att, "user_cancel", now, detail="autoexp cancel")
            if att.outcome is None:
                self._finish(s, job, att, now, "cancelled", "cancelled by the user (autoexp cancel)")
            s.add_action(job, att, "cancel", "cancelled", "cancelled by the user", now)
            if att.live and att.job_id:
                self._request_cancel(s, job, att, now, todo, "cancelled by the user")

    # -- acting (only after the intent is on disk) -------------------------------------

    def commit(self, s, now, todo, changed):
        """Persist the cycle's decisions (the intents), then carry out what they announce:
        queued cancel requests done, scancel, sbatch. A dry run only says what it would do."""
        if self.dry_run:
            for job, att in todo.cancel:
                self.report.result("would run: scancel %s   # %s" % (att.job_id, job.name))
            for group in self._submit_groups(todo.submit):
                self.report.result("would submit: %s" % self._describe_submit(s, group))
            return
        if changed:
            intents = bool(todo.submit or todo.cancel)
            if intents:
                crash_point("before_intent_write")
            self.store.save(s, now)
            if intents:
                crash_point("after_intent_write")
        self.store.save_and_sync(s, now, changed=False)
        for path in todo.requests_done:  # the cancels they asked for are on disk now
            try:
                os.unlink(path)
            except OSError:
                pass
        if todo.cancel:
            saved = self.clock()
            for job, att in todo.cancel:
                self._cancel(s, job, att)
                if self.clock() - saved >= 1.0:
                    saved = self.clock()
                    self._save(s, saved)
            self._save(s, self.clock())
        if todo.submit:
            self.submit_now(s, todo.submit)

    def _save(self, s, now):
        self.store.save_and_sync(s, now)

    def _cancel(self, s, job, att):
        """scancel; the result is saved with the next state write (a result lost to a crash
        only means the cancel is sent again: scancel is harmless twice)."""
        crash_point("before_scancel")
        ok, message = self.slurm.scancel(att.job_id)
        crash_point("after_scancel")
        now = self.clock()
        att.cancel_result = OrderedDict([("time", iso_time(now)), ("ok", ok), ("message", message)])
        self._event(s, job, att, "scancel" if ok else "scancel_failed", now,
                    detail="scancel %s%s" % (att.job_id, ": " + message if message else ""))

    def _describe_submit(self, s, jobs):
        script, args = self._sbatch_args(s, jobs)
        return " ".join(shlex.quote(a) for a in ["sbatch", "--parsable"] + args + [script])

    def _sbatch_args(self, s, jobs):
        if jobs[0].current.array_task is None:
            pj = s.plan.by_name[jobs[0].name]
            return pj.script_path, list(pj.sbatch_args)
        array = s.plan.array
        spec = ",".join(str(j.current.array_task) for j in jobs)
        if array.max_running:
            spec += "%%%d" % array.max_running
        return array.script_path, list(array.sbatch_args) + ["--array=" + spec]

    @staticmethod
    def _submit_groups(jobs):
        """One sbatch per single job, and one for all the array tasks."""
        singles = [j for j in jobs if j.current.array_task is None]
        tasks = sorted((j for j in jobs if j.current.array_task is not None), key=lambda j: j.index)
        return [[j] for j in singles] + ([tasks] if tasks else [])

    def submit_now(self, s, jobs):
        """sbatch every job whose intent is on disk. Results are saved every second and at
        the end, not after each sbatch (a sweep of thousands would rewrite the state
        thousands of times): a crash in between loses ids the next cycle finds by tag."""
        saved = self.clock()
        for group in self._submit_groups(jobs):
            self._sbatch(s, group)
            if self.clock() - saved >= 1.0:
                saved = self.clock()
                self._save(s, saved)
        self._save(s, self.clock())

    def _sbatch(self, s, jobs):
        mon = s.monitoring
        script, args = self._sbatch_args(s, jobs)
        crash_point("before_sbatch")
        res = self.slurm.sbatch(script, args)
        crash_point("after_sbatch")
        now = self.clock()
        for job in jobs:
            att = job.current
            if res.outcome == "ok":
                att.job_id = res.job_id if att.array_task is None else "%s_%d" % (res.job_id, att.array_task)
                att.submit_state, att.submitted_at, att.live, att.submit_error = "submitted", now, True, None
                job.submit_failures, job.next_submit_at = 0, None
                job.last_monitor_state = "submitted"
                self._event(s, job, att, "submitted", now, detail="SLURM job %s" % att.job_id)
            elif res.outcome == "permanent":
                att.submit_state, att.submit_error = "failed", res.message
                self._finish(s, job, att, now, "submit_failed", "sbatch refused the job: %s" % res.message)
                job.status, job.reason = STOPPED, "sbatch refused the job: %s" % res.message
                job.last_monitor_state = "stopped"
                s.add_action(job, att, "stop", "submit_failed", job.reason, now)
                self._event(s, job, att, "stopped", now, mode="submit_failed", detail="no retry: sbatch refused it")
            else:
                job.submit_failures += 1
                att.submit_error = res.message
                if res.outcome == "throttled":
                    # a queue limit: the sweep waits its turn, whatever submit_retries says
                    delay = min(mon.submit_backoff_seconds * (2 ** (job.submit_failures - 1)), 600.0)
                    job.next_submit_at = now + delay
                    self._event(s, job, att, "submit_error", now, detail="%s; over a queue limit, retrying in %ds"
                                % (res.message, delay))
                elif job.submit_failures > mon.submit_retries:
                    # the intent stays: if one of these did queue the job, a later cycle
                    # finds it by tag and follows it
                    job.status = STOPPED
                    job.reason = "sbatch failed %d times: %s" % (job.submit_failures, res.message)
                    self._finish(s, job, att, now, "submit_failed", job.reason)
                    job.last_monitor_state = "stopped"
                    self._event(s, job, att, "stopped", now, mode="submit_failed", detail=job.reason)
                    s.add_action(job, att, "stop", "submit_failed", job.reason, now)
                else:
                    delay = max(mon.submit_backoff_seconds * (2 ** (job.submit_failures - 1)), mon.unqueued_after)
                    job.next_submit_at = now + delay
                    self._event(s, job, att, "submit_error", now,
                                detail="%s; looking it up by tag, then retrying in %ds" % (res.message, delay))

    def register(self, s, plan_jobs, array):
        """Add plan jobs to a session. They have no attempt yet: the next cycle looks for
        each in SLURM by its tag (a state file moved aside, a second `submit`) and submits
        only what SLURM does not have."""
        for pj in plan_jobs:
            s.jobs.append(Job(pj.name, pj.index, array=bool(array and s.plan.array is not None)))
        s.jobs.sort(key=lambda j: j.index)

    def preview(self, s, jobs, now):
        """The sbatch lines a first submission of these jobs would run (dry run)."""
        todo = Todo()
        for job in jobs:
            self._new_intent(s, job, now, todo, array=job.array)
        self.commit(s, now, todo, False)

    def _event(self, s, job, att, kind, now, mode=None, detail=None):
        rec = s.add_event(job, att, kind, now, mode, detail)
        self.changes += 1
        what = kind + (" " + mode if mode and mode not in kind and mode not in (detail or "") else "")
        who = "%s/%s" % (s.session_id, job.name) if self.name_sessions else job.name
        line = "%s %s #%d%s %s%s" % (short_time(now), who, att.attempt,
                                      " (%s)" % att.job_id if att.job_id else "", what,
                                      ": " + detail if detail else "")
        if self.json_changes is not None:
            self.json_changes.append(OrderedDict((k, iso_time(v) if k == "time" else v) for k, v in rec.items()))
        elif kind == "state":
            self.report.detail(line)
        else:
            self.report.info(line)


def fingerprint(s):
    """The session's content, cheaply serialized: a cycle that changed nothing writes nothing."""
    return json.dumps(s.to_dict(), separators=(",", ":"))


def newer_than_history(job, rows):
    """The rows that can be the result of the job's latest submission: newer than every id
    in its history (SLURM hands out ids in increasing order), and not a copy already seen
    beside an earlier attempt (one started by hand, say)."""
    known = [job_id_sort_key(a.job_id) for a in job.attempts if a.job_id]
    floor = max(known) if known else None
    return [r for r in rows if (floor is None or job_id_sort_key(r.job_id) > floor)
            and r.job_id not in job.seen_copies]


def settling(s, now):
    """A job finalized on its termination string may still be RUNNING: keep watching it (no
    decisions) for a short while, so that its history ends with SLURM's final state."""
    window = max(3 * s.monitoring.interval_seconds, 30.0)
    return any(j.status == FINALIZED and j.current is not None and j.current.live and j.current.job_id
               and now - (j.last_updated or 0) < window for j in s.jobs)


def count_by_status(s):
    counts = OrderedDict()
    for job in s.jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return counts


def count_summary(s):
    return ", ".join("%d %s" % (n, k) for k, n in count_by_status(s).items()) or "no jobs"


# ============================================================================
# 8. CLI
# ============================================================================

def _explicit_state_dir(args):
    return getattr(args, "state_dir", None) or os.environ.get("AUTOEXP_STATE_DIR") or None


def store_for(args, ref=None, config=None):
    """--state-dir, else $AUTOEXP_STATE_DIR, else the folder of a session file given by path,
    else the config's state_dir, else ./autoexp-state."""
    if ref and is_path(ref):
        if not ref.endswith(".json"):
            raise StateError("%r is neither a session id nor a session file (<id>.json)" % ref)
        return StateStore(os.path.dirname(os.path.abspath(ref)))
    explicit = _explicit_state_dir(args)
    if explicit:
        return StateStore(explicit)
    if config and config.get("state_dir"):
        return StateStore(config["state_dir"])
    return StateStore("autoexp-state")


def make_slurm(sessions=(), timeout=None):
    timeouts = [s.monitoring.slurm_timeout_seconds for s in sessions]
    return SlurmClient(timeout=timeout or (max(timeouts) if timeouts else 60.0))


def new_session(store, plan, now):
    s = Session(store.session_path(plan.plan_id), plan.plan_id, plan.project, plan.manifest_path,
                now, json.loads(json.dumps(plan.config), object_pairs_hook=OrderedDict))
    # A session rebuilt after its state file was lost continues its journal's numbering:
    # events numbered from 1 again would be taken for ones already written, and dropped.
    s.event_seq = _last_journal_seq(store.events_path(s))
    return s


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

    __slots__ = ("store", "sessions", "locks", "skipped", "broken")

    def __init__(self, store):
        self.store, self.sessions, self.locks, self.skipped, self.broken = store, [], [], [], []

    def candidates(self, report, wanted):
        """The session files of the folder for which wanted(session) is true; broken ones said."""
        for path in self.store.list_sessions():
            try:
                s = self.store.load(path, with_plan=False)
            except StateError as e:
                self.broken.append(path)
                Reporter._write(report.err, "Error: %s" % e)
                continue
            if wanted(s):
                yield path

    def open(self, path, command, lock=True, quiet_skip=False, report=None):
        """quiet_skip (a sweep): a locked session is skipped, a broken one said and skipped."""
        try:
            s = self.store.load(path)
        except StateError as e:
            if not quiet_skip:
                raise
            self.broken.append(path)
            Reporter._write(report.err if report else sys.stderr, "Error: %s" % e)
            return None
        if lock:
            try:
                self.locks.append(self.store.lock(s.session_id, command))
            except LockedError as e:
                if not quiet_skip:
                    raise
                self.skipped.append((s.session_id, str(e)))
                return None
            s = self.store.load(path)  # re-read: the previous holder may have written since
            self.store.save_and_sync(s, time.time(), changed=False)
        self.sessions.append(s)
        return s

    def close(self):
        for lock in self.locks:
            lock.release()
        self.locks = []


def install_stop_handlers(controller):
    """SIGINT/SIGTERM finish the current cycle and save; a second one stops at once."""
    def handler(signum, frame):
        if controller.stop_requested:
            raise KeyboardInterrupt
        controller.stop_requested = True
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
    added = [Job(pj.name, pj.index) for pj in s.plan.jobs if s.job(pj.name) is None]
    if added:
        s.jobs.extend(added)
        s.jobs.sort(key=lambda j: j.index)
        controller.report.info("registering %d untracked job(s) of %s: %s" % (
            len(added), s.session_id, ", ".join(j.name for j in added)))
    return added


def cmd_plan(args, report):
    plan_id, _ = do_plan(args)
    report.result(plan_id)
    return EXIT_OK


def do_plan(args):
    raw = load_config_file(args.config)
    config = resolve_config(raw, args.config, args.override)
    store = store_for(args, config=config)
    now = time.time()
    if args.plan_id:
        plan_id = check_safe_name(args.plan_id, "plan id")
        if os.path.exists(store.plan_manifest(plan_id)) or os.path.exists(store.session_path(plan_id)):
            raise ConfigError("plan %r already exists in %s; choose another --plan-id" % (plan_id, store.root))
    else:
        base = default_plan_id(config["project"], now)
        plan_id = base
        for n in itertools.count(2):
            if not os.path.exists(store.plan_manifest(plan_id)) and not os.path.exists(store.session_path(plan_id)):
                break
            plan_id = "%s-%d" % (base, n)
    manifest, scripts = build_plan(config, args.config, plan_id, store.root, os.getcwd(), now)
    path = store.plan_manifest(plan_id)
    if not getattr(args, "dry_run", False):
        store.ensure()
        write_plan(manifest, scripts)
    return plan_id, Plan(manifest, path)


def cmd_submit(args, report):
    store, plan = open_plan(args, args.plan)
    return do_submit(args, report, store, plan)


def do_submit(args, report, store, plan, keep_lock=None):
    names = _flatten(args.only) or [j.name for j in plan.jobs]
    unknown = [n for n in names if n not in plan.by_name]
    if unknown:
        raise ConfigError("--only: no job %s in plan %s (jobs: %s)" % (
            ", ".join(unknown), plan.plan_id, ", ".join(j.name for j in plan.jobs[:10]) +
            (", ..." if len(plan.jobs) > 10 else "")))
    if args.array and plan.array is None:
        raise ConfigError("cannot submit plan %s as an array: %s" % (plan.plan_id, plan.array_error))
    if args.dry_run:
        path = store.session_path(plan.plan_id)
        if os.path.exists(path):
            tracked = store.load(path, with_plan=False)
            already = [n for n in names if tracked.job(n) is not None]
            if already and _flatten(args.only):
                raise ConfigError("already submitted in session %s: %s" % (plan.plan_id, ", ".join(already)))
            names = [n for n in names if tracked.job(n) is None]
        s = new_session(store, plan, time.time())
        s.plan = plan
        controller = Controller(store, make_slurm(), Reporter(0, report.out, report.err), dry_run=True)
        controller.register(s, [plan.by_name[n] for n in names], args.array)
        controller.preview(s, s.jobs, time.time())
        return EXIT_OK
    if shutil.which("sbatch", path=slurm_environment().get("PATH")) is None:
        # before the session exists: a submission that cannot start leaves nothing behind
        raise SlurmError("SLURM command 'sbatch' was not found on PATH; run autoexp on a login node "
                         "where sbatch, squeue and sacct work", exit_code=EXIT_USAGE)
    store.ensure()
    lock = store.lock(plan.plan_id, "submit")
    try:
        now = time.time()
        path = store.session_path(plan.plan_id)
        try:
            os.stat(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise StateError("cannot read session %s: %s" % (path, e.strerror))
            s = new_session(store, plan, now)
            s.plan = plan
        else:
            s = store.load(path)
            store.save_and_sync(s, now, changed=False)
            tracked = [n for n in names if s.job(n) is not None]
            if tracked and _flatten(args.only):
                raise ConfigError("already submitted in session %s: %s; `autoexp monitor --session %s` "
                                  "watches them" % (s.session_id, ", ".join(tracked), s.session_id))
            names = [n for n in names if s.job(n) is None]
            if not names:
                report.info("every job of %s is already submitted; watch them with `autoexp monitor "
                            "--session %s`" % (plan.plan_id, plan.plan_id))
                if keep_lock is None:
                    return EXIT_OK
                keep_lock.append(lock)
                lock = None
                return s
        controller = Controller(store, make_slurm([s]), Reporter(min(report.level, 0), report.out, report.err))
        controller.register(s, [plan.by_name[n] for n in names], args.array)
        store.save(s, now)  # registered: a monitor or reconcile submits them if this stops here
        answered = controller.cycle([s])
        failed = 0
        width = max(len(n) for n in names)
        for n in names:
            job = s.job(n)
            att = job.current
            if att is not None and att.job_id:
                found = "" if att.origin == "submitted" else "   (already in SLURM: %s)" % att.origin
                report.result("%-*s %s%s" % (width, n, att.job_id, found))
            else:
                failed += 1
                why = (job.reason or (att.submit_error if att else None) or
                       ("SLURM did not answer" if not answered else "SLURM could not say whether it has it yet"))
                report.result("%-*s not submitted: %s" % (width, n, why))
        if failed:
            report.warn("%d of %d job(s) not submitted; `autoexp monitor --session %s` (or reconcile) submits "
                        "them, after looking each up by its tag" % (failed, len(names), s.session_id))
        if keep_lock is not None:
            keep_lock.append(lock)
            lock = None
            return s
        return EXIT_FAILURE if failed == len(names) else EXIT_OK
    finally:
        if lock is not None:
            lock.release()


def cmd_run(args, report):
    plan_id, plan = do_plan(args)
    report.info("%s %s" % ("would plan" if args.dry_run else "planned", plan_id))
    store = StateStore(plan.state_dir)
    held = []
    s = do_submit(args, report, store, plan, keep_lock=held)
    if not isinstance(s, Session):
        return s
    sessions = SessionSet(store)
    sessions.locks = held
    sessions.sessions = [s]
    try:
        return monitor_sessions(args, report, sessions)
    finally:
        sessions.close()


def cmd_monitor(args, report):
    if bool(args.session) == bool(args.all):
        raise ConfigError("give --session ID (or the session file's path) or --all")
    store = store_for(args, args.session)
    sessions = SessionSet(store)
    try:
        if args.session:
            sessions.open(resolve_or_recreate(store, args, "monitor"), "monitor")
        else:
            for path in sessions.candidates(report, lambda s: s.active() or args.include_completed
                                            or args.monitor_all):
                sessions.open(path, "monitor --all", quiet_skip=True, report=report)
            for sid, why in sessions.skipped:
                report.warn("skipping session %s: %s" % (sid, why))
            if not sessions.sessions:
                report.info("no session to monitor in %s" % store.root)
                return EXIT_LOCKED if sessions.skipped else EXIT_OK
        return monitor_sessions(args, report, sessions)
    finally:
        sessions.close()


def resolve_or_recreate(store, args, command):
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
    lock = store.lock(ref, command)
    try:
        if not os.path.exists(store.session_path(ref)):
            plan = load_manifest(store.plan_manifest(ref))
            s = new_session(store, plan, time.time())
            store.save(s, s.created_at)
    finally:
        lock.release()
    return store.session_path(ref)


def monitor_sessions(args, report, sessions):
    now = time.time()
    controller = Controller(sessions.store, make_slurm(sessions.sessions), report)
    overrides = getattr(args, "monitor_override", None)  # `run`'s -o went into its plan
    for s in sessions.sessions:
        if overrides:
            s.apply_monitor_overrides(overrides)
            sessions.store.save(s, now)
        if getattr(args, "monitor_all", False):
            register_untracked(controller, s, now)
    install_stop_handlers(controller)
    code = controller.run(sessions.sessions, once=args.once, interval=args.interval)
    if code == EXIT_INTERRUPTED:
        report.result("stopped; the state is saved. " + resume_hint(
            sessions.sessions, sessions.store, getattr(args, "all", False)))
    return code


def cmd_reconcile(args, report):
    if args.session and args.all:
        raise ConfigError("give --session ID or --all, not both")
    store = store_for(args, args.session)
    sessions = SessionSet(store)
    try:
        if args.session:
            paths = [resolve_or_recreate(store, args, "reconcile")]
        else:
            paths = list(sessions.candidates(report, lambda s: s.active() or args.monitor_all))
        for path in paths:
            sessions.open(path, "reconcile", lock=not args.dry_run, quiet_skip=not args.session, report=report)
        for sid, why in sessions.skipped:
            # asked about this session: say who holds it; sweeping them all from cron: exit
            # 75 says it, quietly (cron mails every line printed)
            (report.warn if args.session else report.detail)("skipped %s: %s" % (sid, why))
        controller = Controller(store, make_slurm(sessions.sessions), report, dry_run=args.dry_run)
        if args.json:
            controller.json_changes = []
        now = controller.clock()
        for s in sessions.sessions:
            if args.monitor_all:
                register_untracked(controller, s, now)
        ok = controller.cycle(sessions.sessions) if sessions.sessions else True
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


def _status_doc(s):
    jobs = []
    for job in s.jobs:
        att = job.current
        jobs.append(OrderedDict([
            ("name", job.name), ("status", job.status), ("attempts", len(job.attempts)),
            ("job_id", job.job_id), ("last_job_id", att.job_id if att else None), ("live", bool(att and att.live)),
            ("slurm_state", att.last_slurm_state if att else None),
            ("monitor_state", job.last_monitor_state), ("last_event", job.last_event),
            ("log_path", att.resolved_log_path if att else None), ("reason", job.reason)]))
    return OrderedDict([("session_id", s.session_id), ("project", s.project),
                        ("updated_at", iso_time(s.updated_at)), ("counts", count_by_status(s)), ("jobs", jobs)])


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]


def read_sessions(args, ref, report):
    """Sessions for read-only commands: no lock (the atomic rename means never a torn file);
    the broken ones of a whole folder are said and counted, not fatal."""
    store = store_for(args, ref)
    if ref:
        return [store.load(store.resolve(ref), with_plan=False)], 0
    found = SessionSet(store)
    sessions = [store.load(p, with_plan=False) for p in found.candidates(report, lambda s: True)]
    if not sessions and not found.broken:
        raise StateError("no sessions in %s; pass --state-dir, or submit a plan first" % store.root)
    return sessions, len(found.broken)


def cmd_status(args, report):
    sessions, broken = read_sessions(args, args.session, report)
    code = EXIT_USAGE if broken else EXIT_OK
    if args.json:
        report.result(json.dumps({"sessions": [_status_doc(s) for s in sessions]}, indent=2, sort_keys=True))
        return code
    for n, s in enumerate(sessions):
        doc = _status_doc(s)
        if n:
            report.result("")
        report.result("session %s (project %s), updated %s: %s" % (
            s.session_id, s.project, short_time(s.updated_at), count_summary(s)))
        rows = [(j["name"], j["status"], j["attempts"], j["last_job_id"] or "-", j["slurm_state"] or "-",
                 j["monitor_state"] or "-", j["last_event"] or "-", j["log_path"] or "-") for j in doc["jobs"]]
        for line in _table(rows, ("JOB", "STATUS", "ATT", "SLURM_ID", "SLURM_STATE", "MONITOR", "LAST_EVENT", "LOG")):
            report.result(line)
    return code


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
                ("outcome", att.outcome), ("reason", att.reason or att.submit_error),
                ("live", live)]))
        jobs.append(OrderedDict([("name", job.name), ("status", job.status), ("job_id", live_id),
                                 ("attempts", attempts)]))
    if name and not jobs:
        raise ConfigError("no job %r in session %s" % (name, s.session_id))
    return OrderedDict([("session_id", s.session_id), ("jobs", jobs)])


def cmd_history(args, report):
    s = read_sessions(args, args.session, report)[0][0]
    doc = _history_doc(s, args.name)
    if args.json:
        report.result(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    for job in doc["jobs"]:
        report.result("%s: %s, %d attempt(s)%s" % (job["name"], job["status"], len(job["attempts"]),
                                                   ", live: %s" % job["job_id"] if job["job_id"] else ""))
        rows = [("*" if a["live"] else " ", a["attempt"], a["job_id"] or "-",
                 "-" if a["array_task"] is None else a["array_task"], a["origin"] or "-",
                 short_time(parse_iso(a["submitted_at"])), short_time(parse_iso(a["ended_at"])),
                 a["slurm_state"] or "-", a["outcome"] or "-", a["reason"] or "-", a["log_path"] or "-")
                for a in job["attempts"]]
        for line in _table(rows, (" ", "ATT", "SLURM_ID", "TASK", "ORIGIN", "SUBMITTED", "ENDED",
                                  "SLURM_STATE", "OUTCOME", "REASON", "LOG")):
            report.result("  " + line)
    return EXIT_OK


def cmd_cancel(args, report):
    store = store_for(args, args.session)
    path = store.resolve(args.session)
    s = store.load(path)
    unknown = [n for n in args.names if s.job(n) is None]
    if unknown:
        raise ConfigError("no job %s in session %s" % (", ".join(unknown), s.session_id))
    try:
        lock = store.lock(s.session_id, "cancel")
    except LockedError as e:
        folder = store.requests_dir(s.session_id)
        make_private_dir(folder)
        req = os.path.join(folder, "%d-%d.json" % (int(time.time() * 1000), os.getpid()))
        atomic_write(req, dump_json({"action": "cancel", "jobs": args.names, "created_at": iso_time(time.time())}))
        report.result("the session is busy (%s); the cancel request is queued and the monitor "
                      "carries it out within one cycle" % e)
        return EXIT_OK
    try:
        s = store.load(path)
        store.save_and_sync(s, time.time(), changed=False)
        controller = Controller(store, make_slurm([s]), report)
        todo = Todo()
        now = controller.clock()
        done = [j.name for j in s.jobs if j.status == ACTIVE and (not args.names or j.name in args.names)]
        controller.cancel_jobs(s, args.names, now, todo)
        controller.commit(s, now, todo, True)
        left = [n for n in args.names if n not in done]
        report.result("cancelled: %s" % (", ".join(done) or "nothing"))
        if left:
            report.info("not active, left as they are: %s" % ", ".join(
                "%s (%s)" % (n, s.job(n).status) for n in left))
        return EXIT_OK
    finally:
        lock.release()


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError("%r is not a number of seconds greater than 0" % text)
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
    parser = ArgumentParser(prog="autoexp", description=__doc__, parents=[common],
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

    def monitor_options(p, overrides=True):
        p.add_argument("--once", action="store_true", help="run one cycle and exit")
        p.add_argument("--interval", type=positive_seconds, metavar="S",
                       help="seconds between cycles (default: the config's)")
        if overrides:
            p.add_argument("-o", "--override", "--monitor-override", dest="monitor_override", action="append",
                           default=[], metavar="KEY=VALUE",
                           help="override a monitoring key, e.g. -o interval_seconds=10 (repeatable)")

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
    p.add_argument("--session", metavar="ID|PATH")
    p.add_argument("--json", action="store_true")
    p = add("history", cmd_history, "every attempt of every job, with the live one marked")
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("name", nargs="?", help="only this job")
    p.add_argument("--json", action="store_true")
    p = add("cancel", cmd_cancel, "scancel the live attempts and mark the jobs cancelled (not restarted)")
    p.add_argument("--session", metavar="ID|PATH", required=True)
    p.add_argument("names", nargs="*", metavar="NAME", help="jobs to cancel (default: every active job)")
    return parser


def main(argv=None):
    """The command line; returns the exit code (0 ok, 1 failure, 2 usage, 75 locked, 130 stopped)."""
    try:
        args = build_parser().parse_args(argv)
        level = 0 if getattr(args, "quiet", False) else 1 + (getattr(args, "verbose", 0) or 0)
        return args.func(args, Reporter(level))
    except SystemExit as e:  # only argparse exits, after printing --help or --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except AutoexpError as e:
        Reporter._write(sys.stderr, "Error: %s" % e)
        return e.exit_code
    except KeyboardInterrupt:
        Reporter._write(sys.stderr, "Error: interrupted")
        return EXIT_INTERRUPTED
    except UnicodeError as e:  # raised by the OS layer, before any file is touched
        Reporter._write(sys.stderr, "Error: a path or value is not ASCII, but Python runs with an ASCII "
                        "locale here (encoding %s: LANG and LC_ALL unset or C, as in cron; %s): set "
                        "LANG=C.UTF-8 (or another UTF-8 locale), e.g. at the top of the crontab"
                        % (sys.getfilesystemencoding(), e.reason))
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except EnvironmentError as e:
        where = " (%s)" % e.filename if getattr(e, "filename", None) else ""
        Reporter._write(sys.stderr, "Error: %s%s" % (e.strerror or e, where))
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
