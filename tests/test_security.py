"""No value from a config, a sweep, a job name or SLURM output ever runs as shell code: only
the user's own command does, with every substituted value quoted (and a sweep value that bash
arithmetic would run is refused). Nor does a line of a job's log reach the terminal as an
escape sequence."""

import glob
import os
import re
import subprocess

import pytest

from helpers import (A, Harness, autoexp, read_events, refused, resolve, running, slurm_get_argument,
                     timeout_stall_config)

pytestmark = pytest.mark.timeout(60)

EVIL = ["$(touch PWNED)", "`touch PWNED`", "a; touch PWNED", "it's \"quoted\"", "x\ntouch PWNED", "$HOME ${PATH}"]


def sbatch_directives(script):
    """The directive lines as sbatch reads them (helpers' model of sbatch's parser)."""
    out = []
    with open(script) as f:
        for line in f:
            if line.startswith("#SBATCH"):
                out += slurm_get_argument(line[len("#SBATCH"):])
            elif line.strip() and not line.startswith("#"):
                break
    return out


@pytest.mark.slow
def test_hostile_values_never_run_as_shell(project, fake):
    cfg = {
        "project": "sec",
        "sweep": [{"p": v} for v in EVIL],
        "job": {"name": "{project}-{index}", "log": "logs/{name}-%j.log",
                "command": "printf '%s\\n' {p} > out-{index}.txt; echo TRAINING FINISHED",
                "env": {"EVIL": "{p}"},
                "sbatch": {"comment2": "{index} has no newline"}},
        "monitoring": {"interval_seconds": 0.2, "termination_string": "TRAINING FINISHED"},
    }
    project.ok("run", project.config(cfg), "--plan-id", "sec")
    assert not glob.glob(os.path.join(project.root, "**", "PWNED"), recursive=True)
    for i, value in enumerate(EVIL):
        with open(os.path.join(project.root, "out-%d.txt" % i)) as f:
            assert f.read() == value + "\n"  # one word, exactly the value
        script = os.path.join(project.state_dir, "plans", "sec", "jobs", "sec-%d.sbatch" % i)
        assert sbatch_directives(script) == [
            "--job-name=sec-%d" % i,
            "--output=%s/logs/sec-%d-%%j.log" % (project.root, i),
            "--error=%s/logs/sec-%d-%%j.log" % (project.root, i),
            "--comment=autoexp:sec:sec-%d" % i,
            "--chdir=%s" % project.root,
            "--comment2=%d has no newline" % i,
        ]
        with open(script) as f:
            exports = re.search(r"^export EVIL=.*?(?=\n\n)", f.read(), re.S | re.M).group(0)
        assert subprocess.check_output(["bash", "-c", exports + '\nprintf %s "$EVIL"']).decode() == value
    assert project.status("sec")["sessions"][0]["counts"] == {"finalized": len(EVIL)}


@pytest.mark.parametrize("field, value, message", [
    ("name", "$(touch PWNED)", "not a safe name"),
    ("name", "a;b", "not a safe name"),
    ("sbatch", "x\n#SBATCH --wrap=touch PWNED", "newline"),
])
def test_values_that_cannot_be_quoted_are_refused_at_plan_time(project, fake, field, value, message):
    job = {"name": "{project}", "command": "true", "log": "logs/%j.log"}
    if field == "name":
        job["name"] = value
    else:
        job["sbatch"] = {"comment2": value}
    res = project.cli("plan", project.config({"project": "sec", "job": job}))
    assert res.returncode == 2 and message in res.stderr
    assert not os.path.exists(os.path.join(project.state_dir, "plans"))


# values never run as code in bash arithmetic
@pytest.mark.parametrize("value", ["x[$(touch INJECTED)]", "a[`touch INJECTED`]", "0]+a[$(id)"])
def test_values_that_bash_arithmetic_would_run_are_refused(value):
    cfg = timeout_stall_config()
    cfg["sweep"] = {"x": [value]}
    cfg["job"]["name"] = "{project}-{index}"
    cfg["job"]["command"] = "if [[ {x} -gt 100 ]]; then echo big; fi"
    refused(cfg, "sweep.x[0]", "arithmetic")


@pytest.mark.parametrize("value", ["x[1]", "$(date)", "`date`", "a b", "$HOME", "[0-9]+"])
def test_values_bash_arithmetic_would_not_run_stay_allowed(value):
    cfg = timeout_stall_config()
    cfg["sweep"] = {"x": [value]}
    cfg["job"]["name"] = "{project}-{index}"
    cfg["job"]["command"] = "echo {x}"
    resolve(cfg)


def test_the_value_refused_for_bash_arithmetic_would_really_have_run(tmp_path):
    """What the refusal prevents: bash runs a quoted subscript in [[ -gt ]]."""
    marker = tmp_path / "INJECTED"
    script = "x='x[$(touch %s)]'; [[ $x -gt 100 ]] 2>/dev/null; true" % marker
    subprocess.call(["bash", "-c", script])
    assert marker.exists()


def test_hostile_slurm_output_is_only_data(project, fake):
    """A foreign job whose name and comment are shell code, and one that fakes autoexp's tag
    for another session: parsed, never run, never adopted."""
    env = project.env
    subprocess.check_call(["sbatch", "--parsable", "--job-name=$(touch PWNED)", "--comment=`touch PWNED`|x",
                           "--output=/dev/null", "--wrap=sleep 3"], env=env, cwd=project.root, stdout=subprocess.DEVNULL)
    subprocess.check_call(["sbatch", "--parsable", "--job-name=x|y", "--comment=autoexp:other:sec",
                           "--output=/dev/null", "--wrap=sleep 3"], env=env, cwd=project.root, stdout=subprocess.DEVNULL)
    cfg = {"project": "sec", "job": {"command": "echo TRAINING FINISHED", "log": "logs/%j.log"},
           "monitoring": {"interval_seconds": 0.2, "termination_string": "TRAINING FINISHED"}}
    project.ok("run", project.config(cfg), "--plan-id", "sec")
    assert not glob.glob(os.path.join(project.root, "**", "PWNED"), recursive=True)
    (job,) = project.history("sec")["jobs"]
    assert len(job["attempts"]) == 1 and job["status"] == "finalized"


def test_no_shell_true_and_no_eval_in_autoexp():
    with open(autoexp.__file__) as f:
        src = f.read()
    assert "shell=True" not in src and "eval(" not in src and "os.system" not in src


def test_escape_sequences_from_a_log_are_not_sent_to_the_terminal(tmp_path):
    cfg = timeout_stall_config(log_events=[{"name": "nccl", "pattern": "NCCL error", "mode": "crash"}])
    h = Harness(tmp_path, cfg, names=[A])
    running(h, A)
    h.log(A, "\x1b[31mNCCL error\x1b[0m \x00 \u202eevil\n")
    h.cycle()
    printed = "".join(h.out)
    lines = [l for l in printed.splitlines() if "log:nccl" in l]
    assert lines and "\x1b" not in printed and "\x00" not in printed and "\u202e" not in printed
    assert "\\x1b[31mNCCL error" in lines[0]
    journal = [e for e in read_events(h.state_dir, "p1") if e["event"] == "log:nccl"]
    assert "\x1b[31mNCCL error" in journal[0]["detail"]  # kept raw where a program reads it
