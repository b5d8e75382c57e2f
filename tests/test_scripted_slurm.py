"""The scripted SLURM (helpers.ScriptedSlurm) that the in-process controller tests run on
stands in for autoexp.SlurmClient: it must offer every method the Controller calls, with the
same parameters, and the `user` attribute, so that a change to the real client's interface
cannot leave those tests exercising a Controller that no longer matches it."""

import inspect
import re

from helpers import ScriptedSlurm, autoexp


def public_methods(cls):
    return sorted(n for n, v in vars(cls).items() if not n.startswith("_") and callable(v))


def test_scripted_slurm_offers_the_slurm_clients_interface():
    real = public_methods(autoexp.SlurmClient)
    assert real == ["sacct", "sacct_by_name", "sbatch", "scancel", "squeue"]
    with open(autoexp.__file__) as f:
        called = set(re.findall(r"\bself\.slurm\.(\w+)", f.read()))
    assert called <= set(real) | {"user"}, "the Controller calls what SlurmClient lacks: %s" % (
        called - set(real) - {"user"})
    for name in real:
        assert hasattr(ScriptedSlurm, name), "ScriptedSlurm lacks %s" % name
        assert inspect.signature(getattr(ScriptedSlurm, name)) == inspect.signature(
            getattr(autoexp.SlurmClient, name)), name
    assert "user" in autoexp.SlurmClient.__slots__
    assert autoexp.SlurmClient(runner=lambda a, t, e: None, user="alice").user == "alice"
    assert ScriptedSlurm(clock=lambda: 0.0, user="alice").user == "alice"
