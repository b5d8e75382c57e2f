"""Fixtures only (helpers live in helpers.py): a fake SLURM per test (torn down with every
process it started), a project folder to run the CLI in, and the markers."""

import os

import pytest

from helpers import Project, fake_slurm

# Every save of every test checks that no job changed without being touched (a change the
# store would never write); subprocesses inherit it.
os.environ.setdefault("AUTOEXP_PARANOID", "1")
# The webhook tests post to a server of their own on 127.0.0.1: a proxy in the machine's
# environment must not be asked for it (urllib honours http_proxy unless no_proxy says so).
for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))


def pytest_configure(config):
    config.addinivalue_line("markers", "real_slurm: needs a real SLURM cluster (tests/real_slurm/setup.sh)")
    config.addinivalue_line("markers", "slow: takes over about a second (CLI scenarios on the fake SLURM, the crash "
                                       "harness, the pyz on every Python, the simulator's long budget); "
                                       "`-m \"not slow\"` leaves it out")


@pytest.fixture(autouse=True)
def reap_orphans():
    """The fake's job runners outlive the sbatch that started them; FakeSlurm makes this
    process their subreaper, so collect whatever of them ended, after each test."""
    yield
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture
def fake(tmp_path):
    fs = fake_slurm.FakeSlurm(str(tmp_path / "fake-slurm"))
    fs.configure(pending_seconds=0.05, completing_seconds=0.05, min_job_age=2)
    try:
        yield fs
    finally:
        fs.shutdown()


@pytest.fixture
def project(tmp_path, fake):
    """AUTOEXP_TEST_PYTHON runs the CLI under another interpreter, e.g. CPython 3.6."""
    root = tmp_path / "proj"
    root.mkdir()
    return Project(root, fake, python=os.environ.get("AUTOEXP_TEST_PYTHON"))
