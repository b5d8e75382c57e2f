"""Shared test helpers, imported by test modules and conftest.py (never the other way round):
real SLURM captures, a model of sbatch's directive parser, a fake clock, a scripted SLURM and
the Harness for in-process controller tests (with their configs and job names), a config
resolved or refused as `plan` would, and the way to run the CLI against the fake SLURM
(run_cli, Project)."""

import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CAPTURES = os.path.join(HERE, "captures")  # SLURM 22.05.8 (Debian 12)
# Real SLURM output by generation: the same scenarios under the same file names where a
# counterpart exists; ax_* files hold autoexp's own commands (24.11 only).
CAPTURE_SETS = {"22.05": CAPTURES, "24.11": os.path.join(HERE, "captures-24.11")}
FAKE_SLURM_BIN = os.path.join(ROOT, "fixtures", "fake_slurm")

sys.path.insert(0, ROOT)
import autoexp  # noqa: E402

sys.path.insert(0, FAKE_SLURM_BIN)
import fake_slurm  # noqa: E402,F401 (for the tests: one import of the fake SLURM)

BOOT = "import sys; sys.path.insert(0, %r); import autoexp; sys.exit(autoexp.main())" % ROOT


def capture_dir(capset=None):
    """A capture set: a SLURM version of CAPTURE_SETS, a folder, or None for 22.05."""
    if capset is None:
        return CAPTURES
    return CAPTURE_SETS.get(capset, capset)


class Capture(object):
    """One file of real SLURM output: the command, its exit code, stdout and stderr.
    capset: which SLURM's captures (see capture_dir); 22.05 by default."""

    def __init__(self, name, capset=None):
        self.name = name
        self.capset = capset or "22.05"
        self.path = os.path.join(capture_dir(capset), name)
        with open(self.path, "rb") as f:
            raw = f.read()
        head, _, rest = raw.partition(b"# --- stdout (")
        self.command = re.search(rb"^# command: (.*)$", head, re.M).group(1).decode()
        self.rc = int(re.search(rb"^# exit_code: (\d+)$", head, re.M).group(1))
        n, _, rest = rest.partition(b" bytes) ---\n")
        self.stdout = rest[:int(n)].decode()
        rest = rest[int(n):]
        m = re.match(rb"\n?# --- stderr \((\d+) bytes\) ---\n", rest)
        self.stderr = rest[m.end():m.end() + int(m.group(1))].decode()

    def completed(self):
        return autoexp.Completed([], self.rc, self.stdout, self.stderr, False)

    @property
    def output_format(self):
        """The -o argument of the captured squeue or sacct command (what its fields are)."""
        argv = shlex.split(self.command)
        return argv[argv.index("-o") + 1] if "-o" in argv else None

    @property
    def program(self):
        """The SLURM command captured (after any `env VAR=value ...`)."""
        argv = shlex.split(self.command)
        while argv and (argv[0] == "env" or "=" in argv[0]):
            argv.pop(0)
        return argv[0] if argv else ""

    def client(self, user="u"):
        """A SlurmClient answered by this capture, reading it in the format it was taken with."""
        kw = {}
        if self.program == "squeue" and self.output_format:
            kw["squeue_format"] = self.output_format
        elif self.program == "sacct" and self.output_format:
            kw["sacct_fields"] = self.output_format
        return autoexp.SlurmClient(runner=lambda argv, t, env: self.completed(), user=user, **kw)


def captures(prefix_re=None, command_re=None, capset=None):
    out = []
    folder = capture_dir(capset)
    for name in sorted(os.listdir(folder)):
        if prefix_re and not re.search(prefix_re, name):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            if not f.read().startswith(b"# time:"):
                continue  # transcripts and notes, not cap() output
        cap = Capture(name, capset)
        if command_re and not re.search(command_re, cap.command):
            continue
        out.append(cap)
    return out


def slurm_get_argument(line):
    """A model of sbatch's own directive-argument scanner (src/sbatch/opt.c _get_argument):
    whitespace separates, quotes group, a backslash escapes, an unquoted # ends the line."""
    args, cur, quoted, q, esc, i = [], None, False, None, False, 0
    while i < len(line):
        ch = line[i]
        if cur is None:
            if ch.isspace():
                i += 1
                continue
            if ch == "#" and not quoted:
                break
            cur = ""
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            esc = True
        elif quoted:
            if ch == q:
                quoted = False
            else:
                cur += ch
        elif ch in "\"'":
            quoted, q = True, ch
        elif ch == "#":
            break
        elif ch.isspace():
            args.append(cur)
            cur = None
        else:
            cur += ch
        i += 1
    if cur is not None:
        args.append(cur)
    return args


def monitoring(**kw):
    """A validated monitoring record from the keys given (the rest: defaults)."""
    d = autoexp.validate_monitoring(kw, autoexp._Checker("test"))
    return autoexp.make_monitoring(d)


class FakeClock(object):
    """time() and sleep() for the controller: sleeping only moves the clock."""

    def __init__(self, start=1700000000.0):
        self.now = start

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def __call__(self):
        return self.now


def fake_env(fake_dir, extra=None):
    env = dict(os.environ)
    env["PATH"] = FAKE_SLURM_BIN + os.pathsep + env.get("PATH", "")
    env["FAKE_SLURM_DIR"] = fake_dir
    env.pop("AUTOEXP_STATE_DIR", None)
    env.pop("AUTOEXP_CRASH_AT", None)
    if extra:
        env.update(extra)
    return env


def run_cli(args, env, cwd, python=None, timeout=120, pyz=None):
    """Run autoexp as a user would (a subprocess); returns CompletedProcess with text output."""
    if pyz:
        argv = [python or sys.executable, pyz] + list(args)
    else:
        # an import, not `python autoexp.py`, so its bytecode is cached between the many calls
        argv = [python or sys.executable, "-c", BOOT] + list(args)
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, p.returncode, out.decode("utf-8", "replace"),
                                       err.decode("utf-8", "replace"))


class Project(object):
    """A folder with a config, run through the CLI as a user would, on the fake SLURM."""

    def __init__(self, root, fake, python=None, pyz=None):
        self.root = str(root)
        self.fake = fake
        self.state_dir = os.path.join(self.root, "autoexp-state")
        self.python = python
        self.pyz = pyz
        # The shims' python: a direct interpreter path, not a pyenv shim script (0.1 s a call).
        self.env = dict(fake.env(), FAKE_SLURM_PYTHON=sys.executable)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # let the many short processes reuse bytecode

    def config(self, cfg, name="cfg.json"):
        return write_config(os.path.join(self.root, name), cfg)

    def cli(self, *args, **kw):
        timeout = kw.pop("timeout", 120)
        env = dict(self.env, **kw.pop("env", {}))
        return run_cli(list(args), env, self.root, python=self.python, timeout=timeout, pyz=self.pyz)

    def ok(self, *args, **kw):
        res = self.cli(*args, **kw)
        assert res.returncode == 0, "autoexp %s -> %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(args), res.returncode, res.stdout, res.stderr)
        return res

    def state(self, session):
        return load_state(self.state_dir, session)

    def status(self, session=None):
        args = ["status", "--json"] + (["--session", session] if session else [])
        return json.loads(self.ok(*args).stdout)

    def history(self, session, name=None):
        args = ["history", "--session", session, "--json"] + ([name] if name else [])
        return json.loads(self.ok(*args).stdout)


def sweep_config(project, command, seeds, monitoring, **overrides):
    """The end-to-end tests' sweep: one job per seed, restarts on timeout, crash and stall,
    a fast monitor. monitoring: the module's defaults; overrides: the test's own."""
    mon = {"interval_seconds": 0.2, "termination_string": "TRAINING FINISHED", "slurm_timeout_seconds": 10,
           "unknown_backoff_max_seconds": 1}
    mon.update(monitoring)
    mon.update(overrides)
    return {
        "project": project,
        "sweep": {"seed": list(seeds)},
        "job": {"name": "{project}-s{seed}", "command": command, "log": "logs/{name}-%j.log"},
        "monitoring": mon,
        "restart": {"timeout": {"action": "restart", "max_attempts": 3},
                    "crash": {"action": "restart", "max_attempts": 2},
                    "stall": {"action": "restart", "max_attempts": 2}},
    }


def write_config(path, config):
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def load_state(state_dir, session_id):
    """A session as one document, as schema 1 wrote it (its header, and "jobs" in full):
    read the way autoexp reads it (header, snapshot, complete batches)."""
    s = autoexp.StateStore(state_dir).load(os.path.join(state_dir, session_id + ".json"), with_plan=False)
    doc = json.loads(json.dumps(s.to_dict()))
    doc["jobs"] = json.loads(json.dumps([j.to_dict() for j in s.jobs]))
    return doc


def write_state_doc(state_dir, session_id, doc):
    """Write a session given as one document (load_state's form) the way schema 2 keeps it:
    the header, and its jobs as the current generation's snapshot (no batches). A document
    without "jobs" leaves no snapshot: the damage a test wants to see refused."""
    doc = dict(doc)
    jobs = doc.pop("jobs", None)
    gen = doc.get("generation") or 1
    doc["generation"] = gen
    snap, delta = autoexp.StateStore(state_dir).gen_paths(session_id, gen)
    for p in (snap, delta):
        if os.path.exists(p):
            os.unlink(p)
    if jobs is not None:
        with open(snap, "w") as f:
            for job in jobs:
                f.write(json.dumps(job, sort_keys=True) + "\n")
    with open(os.path.join(state_dir, session_id + ".json"), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)


def state_files(state_dir, session_id):
    """The files that hold a session: its header and its current generation's job files."""
    path = os.path.join(state_dir, session_id + ".json")
    with open(path) as f:
        gen = json.load(f).get("generation", 0)
    names = [path] + list(autoexp.StateStore(state_dir).gen_paths(session_id, gen))
    return [p for p in names if os.path.exists(p)]


def state_bytes(state_dir, session_id):
    """Every byte of a session's state, to tell whether anything was written."""
    out = b""
    for p in state_files(state_dir, session_id):
        with open(p, "rb") as f:
            out += f.read()
    return out


def read_events(state_dir, session_id):
    path = os.path.join(state_dir, session_id + ".events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for(predicate, timeout=30.0, interval=0.1, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


class ScriptedSlurm(object):
    """An in-memory SLURM for controller tables: tests move jobs between states by hand and
    the controller sees them through the same interface as SlurmClient."""

    def __init__(self, clock, user="tester"):
        self.clock = clock
        self.user = user
        self.jobs = {}          # job_id -> dict(name, comment, state, exit_code, in_squeue, in_sacct, raw_id)
        self.next_id = 100
        self.fail = {"squeue": 0, "sacct": 0, "sbatch": 0, "scancel": 0}
        self.sbatch_mode = []   # per call: "ok", "queued_error", "error", "permanent"
        self.calls = []

    # steering
    def add(self, name, comment, state="PENDING", job_id=None, user=None, workdir=None):
        """user: the submitter (default: this SLURM's user); workdir: its working directory."""
        job_id = job_id or str(self._new_id())
        self.jobs[job_id] = dict(name=name, comment=comment, state=state, exit_code="0:0",
                                 in_squeue=True, in_sacct=True, raw_id=job_id.split("_")[0], start=self.clock(),
                                 submit=autoexp.local_time(self.clock()), user=user or self.user, workdir=workdir)
        return job_id

    def set(self, job_id, state, exit_code="0:0"):
        ended = state not in autoexp.ACTIVE_STATES
        self.jobs[job_id].update(state=state, exit_code=exit_code, end=self.clock() if ended else None)

    def purge(self, job_id):
        self.jobs[job_id]["in_squeue"] = False

    def forget(self, job_id):
        self.jobs[job_id].update(in_squeue=False, in_sacct=False)

    def by_name(self, name):
        return [j for j, d in sorted(self.jobs.items(), key=lambda kv: autoexp.job_id_sort_key(kv[0]))
                if d["name"] == name]

    def count(self, cmd):
        return sum(1 for c in self.calls if c[0] == cmd)

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    def _failing(self, cmd):
        self.calls.append((cmd,))
        if self.fail[cmd]:
            self.fail[cmd] -= 1
            return True
        return False

    # the SlurmClient interface
    def squeue(self):
        if self._failing("squeue"):
            raise autoexp.SlurmUnavailable("squeue failed (exit 1): slurm_load_jobs error: Unable to contact slurm controller")
        return [autoexp.QueueRow(j, d["raw_id"], d["state"], "None", d["name"], d["comment"], d["submit"],
                                 d["user"], d["workdir"])
                for j, d in self.jobs.items() if d["in_squeue"]]

    def _acct_row(self, j, d):
        done = d["state"] not in autoexp.ACTIVE_STATES
        return autoexp.AcctRow(j, d["raw_id"], d["name"], d["state"], d["exit_code"], d["start"],
                               (d.get("end") or self.clock()) if done else None, d["comment"] if done else "",
                               d["submit"], d["user"], d["workdir"])

    @staticmethod
    def _in_window(d, since):
        # sacct -S: a job that ended before the window's start is not listed
        return d["in_sacct"] and not (d.get("end") is not None and d["end"] < since)

    def sacct(self, job_ids, since):
        if self._failing("sacct"):
            raise autoexp.SlurmUnavailable("sacct failed (exit 1): Connection refused")
        return dict((j, self._acct_row(j, self.jobs[j])) for j in job_ids
                    if j in self.jobs and self._in_window(self.jobs[j], since))

    def sacct_by_name(self, names, since):
        failing = self._failing("sacct")
        self.calls[-1] = ("sacct", tuple(sorted(names)))  # (a lookup by id is just ("sacct",))
        if failing:
            raise autoexp.SlurmUnavailable("sacct failed (exit 1): Connection refused")
        return [self._acct_row(j, d) for j, d in self.jobs.items() if d["name"] in names and self._in_window(d, since)]

    def sbatch(self, script, args=(), env=None):
        mode = self.sbatch_mode.pop(0) if self.sbatch_mode else "ok"
        self.calls.append(("sbatch", script, tuple(args)))
        if mode == "error":
            return autoexp.SubmitResult("uncertain", None, "Socket timed out on send/recv operation")
        if mode == "permanent":
            return autoexp.SubmitResult("permanent", None, "Invalid partition name specified")
        with open(script) as f:
            text = f.read()
        name = re.search(r"^#SBATCH --job-name=(\S+)", text, re.M).group(1)
        comment = re.search(r"^#SBATCH --comment=(\S+)", text, re.M).group(1)
        base = str(self._new_id())
        array = [a for a in args if a.startswith("--array=")]
        if array:
            for t in autoexp.parse_task_ranges(array[0].split("=", 1)[1]):
                self.add(name, comment, job_id="%s_%d" % (base, t))
        else:
            self.add(name, comment, job_id=base)
        if mode == "queued_error":
            return autoexp.SubmitResult("uncertain", None, "Socket timed out on send/recv operation")
        return autoexp.SubmitResult("ok", base, "")

    def scancel(self, job_id):
        if self._failing("scancel"):
            return False, "scancel: error: Kill job error on job id %s: Unable to contact slurm controller" % job_id
        self.calls[-1] = ("scancel", job_id)
        if job_id in self.jobs and self.jobs[job_id]["state"] in autoexp.ACTIVE_STATES:
            self.jobs[job_id]["state"] = "CANCELLED"
        return True, ""


class Harness(object):
    """A planned session driven in-process with a fake clock and a ScriptedSlurm."""

    def __init__(self, tmp_path, config, names=None, array=False):
        self.clock = FakeClock()
        self.slurm = ScriptedSlurm(self.clock)
        self.state_dir = str(tmp_path / "state")
        self.workdir = str(tmp_path)
        cfg_path = write_config(str(tmp_path / "cfg.json"), config)
        resolved = autoexp.resolve_config(autoexp.load_config_file(cfg_path), cfg_path, [])
        manifest, scripts = autoexp.build_plan(resolved, cfg_path, "p1", self.state_dir, self.workdir, self.clock())
        self.store = autoexp.StateStore(self.state_dir)
        self.store.ensure()
        self.plan = autoexp.load_manifest(autoexp.write_plan(manifest, scripts))
        self.session = self.store.create_session(self.plan, self.clock())
        self.out = []
        report = autoexp.Reporter(2, _Sink(self.out), _Sink(self.out))
        self.ctl = autoexp.Controller(self.store, self.slurm, report, clock=self.clock, sleep=self.clock.sleep)
        jobs = [self.plan.by_name[n] for n in names] if names else self.plan.jobs
        self.ctl.register(self.session, jobs, array)
        self.ctl.cycle([self.session])  # what `submit` does: look each job up, then submit

    def cycle(self, advance=10.0):
        self.clock.now += advance
        return self.ctl.cycle([self.session])

    def job(self, name):
        return self.session.job(name)

    def live_id(self, name):
        return self.session.job(name).current.job_id

    def log(self, name, text, job_id=None):
        job = self.job(name)
        att = job.current
        path = autoexp.resolve_log_path(self.plan.by_name[name].log_template, job_id or att.job_id,
                                        job_id or att.job_id, name, self.slurm.user)
        with open(path, "a") as f:
            f.write(text)
        return path

    def reload(self):
        return self.store.load(self.session.path)

    def state_bytes(self):
        return state_bytes(self.state_dir, self.session.session_id)


# --- the controller tests' sweep, job names and steps ---------------------------------

def controller_config(**monitoring):
    """The in-process controller tests' sweep: two seeds, a 10 s cycle, restarts on timeout,
    crash, node failure (with backoff) and stall. monitoring: keys to add or override."""
    mon = {"interval_seconds": 10, "termination_string": "TRAINING FINISHED", "lost_after_seconds": 60}
    mon.update(monitoring)
    return {
        "project": "demo",
        "sweep": {"seed": [1, 2]},
        "job": {"name": "{project}-s{seed}", "command": "echo {seed}", "log": "logs/{name}-%j.log"},
        "monitoring": mon,
        "restart": {"timeout": {"action": "restart", "max_attempts": 3},
                    "crash": {"action": "restart", "max_attempts": 2},
                    "node_fail": {"action": "restart", "max_attempts": 3, "backoff_seconds": 100},
                    "stall": {"action": "restart", "max_attempts": 2}},
    }


A, B = "demo-s1", "demo-s2"   # the job names of controller_config()'s two seeds


def finish(h, name, state="COMPLETED", text="TRAINING FINISHED\n"):
    """The job's live attempt writes text to its log and ends in state."""
    if text:
        h.log(name, text)
    h.slurm.set(h.live_id(name), state)


def live(h):
    """The ids of the scripted SLURM's jobs that are still active, sorted."""
    return sorted(j for j, d in h.slurm.jobs.items() if d["state"] in autoexp.ACTIVE_STATES)


def run_main(h, argv, monkeypatch, capsys):
    """The CLI in-process, against the harness's scripted SLURM, clock and state folder."""
    code = autoexp.main(["--state-dir", h.state_dir] + argv, slurm=h.slurm, clock=h.clock, sleep=h.clock.sleep)
    return code, capsys.readouterr()


def timeout_stall_config(**monitoring):
    """controller_config's sweep restarting only on timeout (3 attempts) and stall (2): a
    crash or a node failure takes its default policy. monitoring: keys to add or override."""
    mon = {"interval_seconds": 10, "termination_string": "TRAINING FINISHED", "lost_after_seconds": 60}
    mon.update(monitoring)
    return {
        "project": "demo",
        "sweep": {"seed": [1, 2]},
        "job": {"name": "{project}-s{seed}", "command": "echo {seed}", "log": "logs/{name}-%j.log"},
        "monitoring": mon,
        "restart": {"timeout": {"action": "restart", "max_attempts": 3},
                    "stall": {"action": "restart", "max_attempts": 2}},
    }


def resolve(cfg, overrides=()):
    """A config as `plan` resolves it (from a copy: cfg is left as it was); overrides: -o's."""
    return autoexp.resolve_config(json.loads(json.dumps(cfg)), "cfg.json", list(overrides))


def refused(cfg, *words, **kw):
    """Resolving cfg (with overrides=[...] if given) raises a ConfigError whose text has every
    one of words; returns that text."""
    import pytest  # here: bench/ imports this module where pytest may be missing
    with pytest.raises(autoexp.ConfigError) as e:
        resolve(cfg, kw.get("overrides", ()))
    for w in words:
        assert w in str(e.value), str(e.value)
    return str(e.value)


def running(h, name):
    """The job's live attempt is RUNNING, and a cycle has seen it."""
    h.slurm.set(h.live_id(name), "RUNNING")
    h.cycle()


class _Sink(object):
    encoding = "utf-8"

    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass
