"""End to end: the CLI as a user runs it, against the fake SLURM that really runs the jobs."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import helpers
from helpers import ROOT, Project, read_events

pytestmark = pytest.mark.timeout(120)


def sweep_config(command="echo seed {seed}; sleep 0.2; echo TRAINING FINISHED", seeds=(1, 2, 3, 4), **monitoring):
    return helpers.sweep_config("e2e", command, seeds, {"lost_after_seconds": 15}, **monitoring)


def names(status):
    return dict((j["name"], j) for j in status["sessions"][0]["jobs"])


@pytest.mark.slow
def test_four_job_sweep_to_success(project, fake):
    cfg = project.config(sweep_config())
    res = project.ok("run", cfg, "--plan-id", "sweep")
    assert "session sweep done: 4 finalized" in res.stdout
    status = project.status("sweep")
    assert status["sessions"][0]["counts"] == {"finalized": 4}
    for job in status["sessions"][0]["jobs"]:
        assert job["attempts"] == 1 and job["status"] == "finalized"
        with open(job["log_path"]) as f:
            assert "TRAINING FINISHED" in f.read()
    assert len(fake.submissions()) == 4
    # every event once, in order, in the journal
    events = read_events(project.state_dir, "sweep")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


@pytest.mark.slow
def test_timeout_twice_then_success_history(project, fake):
    fake.add_rule(name="e2e-s1", action="TIMEOUT", nth=1, after=0.05)
    fake.add_rule(name="e2e-s1", action="TIMEOUT", nth=2, after=0.05)
    cfg = project.config(sweep_config(seeds=(1, 2)))
    project.ok("run", cfg, "--plan-id", "to")
    hist = project.history("to", "e2e-s1")["jobs"][0]
    attempts = hist["attempts"]
    subs = [j["job_id"] for j in fake.submissions("e2e-s1")]
    assert [a["job_id"] for a in attempts] == subs and len(subs) == 3
    assert [a["outcome"] for a in attempts] == ["timeout", "timeout", "success"]
    assert [a["slurm_state"] for a in attempts] == ["TIMEOUT", "TIMEOUT", "COMPLETED"]
    for a in attempts:
        assert a["log_path"].endswith("e2e-s1-%s.log" % a["job_id"]) and os.path.exists(a["log_path"])
    assert hist["status"] == "finalized"
    other = project.history("to", "e2e-s2")["jobs"][0]
    assert len(other["attempts"]) == 1


def test_log_event_mapped_to_stop(project, fake):
    cmd = "if [ {seed} = 1 ]; then echo 'RuntimeError: CUDA out of memory'; sleep 30; fi; echo TRAINING FINISHED"
    cfg = sweep_config(command=cmd, seeds=(1, 2, 3))
    cfg["monitoring"]["log_events"] = [{"name": "cuda_oom", "pattern": "CUDA out of memory", "mode": "oom"}]
    cfg["restart"]["oom"] = {"action": "stop"}
    project.ok("run", project.config(cfg), "--plan-id", "oom")
    jobs = names(project.status("oom"))
    assert jobs["e2e-s1"]["status"] == "stopped" and jobs["e2e-s1"]["attempts"] == 1
    assert jobs["e2e-s2"]["status"] == jobs["e2e-s3"]["status"] == "finalized"
    assert len(fake.submissions("e2e-s1")) == 1
    fake.wait(lambda jobs: all(j["state"] not in ("RUNNING", "PENDING") for j in jobs), timeout=10)
    assert fake.submissions("e2e-s1")[0]["state"] == "CANCELLED"  # it does not keep its GPUs


@pytest.mark.slow
def test_stall_is_cancelled_and_restarted(project, fake):
    cmd = ("if [ {seed} = 1 ] && [ ! -e stalled-once ]; then touch stalled-once; echo started; sleep 60; fi; "
           "echo TRAINING FINISHED")
    cfg = sweep_config(command=cmd, seeds=(1, 2), inactivity_threshold_seconds=2)
    project.ok("run", project.config(cfg), "--plan-id", "stall")
    attempts = project.history("stall", "e2e-s1")["jobs"][0]["attempts"]
    assert [a["outcome"] for a in attempts] == ["stall", "success"]
    subs = fake.submissions("e2e-s1")
    assert subs[0]["state"] == "CANCELLED" and len(subs) == 2
    assert any(c["argv"] == [subs[0]["job_id"]] for c in fake.calls("scancel"))


def test_failing_every_time_stops_at_max_attempts(project, fake):
    cfg = sweep_config(command="if [ {seed} = 1 ]; then exit 3; fi; echo TRAINING FINISHED", seeds=(1, 2))
    project.ok("run", project.config(cfg), "--plan-id", "crash")
    job = project.history("crash", "e2e-s1")["jobs"][0]
    assert job["status"] == "stopped"
    assert [a["outcome"] for a in job["attempts"]] == ["crash", "crash"]
    assert [a["exit_code"] for a in job["attempts"]] == ["3:0", "3:0"]
    assert len(fake.submissions("e2e-s1")) == 2


@pytest.mark.slow
def test_squeue_failing_for_several_cycles_changes_nothing(project, fake):
    cfg = project.config(sweep_config(command="sleep 0.5; echo TRAINING FINISHED"))
    project.ok("plan", cfg, "--plan-id", "outage")
    project.ok("submit", "outage")
    before = open(os.path.join(project.state_dir, "outage.json"), "rb").read()
    fake.fail_next("squeue", count=6)
    res = project.cli("monitor", "--session", "outage", "--once")
    assert res.returncode == 1 and "SLURM did not answer" in res.stderr
    assert open(os.path.join(project.state_dir, "outage.json"), "rb").read() == before
    res = project.ok("monitor", "--session", "outage", "--interval", "0.2")
    assert res.stderr.count("SLURM did not answer") == 1  # said once, not once per cycle
    assert "SLURM answers again" in res.stdout
    assert names(project.status("outage"))["e2e-s1"]["status"] == "finalized"
    assert project.status("outage")["sessions"][0]["counts"] == {"finalized": 4}
    assert len(fake.submissions()) == 4


@pytest.mark.slow
def test_array_task_fails_once_and_only_it_is_resubmitted(project, fake):
    fake.add_rule(name="arr", task=2, nth=1, action="FAILED", exit_code=1, after=0.1)
    cfg = project.config(sweep_config(command="sleep 0.3; echo TRAINING FINISHED"))
    project.ok("plan", cfg, "--plan-id", "arr")
    out = project.ok("submit", "arr", "--array").stdout
    first = out.split()[1].split("_")[0]
    assert out.split()[1::2] == ["%s_%d" % (first, i) for i in range(4)]
    project.ok("monitor", "--session", "arr")
    hist = dict((j["name"], j) for j in project.history("arr")["jobs"])
    for name, job in hist.items():
        task = int(name[-1]) - 1
        assert all(a["array_task"] == task for a in job["attempts"])
        assert job["status"] == "finalized"
        assert len(job["attempts"]) == (2 if task == 2 else 1)
    retry = hist["e2e-s3"]["attempts"][1]
    assert retry["job_id"].endswith("_2") and not retry["job_id"].startswith(first + "_")
    assert [a["outcome"] for a in hist["e2e-s3"]["attempts"]] == ["crash", "success"]
    sbatch = [c["argv"] for c in fake.calls("sbatch")]
    assert len(sbatch) == 2 and "--array=0,1,2,3" in sbatch[0] and "--array=2" in sbatch[1]
    assert os.path.basename(retry["log_path"]) == "e2e-%s.log" % retry["job_id"]


def test_dry_run_submits_nothing(project, fake):
    cfg = project.config(sweep_config())
    project.ok("plan", cfg, "--plan-id", "dry")
    out = project.ok("submit", "dry", "--dry-run").stdout
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 4 and all(l.startswith("would submit: sbatch --parsable ") for l in lines)
    assert lines[0].endswith("/plans/dry/jobs/e2e-s1.sbatch")
    out = project.ok("submit", "dry", "--dry-run", "--array").stdout
    assert "--array=0,1,2,3" in out and out.strip().endswith("array.sbatch")
    assert fake.calls("sbatch") == [] and not os.path.exists(os.path.join(project.state_dir, "dry.json"))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["job"].update(command="train --x {nope}"), "unknown placeholder {nope}"),
    (lambda c: c["job"].update(name="{project}"), "names must be unique"),
    (lambda c: c["job"].update(sbatch={"comment2": "a\nb"}), "job.sbatch.comment2"),
])
def test_bad_configs_exit_2(project, fake, mutate, message):
    cfg = sweep_config()
    mutate(cfg)
    res = project.cli("plan", project.config(cfg))
    assert res.returncode == 2 and message in res.stderr and res.stderr.startswith("Error: ")
    assert "Traceback" not in res.stderr
    assert not glob.glob(os.path.join(project.state_dir, "plans", "*"))


def test_generated_script_resubmitted_by_hand_is_the_same_job(project, fake):
    cfg = project.config(sweep_config(seeds=(1,)))
    project.ok("plan", cfg, "--plan-id", "hand")
    script = os.path.join(project.state_dir, "plans", "hand", "jobs", "e2e-s1.sbatch")
    out = subprocess.check_output(["sbatch", "--parsable", script], env=project.env, cwd="/").decode().strip()
    job = fake.wait(lambda jobs: [j for j in jobs if j["job_id"] == out and j["state"] == "COMPLETED"], timeout=10)[0]
    assert job["name"] == "e2e-s1" and job["comment"] == "autoexp:hand:e2e-s1"
    assert job["work_dir"] == project.root
    with open(os.path.join(project.root, "logs", "e2e-s1-%s.log" % out)) as f:
        assert f.read() == "seed 1\nTRAINING FINISHED\n"


def pythons():
    """CPython 3.6 to 3.14: pyenv's, else a python3.X on PATH, else the one running the
    tests (tests/pythons/sid.sh runs the suite under Debian sid's 3.14, as .ci/run does)."""
    found = {}
    if _has_pyenv():
        root = subprocess.check_output(["pyenv", "root"]).decode().strip()
        for path in sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))):
            minor = os.path.basename(os.path.dirname(os.path.dirname(path))).rsplit(".", 1)[0]
            found[minor] = path
    found.setdefault("%d.%d" % sys.version_info[:2], sys.executable)
    out = []
    for m in range(6, 15):
        version = "3.%d" % m
        out.append(pytest.param(found.get(version) or shutil.which("python" + version), id=version))
    return out


def _has_pyenv():
    try:
        subprocess.check_output(["pyenv", "root"], stderr=subprocess.DEVNULL)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    """The zipapp of the tree under test (a stale ./autoexp.pyz must not stand in for it)."""
    path = str(tmp_path_factory.mktemp("pyz") / "autoexp.pyz")
    subprocess.check_call(["bash", os.path.join(ROOT, "build_pyz.sh"), path], stdout=subprocess.DEVNULL)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("python", pythons())
def test_pyz_runs_the_sweep_on_every_python(tmp_path, fake, python, pyz):
    if python is None:
        pytest.skip("this CPython is not installed here (pyenv, PATH); 3.14: bash tests/pythons/sid.sh suite")
    os.makedirs(str(tmp_path / "proj"))
    p = Project(tmp_path / "proj", fake, python=python, pyz=pyz)
    assert p.ok("--version").stdout.strip().startswith("autoexp ")
    res = p.ok("run", p.config(sweep_config(command="sleep 0.2; echo TRAINING FINISHED")), "--plan-id", "py")
    assert "4 finalized" in res.stdout
    assert p.status("py")["sessions"][0]["counts"] == {"finalized": 4}
    assert json.loads(p.ok("history", "--session", "py", "--json").stdout)["jobs"][0]["attempts"][0]["outcome"] == "success"
