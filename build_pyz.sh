#!/usr/bin/env bash
# Build autoexp.pyz, the one file users copy to a login node: a zipapp of autoexp.py whose
# entry point runs autoexp.main(). The build is reproducible: fixed timestamps, modes and
# entry order, and entries stored rather than deflated, so the bytes depend only on
# autoexp.py (building twice from one tree gives identical files).
#
# Python cannot cache the bytecode of a module inside a zip, so every start would compile
# autoexp.py again (most of a `status`'s time). The entry point keeps the compiled code in
# the user's cache folder instead ($XDG_CACHE_HOME/autoexp or ~/.cache/autoexp, 0700), one
# file per autoexp source and Python version, and trusts a cached file only if the user
# owns it and nobody else can write it or its folder; whatever goes wrong, it compiles.
#
#   bash build_pyz.sh [OUTPUT]      (default: ./autoexp.pyz)
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-autoexp.pyz}"
"${PYTHON:-python3}" - "$out" <<'PY'
import os
import sys
import zipfile

MAIN = b'''\
import sys


def _autoexp():
    """The autoexp module, from the compiled code cached for this source and Python."""
    import marshal
    import os
    import types
    import zlib
    archive = os.path.dirname(os.path.abspath(__file__))
    source = __loader__.get_data("autoexp.py")
    mod = types.ModuleType("autoexp")
    mod.__file__ = os.path.join(archive, "autoexp.py")
    key = "%s-%08x%08x-%d" % (sys.implementation.cache_tag, zlib.crc32(source), zlib.adler32(source), len(source))
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                          "autoexp")
    path = os.path.join(folder, "autoexp-%s.pyc" % key)
    code = None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            st, dst = os.fstat(fd), os.stat(folder)
            if all(s.st_uid == os.getuid() and not s.st_mode & 0o022 for s in (st, dst)):
                with os.fdopen(os.dup(fd), "rb") as f:
                    code = marshal.loads(f.read())
        finally:
            os.close(fd)
    except (OSError, ValueError, EOFError, TypeError):
        code = None
    if code is None:
        code = compile(source, mod.__file__, "exec")
        try:
            os.makedirs(folder, 0o700)
        except OSError:
            pass
        tmp = "%s.%d.tmp" % (path, os.getpid())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps(code))
            os.replace(tmp, path)
            for name in os.listdir(folder):  # the code of other autoexp versions for this Python
                if name.startswith("autoexp-%s-" % sys.implementation.cache_tag) and name != os.path.basename(path):
                    os.unlink(os.path.join(folder, name))
        except (OSError, ValueError):
            try:
                os.unlink(tmp)
            except OSError:
                pass  # a read-only home: compile every time
    sys.modules["autoexp"] = mod
    exec(code, mod.__dict__)
    return mod


sys.exit(_autoexp().main())
'''

out = sys.argv[1]
entries = [
    ("__main__.py", MAIN),
    ("autoexp.py", open("autoexp.py", "rb").read()),
]
tmp = out + ".tmp"
with open(tmp, "wb") as f:
    f.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3               # unix, whatever builds it
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
os.chmod(tmp, 0o755)
os.replace(tmp, out)
PY
echo "built $out"
