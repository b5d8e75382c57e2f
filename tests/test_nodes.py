"""Node lists and node exclusion (SPEC 5.4), end to end: the CLI on the fake SLURM, whose
partition has named nodes, which runs a job on the first --nodes of them not in its
--exclude and records every sbatch's argv."""

import json

import pytest

import helpers
from helpers import read_events

pytestmark = pytest.mark.timeout(120)

NODES = ["gpu%02d" % i for i in range(1, 9)]
FAST = "echo seed {seed}; sleep 0.3; echo TRAINING FINISHED"


@pytest.fixture
def nodes(fake):
    fake.configure(node_names=NODES)
    return fake


def config(command=FAST, seeds=(1,), node_count=2, exclude=None, **node_exclusion):
    cfg = helpers.sweep_config("nd", command, seeds, {"lost_after_seconds": 15})
    cfg["job"]["sbatch"] = {"nodes": node_count}
    if exclude:
        cfg["job"]["sbatch"]["exclude"] = exclude
    cfg["restart"]["node_fail"] = {"action": "restart", "max_attempts": 3, "backoff_seconds": 0}
    if node_exclusion:
        cfg["node_exclusion"] = node_exclusion
    return cfg


def excludes(fake, name):
    """The --exclude each sbatch of job `name` ran with (None: none), in order; sbatch takes the last."""
    out = []
    for call in fake.calls("sbatch"):
        if not any(a == "--job-name=" + name for a in call["argv"]):
            continue
        given = [a.split("=", 1)[1] for a in call["argv"] if a.startswith("--exclude=")]
        out.append(given[-1] if given else None)
    return out


def events(project, session, kind):
    return [e for e in read_events(project.state_dir, session) if e["event"] == kind]


def test_node_list_is_recorded_per_attempt_and_shown_in_history(project, nodes):
    nodes.add_rule(name="nd-s1", action="NODE_FAIL", nth=1, after=0.1)
    project.ok("run", project.config(config()), "--plan-id", "nl")
    atts = project.history("nl", "nd-s1")["jobs"][0]["attempts"]
    assert [a["outcome"] for a in atts] == ["node_fail", "success"]
    assert [a["nodes"] for a in atts] == [j["nodes"] for j in nodes.submissions("nd-s1")] == ["gpu[01-02]", "gpu[03-04]"]
    text = project.ok("history", "--session", "nl", "nd-s1").stdout
    assert "NODES" in text.splitlines()[1] and "gpu[01-02]" in text and "gpu[03-04]" in text
    assert "#2 excluded: gpu01 (node_fail of #1); gpu02 (node_fail of #1)" in text


def test_node_fail_excludes_its_nodes_merged_with_the_users_exclude(project, nodes):
    nodes.add_rule(name="nd-s1", action="NODE_FAIL", nth=1, after=0.1)
    project.ok("run", project.config(config(exclude="gpu08")), "--plan-id", "nf")
    # the user's exclude is the script's #SBATCH line; sbatch's command line replaces it, so
    # the restart's one --exclude carries it too
    assert excludes(nodes, "nd-s1") == [None, "gpu08,gpu01,gpu02"]
    assert [j["nodes"] for j in nodes.submissions("nd-s1")] == ["gpu[01-02]", "gpu[03-04]"]
    att = project.state("nf")["jobs"][0]["attempts"][1]
    assert att["excluded_nodes"] == ["gpu01", "gpu02"]
    (ev,) = events(project, "nf", "nodes_excluded")
    assert ev["attempt"] == 2 and ev["detail"].startswith("--exclude=gpu01,gpu02: gpu01 (node_fail of #1)")
    # status tells what the latest attempt excludes and why
    job = project.status("nf")["sessions"][0]["jobs"][0]
    assert job["excluded_nodes"] == ["gpu01", "gpu02"] and "node_fail of #1" in job["exclusion_note"]
    assert "nd-s1: attempt 2 excludes gpu01 (node_fail of #1)" in project.ok("status", "--session", "nf").stdout


def test_a_log_line_naming_a_node_excludes_that_node_only(project, nodes):
    cmd = ("if [ ! -e ecc-once ]; then touch ecc-once; echo 'uncorrectable ECC error on node gpu02'; exit 1; fi; "
           + FAST)
    cfg = config(command=cmd)
    cfg["monitoring"]["log_events"] = [{"name": "ecc", "pattern": r"uncorrectable ECC error on node (?P<node>\S+)",
                                        "mode": "hw", "exclude_nodes": True}]
    cfg["restart"]["hw"] = {"action": "restart", "max_attempts": 2}
    project.ok("run", project.config(cfg), "--plan-id", "ecc")
    atts = project.history("ecc", "nd-s1")["jobs"][0]["attempts"]
    assert [a["outcome"] for a in atts] == ["hw", "success"]
    assert excludes(nodes, "nd-s1") == [None, "gpu02"]
    assert [j["nodes"] for j in nodes.submissions("nd-s1")] == ["gpu[01-02]", "gpu[01,03]"]
    assert atts[1]["exclusion_note"] == "gpu02 (log:ecc of #1)"


def test_session_scope_keeps_other_jobs_off_the_nodes(project, nodes):
    nodes.add_rule(name="nd-s1", action="NODE_FAIL", nth=1, after=0.1)
    cfg = project.config(config(seeds=(1, 2), scope="session"))
    project.ok("plan", cfg, "--plan-id", "ss")
    project.ok("submit", "ss", "--only", "nd-s1")
    project.ok("monitor", "--session", "ss")
    assert excludes(nodes, "nd-s1") == [None, "gpu01,gpu02"]
    # a job submitted afterwards never ran on them, and never failed there
    project.ok("submit", "ss", "--only", "nd-s2")
    project.ok("monitor", "--session", "ss")
    assert excludes(nodes, "nd-s2") == ["gpu01,gpu02"]
    assert [j["nodes"] for j in nodes.submissions("nd-s2")] == ["gpu[03-04]"]
    doc = project.status("ss")["sessions"][0]
    assert [(e["node"], e["job"], e["uses"]) for e in doc["excluded_nodes"]] == [
        ("gpu01", "nd-s1", 2), ("gpu02", "nd-s1", 2)]
    assert "excluded from every job: gpu01 since" in project.ok("status", "--session", "ss").stdout
    (ev,) = [e for e in events(project, "ss", "nodes_excluded") if e["detail"].startswith("session-wide")]
    assert ev["job"] == "nd-s1" and "gpu01 (node_fail of nd-s1 #1)" in ev["detail"]


def test_an_exclusion_expires_after_max_attempts(project, nodes):
    nodes.add_rule(name="nd-s1", action="NODE_FAIL", nth=1, after=0.1)
    nodes.add_rule(name="nd-s1", action="TIMEOUT", nth=2, after=0.1)
    project.ok("run", project.config(config(node_count=1, max_attempts=1)), "--plan-id", "ex")
    atts = project.history("ex", "nd-s1")["jobs"][0]["attempts"]
    assert [a["outcome"] for a in atts] == ["node_fail", "timeout", "success"]
    # attempt 2 avoided gpu01; attempt 3 is the second after the failure: gpu01 again
    assert excludes(nodes, "nd-s1") == [None, "gpu01", None]
    assert [a["nodes"] for a in atts] == ["gpu01", "gpu02", "gpu01"]


def test_the_cap_stops_excluding_and_says_so(project, nodes):
    nodes.add_rule(name="nd-s1", action="NODE_FAIL", nth=1, after=0.1)
    project.ok("run", project.config(config(max_nodes=1)), "--plan-id", "cap")
    assert excludes(nodes, "nd-s1") == [None, "gpu01"]
    (ev,) = events(project, "cap", "exclusion_capped")
    assert ev["attempt"] == 2
    assert "max_nodes 1" in ev["detail"] and ev["detail"].endswith("not excluded: gpu02")
    assert [j["nodes"] for j in nodes.submissions("nd-s1")] == ["gpu[01-02]", "gpu[02-03]"]


def test_a_config_with_a_bad_node_exclusion_is_refused(project, nodes):
    res = project.cli("plan", project.config(config(scope="cluster")))
    assert res.returncode == 2 and "node_exclusion.scope: must be one of job/session" in res.stderr
    cfg = config()
    cfg["monitoring"]["log_events"] = [{"name": "x", "pattern": "x", "mode": "hw", "exclude_nodes": "yes"}]
    res = project.cli("plan", project.config(cfg))
    assert res.returncode == 2 and "exclude_nodes: must be true or false" in res.stderr


def test_the_fake_honours_exclude_and_refuses_when_too_few_nodes_are_left(nodes, tmp_path):
    script = tmp_path / "j.sh"
    script.write_text(u"#!/bin/sh\nsleep 0.1\n")
    log = "--output=%s" % (tmp_path / "j.out")
    rc, out, err = nodes.run("sbatch", "--parsable", log, "-N", "3", "-x", "gpu[01-06]", str(script))
    assert rc == 1 and "Requested node configuration is not available" in err
    # the id is used up all the same (real 22.05 and 24.11): FAILED, BadConstraints, no node
    (refused,) = [(j["state"], j["reason"], j["nodes"]) for j in nodes.jobs()]
    assert refused == ("FAILED", "BadConstraints", None)
    rc, out, err = nodes.run("sbatch", "--parsable", log, "-N", "2", "--exclude=gpu[01-06]", str(script))
    assert rc == 0
    job = [j for j in nodes.jobs() if j["job_id"] == out.strip()][0]
    assert job["nodes"] == "gpu[07-08]"
    nodes.wait(lambda jobs: [j["state"] for j in jobs] == ["FAILED", "COMPLETED"], timeout=10)
    rc, out, err = nodes.run("sacct", "-X", "-P", "-n", "-o", "JobID,NodeList", "-j", job["job_id"])
    assert out.strip() == "%s|gpu[07-08]" % job["job_id"]


def test_an_exclusion_that_leaves_no_node_is_dropped_not_a_stop(project, fake):
    # two nodes, a two-node job: after its node failure, excluding both leaves nothing; sbatch
    # refuses, and autoexp submits the same attempt again without its exclusions (SLURM
    # knows the partition's size, autoexp does not), instead of stopping the job
    fake.configure(node_names=["gpu01", "gpu02"])
    fake.add_rule(name="nd-s1", action="NODE_FAIL", nth=1, after=0.1)
    project.ok("run", project.config(config()), "--plan-id", "none")
    assert excludes(fake, "nd-s1") == [None, "gpu01,gpu02", None]
    assert [c["rc"] for c in fake.calls("sbatch")] == [0, 1, 0]
    hist = project.history("none", "nd-s1")["jobs"][0]
    assert hist["status"] == "finalized" and [a["outcome"] for a in hist["attempts"]] == ["node_fail", "success"]
    assert hist["attempts"][1]["excluded_nodes"] == []
    assert "not excluded: gpu01,gpu02 would leave no node" in hist["attempts"][1]["exclusion_note"]
    (ev,) = events(project, "none", "exclusion_capped")
    assert "leaves no node that can run it" in ev["detail"] and ev["attempt"] == 2
