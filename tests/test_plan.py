"""What `autoexp plan` writes: templates rendered from the sweep's values (placeholders,
escaped braces, shell variables left alone, unknown placeholders refused), values quoted so
that sbatch's own directive parser reads them back unchanged, and the job array's script
(its throttle, its log path, and a plan without an array when the array log cannot be
rendered). A template's clustered short options read as sbatch reads them, a log folder that
is a file refused; plan ids claimed atomically (two plans in one second get two ids) and
valid for any project name; and bounds on config values: numbers finite and within limits
(in the file, in -o overrides, on the command line), sweeps of at most 100000 points."""

import json
import os
import shlex

import pytest

from helpers import _Sink, autoexp, refused, slurm_get_argument, timeout_stall_config, write_config

pytestmark = pytest.mark.timeout(30)


def test_render_template():
    values = {"lr": "0.001", "name": "a b", "project": "p"}
    assert autoexp.render_template("--lr {lr} ${HOME} {{x}} ${A:-b}", values, "w") == "--lr 0.001 ${HOME} {x} ${A:-b}"
    assert autoexp.render_template("run {name}", values, "w", quote=shlex.quote) == "run 'a b'"
    with pytest.raises(autoexp.ConfigError, match=r"unknown placeholder \{nope\}"):
        autoexp.render_template("{nope}", values, "w")
    with pytest.raises(autoexp.ConfigError, match="lone"):
        autoexp.render_template("for i in {1..3", values, "w")


def _array_plan(**job):
    raw = {"project": "p", "sweep": {"seed": [1, 2, 3]},
           "job": dict({"name": "{project}-{seed}", "command": "train {seed}", "log": "logs/{name}-%j.log"}, **job)}
    config = autoexp.resolve_config(raw, "c.json", [])
    return autoexp.build_plan(config, "c.json", "p1", "/st", "/w", 0)


def test_the_array_script_carries_its_throttle_and_a_chosen_log():
    manifest, scripts = _array_plan(array_max_running=2, array_log="alogs/{plan_id}-%A_%a.log")
    text = scripts[manifest["array"]["script_path"]]
    assert "#SBATCH --array=0,1,2%2\n" in text   # the throttle also holds for a hand `sbatch`
    assert "#SBATCH --output=/w/alogs/p1-%A_%a.log\n" in text
    assert manifest["array_error"] is None


def test_an_array_log_the_user_wrote_wrong_is_a_plan_error():
    with pytest.raises(autoexp.ConfigError, match=r"c.json: job.array_log.*\{seed\}"):
        _array_plan(array_log="alogs/{seed}-%A_%a.log")
    # a default that cannot be rendered only leaves the plan without an array
    manifest, _ = _array_plan(log="logs/{seed}/{name}-%j.log")
    assert manifest["array"] is None and "job.array_log" in manifest["array_error"]


@pytest.mark.parametrize("value", ["gpu", "a b", 'say "hi"', "back\\slash", "x#y", "it's", "", "  lead", "B:USR1@300"])
def test_sbatch_quote_round_trips_through_sbatch_parser(value):
    line = autoexp.render_sbatch_line("comment", value)[len("#SBATCH "):]
    assert slurm_get_argument(line) == ["--comment=" + value]


# --- directives in a template are read as sbatch reads them ------------------------------


@pytest.mark.parametrize("line, owned", [
    ("#SBATCH -Qa0-2", "array"), ("#SBATCH -HJname", "job-name"), ("#SBATCH -vvo out.log", "output"),
    ("#SBATCH -Qe err.log", "error"), ("#SBATCH -sW", "wait"), ("#SBATCH -kD/tmp", None),
    ("#SBATCH -pgpu", None), ("#SBATCH -t10 -Qc4", None),
])
def test_short_option_clusters_in_a_template_are_read_as_sbatch_reads_them(tmp_path, line, owned):
    # clustered short options that set what autoexp owns are refused; the others are kept
    tpl = tmp_path / "job.sh"
    tpl.write_text("#!/bin/bash\n%s\necho hi\n" % line)
    cfg = timeout_stall_config()
    del cfg["job"]["command"]
    cfg["job"]["template"] = str(tpl)
    c = autoexp.resolve_config(json.loads(json.dumps(cfg)), str(tmp_path / "c.json"), [])
    if owned is None:
        autoexp.build_plan(c, str(tmp_path / "c.json"), "p1", str(tmp_path / "s"), str(tmp_path), 0)
        return
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.build_plan(c, str(tmp_path / "c.json"), "p1", str(tmp_path / "s"), str(tmp_path), 0)
    assert "--%s" % owned in str(e.value)


def test_a_log_folder_that_is_a_file_is_refused_at_plan_time(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    cfg = timeout_stall_config()
    (tmp_path / "logs").write_text("not a folder")
    cfg_path = write_config(str(tmp_path / "cfg.json"), cfg)
    err = []
    code = autoexp.main(["--state-dir", str(tmp_path / "state"), "plan", cfg_path], err=_Sink(err))
    assert code == autoexp.EXIT_USAGE and "is not a folder" in "".join(err)
    assert not os.path.exists(str(tmp_path / "state" / "plans")) or not os.listdir(str(tmp_path / "state" / "plans"))


# --- plan ids: claimed atomically, and every one autoexp makes is one it accepts ---------


def test_a_plan_id_taken_between_check_and_write_is_not_overwritten(tmp_path, monkeypatch):
    cfg_path = write_config(str(tmp_path / "cfg.json"), timeout_stall_config())
    state = str(tmp_path / "state")
    real_build = autoexp.build_plan
    other = {}

    def racing_build(config, source, plan_id, state_dir, workdir, created_at):
        # another `plan` of the same project, in the same second, claims this id first
        if not other:
            os.makedirs(os.path.join(state_dir, "plans", plan_id))
            with open(os.path.join(state_dir, "plans", plan_id, "manifest.json"), "w") as f:
                f.write("the other plan's manifest")
            other["id"] = plan_id
        return real_build(config, source, plan_id, state_dir, workdir, created_at)
    monkeypatch.setattr(autoexp, "build_plan", racing_build)
    clock = lambda: 1700000000.0  # noqa: E731
    out = []
    assert autoexp.main(["--state-dir", state, "plan", cfg_path], clock=clock, out=_Sink(out)) == 0
    mine = out[0].strip()
    assert mine != other["id"] and mine == other["id"] + "-2"
    with open(os.path.join(state, "plans", other["id"], "manifest.json")) as f:
        assert f.read() == "the other plan's manifest"
    assert autoexp.load_manifest(os.path.join(state, "plans", mine, "manifest.json")).plan_id == mine


def test_two_plans_in_one_second_get_two_ids(tmp_path):
    cfg_path = write_config(str(tmp_path / "cfg.json"), timeout_stall_config())
    state = str(tmp_path / "state")
    ids = []
    for _ in range(3):
        out = []
        assert autoexp.main(["--state-dir", state, "plan", cfg_path], clock=lambda: 1700000000.0,
                            out=_Sink(out)) == 0
        ids.append(out[0].strip())
    assert len(set(ids)) == 3 and ids[1] == ids[0] + "-2" and ids[2] == ids[0] + "-3"


@pytest.mark.parametrize("length", [100, 112, 113, 120, 128])
def test_a_long_project_name_gives_a_valid_plan_id(tmp_path, length):
    cfg = timeout_stall_config()
    cfg["project"] = "p" * length
    cfg["job"]["name"] = "j{seed}"
    cfg_path = write_config(str(tmp_path / "cfg.json"), cfg)
    state = str(tmp_path / "state")
    for n in (1, 2):
        out = []
        assert autoexp.main(["--state-dir", state, "plan", cfg_path], clock=lambda: 1700000000.0,
                            out=_Sink(out)) == 0
        plan_id = out[0].strip()
        assert autoexp.check_safe_name(plan_id, "plan id") == plan_id and len(plan_id) <= 128
        assert autoexp.StateStore(state).resolve(os.path.join(state, "plans", plan_id, "manifest.json"))
        assert n == 1 or plan_id.endswith("-2")


# --- bounds on config values: NaN, infinities, absurd magnitudes, huge grids -------------


@pytest.mark.parametrize("key, value, words", [
    ("interval_seconds", float("nan"), "finite"),
    ("interval_seconds", float("inf"), "finite"),
    ("interval_seconds", 1e-300, "at least 0.1"),
    ("interval_seconds", 1e12, "at most 86400"),
    ("inactivity_threshold_seconds", 1e308, "at most"),
    ("lost_after_seconds", 10 ** 30, "at most"),
    ("slurm_timeout_seconds", 1e9, "at most 3600"),
    ("unknown_backoff_max_seconds", 1e9, "at most"),
    ("submit_retries", 10 ** 9, "at most 1000"),
    ("submit_backoff_seconds", 1e20, "at most"),
])
def test_monitoring_numbers_are_bounded(key, value, words):
    cfg = timeout_stall_config()
    cfg["monitoring"][key] = value
    refused(cfg, "monitoring." + key, words)


@pytest.mark.parametrize("policy, words", [
    ({"max_attempts": 10 ** 9}, "at most 1000"),
    ({"backoff_seconds": 1e30}, "at most"),
    ({"backoff_max_seconds": float("inf")}, "finite"),
])
def test_policy_numbers_are_bounded(policy, words):
    cfg = timeout_stall_config()
    cfg["restart"]["timeout"] = dict({"action": "restart"}, **policy)
    refused(cfg, "restart.timeout", words)


@pytest.mark.parametrize("text", ['{"project": "p", "job": {"command": "x"}, "monitoring": {"interval_seconds": NaN}}',
                                  '{"project": "p", "job": {"command": "x"}, "monitoring": {"interval_seconds": Infinity}}',
                                  '{"project": "p", "job": {"command": "x"}, "monitoring": {"interval_seconds": 1e999}}'])
def test_json_nan_infinity_and_overflow_are_not_numbers(tmp_path, text):
    path = str(tmp_path / "c.json")
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.load_config_file(path)
    assert "c.json" in str(e.value) and "not valid JSON" in str(e.value)


def test_an_override_of_infinity_is_refused():
    refused(timeout_stall_config(), "monitoring.interval_seconds", overrides=["monitoring.interval_seconds=1e999"])


@pytest.mark.parametrize("value", ["1e-300", "1e308", "nan", "inf"])
def test_the_cli_interval_is_bounded(value):
    err = []
    assert autoexp.main(["monitor", "--session", "x", "--interval", value], err=_Sink(err)) == autoexp.EXIT_USAGE
    assert "--interval" in "".join(err) and "no session" not in "".join(err)


def test_a_billion_point_grid_is_refused_before_it_is_expanded():
    cfg = timeout_stall_config()
    cfg["sweep"] = dict(("p%d" % i, list(range(10))) for i in range(9))
    refused(cfg, "sweep", "more than 100000 points")


def test_a_plans_scripts_are_durable_before_its_manifest_is_written(tmp_path, monkeypatch):
    """Scripts are fsynced together (threads), not one journal commit each, but every one
    of them before the manifest that says the plan is complete."""
    cfg = {"project": "demo", "sweep": {"seed": list(range(40))},
           "job": {"name": "{project}-s{seed}", "command": "echo {seed}", "log": "logs/{name}-%j.log"},
           "monitoring": {"interval_seconds": 60}}
    path = write_config(str(tmp_path / "cfg.json"), cfg)
    resolved = autoexp.resolve_config(autoexp.load_config_file(path), path, [])
    manifest, scripts = autoexp.build_plan(resolved, path, "p1", str(tmp_path / "state"), str(tmp_path), 1.7e9)
    order, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        order.append(("fsync", os.readlink("/proc/self/fd/%d" % fd)))
        return real_fsync(fd)

    def replace(src, dst):
        order.append(("replace", dst))
        return real_replace(src, dst)
    monkeypatch.setattr(autoexp.os, "fsync", fsync)
    monkeypatch.setattr(autoexp.os, "replace", replace)
    manifest_path = autoexp.write_plan(manifest, scripts)
    done = order.index(("replace", manifest_path))
    synced = set(p for op, p in order[:done] if op == "fsync")
    assert set(scripts) - synced == set() and len(scripts) == 41  # 40 jobs and the array
    assert os.path.dirname(next(iter(scripts))) in synced  # their folder entry too
    for p, text in scripts.items():
        with open(p) as f:
            assert f.read() == text
        assert os.stat(p).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(os.path.dirname(__file__), "..", "examples"))
                                        if n.endswith(".json")))
def test_the_example_configs_plan(tmp_path, name):
    """The examples README points to are valid configs: every key known, every bound kept."""
    path = os.path.join(os.path.dirname(__file__), "..", "examples", name)
    config = autoexp.resolve_config(autoexp.load_config_file(path), path, [])
    manifest, scripts = autoexp.build_plan(config, path, "ex", str(tmp_path / "state"), str(tmp_path), 1700000000.0)
    assert manifest["jobs"] and len(scripts) >= len(manifest["jobs"])
    if name == "multinode_training.json":  # what README says this one shows
        assert config["node_exclusion"]["scope"] == "session"
        assert config["restart"]["oom"]["sbatch"]["mem"] == ["480G", "720G", "960G"]
        assert any(e.get("exclude_nodes") for e in config["monitoring"]["log_events"])
