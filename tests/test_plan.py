"""What `autoexp plan` writes: templates rendered from the sweep's values (placeholders,
escaped braces, shell variables left alone, unknown placeholders refused), values quoted so
that sbatch's own directive parser reads them back unchanged, and the job array's script
(its throttle, its log path, and a plan without an array when the array log cannot be
rendered)."""

import shlex

import pytest

from helpers import autoexp, slurm_get_argument

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
