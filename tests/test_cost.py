"""What attempts cost: sacct's ElapsedRaw and AllocTRES per attempt, summed into hours
used by successful attempts and wasted on the others (cost_summary, a table test), and
end to end on the fake SLURM, which prints both fields as SLURM does."""

import json

import pytest

import autoexp as A
import helpers


def att(outcome, seconds=None, cpus=None, gpus=None, job_id="1", live=False):
    return A.Attempt(attempt=1, job_id=job_id, outcome=outcome, elapsed_raw=seconds, alloc_cpus=cpus,
                     alloc_gpus=gpus, live=live)


@pytest.mark.parametrize("attempts, expected", [
    ([], (0, 0, 0, 0, 0)),
    ([att("success", 3600, 2, 4)], (2.0, 4.0, 0, 0, 0)),
    ([att("timeout", 1800, 8, 2), att("success", 3600, 8, 2)], (8.0, 2.0, 4.0, 1.0, 0)),
    # every outcome but success is waste: replaced, cancelled, stall, crash, a mode of log_events
    ([att(o, 360, 10, 1) for o in ("replaced", "cancelled", "stall", "crash", "cuda_oom")], (0, 0, 5.0, 0.5, 0)),
    # ended without its final sacct row (squeue alone): unknown, counted, in neither sum
    ([att("timeout"), att("success", 36, 1, 0)], (0.01, 0.0, 0, 0, 1)),
    ([att("lost", 100)], (0, 0, 0, 0, 1)),  # a run time without an allocation: unknown
    # never submitted, or never ran: nothing spent
    ([att("submit_failed", job_id=None), att("cancelled", 0)], (0, 0, 0, 0, 0)),
    ([att(None, 3600, 4, 4, live=True)], (0, 0, 0, 0, 0)),  # live: not counted before it ends
    # an outcome already (cancelled without a monitor, finished by its log) but SLURM still runs it
    ([att("cancelled", live=True), att("success", 3600, 4, 4, live=True)], (0, 0, 0, 0, 0)),
    ([att("success", 7200, 4, None)], (8.0, 0.0, 0, 0, 0)),  # CPUs only: no GPU hours
])
def test_cost_summary(attempts, expected):
    c = A.cost_summary(attempts)
    assert tuple(c[k] for k in A.COST_KEYS) == pytest.approx(expected)


def test_add_costs_and_words():
    total = A.add_costs([A.cost_summary([att("success", 3600, 2, 1)]), A.cost_summary([att("timeout", 1800, 2, 1),
                                                                                       att("crash")])])
    assert [total[k] for k in A.COST_KEYS] == [2.0, 1.0, 1.0, 0.5, 1]
    assert A.cost_text(total) == "used 1.0 GPU-h, 2.0 CPU-h; wasted 0.5 GPU-h, 1.0 CPU-h (+1 ended attempt(s) of unknown cost)"


@pytest.mark.parametrize("state, expected", [
    ("COMPLETED", (90, 2, 4)), ("TIMEOUT", (90, 2, 4)),
    ("RUNNING", (None, None, None)),  # still growing: only the final row is recorded
])
def test_only_an_ended_row_tells_the_cost(state, expected):
    row = A.AcctRow("1", "1", "j", state, "0:0", None, None, "", elapsed="90",
                    tres="billing=2,cpu=2,gres/gpu=4,mem=1G,node=1")
    assert A.final_cost(row) == expected
    assert A.final_cost(None) == (None, None, None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["22.05", "24.11"])
def test_a_timeout_then_a_success_cost_what_sacct_says(project, fake, version):
    fake.configure(version=version)
    fake.add_rule(name="cost-s1", action="TIMEOUT", nth=1, after=2.2)
    cfg = helpers.sweep_config("cost", ('if [ "$AUTOEXP_ATTEMPT" = 1 ]; then sleep 30; fi; '
                                                 'sleep 1.2; echo TRAINING FINISHED'), (1,), {"lost_after_seconds": 15})
    cfg["job"]["sbatch"] = {"gres": "gpu:2", "cpus-per-task": 3}
    project.ok("run", project.config(cfg), "--plan-id", "cost")
    subs = [j["job_id"] for j in fake.submissions("cost-s1")]
    assert len(subs) == 2
    rc, out, err = fake.run("sacct", "-X", "-P", "-n", "-o", "JobID,ElapsedRaw,AllocTRES", "-j", ",".join(subs))
    assert rc == 0, err
    acct = dict((l.split("|")[0], l.split("|")) for l in out.splitlines())
    seconds = [int(acct[i][1]) for i in subs]
    assert seconds[0] >= 2 and seconds[1] >= 1  # the fake really ran them
    assert all(acct[i][2] == "billing=3,cpu=3,gres/gpu=2,mem=256M,node=1" for i in subs)

    attempts = project.history("cost", "cost-s1")["jobs"][0]["attempts"]
    assert [a["outcome"] for a in attempts] == ["timeout", "success"]
    assert [a["elapsed_raw"] for a in attempts] == seconds
    assert [(a["alloc_cpus"], a["alloc_gpus"]) for a in attempts] == [(3, 2), (3, 2)]
    assert [a["cpu_hours"] for a in attempts] == pytest.approx([s * 3 / 3600.0 for s in seconds])
    assert [a["gpu_hours"] for a in attempts] == pytest.approx([s * 2 / 3600.0 for s in seconds])

    status = project.status("cost")["sessions"][0]
    want = {"useful_cpu_hours": seconds[1] * 3 / 3600.0, "useful_gpu_hours": seconds[1] * 2 / 3600.0,
            "wasted_cpu_hours": seconds[0] * 3 / 3600.0, "wasted_gpu_hours": seconds[0] * 2 / 3600.0}
    for k, v in want.items():
        assert status["cost"][k] == pytest.approx(v, abs=1e-4)
        assert status["jobs"][0]["cost"][k] == pytest.approx(v, abs=1e-4)
    assert status["cost"]["unknown_attempts"] == 0
    line = project.ok("status", "--session", "cost").stdout.splitlines()[0]
    assert "wasted %.1f GPU-h" % want["wasted_gpu_hours"] in line and "used " in line


def test_attempts_cancelled_without_a_monitor_are_not_of_unknown_cost_while_slurm_runs_them(tmp_path, monkeypatch,
                                                                                          capsys):
    h = helpers.Harness(tmp_path, helpers.controller_config())
    for name in (helpers.A, helpers.B):
        h.slurm.set(h.live_id(name), "RUNNING")
    h.cycle()
    code, out = helpers.run_main(h, ["cancel", "--session", "p1", "--all"], monkeypatch, capsys)
    assert code == 0, out
    code, out = helpers.run_main(h, ["status", "--json"], monkeypatch, capsys)
    doc = json.loads(out.out)["sessions"][0]
    assert [(j["status"], j["live"]) for j in doc["jobs"]] == [("cancelled", True)] * 2
    assert doc["cost"]["unknown_attempts"] == 0
    code, out = helpers.run_main(h, ["status"], monkeypatch, capsys)
    assert "unknown cost" not in out.out
