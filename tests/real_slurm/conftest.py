"""The real-SLURM tier: autoexp's CLI (a freshly built autoexp.pyz) against a real
single-node SLURM started on this machine by tests/real_slurm/setup.sh: the distribution's
own (SLURM 22.05 on Debian 12, 24.11 on Debian 13), and, through tests/real_slurm/chroot.sh,
the other generation in a Debian chroot beside it (same scenarios, its own ports).

Enabling rule: with AUTOEXP_REAL_SLURM=1 (as root, on Debian/Ubuntu) the session runs
`setup.sh --fresh` once and every test of the tier runs; if the cluster cannot be
started, the tests fail with setup.sh's output. Without the variable every test of the
tier is skipped, with the reason shown by `pytest -ra`.

    AUTOEXP_REAL_SLURM=1 .venv-test/bin/python -m pytest tests/real_slurm -v

The SLURM commands used are the real ones in /usr/bin (PATH is reset for autoexp and for
the tests' own sbatch/squeue/sacct/scontrol calls), never fixtures/fake_slurm. Each test
runs autoexp.pyz (built once per session from the working tree) with the system python3
in its own project folder under $AUTOEXP_REAL_SLURM_TMP (default /tmp/autoexp-real-slurm,
emptied at the start of a run and kept after it for a post-mortem). After each test every
daemon is started again (setup.sh, idempotent) and any job left in the queue is cancelled.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from .harness import ENABLED, ROOT, SKIP_REASON, SYSTEM_PATH, RealProject, Slurm, run


def pytest_configure(config):
    config.addinivalue_line("markers", "real_slurm: needs a real SLURM cluster (tests/real_slurm/setup.sh)")


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("real_slurm") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_slurm():
    """The cluster, started fresh once per session: setup.sh --fresh. Fails (never skips)
    with setup.sh's output when it cannot be started."""
    if not ENABLED:
        pytest.skip(SKIP_REASON)
    slurm = Slurm()
    t0 = time.time()
    try:
        res = subprocess.run(["bash", slurm.setup_sh, "--fresh"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=900, universal_newlines=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail("tests/real_slurm/setup.sh --fresh did not finish in 900 s:\n%s" % (e.output or ""),
                    pytrace=False)
    if res.returncode != 0:
        pytest.fail("the real SLURM cluster could not be started: tests/real_slurm/setup.sh --fresh exited %d:\n%s"
                    % (res.returncode, res.stdout), pytrace=False)
    for cmd in ("sbatch", "squeue", "sacct", "scancel", "scontrol"):
        found = shutil.which(cmd, path=SYSTEM_PATH)
        assert found and "fake_slurm" not in os.path.realpath(found), "%s resolves to %s" % (cmd, found)
    ready = [l for l in res.stdout.splitlines() if l.startswith("real-slurm: READY")]
    sys.stderr.write("\n%s (setup.sh --fresh: %.1fs)\n" % (ready[-1] if ready else res.stdout, time.time() - t0))
    return slurm


@pytest.fixture(scope="session")
def workdir():
    """This run's folder: every test's project folder, kept after the run for a post-mortem
    (the previous run's is removed first; pytest's own tmp_path can be reaped by another
    pytest session of this machine)."""
    base = os.environ.get("AUTOEXP_REAL_SLURM_TMP") or os.path.join(tempfile.gettempdir(), "autoexp-real-slurm")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    sys.stderr.write("\nreal SLURM tier: project folders in %s\n" % base)
    return base


@pytest.fixture(scope="session")
def pyz(workdir):
    """autoexp.pyz built from the working tree, once per session."""
    out = os.path.join(workdir, "autoexp.pyz")
    run(["bash", os.path.join(ROOT, "build_pyz.sh"), out], env=dict(os.environ))
    return out


@pytest.fixture(scope="session")
def python():
    """The system python3, as cron would run autoexp (the interpreter running pytest otherwise)."""
    return shutil.which("python3", path=SYSTEM_PATH) or sys.executable


@pytest.fixture
def slurm(real_slurm):
    """The cluster for one test; afterwards every daemon the test stopped is started again
    and whatever the test left in the queue is cancelled."""
    yield real_slurm
    res = real_slurm.ensure_up()
    real_slurm.cancel_everything()
    assert res.returncode == 0, "setup.sh could not bring the cluster back after the test:\n%s%s" % (
        res.stdout, res.stderr)


@pytest.fixture
def proj(request, workdir, slurm, pyz, python):
    root = os.path.join(workdir, request.node.name)
    os.makedirs(root)
    p = RealProject(root, pyz, python, slurm)
    yield p
    p.stop_background()
