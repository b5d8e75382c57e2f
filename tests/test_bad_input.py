"""Bad input, table-driven: every case exits 2 with one "Error: ..." line that names the
problem (file, key or line), never a traceback, and leaves every existing state file as it
was. In-process: a config or a state file of JSON nested too deeply is an error, not a
traceback (a broken state file is one broken session, the others are shown)."""

import copy
import hashlib
import json
import os
import shutil

import pytest

from helpers import (A, Harness, Project, _Sink, autoexp, fake_slurm, load_state, run_cli, timeout_stall_config,
                     write_config, write_state_doc)

pytestmark = pytest.mark.timeout(60)

GOOD = {
    "project": "bad",
    "sweep": {"seed": [1, 2]},
    "job": {"name": "{project}-s{seed}", "command": "echo {seed}; echo DONE", "log": "logs/{name}-%j.log",
            "sbatch": {"time": "10"}},
    "monitoring": {"interval_seconds": 1, "termination_string": "DONE",
                   "log_events": [{"name": "oom", "pattern": "CUDA out of memory", "mode": "oom"}]},
    "restart": {"timeout": {"action": "restart", "max_attempts": 2}},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A project with one submitted, finished session, copied afresh for every case."""
    root = tmp_path_factory.mktemp("base")
    fs = fake_slurm.FakeSlurm(str(root / "fake"))
    fs.configure(pending_seconds=0.05, completing_seconds=0.05)
    try:
        (root / "proj").mkdir()
        p = Project(root / "proj", fs)
        p.ok("plan", p.config(GOOD), "--plan-id", "s1")
        p.ok("submit", "s1")
        p.ok("monitor", "--session", "s1", "-o", "interval_seconds=0.1")
    finally:
        fs.shutdown()
    return root


def snapshot(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def with_config(mutate):
    def setup(p):
        cfg = copy.deepcopy(GOOD)
        mutate(cfg)
        write_config(os.path.join(p, "c.json"), cfg)
        return ["plan", "c.json"]
    return setup


def raw_config(text):
    def setup(p):
        with open(os.path.join(p, "c.json"), "w") as f:
            f.write(text)
        return ["plan", "c.json"]
    return setup


def override(*opts):
    def setup(p):
        write_config(os.path.join(p, "c.json"), GOOD)
        args = ["plan", "c.json"]
        for o in opts:
            args += ["-o", o]
        return args
    return setup


def template(text):
    def setup(p):
        with open(os.path.join(p, "t.sh"), "w") as f:
            f.write(text)
        cfg = copy.deepcopy(GOOD)
        del cfg["job"]["command"]
        cfg["job"]["template"] = "t.sh"
        write_config(os.path.join(p, "c.json"), cfg)
        return ["plan", "c.json"]
    return setup


def state_file(content):
    def setup(p):
        state = os.path.join(p, "autoexp-state")
        if callable(content):
            doc = load_state(state, "s1")
            content(doc)
            write_state_doc(state, "s1", doc)
        else:
            with open(os.path.join(state, "s1.json"), "wb") as f:
                f.write(content)
        return ["monitor", "--session", "s1", "--once"]
    return setup


def args(*a):
    return lambda p: list(a)


def foreign_json(p):
    path = os.path.join(os.path.dirname(p), "elsewhere.json")
    with open(path, "w") as f:
        f.write('{"not": "a session"}')
    return ["monitor", "--session", path]


def no_sbatch(p):
    res = run_cli(["plan", "c.json", "--plan-id", "s2"], dict(os.environ), p)
    assert res.returncode == 0, res.stderr
    return ["submit", "s2"]


ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def ascii_locale(config_dir=".", state_dir=None):
    """A non-ASCII path under the ASCII locale cron gives Python 3.6 (LANG unset)."""
    def setup(p):
        folder = os.path.join(p, config_dir)
        if not os.path.isdir(folder):
            os.makedirs(folder)
        write_config(os.path.join(folder, "c.json"), GOOD)
        argv = ["--state-dir", state_dir] if state_dir else []
        return argv + ["plan", os.path.join(config_dir, "c.json")], ASCII_LOCALE
    return setup


def future(doc):
    doc["schema_version"] = 99


def drop_jobs(doc):
    del doc["jobs"]


def damaged(change):
    """A state file edited or damaged into other valid JSON."""
    def mutate(doc):
        change(doc, doc["jobs"][0], doc["jobs"][0]["attempts"][0])
    return state_file(mutate)


CASES = [
    # config files
    ("malformed JSON", raw_config('{"project": "bad",\n  "job": }'), ["c.json", "not valid JSON", "line 2"]),
    ("config is a list", raw_config("[1, 2]"), ["c.json", "must be a JSON object"]),
    ("duplicate key", raw_config('{"project": "a", "project": "b"}'), ["c.json", "'project' appears twice"]),
    ("missing config", args("plan", "nope.json"), ["cannot read config nope.json"]),
    ("project not a string", with_config(lambda c: c.update(project=3)), ["c.json", "project", "must be a string"]),
    ("unknown top-level key", with_config(lambda c: c.update(monitorng={})), ["monitorng", "unknown key"]),
    ("unknown job key", with_config(lambda c: c["job"].update(cmd="x")), ["job.cmd", "unknown key"]),
    ("empty sweep", with_config(lambda c: c.update(sweep={})), ["sweep", "is empty"]),
    ("empty sweep list", with_config(lambda c: c.update(sweep=[])), ["sweep", "empty list"]),
    ("sweep values not a list", with_config(lambda c: c.update(sweep={"seed": 3})), ["sweep.seed", "non-empty list"]),
    ("sweep value an object", with_config(lambda c: c.update(sweep={"seed": [{}]})), ["sweep.seed[0]", "strings, numbers"]),
    ("reserved parameter", with_config(lambda c: c.update(sweep={"name": [1]})), ["sweep.name", "reserved"]),
    ("duplicate names", with_config(lambda c: c["job"].update(name="{project}")), ["job.name", "unique"]),
    ("unsafe name", with_config(lambda c: c["job"].update(name="../{seed}")), ["job.name", "not a safe name"]),
    ("unsafe project", with_config(lambda c: c.update(project="a b")), ["project", "not a safe name"]),
    ("unknown placeholder", with_config(lambda c: c["job"].update(command="run {nope}")),
     ["job.command", "unknown placeholder {nope}"]),
    ("lone brace", with_config(lambda c: c["job"].update(command="for i in {1..3; do :; done")),
     ["job.command", "lone"]),
    ("no command", with_config(lambda c: c["job"].pop("command")), ["job", "exactly one of job.command"]),
    ("newline in sbatch value", with_config(lambda c: c["job"]["sbatch"].update(comment2="a\nb")),
     ["job.sbatch.comment2", "newline"]),
    ("NUL in sbatch value", with_config(lambda c: c["job"]["sbatch"].update(mail="a\x00b")),
     ["job.sbatch.mail", "control character"]),
    ("newline from a sweep value", with_config(lambda c: (c.update(sweep={"p": ["x\ny"]}),
                                                          c["job"].update(name="n{index}", sbatch={"comment2": "{p}"}))),
     ["job.sbatch.comment2", "newline"]),
    ("sbatch key autoexp owns", with_config(lambda c: c["job"]["sbatch"].update(output="x")),
     ["job.sbatch.output", "autoexp sets itself"]),
    ("sbatch key abbreviating one autoexp owns", with_config(lambda c: c["job"]["sbatch"].update(comm="x")),
     ["job.sbatch.comm", "sets --comment"]),
    ("template setting the output with a short option", template("#!/bin/bash\n#SBATCH -ologs/x.log\necho\n"),
     ["t.sh line 2", "--output"]),
    ("bad sbatch key", with_config(lambda c: c["job"]["sbatch"].update({"--time": "1"})), ["job.sbatch.--time"]),
    ("bad env name", with_config(lambda c: c["job"].update(env={"A-B": "1"})), ["job.env.A-B"]),
    ("log pattern autoexp cannot follow", with_config(lambda c: c["job"].update(log="logs/%N.log")),
     ["job.log", "%N"]),
    ("missing template", with_config(lambda c: (c["job"].pop("command"), c["job"].update(template="t.sh"))),
     ["job.template", "cannot read"]),
    ("negative interval", with_config(lambda c: c["monitoring"].update(interval_seconds=-1)),
     ["monitoring.interval_seconds", "greater than 0"]),
    ("zero interval", with_config(lambda c: c["monitoring"].update(interval_seconds=0)),
     ["monitoring.interval_seconds", "greater than 0"]),
    ("interval not a number", with_config(lambda c: c["monitoring"].update(interval_seconds="60")),
     ["monitoring.interval_seconds", "must be a number"]),
    ("zero max_attempts", with_config(lambda c: c["restart"]["timeout"].update(max_attempts=0)),
     ["restart.timeout.max_attempts", "greater than 0"]),
    ("float max_attempts", with_config(lambda c: c["restart"]["timeout"].update(max_attempts=1.5)),
     ["restart.timeout.max_attempts", "integer"]),
    ("unknown restart mode", with_config(lambda c: c["restart"].update(timout={"action": "stop"})),
     ["restart.timout", "unknown mode"]),
    ("unknown action", with_config(lambda c: c["restart"].update(oom={"action": "retry"})),
     ["restart.oom.action", "must be one of"]),
    ("invalid regex", with_config(lambda c: c["monitoring"]["log_events"][0].update(pattern="CUDA (out")),
     ["monitoring.log_events[0].pattern", "invalid regular expression"]),
    ("log event without pattern", with_config(lambda c: c["monitoring"]["log_events"][0].pop("pattern")),
     ["monitoring.log_events[0]", "missing 'pattern'"]),
    # overrides
    ("override without =", override("nokey"), ["override 'nokey'", "KEY=VALUE"]),
    ("override with empty value", override("a.b="), ["override 'a.b='", "empty"]),
    ("override of an unknown key", override("monitoring.nope=1"), ["monitoring.nope", "unknown key"]),
    ("override of the wrong type", override("monitoring.interval_seconds=[1]"),
     ["monitoring.interval_seconds", "must be a number"]),
    ("override through a string", override("project.x=1"), ["project.x=1", "not an object"]),
    ("override with a bad key", override("a..b=1"), ["a..b", "dotted key"]),
    # plans and sessions
    ("unsafe plan id", lambda p: (write_config(os.path.join(p, "c.json"), GOOD), ["plan", "c.json", "--plan-id", "../x"])[1],
     ["plan id", "not a safe name"]),
    ("existing plan id", lambda p: (write_config(os.path.join(p, "c.json"), GOOD), ["plan", "c.json", "--plan-id", "s1"])[1],
     ["already exists"]),
    ("unknown plan", args("submit", "nosuch"), ["no plan 'nosuch'"]),
    ("unknown job in --only", args("submit", "s1", "--only", "nosuch"), ["no job nosuch"]),
    ("session path traversal", args("monitor", "--session", "../../etc/passwd"), ["neither a session id nor"]),
    ("foreign json outside the state dir", foreign_json, ["elsewhere.json", "not an autoexp session file"]),
    ("missing session", args("monitor", "--session", "nosuch"), ["no session 'nosuch'"]),
    ("unknown job in history", args("history", "--session", "s1", "nosuch"), ["no job 'nosuch'"]),
    ("unknown job in cancel", args("cancel", "--session", "s1", "nosuch"), ["no job nosuch"]),
    ("truncated state file", state_file(b'{"kind": "autoexp-session", "jobs": [{"na'),
     ["s1.json", "not valid JSON", "move it aside"]),
    ("empty state file", state_file(b""), ["s1.json", "is empty"]),
    ("non-JSON state file", state_file(b"\x00\x01garbage"), ["s1.json", "not valid JSON"]),
    ("future schema version", state_file(future), ["s1.json", "schema version 99", "newer"]),
    ("state file without jobs", state_file(drop_jobs), ["s1.json", "incomplete"]),
    ("attempt without job_id and live", damaged(lambda d, j, a: (a.pop("job_id"), a.pop("live"))),
     ["s1.json", "incomplete", "'job_id'"]),
    ("job without attempts", damaged(lambda d, j, a: j.pop("attempts")), ["s1.json", "incomplete", "'attempts'"]),
    ("an empty attempt", damaged(lambda d, j, a: j["attempts"].__setitem__(0, {})), ["s1.json", "incomplete"]),
    ("unknown job status", damaged(lambda d, j, a: j.update(status="paused")), ["s1.json", "'paused'"]),
    ("job without status", damaged(lambda d, j, a: j.pop("status")), ["s1.json", "'status'"]),
    ("log offset not a number", damaged(lambda d, j, a: a.update(log_offset="12")), ["s1.json", "'log_offset'"]),
    ("config without monitoring", damaged(lambda d, j, a: d["config"].pop("monitoring")),
     ["s1.json", "incomplete", "monitoring"]),
    ("read-only state dir", args("--state-dir", "/proc/autoexp-state", "plan", "c.json"), ["/proc/autoexp-state"]),
    ("bad monitor override", args("monitor", "--session", "s1", "-o", "interval_seconds=-5"),
     ["monitoring.interval_seconds", "greater than 0"]),
    ("both --session and --all", args("monitor", "--session", "s1", "--all"), ["--session", "--all"]),
    ("sbatch not on PATH", no_sbatch, ["'sbatch' was not found"]),
    ("unknown command", args("frobnicate"), ["invalid choice", "autoexp --help"]),
    ("not a number of seconds", args("monitor", "--session", "s1", "--interval", "abc"),
     ["--interval", "'abc'", "autoexp monitor --help"]),
    ("missing argument", args("history"), ["--session", "autoexp history --help"]),
    ("non-ASCII config path, ASCII locale", ascii_locale(config_dir="caf\u00e9"), ["ASCII locale", "LANG=C.UTF-8"]),
    ("non-ASCII state dir, ASCII locale", ascii_locale(state_dir="\u00e9tat"), ["ASCII locale", "LANG=C.UTF-8"]),
]


@pytest.mark.parametrize("name, setup, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(base, tmp_path, name, setup, expected):
    proj = str(tmp_path / "proj")
    shutil.copytree(str(base / "proj"), proj)
    # the copy is this case's own project: its files name their own folder, not the base's
    for dirpath, _, files in os.walk(proj):
        for f in files:
            if f.endswith(".json"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    text = fh.read()
                with open(path, "w") as fh:
                    fh.write(text.replace(str(base / "proj"), proj))
    write_config(os.path.join(proj, "c.json"), GOOD)
    argv, extra_env = setup(proj), {}
    if isinstance(argv, tuple):
        argv, extra_env = argv
    state = os.path.join(proj, "autoexp-state")
    before = snapshot(state)
    env = dict(os.environ, PATH="/nonexistent", FAKE_SLURM_DIR=str(tmp_path / "nofake"))
    env.pop("AUTOEXP_STATE_DIR", None)
    env.update(extra_env)
    res = run_cli(argv, env, proj, timeout=30)
    err = res.stderr
    assert res.returncode == 2, (res.returncode, res.stdout, err)
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for text in expected:
        assert text in err, (text, err)
    assert snapshot(state) == before, "a state file changed"
    assert not os.path.exists(os.path.join(proj, "\u00e9tat", "plans")), "a half-written plan was left"


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


# --- JSON nested too deeply to parse, in-process --------------------------------------


def test_a_deeply_nested_config_is_an_error_not_a_traceback(tmp_path):
    path = str(tmp_path / "c.json")
    with open(path, "w") as f:
        f.write('{"project": "p", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    err = []
    assert autoexp.main(["plan", path], err=_Sink(err)) == autoexp.EXIT_USAGE
    assert "nested too deeply" in "".join(err) and "Traceback" not in "".join(err)


def test_a_deeply_nested_state_file_is_one_broken_session(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    with open(os.path.join(h.state_dir, "zz.json"), "w") as f:
        f.write("[" * 100000 + "]" * 100000)
    out, err = [], []
    code = autoexp.main(["--state-dir", h.state_dir, "status"], out=_Sink(out), err=_Sink(err))
    assert code == autoexp.EXIT_USAGE and "zz.json" in "".join(err) and "nested too deeply" in "".join(err)
    assert "session p1" in "".join(out)


@pytest.mark.parametrize("sbatch, message", [
    ({"mem": "{attempt**2}G"}, "only {attempt} and {attempt*N}"),
    ({"mem": "{lr}G"}, "only {attempt} and {attempt*N}"),
    ({"mem": "{attempt*0}G"}, "only {attempt} and {attempt*N}"),
    ({"mem": "{attempt*9999999}G"}, "only {attempt} and {attempt*N}"),
    ({"job-name": "x"}, "autoexp sets itself"),
    ({"out": "x"}, "autoexp sets itself"),
    ({"export": "NONE"}, "autoexp sets itself"),
    ({"mem": False}, "cannot be unset"),
    ({"mem": None}, "cannot be unset"),
    ({"mem": 1.5}, "must be a string or an integer"),
    ({"mem": []}, "1 to 1000 entries"),
    ({"mem": "a\nb"}, "control character"),
    ({"m": "1"}, "long sbatch option name"),
    ({"mem": "x" * 5000}, "longer than"),
])
def test_bad_per_attempt_sbatch_options_are_refused(sbatch, message):
    c = autoexp._Checker("cfg.json")
    mon = autoexp.validate_monitoring({}, c)
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.validate_restart({"oom": {"action": "restart", "sbatch": sbatch}}, mon, c)
    assert message in str(e.value) and "restart.oom.sbatch" in str(e.value)


def test_per_attempt_sbatch_options_need_a_restart():
    c = autoexp._Checker("cfg.json")
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.validate_restart({"oom": {"action": "stop", "sbatch": {"mem": "1G"}}},
                                 autoexp.validate_monitoring({}, c), c)
    assert "only a restart submits" in str(e.value)


@pytest.mark.parametrize("mode", ["blocked", "pending_too_long"])
def test_a_job_that_never_ran_cannot_be_finalized(mode):
    c = autoexp._Checker("cfg.json")
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.validate_restart({mode: {"action": "finalize"}}, autoexp.validate_monitoring({}, c), c)
    assert "never ran" in str(e.value) and "restart.%s.action" % mode in str(e.value)


def test_a_node_group_in_a_substring_is_refused():
    c = autoexp._Checker("cfg.json")
    ev = {"name": "ecc", "pattern": "ECC error on (?P<node>\\S+)", "mode": "hw", "match": "substring",
          "exclude_nodes": True}
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.validate_monitoring({"log_events": [ev]}, c)
    assert "a substring has no groups" in str(e.value)


@pytest.mark.parametrize("text", ["\u0663", "1e3", "0x10", " 3", "", "0", "100001"])
def test_max_running_takes_plain_ascii_digits_only(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        autoexp.max_running_count(text)


def test_a_per_attempt_integer_is_bounded():
    c = autoexp._Checker("cfg.json")
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.validate_restart({"oom": {"action": "restart", "sbatch": {"cpus-per-task": 2 ** 70}}},
                                 autoexp.validate_monitoring({}, c), c)
    assert "below 2^63" in str(e.value)


@pytest.mark.parametrize("argv, words", [
    (["status", "--active", "--all"], "not allowed with argument"),
    (["status", "--session", "p1", "--all"], "not allowed with argument"),
    (["status", "--session", "p1", "--active"], "not allowed with argument"),
    (["archive", "--session", "p1", "--finished"], "not both"),
])
def test_exclusive_options_are_refused_together(tmp_path, argv, words):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    out, err = [], []
    code = autoexp.main(["--state-dir", h.state_dir] + argv, out=_Sink(out), err=_Sink(err))
    assert code == autoexp.EXIT_USAGE and words in "".join(err) and not "".join(out), (out, err)
    assert os.path.isfile(os.path.join(h.state_dir, "p1.json"))


def _damage_manifest(h, change):
    path = h.plan.manifest_path
    with open(path) as f:
        doc = json.load(f)
    change(doc)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


@pytest.mark.parametrize("change, words", [
    (lambda d: d["jobs"][0].__setitem__("params", [1, 2]), "jobs[0].params is not an object"),
    (lambda d: d["jobs"][0].__setitem__("params", "str"), "jobs[0].params is not an object"),
    (lambda d: d.__setitem__("jobs", "oops"), "'jobs' is not a list"),
    (lambda d: d.__setitem__("jobs", [7]), "jobs[0] is not an object"),
    (lambda d: d["jobs"][0].pop("name"), "jobs[0].name is not a string"),
    (lambda d: d["jobs"][1].__setitem__("index", "1"), "jobs[1].index is not a whole number"),
    (lambda d: d.__setitem__("config", None), "'config' is not an object"),
])
def test_a_damaged_manifest_is_an_error_naming_it_never_a_traceback(tmp_path, change, words):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    path = _damage_manifest(h, change)
    for argv, code in ((["reconcile"], autoexp.EXIT_USAGE), (["status"], autoexp.EXIT_OK),
                       (["report", "--session", "p1", "-o", str(tmp_path / "r.html")], autoexp.EXIT_OK)):
        out, err = [], []
        got = autoexp.main(["--state-dir", h.state_dir] + argv, slurm=h.slurm, clock=h.clock, sleep=h.clock.sleep,
                           out=_Sink(out), err=_Sink(err))
        text = "".join(out) + "".join(err)
        assert got == code and "Traceback" not in text, (argv, text)
        if argv[0] != "status":  # status shows the jobs, params "-", as when the manifest is missing
            assert path in "".join(err) and words in "".join(err), (argv, err)
    assert h.slurm.count("sbatch") == 1


def test_status_spells_nested_params_as_json(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    _damage_manifest(h, lambda d: d["jobs"][0]["params"].update({"opt": {"b": 1, "a": [1, "x"]}}))
    out = []
    assert autoexp.main(["--state-dir", h.state_dir, "status"], out=_Sink(out), err=_Sink([])) == 0
    assert 'opt={"a":[1,"x"],"b":1}' in "".join(out) and "OrderedDict" not in "".join(out)
