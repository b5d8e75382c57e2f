"""Helpers of the real-SLURM tier: the environment and commands of the real cluster, and a
project folder in which autoexp.pyz runs. (A module of its own, not conftest.py: the suite's
tests import `conftest` by name.)"""

import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _helpers():
    """tests/helpers.py (it imports autoexp from the checkout): schema 2 keeps a session in
    several files, so the tier reads state through the store rather than one json.load."""
    tests = os.path.dirname(HERE)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import helpers
    return helpers
ENABLED = os.environ.get("AUTOEXP_REAL_SLURM") == "1"
SKIP_REASON = "real SLURM tier: set AUTOEXP_REAL_SLURM=1 (root on Debian/Ubuntu) to run it"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "State", "ExitCode", "Start", "End", "Comment")
SQUEUE_FIELDS = ("JobID", "JobIDRaw", "State", "Reason", "JobName", "Comment")
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED")


def slurm_env(extra=None):
    """The environment of every command of the tier: the system PATH (real SLURM in
    /usr/bin, no fake SLURM), and none of the variables that steer SLURM clients or autoexp."""
    env = dict((k, v) for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SQUEUE_", "SACCT_", "SBATCH_", "SCANCEL_", "SINFO_",
                                    "SCONTROL_", "FAKE_SLURM", "AUTOEXP_")))
    env["PATH"] = SYSTEM_PATH
    env["LC_ALL"] = env["LANG"] = "C"
    env["SLURM_TIME_FORMAT"] = "standard"
    env.update(extra or {})
    return env


def script_env():
    """The environment of setup.sh, daemon.sh and stop.sh: slurm_env() plus the
    AUTOEXP_SLURM_* settings this run was given (a cluster on other ports, in chroot.sh's
    chroot, must not have its config rewritten back to the default ports)."""
    return slurm_env(dict((k, v) for k, v in os.environ.items() if k.startswith("AUTOEXP_SLURM_")))


def expand_ids(job_id):
    """sacct's '12_[1-3,5]' (a pending array range) -> 12_1 12_2 12_3 12_5; others unchanged."""
    m = re.match(r"^(\d+)_\[([0-9,-]+)(?:%\d+)?\]$", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out.extend("%s_%d" % (m.group(1), t) for t in range(int(lo), int(hi or lo) + 1))
    return out


def run(argv, timeout=60, check=True, cwd=None, env=None):
    """Run a command (no shell); returns CompletedProcess with text output."""
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                         env=env or slurm_env(), timeout=timeout, universal_newlines=True)
    if check and res.returncode != 0:
        raise AssertionError("%s -> exit %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(argv), res.returncode, res.stdout, res.stderr))
    return res


def wait_for(predicate, timeout, what, interval=0.5):
    end = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > end:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


class Slurm(object):
    """The real cluster, through its own commands."""

    def __init__(self):
        self.setup_sh = os.path.join(HERE, "setup.sh")
        self.daemon_sh = os.path.join(HERE, "daemon.sh")

    # queries, with the columns autoexp itself asks for
    def squeue(self):
        out = run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%A|%T|%r|%j|%k"]).stdout
        return [dict(zip(SQUEUE_FIELDS, line.split("|", 5))) for line in out.splitlines() if line.strip()]

    def sacct(self, *selector, **kw):
        argv = ["sacct", "-X", "-P", "-n", "-o", ",".join(SACCT_FIELDS)] + list(selector)
        if kw.get("duplicates"):
            argv.insert(1, "-D")
        res = run(argv, check=kw.get("check", True))
        if res.returncode != 0:
            return None
        return [dict(zip(SACCT_FIELDS, line.split("|", 7))) for line in res.stdout.splitlines() if line.strip()]

    def sacct_ids(self, ids, duplicates=False):
        """{job id: row} for the given ids (array tasks as 12_3)."""
        return dict((r["JobID"], r) for r in self.sacct("-j", ",".join(ids), duplicates=duplicates))

    def jobs_named(self, names, since):
        """Every SLURM job id (array tasks expanded) whose name is one of names: squeue's jobs,
        and sacct's since `since`. sacct learns a fresh job's name a few seconds late."""
        ids = set()
        for row in self.squeue():
            if row["JobName"] in names:
                ids.add(row["JobID"])
        for row in self.sacct("-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60)),
                              "--name=" + ",".join(names)):
            ids.update(expand_ids(row["JobID"]))
        return ids

    def state_of(self, job_id):
        rows = [r for r in self.squeue() if r["JobID"] == job_id]
        return rows[0]["State"] if rows else None

    def wait_final(self, ids, timeout=60):
        """sacct rows of the jobs once all of them ended and have their End time."""
        def done():
            rows = self.sacct_ids(ids)
            if all(i in rows and rows[i]["State"].split()[0] not in ACTIVE and rows[i]["End"] != "Unknown"
                   for i in ids):
                return rows
            return None
        return wait_for(done, timeout, "sacct to report jobs %s ended" % ",".join(ids))

    def scontrol(self, *args):
        return run(["scontrol"] + list(args))

    def scancel(self, *ids):
        return run(["scancel"] + list(ids))

    # daemons
    def daemon(self, action, name):
        return run(["bash", self.daemon_sh, action, name], timeout=180, env=script_env())

    def pids(self, names):
        """{daemon: pid or None}"""
        return dict((n, run(["bash", self.daemon_sh, "status", n], check=False, env=script_env()).stdout.strip()
                     or None) for n in names)

    def setup(self, *args, **kw):
        """setup.sh with this run's AUTOEXP_SLURM_* settings."""
        return run(["bash", self.setup_sh] + list(args), timeout=kw.get("timeout", 600),
                   check=kw.get("check", True), env=script_env())

    def ensure_up(self):
        """Whatever a test stopped is started again (setup.sh is idempotent)."""
        return self.setup("--quiet", check=False)

    def cancel_everything(self):
        res = run(["squeue", "-h", "-o", "%A"], check=False)
        ids = sorted(set(res.stdout.split())) if res.returncode == 0 else []
        if ids:
            run(["scancel"] + ids, check=False)


class RealProject(object):
    """A project folder in which autoexp.pyz runs, as a user would run it, on real SLURM."""

    def __init__(self, root, pyz, python, slurm):
        self.root = str(root)
        self.pyz = pyz
        self.python = python
        self.slurm = slurm
        self.state_dir = os.path.join(self.root, "autoexp-state")
        self.env = slurm_env()
        self.started = time.time()
        self.procs = []

    def argv(self, *args):
        return [self.python, self.pyz] + list(args)

    def config(self, cfg, name="cfg.json"):
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    def cli(self, *args, **kw):
        return run(self.argv(*args), timeout=kw.get("timeout", 120), check=False, cwd=self.root, env=self.env)

    def ok(self, *args, **kw):
        res = self.cli(*args, **kw)
        assert res.returncode == 0, "autoexp %s -> exit %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(args), res.returncode, res.stdout, res.stderr)
        return res

    def background(self, *args):
        """Start autoexp (e.g. a monitor) in the background; output goes to files."""
        tag = "%s-%d" % (args[0], len(self.procs))
        out = open(os.path.join(self.root, tag + ".out"), "w")
        err = open(os.path.join(self.root, tag + ".err"), "w")
        proc = subprocess.Popen(self.argv(*args), cwd=self.root, env=self.env, stdout=out, stderr=err)
        proc.out_path, proc.err_path = out.name, err.name
        out.close()
        err.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def output(proc):
        with open(proc.out_path) as f:
            out = f.read()
        with open(proc.err_path) as f:
            err = f.read()
        return out, err

    def finish(self, proc, timeout):
        """Wait for a background autoexp; returns (stdout, stderr), asserting exit 0."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
            out, err = self.output(proc)
            raise AssertionError("autoexp %s did not finish within %ss\nstdout:\n%s\nstderr:\n%s"
                                 % (proc.args[2:], timeout, out, err))
        out, err = self.output(proc)
        assert proc.returncode == 0, "autoexp %s -> exit %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(proc.args[2:]), proc.returncode, out, err)
        return out, err

    def stop_background(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # autoexp's files and read-only commands
    def state_path(self, session):
        return os.path.join(self.state_dir, session + ".json")

    def state(self, session):
        """The session as one document (header and "jobs"), read the way autoexp reads it."""
        return _helpers().load_state(self.state_dir, session)

    def state_bytes(self, session):
        """Every byte of the session's state (header and job files): equal means unwritten."""
        return _helpers().state_bytes(self.state_dir, session)

    def events(self, session):
        path = os.path.join(self.state_dir, session + ".events.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def status(self, session):
        return json.loads(self.ok("status", "--session", session, "--json").stdout)["sessions"][0]

    def history(self, session, name=None):
        doc = json.loads(self.ok("history", "--session", session, "--json", *([name] if name else [])).stdout)
        return dict((j["name"], j) for j in doc["jobs"])

    def script(self, session, name):
        return os.path.join(self.state_dir, "plans", session, "jobs", name + ".sbatch")
