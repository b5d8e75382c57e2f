"""Fixtures: a fake SLURM per test (torn down with every process it started) and a project
folder to run the CLI in."""

import json
import os
import sys

import pytest

from helpers import FAKE_SLURM_BIN, load_state, run_cli, write_config

sys.path.insert(0, FAKE_SLURM_BIN)
import fake_slurm  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "real_slurm: needs a real SLURM cluster (tests/real_slurm/setup.sh)")
    config.addinivalue_line("markers", "slow: the long part of a budget (the simulator's seeds); -m 'not slow' skips it")


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


class Project(object):
    """A folder with a config, run through the CLI as a user would, on the fake SLURM."""

    def __init__(self, root, fake, python=None, pyz=None):
        self.root = str(root)
        self.fake = fake
        self.state_dir = os.path.join(self.root, "autoexp-state")
        self.python = python
        self.pyz = pyz
        # The shims' python: a direct interpreter path, not a pyenv shim script (0.1 s a call).
        self.env = dict(fake.env(), FAKE_SLURM_PYTHON=sys.executable)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # let the many short processes reuse bytecode

    def config(self, cfg, name="cfg.json"):
        return write_config(os.path.join(self.root, name), cfg)

    def cli(self, *args, **kw):
        timeout = kw.pop("timeout", 120)
        env = dict(self.env, **kw.pop("env", {}))
        return run_cli(list(args), env, self.root, python=self.python, timeout=timeout, pyz=self.pyz)

    def ok(self, *args, **kw):
        res = self.cli(*args, **kw)
        assert res.returncode == 0, "autoexp %s -> %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(args), res.returncode, res.stdout, res.stderr)
        return res

    def state(self, session):
        return load_state(self.state_dir, session)

    def status(self, session=None):
        args = ["status", "--json"] + (["--session", session] if session else [])
        return json.loads(self.ok(*args).stdout)

    def history(self, session, name=None):
        args = ["history", "--session", session, "--json"] + ([name] if name else [])
        return json.loads(self.ok(*args).stdout)


@pytest.fixture
def project(tmp_path, fake):
    """AUTOEXP_TEST_PYTHON runs the CLI under another interpreter, e.g. CPython 3.6."""
    root = tmp_path / "proj"
    root.mkdir()
    return Project(root, fake, python=os.environ.get("AUTOEXP_TEST_PYTHON"))
