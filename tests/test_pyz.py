"""The zipapp: its entry point caches autoexp's compiled code in the user's cache folder
(a zip cannot hold bytecode for every Python), trusting only files nobody else can write."""

import glob
import os
import stat
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pyz(tmp_path):
    path = str(tmp_path / "autoexp.pyz")
    subprocess.check_call(["bash", os.path.join(ROOT, "build_pyz.sh"), path], stdout=subprocess.DEVNULL)
    return path


def run(pyz, cache, *args):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    return subprocess.run([sys.executable, pyz] + list(args), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


def cached(cache):
    return glob.glob(os.path.join(str(cache), "autoexp", "autoexp-*.pyc"))


def poison(path):
    """Replace a cached file with code that says it ran from the cache."""
    import marshal
    with open(path, "wb") as f:
        f.write(marshal.dumps(compile("def main():\n    print('from the cache')\n    return 0\n", "x", "exec")))


def test_the_compiled_code_is_cached_privately_and_used(pyz, tmp_path):
    cache = tmp_path / "cache"
    assert run(pyz, cache, "--version").stdout.strip().startswith("autoexp ")
    (path,) = cached(cache)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    poison(path)
    assert run(pyz, cache, "--version").stdout.strip() == "from the cache"


@pytest.mark.parametrize("unsafe", ["file", "folder"])
def test_a_cache_others_can_write_is_not_trusted(pyz, tmp_path, unsafe):
    cache = tmp_path / "cache"
    run(pyz, cache, "--version")
    (path,) = cached(cache)
    poison(path)
    os.chmod(path if unsafe == "file" else os.path.dirname(path), 0o666 if unsafe == "file" else 0o777)
    assert run(pyz, cache, "--version").stdout.strip().startswith("autoexp ")


def test_an_unwritable_cache_only_costs_time(pyz, tmp_path):
    cache = tmp_path / "a-file"  # the cache folder cannot even be made (root may write anywhere else)
    cache.write_text("")
    res = run(pyz, cache, "--version")
    assert res.returncode == 0 and res.stdout.strip().startswith("autoexp ") and not res.stderr


def test_another_autoexp_gets_its_own_cache_and_replaces_the_old(pyz, tmp_path):
    cache = tmp_path / "cache"
    run(pyz, cache, "--version")
    (old,) = cached(cache)
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(ROOT, "autoexp.py")) as f:
        text = f.read()
    (src / "autoexp.py").write_text(text + "\n# another version\n")
    subprocess.check_call(["cp", os.path.join(ROOT, "build_pyz.sh"), str(src)])
    other = str(src / "autoexp.pyz")
    subprocess.check_call(["bash", str(src / "build_pyz.sh"), other], stdout=subprocess.DEVNULL)
    assert run(other, cache, "--version").returncode == 0
    (new,) = cached(cache)
    assert new != old
